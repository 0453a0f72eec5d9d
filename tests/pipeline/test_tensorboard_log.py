"""`diskgraph train --tensorboard DIR`: per-epoch scalars readable by TensorBoard; refused without the package; the
trainer's tqdm bars (minibatches, evaluation) on a terminal only."""

from __future__ import annotations

import io
import json
import sys

import pytest

from diskgraph.pipeline.tensorboard_log import epoch_scalars, summary_scalars


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _events(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_train_writes_tensorboard_scalars_and_draws_bars_on_a_terminal(cli, shared_dataset, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    ds, tb = tmp_path / "cora", tmp_path / "tb"
    r = cli.run("preprocess", "all", "--npz", shared_dataset("cora"), "--out", ds, "--fanouts", "10,5",
                "--batch-size", "512")
    assert r.rc == 0, r.err
    assert "\r" not in r.err  # stderr is not a terminal: no bars
    term = _Terminal()
    monkeypatch.setattr("sys.stderr", term)
    r = cli.run("train", ds, "--epochs", "2", "--hidden", "32", "--device", "cpu", "--eval-test-every-epoch",
                "--run-dir", tmp_path / "run", "--tensorboard", tb)
    monkeypatch.undo()
    assert r.rc == 0, term.getvalue()
    bars = term.getvalue()
    assert "\repoch 0:" in bars and "\repoch 1:" in bars and "minibatches" in bars, bars
    assert "\revaluating val:" in bars and "\revaluating test:" in bars and "100.0%" in bars, bars

    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    epochs, summary = lines[:-1], lines[-1]
    assert [e["epoch"] for e in epochs] == [0, 1] and summary["summary"]
    scalars = _events(tb)
    per_epoch = ["loss/train", "accuracy/train", "accuracy/val", "accuracy/test", "loss/val", "time/epoch_s",
                 "stage_s/read", "stage_s/assemble", "stage_s/compute", "pipeline/overlap", "io/read_bytes",
                 "hit_rate/gpu", "hit_rate/host", "hit_rate/cold", "memory/peak_rss_bytes"]
    for tag in per_epoch:
        assert tag in scalars, (tag, sorted(scalars))
        assert [step for step, _ in scalars[tag]] == [0, 1], (tag, scalars[tag])
    assert [v for _, v in scalars["loss/train"]] == pytest.approx([e["loss"] for e in epochs], rel=1e-6)
    assert [v for _, v in scalars["accuracy/val"]] == pytest.approx([e["val_acc"] for e in epochs], rel=1e-6)
    assert [v for _, v in scalars["stage_s/compute"]] == pytest.approx([e["stage_s"]["compute_s"] for e in epochs],
                                                                       rel=1e-6)
    assert [v for _, v in scalars["hit_rate/cold"]] == pytest.approx([e["hit_rate"]["cold"] for e in epochs], rel=1e-6)
    if epochs[0]["read_amplification"] is not None:
        assert [v for _, v in scalars["io/read_amplification"]] == pytest.approx(
            [e["read_amplification"] for e in epochs], rel=1e-6)
    (step, test_acc), = scalars["summary/test_acc"]
    assert step == summary["best_epoch"] and test_acc == pytest.approx(summary["test_acc"], rel=1e-6)


def test_tensorboard_is_refused_before_training_without_the_package(cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # `import` now raises ImportError
    r = cli.run("train", tmp_path / "no-dataset", "--tensorboard", tmp_path / "tb", "--run-dir", tmp_path / "run")
    assert r.rc == 2, r.err
    said = [line for line in r.err.splitlines() if line.strip()]
    assert len(said) == 1 and 'pip install "diskgraph[tensorboard]"' in said[0] and "Traceback" not in r.err, r.err
    assert not (tmp_path / "tb").exists() and not (tmp_path / "run").exists()


def test_scalars_leave_out_what_the_record_lacks():
    rec = {"epoch": 3, "loss": 1.5, "train_acc": 0.5, "epoch_s": 2.0, "eval_s": 0.0, "io_s": 0.0, "verify_s": 0.0,
           "stage_s": {"read_s": 0.1, "assemble_s": 0.2, "compute_s": 1.0}, "overlap": None, "read_bytes": 0,
           "eval_read_bytes": 0, "read_amplification": None, "hit_rate": {}, "peak_rss_bytes": 10, "peak_gpu_bytes": None}
    tags = epoch_scalars(rec)
    assert tags["loss/train"] == 1.5 and tags["stage_s/compute"] == 1.0 and tags["memory/peak_rss_bytes"] == 10
    assert not {"accuracy/val", "pipeline/overlap", "io/read_amplification", "memory/peak_gpu_bytes"} & set(tags)
    assert not any(t.startswith("hit_rate/") for t in tags)
    assert summary_scalars({"summary": True, "test_acc": 0.8, "best_val_acc": None}) == {"summary/test_acc": 0.8}
