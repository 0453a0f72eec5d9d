"""Multi-label classification and regression trained end to end from the CLI (issue 14's "more tasks").

Both datasets are cora's graph and features with planted labels:

* multilabel — the one-hot class (7 labels) plus an 8th label, set for nodes of classes 0 and 3;
* regression — a target that is a function of the graph: half a value per class of the node, half the mean of that
  value over its in-neighbours, plus noise (trained on every node outside val and test).
"""

from __future__ import annotations

import json

import numpy as np

from diskgraph.cli import main


def _cora_with(tmp_path, shared_dataset, labels: np.ndarray, name: str, train_idx=None):
    src = np.load(shared_dataset("cora"))
    npz = tmp_path / f"{name}.npz"
    np.savez(npz, edges=src["edges"], features=src["features"], labels=labels,
             train_idx=src["train_idx"] if train_idx is None else train_idx, val_idx=src["val_idx"],
             test_idx=src["test_idx"])
    out = tmp_path / name
    assert main(["preprocess", "all", "--npz", str(npz), "--out", str(out), "--fanouts", "10,5", "--batch-size", "64",
                 "--seed", "0", "-q"]) == 0
    return out, src


def _train(ds, tmp_path, *extra) -> list[dict]:
    log = tmp_path / f"{ds.name}.jsonl"
    assert main(["train", str(ds), "--epochs", "12", "--hidden", "64", "--lr", "0.01", "--seed", "0",
                 "--log-json", str(log), "-q", *extra]) == 0
    return [json.loads(x) for x in log.read_text().splitlines()]


def test_multilabel_trains_and_reports_micro_f1(tmp_path, shared_dataset, capsys):
    src = np.load(shared_dataset("cora"))
    cls = src["labels"]
    labels = np.zeros((cls.size, 8), dtype=np.uint8)
    labels[np.arange(cls.size), cls] = 1
    labels[:, 7] = np.isin(cls, (0, 3))
    ds, _ = _cora_with(tmp_path, shared_dataset, labels, "multilabel")
    lines = _train(ds, tmp_path, "--class-weights", "balanced", "--early-stopping", "5")
    summary = lines[-1]
    assert summary["task"] == "multilabel" and summary["monitor"] == "val_micro_f1"
    assert {"train_micro_f1", "val_micro_f1", "val_auc", "val_loss"} <= set(lines[0])
    # all-negative predictions score 0; the planted labels are learnable from cora's features and neighbours
    assert summary["test_micro_f1"] > 0.6 and summary["test_auc"] > 0.9
    assert "test_micro_f1=" in capsys.readouterr().out


def test_regression_beats_predicting_the_mean(tmp_path, shared_dataset):
    src = np.load(shared_dataset("cora"))
    n = src["labels"].size
    value = np.linspace(-1.5, 1.5, 7)[np.random.default_rng(0).permutation(7)][src["labels"]]
    src_nodes, dst_nodes = src["edges"]
    around = np.bincount(dst_nodes, weights=value[src_nodes], minlength=n) / np.maximum(np.bincount(dst_nodes, minlength=n), 1)
    target = (0.5 * value + 0.5 * around + 0.2 * np.random.default_rng(1).normal(size=n)).astype(np.float32)
    rest = np.setdiff1d(np.arange(n), np.concatenate([src["val_idx"], src["test_idx"]]))  # ~1200 training nodes
    ds, _ = _cora_with(tmp_path, shared_dataset, target, "regression", train_idx=rest)
    lines = _train(ds, tmp_path, "--dropout", "0.1")
    summary = lines[-1]
    assert summary["task"] == "regression" and summary["monitor"] == "val_rmse"
    assert {"train_rmse", "train_mae", "val_rmse", "val_mae"} <= set(lines[0])
    test = target[src["test_idx"]].astype(np.float64)
    mean_rmse = float(np.sqrt(np.mean((test - target[rest].mean()) ** 2)))
    assert summary["test_rmse"] < 0.6 * mean_rmse, (summary["test_rmse"], mean_rmse)
    best = min(lines[:-1], key=lambda r: r["val_rmse"])  # lower is better: the best model is the lowest val RMSE
    assert summary["best_epoch"] == best["epoch"] and summary["best_val_rmse"] == best["val_rmse"]


def test_task_option_refusals(tmp_path, shared_dataset, capsys):
    src = np.load(shared_dataset("cora"))
    ds, _ = _cora_with(tmp_path, shared_dataset, src["labels"].astype(np.float32) / 3, "reg")
    capsys.readouterr()
    assert main(["train", str(ds), "--epochs", "1", "--class-weights", "balanced", "-q"]) == 2
    err = capsys.readouterr().err
    assert "--class-weights applies to classification and multilabel datasets" in err and err.count("\n") == 1
    assert main(["train", str(ds), "--epochs", "1", "--early-stopping", "2", "--early-stopping-metric", "val_acc",
                 "-q"]) == 2
    err = capsys.readouterr().err
    assert "cannot watch val_acc: this regression run reports val_loss, val_rmse, val_mae" in err
    assert not (ds / "runs").exists() or not any((ds / "runs").iterdir())  # refused before the run directory
