"""A daemon job trains a custom model given as ``module:Class`` (or a ``.py`` file inside the allowed roots)."""

from __future__ import annotations

import json

import pytest

from diskgraph.daemon.jobdir import JobDir
from diskgraph.daemon.runner import run_job
from diskgraph.daemon.spec import SpecChecker, SpecError

pytest.importorskip("torch_geometric")

TRAIN = {"hidden": 16, "epochs": 1, "seed": 0, "device": "cpu"}


def _run(spec: dict, roots: list[str], jobdir) -> dict:
    jd = JobDir(jobdir)
    jd.prepare(1, spec, attempt=1, recovering=False, allowed_roots=roots)
    return run_job({"spec": spec, "attempt": 1, "allowed_roots": roots}, jd, None, {})


def test_a_job_trains_a_module_class_model(workspace, tmp_path):
    checker = SpecChecker([workspace])
    spec = checker.check({"dataset": "syn", "train": {"model": "torch_geometric.nn:GraphSAGE", **TRAIN}})
    assert spec["train"]["model"] == "torch_geometric.nn:GraphSAGE"
    summary = _run(spec, [str(workspace)], tmp_path / "job")
    assert summary["epochs"] == 1 and summary["test_acc"] > 0.25
    card = json.loads((tmp_path / "job" / "run" / "best_model.json").read_text())
    assert card["model"]["custom"] == "torch_geometric.nn:GraphSAGE"


def test_a_model_file_must_lie_inside_the_allowed_roots(workspace, tmp_path):
    outside = tmp_path / "mymodel.py"
    outside.write_text("import torch\nclass Net(torch.nn.Module):\n    pass\n")
    checker = SpecChecker([workspace])
    with pytest.raises(SpecError, match="outside the daemon's allowed roots"):
        checker.check({"dataset": "syn", "train": {"model": f"{outside}:Net", **TRAIN}})
    with pytest.raises(SpecError, match="does not exist"):
        checker.check({"dataset": "syn", "train": {"model": "models/none.py:Net", **TRAIN}})
    with pytest.raises(SpecError, match="unknown model"):
        checker.check({"dataset": "syn", "train": {"model": "resnet", **TRAIN}})
    with pytest.raises(SpecError, match="exact inference needs a built-in model"):
        checker.check({"dataset": "syn", "train": {"model": "torch_geometric.nn:GraphSAGE", **TRAIN},
                       "predict": {"nodes": "test"}})
    inside = workspace / "usermodels" / "mymodel.py"
    inside.parent.mkdir(exist_ok=True)
    inside.write_text(outside.read_text())
    spec = checker.check({"dataset": "syn", "train": {"model": "usermodels/mymodel.py:Net", **TRAIN}})
    assert spec["train"]["model"] == f"{inside.resolve()}:Net"
