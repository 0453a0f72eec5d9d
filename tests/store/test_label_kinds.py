"""Label kinds (issue 14): classification, multilabel and regression labels through every import door, read back by
the dataset (task, num_outputs, targets, labelled_mask), inspect and the loaders; contradicting labels refused."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from diskgraph.store.checksums import manifest_checksum
from diskgraph.store.dataset import open_dataset
from diskgraph.store.errors import FormatError, InputError
from diskgraph.store.label_kinds import (TASKS, check_node_labels, detect_task, gather_targets, labelled_mask)
from diskgraph.store.sources.labels import random_splits

N, F, C, T = 60, 4, 5, 3


def _raw(tmp_path, labels, **extra):
    """A data.npz of N nodes with ``labels`` (and no splits unless ``extra`` gives them)."""
    rng = np.random.default_rng(0)
    z = tmp_path / "data.npz"
    np.savez(z, edges=np.stack([rng.integers(0, N, 4 * N), rng.integers(0, N, 4 * N)]),
             features=rng.standard_normal((N, F)).astype(np.float32), labels=labels, **extra)
    return z


def _multilabel(dtype=np.float32):
    return (np.random.default_rng(1).random((N, C)) < 0.3).astype(dtype)


def _regression(shape=(N, T), unlabelled=(3, 7)):
    y = np.random.default_rng(2).standard_normal(shape)
    y[list(unlabelled)] = np.nan
    return y


def _import(cli, z, out, *extra):
    r = cli.run("preprocess", "import", "--npz", z, "--out", out, "-q", *extra)
    assert r.rc == 0, r.err
    return open_dataset(out)


# -- detection and checks (no I/O) -------------------------------------------------------------------------------------

@pytest.mark.parametrize("labels, task", [
    (np.array([0, 2, -1]), "classification"),
    (np.array([0.0, 2.0, -1.0]), "classification"),
    (np.array([0.5, 2.0, np.nan]), "regression"),
    (np.array([[0, 1], [1, 1], [0, 0]]), "multilabel"),
    (np.array([[False, True], [True, True], [False, False]]), "multilabel"),
    (np.array([[0.0, 1.0], [1.0, 1.0], [0.0, 0.0]]), "multilabel"),
    (np.array([[0.0, 1.5], [1.0, 1.0], [np.nan, np.nan]]), "regression"),
])
def test_detect_task(labels, task):
    assert detect_task(labels, "y") == task
    got = check_node_labels(labels, 3, label="y", nodes_from="test")
    assert got.task == task and str(got.values.dtype) == {"classification": "int64", "multilabel": "uint8",
                                                          "regression": "float32"}[task]


@pytest.mark.parametrize("labels, task, num_classes, needle", [
    (np.array([[0, 3], [1, 1], [0, 0]]), None, None, "not all 0 or 1"),
    (np.array(["a", "b", "c"]), None, None, "dtype <U1"),
    (np.zeros((3, 2, 2)), None, None, "shape (3, 2, 2)"),
    (np.array([[0, 3], [1, 1], [0, 0]]), "multilabel", None, "holds 3 at node 0, label 1"),
    (np.array([0, 1, 1]), "multilabel", None, "multilabel labels are [N, C]"),
    (np.array([[0, 1], [1, 1], [0, 0]]), "multilabel", 3, "--num-classes 3 disagrees with the 2 label columns"),
    (np.array([0.5, 1.0, 2.0]), "classification", None, "holds 0.5 at node 0, not a class id"),
    (np.array([[0, 1], [1, 1], [0, 0]]), "classification", None, "needs a 1-D array of class ids"),
    (np.array([0.5, 1.0, 2.0]), "regression", 3, "--num-classes 3 does not apply"),
    (np.array([0.5, np.inf, 2.0]), None, None, "holds inf at node 1"),
    (np.array([[0.5, 1.0], [np.nan, 2.0], [1.0, 1.0]]), None, None, "NaN in some but not all targets of node 1"),
    (np.array([1e39, 0.5, 1.0]), "regression", None, "beyond float32's range"),
    (np.array([0, 1, 1]), "ranking", None, "'ranking' is not a label kind"),
    (np.zeros((4, 2)), "multilabel", None, "has 4 label rows but the graph has 3 nodes"),
])
def test_contradicting_labels_are_refused_in_one_sentence(labels, task, num_classes, needle):
    with pytest.raises(InputError) as e:
        check_node_labels(labels, 3, task=task, num_classes=num_classes, label="labels file y.npy", nodes_from="test")
    msg = str(e.value)
    assert needle in msg, msg
    assert "\n" not in msg and ". " not in msg, msg


def test_targets_and_labelled_mask_per_kind():
    cls = np.array([0, -1, 2], dtype=np.int64)
    ml = np.array([[0, 1], [1, 0], [1, 1]], dtype=np.uint8)
    reg = np.array([[0.5, 1.0], [np.nan, np.nan], [2.0, 3.0]], dtype=np.float32)
    idx = np.array([2, 0])
    for values, task, dtype, mask in ((cls, "classification", np.int64, [True, False, True]),
                                      (ml, "multilabel", np.float32, [True, True, True]),
                                      (reg, "regression", np.float32, [True, False, True])):
        got = gather_targets(values, idx, task)
        assert got.dtype == dtype and got.shape == (2, *values.shape[1:]) and got.flags.writeable
        np.testing.assert_array_equal(got, values[idx])
        assert labelled_mask(values, task).tolist() == mask
    assert labelled_mask(reg[:, 0], "regression").tolist() == [True, False, True]


def test_random_splits_skip_unlabelled_regression_rows():
    y = _regression((200, 2), unlabelled=range(0, 200, 3)).astype(np.float32)
    s = random_splits((0.6, 0.2, 0.2), 0, 200, y, "regression")
    union = np.concatenate(list(s.values()))
    assert union.size == 200 - len(range(0, 200, 3)) and not np.isnan(y[union]).any()
    assert random_splits((1.0, 0, 0), 0, 5, np.zeros((5, 2), np.uint8), "multilabel")["train"].tolist() == [0, 1, 2, 3, 4]


# -- every import door, read back -------------------------------------------------------------------------------------

def _check_kind(ds, task, y, num_outputs):
    assert ds.task == task and ds.num_outputs == num_outputs
    assert ds.manifest["format_version"] == 3 and ds.manifest["task"] == task
    idx = np.array([5, 0, N - 1, 3])
    t = ds.targets(idx)
    want = {"classification": np.int64, "multilabel": np.float32, "regression": np.float32}[task]
    assert t.dtype == want and t.shape == (4, *np.shape(y)[1:])
    np.testing.assert_array_equal(t, np.asarray(y)[idx].astype(want))
    assert ds.verify() == []
    return t


def test_npz_and_npy_imports_of_each_kind(tmp_path, cli):
    ml = _multilabel(np.int64)
    ds = _import(cli, _raw(tmp_path, ml), tmp_path / "ml")
    _check_kind(ds, "multilabel", ml, C)
    assert ds.labels.dtype == np.uint8 and ds.num_classes == C and ds.labelled_mask().all()
    assert "target_shape" not in ds.manifest

    reg = _regression()
    ds = _import(cli, _raw(tmp_path, reg), tmp_path / "reg")
    _check_kind(ds, "regression", reg, T)
    assert ds.labels.dtype == np.float32 and ds.num_classes is None and ds.manifest["target_shape"] == [T]
    assert ds.labelled_mask().sum() == N - 2 and not ds.labelled_mask(np.array([3, 7])).any()
    drawn = np.concatenate([ds.splits[k] for k in ("train", "val", "test")])
    assert not np.isin([3, 7], drawn).any()  # the random split draws from the labelled nodes

    y1 = np.random.default_rng(3).standard_normal(N)  # [N] floats: regression with one output
    ds = _import(cli, _raw(tmp_path, y1), tmp_path / "reg1")
    _check_kind(ds, "regression", y1, 1)
    assert ds.manifest["target_shape"] == [] and ds.targets(np.array([1, 2])).shape == (2,)

    # --labels .npy with --task: whole numbers forced to regression, 0/1 rows forced to multilabel
    np.save(tmp_path / "y.npy", np.arange(N) % 3)
    ds = _import(cli, _raw(tmp_path, ml), tmp_path / "forced", "--labels", tmp_path / "y.npy", "--task", "regression")
    _check_kind(ds, "regression", np.arange(N) % 3, 1)
    assert ds.manifest["options"]["task"] == "regression"
    cls = np.random.default_rng(4).integers(0, 3, N)
    ds = _import(cli, _raw(tmp_path, cls), tmp_path / "cls")
    _check_kind(ds, "classification", cls, 3)
    assert ds.labels.dtype == np.int64


def test_inspect_each_kind(tmp_path, cli):
    outs = {"multilabel": _raw(tmp_path, _multilabel()), "regression": None, "classification": None}
    ml = _import(cli, outs["multilabel"], tmp_path / "ml")
    z = tmp_path / "r" / "data.npz"
    z.parent.mkdir()
    reg = _import(cli, _raw(z.parent, _regression()), tmp_path / "reg")
    r = cli.run("inspect", ml.path, "--json")
    assert r.rc == 0, r.err
    info = json.loads(r.out)
    assert info["task"] == "multilabel" and info["num_outputs"] == C
    assert [int(v) for v in info["label_positives"].values()] == _multilabel().sum(axis=0).astype(int).tolist()
    r = cli.run("inspect", ml.path)
    assert "multilabel, 5 labels" in r.out, r.out
    r = cli.run("inspect", reg.path, "--json")
    info = json.loads(r.out)
    y = _regression()
    assert info["task"] == "regression" and info["unlabelled_nodes"] == 2 and info["targets"]["count"] == T
    np.testing.assert_allclose(info["targets"]["mean"], np.nanmean(y.astype(np.float32), axis=0), rtol=1e-5)
    r = cli.run("inspect", reg.path, "--verify")
    assert r.rc == 0 and "regression, 3 per node" in r.out and "unlabelled 2" in r.out, r.out


def test_version_2_datasets_open_as_classification(tmp_path, cli):
    y = np.random.default_rng(5).integers(0, 4, N)
    out = _import(cli, _raw(tmp_path, y), tmp_path / "ds").path
    m = json.loads((out / "manifest.json").read_text())
    m["format_version"] = 2  # as diskgraph wrote it before label kinds: no "task"
    del m["task"], m["options"]["task"]
    m["checksum"] = manifest_checksum(m)
    (out / "manifest.json").write_text(json.dumps(m))
    ds = open_dataset(out)
    assert ds.task == "classification" and ds.num_outputs == 4
    np.testing.assert_array_equal(ds.targets(np.arange(N)), y)
    assert ds.verify() == []
    m["task"] = "ranking"  # a task of a newer diskgraph
    m["checksum"] = manifest_checksum(m)
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(FormatError, match="records task 'ranking'.*upgrade diskgraph"):
        open_dataset(out)


def test_labels_that_disagree_with_the_manifest_are_damage(tmp_path, cli):
    out = _import(cli, _raw(tmp_path, _regression()), tmp_path / "ds").path
    m = json.loads((out / "manifest.json").read_text())
    m["task"] = "multilabel"
    m["num_classes"] = T
    m["checksum"] = manifest_checksum(m)
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(FormatError, match="not the labels of a multilabel dataset.*re-import"):
        open_dataset(out)


@pytest.mark.parametrize("case, via", [(c, "main") for c in (
    "multilabel-3", "multilabel-1d", "classification-fractions", "regression-classes", "regression-inf", "partial-nan",
    "2d-class-ids", "task-without-labels")] + [("multilabel-3", "subprocess"), ("partial-nan", "subprocess")])
def test_cli_refusals(tmp_path, cli, refused, case, via):
    y = {"multilabel-3": np.where(_multilabel(np.int64) == 1, 3, 0), "multilabel-1d": np.arange(N) % 2,
         "classification-fractions": np.full(N, 0.25), "regression-classes": _regression(),
         "regression-inf": np.where(np.arange(N) == 9, np.inf, 1.5), "partial-nan": _regression(),
         "2d-class-ids": np.full((N, 2), 7), "task-without-labels": None}[case]
    if case == "partial-nan":
        y[3, 0] = 1.0  # row 3 was all NaN
    extra = {"multilabel-3": ["--task", "multilabel"], "multilabel-1d": ["--task", "multilabel"],
             "classification-fractions": ["--task", "classification"], "regression-classes": ["--num-classes", "3"],
             "task-without-labels": ["--task", "regression"]}.get(case, [])
    needles = {"multilabel-3": ["holds 3 at node", "must be 0 or 1"], "multilabel-1d": ["shape (60,)", "[N, C]"],
               "classification-fractions": ["0.25 at node 0", "--task classification"],
               "regression-classes": ["--num-classes 3 does not apply"], "regression-inf": ["inf at node 9"],
               "partial-nan": ["some but not all targets of node 3"], "2d-class-ids": ["not all 0 or 1"],
               "task-without-labels": ["--task regression", "no labels"]}[case]
    rng = np.random.default_rng(0)
    np.save(tmp_path / "e.npy", np.stack([rng.integers(0, N, 30), rng.integers(0, N, 30)]))
    args = ["preprocess", "import", "--edges", tmp_path / "e.npy", "--num-nodes", str(N), "--out", tmp_path / "ds", *extra]
    if y is not None:
        np.save(tmp_path / "y.npy", y)
        args += ["--labels", tmp_path / "y.npy"]
        needles = [str(tmp_path / "y.npy"), *needles] if case != "regression-classes" else needles
    r = cli.run(*args) if via == "main" else cli.subprocess(*args)
    refused(r, *needles, out=tmp_path / "ds")


# -- PyG and OGB ------------------------------------------------------------------------------------------------------

def test_from_pyg_kinds(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("torch_geometric")
    from torch_geometric.data import Data

    import diskgraph

    rng = np.random.default_rng(6)
    ei = torch.from_numpy(np.stack([rng.integers(0, N, 3 * N), rng.integers(0, N, 3 * N)]))
    x = torch.randn(N, F)
    ml = _multilabel()  # float 0/1 [N, C], as PyG's PPI and Yelp store it
    ds = open_dataset(diskgraph.from_pyg(Data(x=x, edge_index=ei, y=torch.from_numpy(ml)), tmp_path / "ml"))
    _check_kind(ds, "multilabel", ml, C)
    reg = rng.standard_normal(N).astype(np.float32)
    ds = open_dataset(diskgraph.from_pyg(Data(x=x, edge_index=ei, y=torch.from_numpy(reg)), tmp_path / "reg"))
    _check_kind(ds, "regression", reg, 1)
    cls = rng.integers(0, 3, N)
    ds = open_dataset(diskgraph.from_pyg(Data(x=x, edge_index=ei, y=torch.from_numpy(cls)), tmp_path / "forced",
                                         task="regression"))
    _check_kind(ds, "regression", cls, 1)
    with pytest.raises(InputError, match="multilabel labels are"):
        diskgraph.from_pyg(Data(x=x, edge_index=ei, y=torch.from_numpy(cls)), tmp_path / "bad", task="multilabel")


def _write_gz(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:
        f.write("".join(r + "\n" for r in rows))


def _ogb(root, label_rows):
    rng = np.random.default_rng(7)
    _write_gz(root / "raw" / "edge.csv.gz", [f"{a},{b}" for a, b in rng.integers(0, N, (3 * N, 2))])
    _write_gz(root / "raw" / "num-node-list.csv.gz", [str(N)])
    _write_gz(root / "raw" / "node-label.csv.gz", label_rows)
    return root


def test_from_ogb_kinds(tmp_path):
    import diskgraph

    ml = _multilabel(np.int64)
    root = _ogb(tmp_path / "ogbn_ml", [",".join(map(str, row)) for row in ml])
    _check_kind(open_dataset(diskgraph.from_ogb(root, tmp_path / "ml")), "multilabel", ml, C)

    reg = _regression().round(3)
    rows = ["," * (T - 1) if np.isnan(r).all() else ",".join(repr(float(v)) for v in r) for r in reg]
    ds = open_dataset(diskgraph.from_ogb(_ogb(tmp_path / "ogbn_reg", rows), tmp_path / "reg"))
    _check_kind(ds, "regression", reg, T)
    assert np.isnan(ds.labels[[3, 7]]).all() and ds.labelled_mask().sum() == N - 2

    whole = np.arange(N) % 4  # one column of whole numbers with nan: class ids, unless told regression
    rows = ["nan" if i == 2 else str(v) for i, v in enumerate(whole)]
    root = _ogb(tmp_path / "ogbn_one", rows)
    ds = open_dataset(diskgraph.from_ogb(root, tmp_path / "cls"))
    assert ds.task == "classification" and ds.labels[2] == -1 and ds.num_outputs == 4
    ds = open_dataset(diskgraph.from_ogb(root, tmp_path / "reg1", task="regression"))
    assert ds.task == "regression" and np.isnan(ds.labels[2]) and ds.labels[3] == 3.0
    frac = ["0.5"] * N
    ds = open_dataset(diskgraph.from_ogb(_ogb(tmp_path / "ogbn_frac", frac), tmp_path / "frac"))
    assert ds.task == "regression" and ds.num_outputs == 1


def test_ogb_cli_task(tmp_path, cli):
    whole = np.arange(N) % 4
    root = _ogb(tmp_path / "ogbn_one", [str(v) for v in whole])
    r = cli.run("preprocess", "import", "--ogb", root, "--task", "regression", "--out", tmp_path / "ds", "-q")
    assert r.rc == 0, r.err
    ds = open_dataset(tmp_path / "ds")
    assert ds.task == "regression" and ds.labels.dtype == np.float32


# -- loaders and inference ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def prepared(tmp_path_factory, shared_dataset):
    """Cora with multilabel and with regression labels, through `preprocess all`."""
    from diskgraph.cli import main

    z = np.load(shared_dataset("cora"))
    n = z["features"].shape[0]
    rng = np.random.default_rng(8)
    ml = (rng.random((n, 6)) < 0.2).astype(np.float32)
    reg = rng.standard_normal((n, 2)).astype(np.float32)
    reg[z["train_idx"][:3]] = np.nan  # unlabelled nodes in the train split
    out = {}
    for task, y in (("multilabel", ml), ("regression", reg)):
        d = tmp_path_factory.mktemp(task)
        np.savez(d / "data.npz", edges=z["edges"], features=z["features"], labels=y, train_idx=z["train_idx"],
                 val_idx=z["val_idx"], test_idx=z["test_idx"])
        assert main(["preprocess", "all", "--npz", str(d / "data.npz"), "--out", str(d / "ds"), "--fanouts", "5,5",
                     "--batch-size", "64", "--seed", "0", "-q"]) == 0
        out[task] = (d / "ds", y)
    return out


@pytest.mark.parametrize("task", ["multilabel", "regression"])
def test_loaders_deliver_targets(prepared, task):
    import torch

    import diskgraph

    path, y = prepared[task]
    width = y.shape[1]
    with diskgraph.PackedLoader(path, "train", device="cpu") as packed, \
            diskgraph.InMemoryLoader(path, "train", fanouts=[5, 5], batch_size=64, seed=0) as mem:
        assert packed.num_classes == mem.num_classes == width
        for loader in (packed, mem):
            seen = 0
            for b in loader:
                assert b.y.dtype == torch.float32 and tuple(b.y.shape) == (b.batch_size, width)
                seeds = b.input_nodes[:b.batch_size]  # (the seeds lead the input nodes)
                np.testing.assert_array_equal(b.y.numpy(), y[seeds])  # (NaN rows of unlabelled seeds compare equal)
                seen += b.batch_size
            assert seen == 140


def test_unlabelled_nodes_of_regression(prepared):
    from diskgraph.inference import select_nodes

    path, y = prepared["regression"]
    ds = open_dataset(path)
    np.testing.assert_array_equal(select_nodes(ds, "unlabelled"), np.flatnonzero(np.isnan(y).any(axis=1)))
    assert select_nodes(open_dataset(prepared["multilabel"][0]), "unlabelled").size == 0


def test_tasks_are_declared_once():
    from diskgraph.cli import build_parser

    _, leaves = build_parser()
    task = next(a for a in leaves["import"]._actions if a.dest == "task")
    assert tuple(task.choices) == TASKS
    # `preprocess all` forwards the import's options; its --task also takes the sampling task (node, link)
    task = next(a for a in leaves["all"]._actions if a.dest == "task")
    assert tuple(task.choices)[:len(TASKS)] == TASKS and set(task.choices) - set(TASKS) == {"node", "link"}
