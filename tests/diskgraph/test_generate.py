"""Tests of the synthetic graph generator (diskgraph.generate, diskgraph.native.rmat)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import scipy.sparse as sp

from diskgraph.generate import DEFAULT_HOMOPHILY, SyntheticGraph, write_raw_inputs
from diskgraph.store.errors import InputError


def _graph(**kw) -> SyntheticGraph:
    args = dict(nodes=20_000, edges=200_000, feature_dim=32, classes=8, seed=0)
    args.update(kw)
    return SyntheticGraph(args.pop("nodes"), args.pop("edges"), args.pop("feature_dim"), args.pop("classes"),
                          args.pop("seed"), **args)


# -- determinism ---------------------------------------------------------------------------------

def test_edges_are_identical_however_the_stream_is_cut():
    g = _graph(nodes=5_000, edges=10_000)
    src, dst = g.edges(0, 1000)
    a, b = g.edges(0, 300), g.edges(300, 700)
    np.testing.assert_array_equal(src, np.concatenate([a[0], b[0]]))
    np.testing.assert_array_equal(dst, np.concatenate([a[1], b[1]]))
    again = _graph(nodes=5_000, edges=10_000).edges(0, 1000)
    np.testing.assert_array_equal(src, again[0])
    np.testing.assert_array_equal(dst, again[1])
    # single edges at arbitrary offsets match the bulk call
    for i in (0, 1, 517, 999):
        s1, d1 = g.edges(i, 1)
        assert (s1[0], d1[0]) == (src[i], dst[i])
    assert src.dtype == np.int64 and dst.dtype == np.int64


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_features_and_labels_are_identical_however_the_rows_are_cut(dtype):
    g = _graph(nodes=3_000, feature_dim=17, feature_dtype=dtype)  # odd width: the Box-Muller pair straddles the end
    rows = g.features(0, 1000)
    parts = np.concatenate([g.features(0, 1), g.features(1, 299), g.features(300, 700)])
    np.testing.assert_array_equal(rows, parts)
    assert rows.shape == (1000, 17)
    assert rows.dtype == (np.uint16 if dtype == "bfloat16" else np.dtype(dtype))
    np.testing.assert_array_equal(g.labels(0, 1000), np.concatenate([g.labels(0, 300), g.labels(300, 700)]))
    np.testing.assert_array_equal(g.labels(), np.arange(3_000) % 8)


def test_a_different_seed_gives_a_different_graph():
    g0, g1 = _graph(nodes=5_000, seed=0), _graph(nodes=5_000, seed=1)
    e0, e1 = g0.edges(0, 1000), g1.edges(0, 1000)
    assert (e0[0] != e1[0]).mean() > 0.9 and (e0[1] != e1[1]).mean() > 0.9
    assert not np.array_equal(g0.features(0, 100), g1.features(0, 100))
    assert not np.array_equal(g0.class_means, g1.class_means)


def test_noise_is_standard_normal_and_class_means_have_length_signal():
    g = _graph(nodes=20_000, feature_dim=16, signal=0.8)
    x = g.features(0, 20_000)
    z = x - g.class_means[g.labels()]
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1.0) < 0.01
    np.testing.assert_allclose(np.linalg.norm(g.class_means, axis=1), 0.8, rtol=1e-5)


# -- topology ------------------------------------------------------------------------------------

def test_ids_in_range_and_in_degree_is_heavy_tailed():
    n = 40_000 + 123  # not a power of two: ids >= N are redrawn
    g = _graph(nodes=n, edges=400_000)
    src, dst = g.edges(0, 400_000)
    assert src.min() >= 0 and dst.min() >= 0 and src.max() < n and dst.max() < n
    indeg = np.bincount(dst, minlength=n)
    outdeg = np.bincount(src, minlength=n)
    assert indeg.max() > 20 * indeg.mean()
    assert outdeg.max() > 20 * outdeg.mean()
    assert indeg.max() > 100 * max(np.median(indeg), 1)
    # degree is not tied to id: the top 1 % of nodes by in-degree are spread over the id range
    top = np.argsort(indeg)[-n // 100:]
    assert 0.35 < np.mean(top < n // 2) < 0.65


def test_homophily_sets_the_fraction_of_same_class_edges():
    for h in (0.0, 0.5, 1.0):
        g = _graph(homophily=h)
        src, dst = g.edges(0, 100_000)
        same = np.mean(src % 8 == dst % 8)
        assert abs(same - (h + (1 - h) / 8)) < 0.01, (h, same)
        assert dst.max() < g.num_nodes


def test_homophily_rewiring_stays_below_n_when_the_last_class_block_is_partial():
    g = _graph(nodes=1_003, edges=50_000, classes=8, homophily=1.0)  # last block holds ids 1000..1002 only
    src, dst = g.edges(0, 50_000)
    assert dst.max() < 1_003
    np.testing.assert_array_equal(src % 8, dst % 8)


@pytest.mark.parametrize("bad", [dict(classes=30_000), dict(homophily=1.5), dict(signal=-1.0), dict(nodes=0),
                                 dict(edges=-1), dict(seed=-3), dict(feature_dim=0), dict(feature_dtype="int8"),
                                 dict(rmat=(0.5, 0.5, 0.5, 0.5))])
def test_bad_parameters_are_refused_with_input_error(bad):
    with pytest.raises(InputError):
        _graph(**bad)


def test_ranges_outside_the_graph_are_refused():
    g = _graph(nodes=100, edges=50)
    with pytest.raises(InputError):
        g.edges(40, 20)
    with pytest.raises(InputError):
        g.features(-1, 2)


# -- the planted signal --------------------------------------------------------------------------

def _lda_accuracy(z: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, classes: int) -> float:
    """Linear discriminant (class means, pooled covariance) fit on ``train``, accuracy on ``test``."""
    zt, yt = z[train].astype(np.float64), y[train]
    mu = np.stack([zt[yt == c].mean(0) for c in range(classes)])
    r = zt - mu[yt]
    cov = r.T @ r / len(r) + 1e-3 * np.eye(z.shape[1])
    w = np.linalg.solve(cov, mu.T)
    scores = z[test] @ w - 0.5 * np.sum(mu.T * w, axis=0)
    return float(np.mean(scores.argmax(1) == y[test]))


def _accuracies(g: SyntheticGraph) -> dict[str, float]:
    n = g.num_nodes
    src, dst = g.edges(0, g.num_edges)
    keep = src != dst
    a = sp.csr_matrix((np.ones(int(keep.sum())), (dst[keep], src[keep])), shape=(n, n))  # row v: in-neighbors of v
    a.data[:] = 1.0  # merge repeats, as the import does
    deg = np.asarray(a.sum(1)).ravel()
    a_mean = sp.diags(1.0 / np.maximum(deg, 1)) @ a
    x = g.features(0, n).astype(np.float64)
    ax = a_mean @ x
    y = g.labels()
    perm = np.random.default_rng(0).permutation(n)
    train, test = perm[: int(0.6 * n)], perm[int(0.8 * n):]
    return {"X": _lda_accuracy(x, y, train, test, g.num_classes),
            "X+AX": _lda_accuracy(np.hstack([x, ax]), y, train, test, g.num_classes),
            "X+AX+A2X": _lda_accuracy(np.hstack([x, ax, a_mean @ ax]), y, train, test, g.num_classes)}


def test_neighbors_carry_the_signal_with_the_default_parameters():
    acc = _accuracies(_graph())
    assert 0.2 < acc["X"] < 0.6, acc  # own features: weak, yet above chance (0.125)
    assert acc["X+AX"] > acc["X"] + 0.15, acc
    assert acc["X+AX+A2X"] > acc["X+AX"], acc


def test_without_homophily_neighbors_add_nothing():
    """The control for the test above: the gain comes from the rewiring, not from the aggregation itself."""
    acc = _accuracies(_graph(homophily=0.0))
    assert abs(acc["X+AX"] - acc["X"]) < 0.05, acc
    assert DEFAULT_HOMOPHILY > 0


# -- writers -------------------------------------------------------------------------------------

def test_write_raw_inputs_matches_the_generator(tmp_path):
    kw = dict(nodes=3_001, edges=20_000, feature_dim=12, classes=5, seed=4, feature_dtype="float16")
    out = write_raw_inputs(tmp_path / "raw", slice_bytes=4096, **kw)  # many slices
    g = SyntheticGraph(3_001, 20_000, 12, 5, 4, feature_dtype="float16")
    edges = np.load(out["edges"])
    assert edges.shape == (2, 20_000) and edges.dtype == np.int64
    src, dst = g.edges(0, 20_000)
    np.testing.assert_array_equal(edges[0], src)
    np.testing.assert_array_equal(edges[1], dst)
    feats = np.load(out["features"])
    assert feats.dtype == np.float16
    np.testing.assert_array_equal(feats, g.features(0, 3_001))
    np.testing.assert_array_equal(np.load(out["labels"]), g.labels())
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["edges.npy", "features.npy", "labels.npy",
                                                                    "manifest.json"]
    assert out["bytes"]["edges"] == out["edges"].stat().st_size
    assert out["params"]["seed"] == 4
    manifest = json.loads((tmp_path / "raw" / "manifest.json").read_text())
    assert manifest["format"] == "diskgraph.raw-inputs" and manifest["generator"] == out["params"]
    assert manifest["files"]["features"] == {"path": "features.npy", "bytes": out["bytes"]["features"]}


def test_generate_checks_its_budgets_before_allocating(tmp_path):
    from diskgraph.generate import IMPORT_BYTES_PER_NODE, check_budgets

    n = 1 << 20
    check_budgets(tmp_path / "ds", nodes=n, edges=10, feature_dim=4, classes=2, memory_budget=IMPORT_BYTES_PER_NODE * n + 96)
    with pytest.raises(InputError, match=r"--nodes 1048576 needs about 32\.0 MiB of memory .* raise --memory-budget"):
        check_budgets(tmp_path / "ds", nodes=n, edges=10, feature_dim=4, classes=2, memory_budget=16 << 20)
    check_budgets(tmp_path / "raw", nodes=n, edges=10, feature_dim=4, classes=2, raw=True, memory_budget=16 << 20)
    with pytest.raises(InputError, match=r"--classes 4096 with --feature-dim 4096 needs about 192\.0 MiB"):
        check_budgets(tmp_path / "raw", nodes=n, edges=10, feature_dim=4096, classes=4096, raw=True,
                      memory_budget=64 << 20)
    with pytest.raises(InputError, match=r"--out .*raw needs at least 1032\.0 TiB on disk .* free; free space there or choose another --out"):
        check_budgets(tmp_path / "raw", nodes=1 << 40, edges=10, feature_dim=256, classes=2, raw=True)


def test_write_raw_inputs_refuses_bfloat16(tmp_path):
    with pytest.raises(InputError, match="bfloat16"):
        write_raw_inputs(tmp_path, nodes=10, edges=10, feature_dim=2, classes=2, feature_dtype="bfloat16")


_HAS_IMPORTER = importlib.util.find_spec("diskgraph.store.importer") is not None


@pytest.mark.skipif(not _HAS_IMPORTER, reason="diskgraph.store.importer is not written yet")
def test_generate_dataset_end_to_end(tmp_path):
    from diskgraph.generate import generate_dataset
    from diskgraph.store.dataset import open_dataset

    kw = dict(nodes=2_000, edges=15_000, feature_dim=8, classes=4, seed=3)
    path = generate_dataset(tmp_path / "syn", **kw)
    ds = open_dataset(path)
    g = SyntheticGraph(2_000, 15_000, 8, 4, 3)
    assert ds.num_nodes == 2_000 and ds.num_classes == 4 and ds.feature_dim == 8
    np.testing.assert_array_equal(ds.features.read_rows(0, 10), g.features(0, 10))
    np.testing.assert_array_equal(ds.features.read_rows(1_990, 2_000), g.features(1_990, 10))
    np.testing.assert_array_equal(np.asarray(ds.labels), g.labels())
    # topology: the de-duplicated edges without self loops, grouped by destination
    src, dst = g.edges(0, 15_000)
    keep = src != dst
    pairs = np.unique(np.stack([dst[keep], src[keep]], axis=1), axis=0)
    assert ds.num_edges == len(pairs)
    np.testing.assert_array_equal(np.asarray(ds.indptr), np.r_[0, np.cumsum(np.bincount(pairs[:, 0], minlength=2_000))])
    np.testing.assert_array_equal(np.asarray(ds.indices), pairs[:, 1])
    splits = ds.splits
    assert sum(len(s) for s in splits.values()) == 2_000
    assert ds.manifest["generator"]["seed"] == 3 and ds.manifest["generator"]["homophily"] == DEFAULT_HOMOPHILY
