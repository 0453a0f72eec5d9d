"""`diskgraph predict` / `embed` on runs of every task (multilabel and regression besides classification): the arrays
of docs/inference.md's table, equal to a float64 in-memory forward of the run's model in exact mode and in sampled
mode with every neighbor, the Parquet export typed per task, and `inspect`'s per-task summary.

The datasets are cora with its labels replaced: multilabel = one-hot of the class plus a planted second label
(uint8 [N, C]); regression = a linear function of the features plus noise (float32 [N], and [N, 2])."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from test_inference import _oracle_logits

import diskgraph
from diskgraph.inference import scratch_dir
from diskgraph.store.dataset import open_dataset
from diskgraph.store.inference_output import INFERENCE_VERSION, open_output

TASKS = ["multilabel", "regression", "regression-2d"]


def _labels(data: dict, case: str) -> np.ndarray:
    y, x = data["labels"], data["features"]
    n, c = len(y), int(y.max()) + 1
    rng = np.random.default_rng(0)
    if case == "multilabel":
        out = np.zeros((n, c), np.uint8)
        out[np.arange(n), y] = 1
        planted = x[:, :40].sum(1) > 0  # a second label where the first 40 features are not all zero
        out[np.flatnonzero(planted), (y[planted] + 1) % c] = 1
        return out
    w = rng.standard_normal((x.shape[1], 2)).astype(np.float32)
    t = (x @ w * 0.5 + 0.1 * rng.standard_normal((n, 2))).astype(np.float32)
    return t[:, 0] if case == "regression" else t


@pytest.fixture(scope="module", params=TASKS)
def task_run(request, tmp_path_factory, shared_dataset):
    """(case, dataset dir, run dir) of a tiny run on cora with the case's labels."""
    from diskgraph.cli import main

    case = request.param
    data = dict(np.load(shared_dataset("cora")))
    d = tmp_path_factory.mktemp(f"cora-{case}")
    np.savez(d / "data.npz", **{**data, "labels": _labels(data, case)})
    assert main(["preprocess", "all", "--npz", str(d / "data.npz"), "--out", str(d / "ds"), "--fanouts", "5,5",
                 "--batch-size", "64", "-q"]) == 0
    assert main(["train", str(d / "ds"), "--epochs", "2", "--hidden", "16", "--run-dir", str(d / "run"),
                 "--device", "cpu", "-q"]) == 0
    return case, d / "ds", d / "run"


def _task(case: str) -> str:
    return "regression" if case.startswith("regression") else case


def _check_arrays(case, out, ref, nodes=None):
    """The output at ``out`` holds the arrays of its task and they equal the float64 outputs ``ref`` [N, W]."""
    g = zarr.open_group(str(out), mode="r")
    ref = ref if nodes is None else ref[nodes]
    m = len(ref)
    assert (g["node_ids"][:] == (np.arange(m) if nodes is None else nodes)).all()
    pred = g["predictions"][:]
    if _task(case) == "multilabel":
        assert sorted(g.array_keys()) == ["logits", "node_ids", "predictions"]
        logits = g["logits"][:]
        assert logits.dtype == np.float32 and logits.shape == ref.shape
        rel = np.abs(logits - ref) / np.maximum(np.abs(ref), 1e-3 * np.abs(ref).max())
        assert rel.max() < 1e-4, rel.max()
        assert pred.dtype == np.uint8 and pred.shape == ref.shape
        assert (pred == (logits > 0)).all()  # 1 where the stored logit is > 0
        sure = np.abs(ref) > 1e-4  # (a logit this close to 0 may round to either side in float32)
        assert (pred[sure] == (ref[sure] > 0)).all() and pred.sum() > 0
    else:
        assert sorted(g.array_keys()) == ["node_ids", "predictions"]  # regression has no logits
        want = ref[:, 0] if case == "regression" else ref
        assert pred.dtype == np.float32 and pred.shape == want.shape
        rel = np.abs(pred - want) / np.maximum(np.abs(want), 1e-3 * np.abs(want).max())
        assert rel.max() < 1e-4, rel.max()
    return pred


