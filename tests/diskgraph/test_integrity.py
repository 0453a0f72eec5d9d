"""Nothing wrong ever trains (issue 12): corrupt bytes, artifacts of another dataset, resumes with other
options, absurd labels, a repack during a run — each refused in one sentence, or harmless.

The world: a small generated dataset with a plan and a pack whose three tiers all hold rows, and one
clean training run of it (the reference). A run on damaged copies must either be refused (exit 2, one
sentence, no traceback) or train a model equal, bit for bit, to the reference — never anything else.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diskgraph.cli import main
from diskgraph.store.packed import open_pack

TRAIN = ("--epochs", "2", "--hidden", "8", "--seed", "0", "--device", "cpu", "-q")


def _quiet(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A dataset with a plan, a pack (gpu, host and cold rows) and the model a clean run trains."""
    root = tmp_path_factory.mktemp("integrity")
    ds = root / "ds"
    assert _quiet("generate", "--nodes", 400, "--edges", 2000, "--feature-dim", 8, "--classes", 3, "--seed", 0,
                  "--out", ds, "-q") == 0
    assert _quiet("preprocess", "sample", ds, "--fanouts", "3,2", "--batch-size", 64, "--seed", 0, "-q") == 0
    assert _quiet("preprocess", "pack", ds, "--gpu-cache", 512, "--host-cache", 1024, "-q") == 0
    pack = open_pack(ds / "packs" / "default")
    assert all(pack.tier_info[t]["rows"] > 0 for t in ("gpu", "host"))
    assert _quiet("train", ds, *TRAIN, "--run-dir", root / "reference") == 0
    return _World(root=root, ds=ds, model=torch.load(root / "reference" / "best_model.pt"),
                  summary=_summary(root / "reference"))


class _World(dict):
    def __repr__(self) -> str:  # keep hypothesis' falsifying examples short
        return f"world({self['ds']})"


def _summary(run: Path) -> dict:
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    return {k: last[k] for k in ("test_acc", "best_val_acc", "best_epoch")}


def _copy(world, tmp_path: Path) -> Path:
    out = tmp_path / "ds"
    shutil.copytree(world["ds"], out, ignore=shutil.ignore_patterns("runs"))
    return out


def _same_model(world, run: Path) -> bool:
    got = torch.load(run / "best_model.pt")
    return (got.keys() == world["model"].keys() and all(torch.equal(got[k], world["model"][k]) for k in got)
            and _summary(run) == world["summary"])


def _flip(path: Path, offset: int, mask: int = 0x40) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([b ^ mask]))


def _value_offset(path: Path, row: int, column: str) -> int:
    """Byte offset in Arrow IPC file ``path`` of the first value of ``column`` in record batch ``row``."""
    with pa.memory_map(str(path), "r") as mm:
        base = mm.read_buffer(8).address
        mm.seek(0)
        values = pa.ipc.open_file(mm).get_batch(row).column(column).values
        return values.buffers()[1].address + values.offset * values.type.byte_width - base


# -- finding 1: corrupt bytes ----------------------------------------------------------------------------

def _last(ds: Path, split: str) -> int:
    return open_pack(ds / "packs" / "default").num_minibatches(split) - 1


@pytest.mark.parametrize("damage", ["cold-flip", "cold-nan", "plan-seeds", "plan-hop2", "plan-hop1", "host-tier",
                                    "index-slot", "labels"])
