"""Out-of-core CSC construction (store.csc_builder) against an in-memory scipy oracle."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diskgraph.store.csc_builder import _partition, build_csc, max_node_id, transformed_edges
from diskgraph.store.errors import InputError
from diskgraph.store.sources.edges import EdgeSource
from diskgraph.store.zarr_arrays import RawArray

BUDGET = 64 << 20


class ListEdges(EdgeSource):
    """In-memory edges yielded in chunks of at most ``chunk`` (fewer than asked, to cross chunk borders)."""

    def __init__(self, src, dst, chunk: int = 7):
        self.src = np.asarray(src, dtype=np.int64)
        self.dst = np.asarray(dst, dtype=np.int64)
        self.num_edges = int(self.src.size)
        self.chunk = chunk
        self.label = "edges under test"
        self.reads = 0

    def chunks(self, max_edges):
        self.reads += 1
        step = max(1, min(self.chunk, max_edges))
        for s in range(0, self.num_edges, step):
            yield s, self.src[s:s + step].copy(), self.dst[s:s + step].copy()


@st.composite
def edge_lists(draw, max_nodes=25, max_edges=120):
    n = draw(st.integers(1, max_nodes))
    m = draw(st.integers(0, max_edges))
    ids = st.integers(0, n - 1)
    pairs = draw(st.lists(st.tuples(ids, ids), min_size=m, max_size=m))
    src = np.array([p[0] for p in pairs], dtype=np.int64)
    dst = np.array([p[1] for p in pairs], dtype=np.int64)
    extra = draw(st.integers(0, 3))  # isolated nodes past the largest id
    return n + extra, src, dst


def _read_csc(out: Path):
    indptr = RawArray(out / "indptr")
    indices = RawArray(out / "indices")
    return np.asarray(indptr.memmap()), np.asarray(indices.memmap()), indptr, indices


@settings(max_examples=50, deadline=None)
@given(edge_lists(), st.booleans(), st.booleans(), st.booleans(), st.sampled_from([None, 1, 2, 5, 17]),
       st.integers(1, 9))
def test_build_csc_matches_scipy(csc_oracle, graph, undirected, dedup, drop_self_loops, part_edges, chunk):
    n, src, dst = graph
    edges = ListEdges(src, dst, chunk)
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "topology"
        res = build_csc(out, edges, n, "test", undirected=undirected, dedup=dedup, drop_self_loops=drop_self_loops,
                        memory_budget=BUDGET, part_edges=part_edges)
        indptr, indices, a_ptr, a_idx = _read_csc(out)
        want_ptr, want_idx = csc_oracle(src, dst, n, undirected=undirected, dedup=dedup,
                                        drop_self_loops=drop_self_loops)
        np.testing.assert_array_equal(indptr, want_ptr)
        np.testing.assert_array_equal(indices, want_idx)
        assert indptr.dtype == np.int64 and indices.dtype == np.int32 and res.index_dtype == "int32"
        assert a_ptr.shape == (n + 1,) and a_idx.shape == (want_idx.size,)
        # the result record
        loops = int((src == dst).sum()) if drop_self_loops else 0
        before_dedup = (src.size - loops) * (2 if undirected else 1)
        assert res.num_edges == want_idx.size
        assert res.input_edges == src.size
        assert res.self_loops_dropped == loops * (2 if undirected else 1)
        assert res.duplicates_dropped == before_dedup - want_idx.size
        assert res.indptr_sha256 == hashlib.sha256(want_ptr.tobytes()).hexdigest() == a_ptr.sha256()
        assert res.indices_sha256 == hashlib.sha256(want_idx.astype(np.int32).tobytes()).hexdigest() == a_idx.sha256()
        # forced multi-range partitioning: every range holds at most part_edges edges (or one node)
        in_deg = np.diff(csc_oracle(src, dst, n, undirected=undirected, drop_self_loops=drop_self_loops)[0])
        if part_edges is not None:
            assert res.peak_edges_in_memory <= max(part_edges, int(in_deg.max(initial=0)))
            if in_deg.sum() > part_edges and n > 1:  # a single node cannot be split
                assert res.parts > 1
        else:
            assert res.parts == (1 if n else 0)
        # one range streams the input twice (count + place); several spill: count + spill
        assert edges.reads == 2
        assert not (out / "_spill").exists()
        assert sorted(p.name for p in out.iterdir()) == ["indices", "indptr"]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=0, max_size=40), st.integers(1, 60))
def test_partition_ranges(counts, max_edges):
    counts = np.array(counts, dtype=np.int64)
    b = _partition(counts, max_edges)
    n = counts.size
    assert b[0] == 0 and b[-1] == n
    assert (np.diff(b) > 0).all()
    for lo, hi in zip(b[:-1], b[1:]):
        total = counts[lo:hi].sum()
        assert total <= max_edges or hi - lo == 1, (lo, hi, total)
        # ranges are as large as allowed: adding the next node would overflow
        if hi < n:
            assert counts[lo:hi + 1].sum() > max_edges


def test_out_of_range_and_negative_ids_name_the_edge(tmp_path):
    with pytest.raises(InputError, match=r"node id 9 \(target of edge 8\).*5 nodes \(from test\)"):
        build_csc(tmp_path / "t1", ListEdges(np.arange(10) % 5, [0, 1, 2, 3, 4, 0, 1, 2, 9, 5], chunk=3), 5, "from test",
                  memory_budget=BUDGET)
    with pytest.raises(InputError, match=r"negative node id -3 \(source of edge 4\)"):
        build_csc(tmp_path / "t2", ListEdges([0, 1, 2, 3, -3], [0, 0, 0, 0, 0], chunk=2), 5, "from test",
                  memory_budget=BUDGET)


def test_budget_too_small_is_refused(tmp_path):
    with pytest.raises(InputError, match=r"--memory-budget .* too small for 1000000 nodes"):
        build_csc(tmp_path / "t", ListEdges([0], [1]), 1_000_000, "test", memory_budget=20 << 20)


def test_failure_midway_leaves_no_spill_files(tmp_path):
    class Failing(ListEdges):
        def chunks(self, max_edges):
            self.reads += 1
            for i, c in enumerate(super().chunks(max_edges)):
                if self.reads == 2 and i == 3:
                    raise KeyboardInterrupt
                yield c

    rng = np.random.default_rng(0)
    src, dst = rng.integers(0, 30, 200), rng.integers(0, 30, 200)
    with pytest.raises(KeyboardInterrupt):
        build_csc(tmp_path / "t", Failing(src, dst, chunk=10), 30, "test", memory_budget=BUDGET, part_edges=20)
    assert not (tmp_path / "t" / "_spill").exists()


def test_transformed_edges_and_max_node_id():
    edges = ListEdges([0, 1, 2, 2], [1, 1, 0, 2], chunk=3)
    stats = {"input_edges": 0, "self_loops_dropped": 0}
    chunks = list(transformed_edges(edges, 100, 3, "test", undirected=True, drop_self_loops=True, stats=stats))
    src = np.concatenate([c[0] for c in chunks])
    dst = np.concatenate([c[1] for c in chunks])
    assert sorted(zip(src.tolist(), dst.tolist())) == [(0, 1), (0, 2), (1, 0), (2, 0)]
    assert stats == {"input_edges": 4, "self_loops_dropped": 4}
    assert max_node_id(ListEdges([0, 7, 2], [3, 1, 0], chunk=1), 10) == 7
    assert max_node_id(ListEdges([], []), 10) == -1
    with pytest.raises(InputError, match="negative node id -2"):
        max_node_id(ListEdges([0, 1], [1, -2]), 10)


def test_index_dtype_int64_for_huge_node_counts(tmp_path, monkeypatch):
    """Graphs of 2**31 nodes or more store int64 indices (tested with a patched threshold)."""
    from diskgraph.native import csc as kernels

    monkeypatch.setattr(kernels, "index_dtype", lambda n: np.dtype(np.int64))
    res = build_csc(tmp_path / "t", ListEdges([3, 0, 2], [1, 1, 0]), 4, "test", memory_budget=BUDGET, part_edges=1)
    _, indices, _, arr = _read_csc(tmp_path / "t")
    assert res.index_dtype == "int64" and arr.dtype == "int64"
    np.testing.assert_array_equal(indices, [2, 0, 3])