def test_exact_predict_equals_the_float64_forward(cli, task_run, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    case, ds, run = task_run
    out, pq_path = tmp_path / "pred", tmp_path / "pred.parquet"
    r = cli.run("predict", ds, "--run", run, "--out", out, "--parquet", pq_path, "-q")
    assert r.rc == 0, r.err
    ref = _oracle_logits(ds, run)
    n, width = open_dataset(ds).num_nodes, open_dataset(ds).num_outputs
    assert ref.shape == (n, width)
    pred = _check_arrays(case, out, ref)
    o = open_output(out)
    assert o.manifest["format_version"] == INFERENCE_VERSION == 2
    task = {"kind": _task(case), "num_outputs": width}
    if _task(case) == "regression":
        task["target_shape"] = [] if case == "regression" else [2]
    assert o.task == task and o.manifest["task"] == task and o.verify() == []
    assert o.manifest["run"]["best_metric"] == ("val_micro_f1" if case == "multilabel" else "val_rmse")
    assert "val_acc" not in o.manifest["run"]
    assert not scratch_dir(out).exists()
    t = pq.read_table(pq_path)
    assert t.schema.metadata[b"diskgraph.task"] == _task(case).encode()
    np.testing.assert_array_equal(t["node_id"].to_numpy(), np.arange(n))
    if case == "multilabel":
        assert t.column_names == ["node_id", "prediction", "logits"]
        assert t.schema.field("prediction").type == pa.list_(pa.uint8(), width)
        assert t.schema.field("logits").type == pa.list_(pa.float32(), width)
        np.testing.assert_array_equal(np.array(t["prediction"].to_pylist(), np.uint8), pred)
    elif case == "regression":
        assert t.column_names == ["node_id", "prediction"] and t.schema.field("prediction").type == pa.float32()
        np.testing.assert_array_equal(t["prediction"].to_numpy(), pred)
    else:
        assert t.column_names == ["node_id", "prediction"]
        assert t.schema.field("prediction").type == pa.list_(pa.float32(), 2)
        np.testing.assert_array_equal(np.array(t["prediction"].to_pylist(), np.float32), pred)


def test_sampled_predict_with_every_neighbor_equals_the_forward(task_run, tmp_path):
    """Sampled mode (Python API) with fanouts -1 gives SAGE every in-neighbor: the same numbers; a node subset too."""
    case, ds, run = task_run
    ref = _oracle_logits(ds, run)
    out = diskgraph.predict(ds, run=run, out=tmp_path / "s", mode="sampled", fanouts=[-1, -1], device="cpu")
    _check_arrays(case, out, ref)
    assert open_output(out).manifest["mode"] == "sampled" and open_output(out).task["kind"] == _task(case)
    pick = np.array([2000, 5, 3, 3], dtype=np.int64)
    np.save(tmp_path / "ids.npy", pick)
    sub = diskgraph.predict(ds, run=run, out=tmp_path / "sub", mode="sampled", nodes=str(tmp_path / "ids.npy"),
                            device="cpu")  # (the training fanouts: only the shape is compared)
    g = zarr.open_group(str(sub), mode="r")
    assert (g["node_ids"][:] == [3, 5, 2000]).all()
    assert g["predictions"].shape == (3, *zarr.open_group(str(out), mode="r")["predictions"].shape[1:])


def test_embed_is_task_independent(cli, task_run, tmp_path):
    case, ds, run = task_run
    n = open_dataset(ds).num_nodes
    r = cli.run("embed", ds, "--run", run, "--layer", "1", "--dtype", "float16", "--out", tmp_path / "e",
                "--parquet", tmp_path / "e.parquet", "-q")
    assert r.rc == 0, r.err
    o = open_output(tmp_path / "e")
    assert o.array_names == ["node_ids", "embeddings"] and o.read("embeddings").shape == (n, 16)
    assert o.read("embeddings").dtype == np.float16 and (o.read("embeddings") >= 0).all()  # after the ReLU
    assert o.task["kind"] == _task(case)
    last = diskgraph.embed(ds, run=run, out=tmp_path / "last", layer=2)  # the last layer: the model's raw outputs
    np.testing.assert_allclose(open_output(last).read("embeddings"), _oracle_logits(ds, run), rtol=1e-4, atol=1e-5)


def test_inspect_summarizes_the_predictions_per_task(cli, task_run, tmp_path):
    case, ds, run = task_run
    out = tmp_path / "p"
    assert cli.run("predict", ds, "--run", run, "--out", out, "-q").rc == 0
    pred = zarr.open_group(str(out), mode="r")["predictions"][:]
    r = cli.run("inspect", out)
    assert r.rc == 0, r.err
    info = json.loads(cli.run("inspect", out, "--json").out)
    s = info["prediction_summary"]
    assert info["task"]["kind"] == _task(case) == s["task"]
    if case == "multilabel":
        assert s["predicted_positives"] == {str(i): int(k) for i, k in enumerate(pred.sum(0))}
        assert "task          multilabel, 7 labels  (rows predicted positive per label: 0: " in r.out
    else:
        rows = pred.reshape(len(pred), -1).astype(np.float64)
        np.testing.assert_allclose(s["mean"], rows.mean(0), rtol=1e-9)
        np.testing.assert_allclose(s["std"], rows.std(0), rtol=1e-6)
        targets = "1 target" if case == "regression" else "2 targets per node [M, 2]"
        assert f"task          regression, {targets}  (predictions mean ± std {rows.mean(0)[0]:.4g} ± " in r.out
