"""Importing the shared datasets (``../shared/datasets/*/data.npz``) gives exactly what scipy/numpy build in memory.

Each dataset is imported once per module (``diskgraph preprocess import --npz PATH --out DIR``,
run in-process) and compared with: the CSC of
``scipy.sparse.csc_matrix((ones, (src, dst)), shape=(N, N))`` (indices sorted), the features,
labels and splits of the archive; ``inspect --verify --json`` must pass and report the counts.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import scipy.sparse as sp

from diskgraph.cli import main
from diskgraph.store.dataset import open_dataset

DATASETS = ["cora", "citeseer", "amazon-photo", "amazon-computers", "coauthor-cs", "tolokers"]


def _scipy_csc(src, dst, n):
    m = sp.csc_matrix((np.ones(src.size, dtype=np.int32), (src, dst)), shape=(n, n))
    m.sort_indices()
    # the shared datasets hold no repeated edge: every stored entry counts one edge
    assert m.nnz == src.size and (m.data == 1).all()
    return m


@pytest.fixture(scope="module", params=DATASETS)
def imported(request, shared_dataset, tmp_path_factory):
    npz = shared_dataset(request.param)
    out = tmp_path_factory.mktemp(request.param) / "ds"
    assert main(["preprocess", "import", "--npz", str(npz), "--out", str(out), "-q"]) == 0
    yield request.param, npz, out
    shutil.rmtree(out.parent, ignore_errors=True)


def test_csc_identical_to_scipy(imported):
    name, npz, out = imported
    with np.load(npz) as z:
        edges = z["edges"]
        n = z["labels"].shape[0]
    ds = open_dataset(out)
    m = _scipy_csc(edges[0], edges[1], n)
    assert ds.num_nodes == n and ds.num_edges == edges.shape[1]
    np.testing.assert_array_equal(ds.indptr, m.indptr)
    np.testing.assert_array_equal(ds.indices, m.indices)
    assert ds.indptr.dtype == np.int64 and ds.indices.dtype == np.int32


def test_features_labels_splits_identical(imported):
    name, npz, out = imported
    ds = open_dataset(out)
    with np.load(npz) as z:
        labels = z["labels"]
        np.testing.assert_array_equal(ds.labels, labels)
        assert ds.num_classes == int(labels.max()) + 1
        for split in ("train", "val", "test"):
            idx = z[f"{split}_idx"]
            assert np.unique(idx).size == idx.size
            np.testing.assert_array_equal(ds.splits[split], np.sort(idx))
        x = z["features"]
    assert (ds.num_nodes, ds.feature_dim) == x.shape and ds.feature_dtype == str(x.dtype)
    step = max(1, (64 << 20) // x[0].nbytes)
    for s, block in ds.features.iter_slices(step):
        np.testing.assert_array_equal(block, x[s:s + step])


def test_inspect_verify_json(imported, cli):
    name, npz, out = imported
    r = cli.run("inspect", out, "--verify", "--json")
    assert r.rc == 0, r.err
    info = json.loads(r.out)
    with np.load(npz) as z:
        n = z["labels"].shape[0]
        e = z["edges"].shape[1]
        labels = z["labels"]
        f = z["features"].shape[1] if "features" in z.files else 0
    assert info["verify"] == {"ok": True, "problems": []}
    assert (info["num_nodes"], info["num_edges"], info["feature_dim"], info["num_classes"]) == (
        n, e, f, int(labels.max()) + 1)
    assert info["unlabelled_nodes"] == int((labels < 0).sum())


def test_facebook100(shared_dataset, tmp_path, cli):
    """66.6M directed edges from ``edges_upper`` (each undirected edge once, read both ways)."""
    npz = shared_dataset("facebook100")
    out = tmp_path / "fb"
    assert main(["preprocess", "import", "--npz", str(npz), "--out", str(out), "-q"]) == 0
    r = cli.run("inspect", out, "--verify", "--json")
    assert r.rc == 0, r.err
    info = json.loads(r.out)
    assert info["verify"]["ok"] is True
    with np.load(npz) as z:
        eu = z["edges_upper"]
        labels = z["labels"]
        splits = {s: z[f"{s}_idx"] for s in ("train", "val", "test")}
    n = labels.shape[0]
    assert (info["num_nodes"], info["num_edges"], info["feature_dim"], info["num_classes"]) == (n, 2 * eu.shape[1], 0, 2)
    ds = open_dataset(out)
    np.testing.assert_array_equal(ds.labels, labels)
    for s, idx in splits.items():
        np.testing.assert_array_equal(ds.splits[s], np.sort(idx))
    src = np.concatenate([eu[0], eu[1]])
    dst = np.concatenate([eu[1], eu[0]])
    del eu
    m = _scipy_csc(src, dst, n)
    del src, dst
    np.testing.assert_array_equal(ds.indptr, m.indptr)
    np.testing.assert_array_equal(ds.indices, m.indices)