def test_corrupt_bytes_are_refused_by_train_and_verify(world, tmp_path, cli, damage, refused):
    """Issue 12, finding 1: one flipped byte or a NaN in a packed extent, a plan row, the host tier, the pack index
    or the labels trained silently (loss NaN, accuracy 0.13) or died with an IndexError; inspect --verify sampled rows
    and passed. Every one is now refused where it is read, naming the file, and --verify finds it."""
    ds = _copy(world, tmp_path)
    pack, plan = ds / "packs" / "default", ds / "plans" / "default"
    m = _last(ds, "test")  # a late minibatch: not among the rows a sampling check would look at
    where = {
        "cold-flip": (pack / "cold" / "test" / "c" / "0", f"minibatch {m} of test"),
        "cold-nan": (pack / "cold" / "train" / "c" / "0", "minibatch 0 of train"),
        "plan-seeds": (plan / "test.arrow", f"row {m}"),
        "plan-hop2": (plan / "test.arrow", f"row {m}"),
        "plan-hop1": (plan / "train.arrow", "row 0"),
        "host-tier": (pack / "tiers" / "host" / "features", "tier host"),
        "index-slot": (pack / "index" / "val.arrow", "row 0"),
        "labels": (ds / "labels", "labels"),
    }
    path, needle = where[damage]
    if damage == "cold-flip":
        e = open_pack(pack).entry("test", m)
        _flip(path, e.offset + e.nbytes // 2)
    elif damage == "cold-nan":
        with open(path, "r+b") as f:
            f.seek(8)
            f.write(struct.pack("<f", float("nan")))
    elif damage.startswith("plan") or damage == "index-slot":
        row = 0 if damage in ("plan-hop1", "index-slot") else m
        column = {"plan-seeds": "seeds", "plan-hop2": "hop2_indices", "plan-hop1": "hop1_indices",
                  "index-slot": "slot"}[damage]
        _flip(path, _value_offset(path, row, column), 0x01)
    elif damage == "host-tier":
        _flip(path / "c" / "0" / "0", 5)
    else:
        _flip(ds / "labels" / "c" / "0", 8 * 17, 0x01)
    r = cli.run("train", ds, *TRAIN, "--run-dir", tmp_path / "run")
    refused(r, str(path if damage != "labels" else ds / "labels"), needle)
    v = cli.run("inspect", ds, "--verify", "-q")
    assert v.rc == 1 and "Traceback" not in v.err and str(path.relative_to(ds).parts[0]) in v.out, v.out + v.err


# -- finding 2: artifacts of another dataset -----------------------------------------------------------------

def test_artifacts_of_another_dataset_are_refused(world, tmp_path, cli, refused):
    """Issue 12, finding 2: cora's plans/ and packs/ copied into a dataset of the same shape trained on cora's
    features (exit 0); into one of another shape, a shape-mismatch traceback."""
    same_shape = tmp_path / "same"
    assert cli.run("generate", "--nodes", 400, "--edges", 2000, "--feature-dim", 8, "--classes", 3, "--seed", 0,
                   "--signal", 0.5, "--out", same_shape, "-q").rc == 0
    for part in ("plans", "packs"):
        shutil.copytree(world["ds"] / part, same_shape / part)
    refused(cli.run("train", same_shape, *TRAIN), "packs/default", "dataset.feature_sha256",
                  "diskgraph preprocess pack")
    other_shape = tmp_path / "other"
    assert cli.run("generate", "--nodes", 300, "--edges", 1500, "--feature-dim", 8, "--classes", 3, "--seed", 0,
                   "--out", other_shape, "-q").rc == 0
    for part in ("plans", "packs"):
        shutil.copytree(world["ds"] / part, other_shape / part)
    refused(cli.run("train", other_shape, *TRAIN), "plans/default", "dataset.num_nodes is 400, the dataset's 300",
                  "diskgraph preprocess sample")
    # a pack of another plan of the same dataset: refused too
    ds = _copy(world, tmp_path)
    assert cli.run("preprocess", "sample", ds, "--fanouts", "3,2", "--batch-size", 64, "--seed", 1, "--overwrite",
                   "-q").rc == 0
    refused(cli.run("train", ds, *TRAIN), "another plan", "plan.checksum")


# -- finding 3: resume with other settings ---------------------------------------------------------------

@pytest.mark.parametrize("change, needle", [
    (("--dropout", "0.3"), "--dropout 0.5 (this run: 0.3)"),
    (("--model", "gcn"), "--model 'sage' (this run: 'gcn')"),
    (("--hidden", "16"), "--hidden 8 (this run: 16)"),
    (("--fanouts", "2,2", "--reference"), "--reference False (this run: True)"),
    (("--lr", "0.1"), "--lr 0.003 (this run: 0.1)"),
    (("other-dataset",), "dataset 'sha256:"),
])
def test_resume_with_other_settings_is_refused(world, tmp_path, cli, change, needle, refused):
    """Issue 12, finding 3: --resume compared lr/weight decay/seed/checkpoint interval only: another dataset or
    --dropout continued silently, another --model/--hidden died in load_state_dict."""
    ds = _copy(world, tmp_path)
    run = tmp_path / "run"
    assert cli.run("train", ds, *TRAIN, "--run-dir", run).rc == 0
    target, extra = ds, list(change)
    if change == ("other-dataset",):
        target, extra = tmp_path / "other", []
        assert cli.run("generate", "--nodes", 400, "--edges", 2000, "--feature-dim", 8, "--classes", 3, "--seed", 0,
                       "--signal", 0.5, "--out", target, "-q").rc == 0
        assert cli.run("preprocess", "sample", target, "--fanouts", "3,2", "--batch-size", 64, "-q").rc == 0
        assert cli.run("preprocess", "pack", target, "--gpu-cache", 512, "--host-cache", 1024, "-q").rc == 0
    before = (run / "checkpoint.pt").read_bytes()
    r = cli.run("train", target, *TRAIN[:-1], "--epochs", "3", "--run-dir", run, "--resume", *extra)
    refused(r, str(run / "checkpoint.pt"), needle, "start a new run directory")
    assert (run / "checkpoint.pt").read_bytes() == before and json.loads((run / "run.json").read_text())["epochs"] == 2
    assert cli.run("train", ds, *TRAIN[:-1], "--epochs", "3", "--run-dir", run, "--resume", "-q").rc == 0


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_a_damaged_checkpoint_is_refused(world, tmp_path, cli, refused, damage):
    """torch.load reads a checkpoint with a flipped tensor byte back without a word: the checkpoint's own checksum
    refuses it (and a truncated one no longer ends in a traceback)."""
    ds = _copy(world, tmp_path)
    run = tmp_path / "run"
    assert cli.run("train", ds, *TRAIN, "--run-dir", run).rc == 0
    data = bytearray((run / "checkpoint.pt").read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0x10
    (run / "checkpoint.pt").write_bytes(data)
    refused(cli.run("train", ds, *TRAIN, "--run-dir", run, "--resume"), "checkpoint.pt", "cannot be read",
            "start a new run directory")


# -- finding 4: labels and node counts --------------------------------------------------------------------

@pytest.mark.parametrize("labels, needle", [
    ([0, 1, 2**31, 1], "label 2147483648 at node 2, more classes than the graph's 4 nodes"),
    ([0, 1, 7, 1], "label 7 at node 2"),
])
def test_absurd_labels_are_refused_at_import(tmp_path, cli, labels, needle, refused):
    """Issue 12, finding 4: a label of 2**31 was accepted (num_classes 2**31+1); inspect then allocated 16 GiB."""
    np.save(tmp_path / "e.npy", np.array([[0, 1, 2, 3], [1, 2, 3, 0]], np.int64))
    np.save(tmp_path / "y.npy", np.array(labels, np.int64))
    out = tmp_path / "ds"
    r = cli.run("preprocess", "import", "--edges", tmp_path / "e.npy", "--labels", tmp_path / "y.npy", "--out", out)
    refused(r, needle, "renumber", out=out)


def test_a_graph_without_nodes_is_refused_at_import(tmp_path, cli, refused):
    np.save(tmp_path / "e.npy", np.zeros((2, 0), np.int64))
    out = tmp_path / "ds"
    refused(cli.run("preprocess", "import", "--edges", tmp_path / "e.npy", "--out", out), "no nodes", out=out)


# -- finding 6 (part): the artifacts are opened when training starts --------------------------------------

def test_a_repack_during_a_run_does_not_reach_it(world, tmp_path, monkeypatch):
    """Issue 12, finding 6: the test split was opened lazily, so a repack while `train` ran made it fail at the end
    (ValueError). Every split is opened when the run starts: the run finishes on what it started with."""
    from diskgraph.pipeline.trainer import Trainer

    ds = _copy(world, tmp_path)
    real = Trainer.evaluate
    done = []

    def evaluate_then_repack(self, split):
        if not done:  # first evaluation: the plan and the pack are replaced by others
            done.append(True)
            assert _quiet("preprocess", "sample", ds, "--fanouts", "2,2", "--batch-size", 32, "--seed", 5,
                          "--overwrite", "-q") == 0
            assert _quiet("preprocess", "pack", ds, "--overwrite", "-q") == 0
        return real(self, split)

    monkeypatch.setattr(Trainer, "evaluate", evaluate_then_repack)
    assert _quiet("train", ds, *TRAIN, "--run-dir", tmp_path / "run") == 0
    assert done and _same_model(world, tmp_path / "run")


# -- finding 9 (part): what the training log says -----------------------------------------------------------

def test_the_training_log_names_where_rows_came_from(world, tmp_path, caplog, monkeypatch):
    """Issue 12, finding 9: CPU runs reported "hits gpu" for rows held in RAM, and the progress unit "mb" read as
    megabytes."""
    import diskgraph.pipeline.trainer as trainer_module

    units = []
    real = trainer_module.Progress

    def progress(desc, total, unit="", **kw):
        units.append(unit)
        return real(desc, total, unit, **kw)

    monkeypatch.setattr(trainer_module, "Progress", progress)
    ds = _copy(world, tmp_path)
    with caplog.at_level("INFO", logger="diskgraph"):
        assert _quiet("train", ds, *TRAIN[:-1], "--run-dir", tmp_path / "run") == 0
    epochs = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert epochs and all("input rows from device tier (RAM)" in e and "host tier (RAM)" in e and "disk" in e
                          and "gpu" not in e.lower() for e in epochs), epochs
    assert units and set(units) == {"minibatches"}


# -- the fuzz test ------------------------------------------------------------------------------------------

def _files(ds: Path) -> list[Path]:
    return sorted(p for p in ds.rglob("*") if p.is_file() and "runs" not in p.relative_to(ds).parts)


@settings(max_examples=int(os.environ.get("DISKGRAPH_FUZZ_EXAMPLES", "40")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_any_damage_is_refused_or_harmless(world, tmp_path_factory, cli, refused, data):
    """Random byte flips and truncations anywhere in the dataset, plan and pack: every run is either refused (exit 2,
    one sentence, no traceback) or trains the reference model bit for bit; `inspect --verify` never crashes."""
    tmp = tmp_path_factory.mktemp("fuzz")
    ds = _copy(world, tmp)
    files = _files(ds)
    path = data.draw(st.sampled_from(files), label="file")
    size = path.stat().st_size
    if size == 0 or data.draw(st.booleans(), label="truncate"):
        os.truncate(path, data.draw(st.integers(0, max(size - 1, 0)), label="length"))
    else:
        for _ in range(data.draw(st.integers(1, 3), label="flips")):
            _flip(path, data.draw(st.integers(0, size - 1), label="offset"), data.draw(st.integers(1, 255), label="mask"))
    r = cli.run("train", ds, *TRAIN, "--run-dir", tmp / "run")
    if r.rc == 0:
        assert _same_model(world, tmp / "run"), f"{path.relative_to(ds)} damaged, the run trained another model"
    else:
        refused(r)
    v = cli.run("inspect", ds, "--verify", "-q")
    assert v.rc in (0, 1, 2) and "Traceback" not in v.err, v.err
    if v.rc == 2:
        refused(v)
    shutil.rmtree(tmp)
