"""``--model package.module:Class`` / ``path/to/file.py:Class``: your own model from the CLI (diskgraph.custom_models)."""

from __future__ import annotations

import json

import pytest

from diskgraph.cli import main
from diskgraph.custom_models import build_custom_model, check_model_name, load_class
from diskgraph.store.errors import InputError

pytest.importorskip("torch_geometric")

BLOCKS_MODEL = '''
import torch
from diskgraph.models import SAGEConv


class Net(torch.nn.Module):
    diskgraph_input = "blocks"

    def __init__(self, in_channels, hidden_channels, out_channels, num_layers, dropout=0.0):
        super().__init__()
        dims = [in_channels] + [hidden_channels] * (num_layers - 1) + [out_channels]
        self.convs = torch.nn.ModuleList(SAGEConv(dims[i], dims[i + 1]) for i in range(num_layers))
        self.dropout = dropout

    def forward(self, blocks, x):
        for i, (conv, block) in enumerate(zip(self.convs, blocks)):
            x = conv(block, x)
            if i < len(self.convs) - 1:
                x = torch.nn.functional.dropout(x.relu(), self.dropout, self.training)
        return x
'''


@pytest.fixture(scope="module")
def cora(tmp_path_factory, shared_dataset):
    npz = shared_dataset("cora")
    d = tmp_path_factory.mktemp("cora-custom")
    assert main(["preprocess", "all", "--npz", str(npz), "--out", str(d / "ds"), "--fanouts", "10,5",
                 "--batch-size", "512", "-q"]) == 0
    return d / "ds"


def _train(ds, model: str, *extra: str) -> int:
    return main(["train", str(ds), "--model", model, "--hidden", "64", "--device", "cpu", "-q", *extra])


def test_a_pyg_model_trains_from_the_cli_and_resumes(cora, tmp_path):
    log = tmp_path / "log.jsonl"
    assert _train(cora, "torch_geometric.nn:GraphSAGE", "--epochs", "2", "--log-json", str(log)) == 0
    run = cora / "runs" / "default-GraphSAGE-seed0"  # the class name in the default run directory
    assert json.loads((run / "run.json").read_text())["model"] == "torch_geometric.nn:GraphSAGE"
    card = json.loads((run / "best_model.json").read_text())["model"]
    assert card == {"custom": "torch_geometric.nn:GraphSAGE", "input": "pyg-trim", "in_channels": 1433,
                    "hidden_channels": 64, "out_channels": 7, "num_layers": 2, "dropout": 0.5}
    assert _train(cora, "torch_geometric.nn:GraphSAGE", "--epochs", "3", "--resume", "--log-json", str(log)) == 0
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["epoch"] for r in lines if not r.get("summary")] == [0, 1, 2]
    assert lines[-1]["test_acc"] > 0.5
    # a resume with another model is refused (the run's identity records --model)
    assert _train(cora, "sage", "--epochs", "3", "--resume", "--run-dir", str(run)) != 0
    # exact inference needs a built-in model
    from diskgraph.inference import load_model

    with pytest.raises(InputError, match="needs a built-in model"):
        load_model(run)


def test_a_file_model_taking_blocks_trains(cora, tmp_path):
    (tmp_path / "mymodel.py").write_text(BLOCKS_MODEL)
    log = tmp_path / "log.jsonl"
    assert _train(cora, f"{tmp_path / 'mymodel.py'}:Net", "--epochs", "5", "--lr", "0.02", "--dropout", "0.2",
                  "--run-dir", str(tmp_path / "run"), "--log-json", str(log)) == 0
    summary = json.loads(log.read_text().splitlines()[-1])
    assert summary["test_acc"] > 0.5
    card = json.loads((tmp_path / "run" / "best_model.json").read_text())["model"]
    assert card["input"] == "blocks" and card["dropout"] == 0.2 and "heads" not in card


def test_refusals(tmp_path, capsys):
    with pytest.raises(InputError, match="no module named 'no_such_pkg'"):
        load_class("no_such_pkg.models:Net")
    with pytest.raises(InputError, match="has no class 'Nope'"):
        load_class("torch_geometric.nn:Nope")
    with pytest.raises(InputError, match="not a torch.nn.Module subclass"):
        load_class("collections:OrderedDict")
    with pytest.raises(InputError, match="does not exist"):
        load_class(f"{tmp_path / 'none.py'}:Net")
    with pytest.raises(InputError, match="unknown model 'resnet'"):
        check_model_name("resnet")
    with pytest.raises(InputError, match="neither a built-in model"):
        check_model_name("torch_geometric.nn:")
    (tmp_path / "bad.py").write_text("import torch\nclass Net(torch.nn.Module):\n"
                                     "    def __init__(self, in_channels):\n        super().__init__()\n")
    with pytest.raises(InputError, match=r"Net\(in_channels=4, .*\) failed \(TypeError: "):
        build_custom_model(f"{tmp_path / 'bad.py'}:Net", 4, 8, 2, 2)
    (tmp_path / "broken.py").write_text("raise ValueError('boom')\n")
    with pytest.raises(InputError, match=r"importing .* failed \(ValueError: boom\)"):
        load_class(f"{tmp_path / 'broken.py'}:Net")
    assert main(["train", str(tmp_path), "--model", "resnet", "-q"]) != 0
    assert "unknown model 'resnet'" in capsys.readouterr().err
