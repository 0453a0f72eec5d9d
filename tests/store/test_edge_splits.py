"""Edge splits at import (link prediction): `--edge-split random:…` and `--val-edges/--test-edges`.

Val/test supervision edges are left out of the stored topology (both directions with --undirected), train edges
stay in it; the split is deterministic per seed, streams (several parts give the same result as one), and bad
requests are refused in one sentence with nothing left behind.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import diskgraph.store.importer as importer
from diskgraph.store import edge_splits
from diskgraph.store.dataset import open_dataset
from diskgraph.store.edge_splits import EdgeSplitSpec, edges_in_topology, pair_uniform
from diskgraph.store.importer import ImportOptions, import_dataset
from diskgraph.store.sources.edges import NpyEdges

N, E = 3000, 40000
FRACS = (0.8, 0.1, 0.1)


@pytest.fixture(scope="module")
def edge_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("es")
    rng = np.random.default_rng(1)
    src, dst = rng.integers(0, N, E), rng.integers(0, N, E)
    # both directions of some pairs, repeats and self-loops
    src = np.concatenate([src, dst[:2000], src[:500], np.arange(50)])
    dst = np.concatenate([dst, src[:2000], dst[:500], np.arange(50)])
    np.save(d / "e.npy", np.stack([src, dst]))
    return d / "e.npy"


def _import(out, edge_file, spec, undirected=True, **kw):
    opts = ImportOptions(undirected=undirected, num_nodes=N, **kw)
    return open_dataset(import_dataset(out, NpyEdges(edge_file), options=opts, edge_split=spec))


def _topology_pairs(ds) -> set[tuple[int, int]]:
    ptr, idx = np.asarray(ds.indptr), np.asarray(ds.indices)
    dst = np.repeat(np.arange(ds.num_nodes), np.diff(ptr))
    return set(zip(idx.tolist(), dst.tolist()))


def _pairs(a) -> list[tuple[int, int]]:
    return list(zip(a[0].tolist(), a[1].tolist()))


@pytest.mark.parametrize("undirected", [True, False])
def test_random_split_sizes_and_topology(tmp_path, edge_file, undirected):
    ds = _import(tmp_path / "ds", edge_file, EdgeSplitSpec("random", FRACS, 7), undirected=undirected)
    splits, info = ds.edge_splits, ds.edge_split_info
    assert set(splits) == {"train", "val", "test"}
    assert info["source"] == "random" and info["fractions"] == list(FRACS) and info["seed"] == 7
    assert info["undirected"] is undirected
    assert info["counts"] == {k: v.shape[1] for k, v in splits.items()}
    for a in splits.values():
        assert a.dtype == np.int64 and a.shape[0] == 2
    e = np.load(edge_file)
    a, b = (np.minimum(e[0], e[1]), np.maximum(e[0], e[1])) if undirected else (e[0], e[1])
    pairs = set(zip(a.tolist(), b.tolist()))
    pairs = {p for p in pairs if p[0] != p[1]}
    total = sum(info["counts"].values())
    assert total <= len(pairs)
    for name, f in zip(("train", "val", "test"), FRACS):
        assert abs(splits[name].shape[1] / len(pairs) - f) < 0.015, (name, splits[name].shape[1], len(pairs))
    topo = _topology_pairs(ds)
    all_sup = set()
    for name, arr in splits.items():
        p = _pairs(arr)
        assert len(set(p)) == len(p), f"{name} repeats a pair"
        assert not all_sup & set(p)
        all_sup |= set(p)
        if undirected:
            assert all(u < v for u, v in p)
    for u, v in _pairs(splits["val"]) + _pairs(splits["test"]):
        assert (u, v) not in topo
        if undirected:
            assert (v, u) not in topo
    for u, v in _pairs(splits["train"]):
        assert (u, v) in topo
    # every topology edge is a train edge or not a supervision edge (never val/test)
    vt = set(_pairs(splits["val"]) + _pairs(splits["test"]))
    for s, d in topo:
        key = (min(s, d), max(s, d)) if undirected else (s, d)
        assert key not in vt
    # the topology is the input less the val/test pairs (every copy, both directions when undirected)
    expected = set()
    for s, d in zip(e[0].tolist(), e[1].tolist()):
        key = (min(s, d), max(s, d)) if undirected else (s, d)
        if key not in vt:
            expected.add((s, d))
            if undirected:
                expected.add((d, s))
    assert topo == expected
    assert ds.verify() == []
    for name in ("train", "val", "test"):
        ds.check_array(f"edges/{name}")


def test_deterministic_per_seed(tmp_path, edge_file):
    spec = EdgeSplitSpec("random", FRACS, 3)
    a = _import(tmp_path / "a", edge_file, spec)
    b = _import(tmp_path / "b", edge_file, spec)
    c = _import(tmp_path / "c", edge_file, EdgeSplitSpec("random", FRACS, 4))
    for name in ("train", "val", "test"):
        assert np.array_equal(a.edge_splits[name], b.edge_splits[name])
        assert a.array_records[f"edges/{name}"]["sha256"] == b.array_records[f"edges/{name}"]["sha256"]
    assert not np.array_equal(a.edge_splits["val"], c.edge_splits["val"])
    u = pair_uniform(np.arange(100000), np.arange(100000) + 5, 0)
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.01


def test_streamed_in_parts_equals_one_part(tmp_path, edge_file, monkeypatch):
    spec = EdgeSplitSpec("random", FRACS, 11)
    one = _import(tmp_path / "one", edge_file, spec, dedup=True)
    assert one.manifest["import"]["csc_parts"] == 1
    monkeypatch.setattr(importer, "build_csc", functools.partial(importer.build_csc, part_edges=5000))
    monkeypatch.setattr(importer, "plan_edge_split", _small_chunks)
    monkeypatch.setattr(importer, "write_edge_splits", functools.partial(edge_splits.write_edge_splits, slice_edges=3000))
    many = _import(tmp_path / "many", edge_file, spec, dedup=True, memory_budget=64 << 20)
    assert many.manifest["import"]["csc_parts"] > 3
    for name in ("topology/indptr", "topology/indices", "edges/train", "edges/val", "edges/test"):
        assert one.array_records[name] == many.array_records[name], name
    assert one.edge_split_info == many.edge_split_info
    assert many.verify() == []


def _small_chunks(*args, **kw):
    kw["chunk_edges"] = 4000
    return edge_splits.plan_edge_split(*args, **kw)


@pytest.mark.parametrize("layout", ["rows", "pairs"])
def test_given_files(tmp_path, edge_file, layout):
    e = np.load(edge_file)
    val = e[:, 10:30]
    test = np.stack([e[1, 100:140], e[0, 100:140]])  # reversed: the same unordered pairs
    if layout == "pairs":
        val, test = val.T.copy(), test.T.copy()
    np.save(tmp_path / "val.npy", val)
    np.save(tmp_path / "test.npy", test)
    spec = EdgeSplitSpec.from_options(None, str(tmp_path / "val.npy"), str(tmp_path / "test.npy"))
    ds = _import(tmp_path / "ds", edge_file, spec)
    info = ds.edge_split_info
    assert info["source"] == "files" and info["fractions"] is None
    topo = _topology_pairs(ds)
    vt = set()
    for name, given in (("val", e[:, 10:30]), ("test", e[:, 100:140])):
        want = sorted({(min(s, d), max(s, d)) for s, d in zip(*given.tolist())} - vt)
        assert _pairs(ds.edge_splits[name]) == want
        vt |= set(want)
        for u, v in want:
            assert (u, v) not in topo and (v, u) not in topo
    train = _pairs(ds.edge_splits["train"])
    expected_train = {(min(s, d), max(s, d)) for s, d in topo if s != d}
    assert set(train) == expected_train and len(train) == len(expected_train)
    assert ds.verify() == []
    indptr, indices = ds.indptr, ds.indices
    tr = ds.edge_splits["train"]
    assert edges_in_topology(indptr, indices, tr[0], tr[1]).all()
    assert not edges_in_topology(indptr, indices, *ds.edge_splits["val"]).any()


def test_no_split_means_empty(tmp_path, edge_file):
    ds = open_dataset(import_dataset(tmp_path / "ds", NpyEdges(edge_file), options=ImportOptions(num_nodes=N)))
    assert ds.edge_splits == {} and ds.edge_split_info is None
    assert "edge_split" not in ds.manifest


@pytest.fixture
def small(tmp_path):
    e = np.array([[0, 1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 0]])
    np.save(tmp_path / "e.npy", e)
    return tmp_path


@pytest.mark.parametrize("spec, needle", [
    ("random:0.9,0.1,0.1", "--edge-split"),
    ("random:0.9,0,0.1", "--edge-split"),
    ("random:0.9,-0.1,0.1", "--edge-split"),
    ("half", "--edge-split"),
])
def test_refuses_bad_fractions(cli, refused, small, spec, needle):
    out = small / "ds"
    r = cli.run("preprocess", "import", "--edges", small / "e.npy", "--edge-split", spec, "--out", out)
    refused(r, needle, out=out)


def test_refusals(cli, refused, small):
    out = small / "ds"
    e = small / "e.npy"
    np.save(small / "v.npy", np.array([[0, 1], [1, 2]]))          # [2, E]: (0,1), (1,2)
    np.save(small / "t.npy", np.array([[2], [3]]))
    np.save(small / "bad.npy", np.array([[0, 3], [5, 4]]))       # (0,5) is not an edge, (3,4) is
    np.save(small / "overlap.npy", np.array([[1], [2]]))
    args = ("preprocess", "import", "--edges", e, "--out", out)
    refused(cli.run(*args, "--edge-split", "random:0.8,0.1,0.1", "--val-edges", small / "v.npy",
                    "--test-edges", small / "t.npy"), "--edge-split", "--val-edges", out=out)
    refused(cli.run(*args, "--val-edges", small / "v.npy"), "--test-edges", out=out)
    refused(cli.run(*args, "--val-edges", small / "bad.npy", "--test-edges", small / "t.npy"),
            str(small / "bad.npy"), "(0, 5)", out=out)
    refused(cli.run(*args, "--val-edges", small / "v.npy", "--test-edges", small / "overlap.npy"),
            str(small / "v.npy"), str(small / "overlap.npy"), "(1 → 2)", out=out)
    # 8 edges: a 1% val split is empty for most seeds
    refused(cli.run(*args, "--edge-split", "random:0.98,0.01,0.01", "--seed", "1"), "val split empty", out=out)
    # directed reverse pair given with --undirected is the same pair: accepted
    np.save(small / "rev.npy", np.array([[2], [1]]))
    r = cli.run(*args, "--undirected", "--val-edges", small / "rev.npy", "--test-edges", small / "t.npy", "-q")
    assert r.rc == 0, r.err
    ds = open_dataset(out)
    assert _pairs(ds.edge_splits["val"]) == [(1, 2)]
    assert (1, 2) not in _topology_pairs(ds) and (2, 1) not in _topology_pairs(ds)


def test_preprocess_all_forwards_edge_split(cli, small, monkeypatch):
    import diskgraph.cli_preprocess as cp

    monkeypatch.setattr(cp, "_sample_stage", lambda args, dataset: dataset)
    monkeypatch.setattr(cp, "_pack_stage", lambda args, dataset, plan: plan)
    rng = np.random.default_rng(0)
    np.save(small / "big.npy", rng.integers(0, 200, (2, 3000)))
    out = small / "ds"
    args = ("preprocess", "all", "--edges", small / "big.npy", "--out", out, "--edge-split", "random:0.9,0.05,0.05",
            "--seed", "5", "--fanouts", "10,5", "--batch-size", "1024", "-q")
    r = cli.run(*args)
    assert r.rc == 0, r.err
    info = open_dataset(out).edge_split_info
    assert info["seed"] == 5 and info["fractions"] == [0.9, 0.05, 0.05]
    assert open_dataset(out).manifest["import_command"]["options"]["edge_split"] == "random:0.9,0.05,0.05"
    r = cli.run(*args)  # the same options: the import is kept
    assert r.rc == 0, r.err
    r = cli.run(*args[:-3], "--seed", "6", "-q")  # another seed: refused without --overwrite
    assert r.rc == 2 and "--seed" in r.err


def test_cora(cli, shared_dataset, tmp_path):
    npz = shared_dataset("cora")
    out = tmp_path / "cora"
    r = cli.run("preprocess", "import", "--npz", npz, "--undirected", "--edge-split", "random:0.85,0.05,0.1",
                "--out", out, "-q")
    assert r.rc == 0, r.err
    ds = open_dataset(out)
    counts = ds.edge_split_info["counts"]
    total = sum(counts.values())
    assert abs(counts["train"] / total - 0.85) < 0.03 and abs(counts["test"] / total - 0.1) < 0.03
    topo = _topology_pairs(ds)
    for name in ("val", "test"):
        for u, v in _pairs(ds.edge_splits[name]):
            assert (u, v) not in topo and (v, u) not in topo
    assert ds.verify() == []
    r = cli.run("inspect", out)
    assert r.rc == 0 and "edge split" in r.out and f"val {counts['val']:,}" in r.out


def test_from_pyg_passes_edge_split(tmp_path):
    torch = pytest.importorskip("torch")
    pyg = pytest.importorskip("torch_geometric.data")
    import diskgraph

    rng = np.random.default_rng(0)
    ei = torch.from_numpy(rng.integers(0, 300, (2, 4000)))
    out = diskgraph.from_pyg(pyg.Data(edge_index=ei, num_nodes=300), tmp_path / "ds", undirected=True,
                             edge_split="random:0.8,0.1,0.1", seed=2)
    ds = open_dataset(out)
    assert ds.edge_split_info["seed"] == 2 and ds.edge_split_info["undirected"] is True
    assert ds.verify() == []


def test_directed_split_warns_about_reverse_edges(tmp_path, edge_file, caplog, monkeypatch):
    import logging

    monkeypatch.setattr(logging.getLogger("diskgraph"), "propagate", True)
    with caplog.at_level(logging.WARNING, logger="diskgraph"):
        _import(tmp_path / "d", edge_file, EdgeSplitSpec("random", FRACS, 0), undirected=False)
    assert any("reverse edge" in r.getMessage() and "--undirected" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="diskgraph"):
        _import(tmp_path / "u", edge_file, EdgeSplitSpec("random", FRACS, 0), undirected=True)
    assert not any("reverse edge" in r.getMessage() for r in caplog.records)
