"""The sampling kernel of diskgraph.native.sampling.

* statistics: on a fixed graph each neighbor of a degree-d node is picked with
  probability fanout/d (chi-square, with a control: an off-by-one Floyd sampler
  must fail the same test), every k-subset is equally likely, nothing repeats,
  low-degree nodes and fanout -1 keep every neighbor;
* structure: on random graphs (hypothesis) the kernel equals a plain-Python
  reference built from the same counter-based hash, and the invariants of the
  plan layout hold (edges exist, prefix property, new nodes sorted, ids in range);
* determinism: a minibatch depends only on (graph, seeds, fanouts, key).
"""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from diskgraph.native import sampling as kernels

M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


# -- a plain-Python reference of the kernel ----------------------------------------------------

def mix64(x: int) -> int:
    return kernels.mix64_py(x)


def hash3(key: int, a: int, b: int) -> int:
    h = mix64((key + GOLDEN * (a + 1)) & M64)
    return mix64(h ^ ((GOLDEN * (b + 0x632BE59BD9B4E019)) & M64))


class Stream:
    def __init__(self, state: int):
        self.state = state

    def bits(self) -> int:
        self.state = (self.state + GOLDEN) & M64
        return mix64(self.state)

    def below(self, n: int) -> int:
        m = (self.bits() >> 32) * n
        if (m & 0xFFFFFFFF) < n:
            t = ((1 << 32) - n) % n
            while (m & 0xFFFFFFFF) < t:
                m = (self.bits() >> 32) * n
        return m >> 32


def floyd(stream: Stream, deg: int, k: int, off_by_one: bool = False) -> list[int]:
    chosen: list[int] = []
    for j in range(deg - k, deg):
        t = stream.below(j if off_by_one and j > 0 else j + 1)
        chosen.append(j if t in chosen else t)
    return sorted(chosen)


def reference(indptr, indices, seeds, fanouts, key):
    """Nodes, layer sizes and per-hop (indptr, indices) of a minibatch, with dicts and lists."""
    nodes = [int(v) for v in seeds]
    local = {v: i for i, v in enumerate(nodes)}
    sizes = [len(nodes)]
    hops = []
    for h, fan in enumerate(fanouts):
        ptr, picked = [0], []
        for v in list(nodes):
            a, deg = int(indptr[v]), int(indptr[v + 1] - indptr[v])
            pos = range(deg) if fan < 0 or deg <= fan else floyd(Stream(hash3(key, h + 1, v)), deg, fan)
            s = [int(indices[a + p]) for p in pos]
            picked += s
            ptr.append(len(picked))
        for u in sorted({u for u in picked if u not in local}):
            local[u] = len(nodes)
            nodes.append(u)
        sizes.append(len(nodes))
        hops.append((np.array(ptr, np.int32), np.array([local[u] for u in picked], np.int32)))
    return np.array(nodes, np.int64), np.array(sizes, np.int64), hops


# -- helpers -----------------------------------------------------------------------------------

def run(indptr, indices, seeds, fanouts, key):
    """The kernel's result split into (nodes, layer_sizes, [(hop indptr, hop indices)])."""
    status, nodes, sizes, ptr_flat, idx_flat = kernels.sample_minibatch(
        np.asarray(indptr, np.int64), indices, np.asarray(seeds, np.int64), np.asarray(fanouts, np.int64), np.uint64(key))
    assert status == 0
    hops, a, b = [], 0, 0
    for h in range(len(fanouts)):
        ptr = ptr_flat[a:a + sizes[h] + 1]
        a += sizes[h] + 1
        hops.append((ptr, idx_flat[b:b + ptr[-1]]))
        b += ptr[-1]
    assert a == ptr_flat.size and b == idx_flat.size
    return nodes, sizes, hops


def csc(num_nodes, src, dst, index_dtype=np.int32):
    src, dst = np.asarray(src, np.int64), np.asarray(dst, np.int64)
    order = np.lexsort((src, dst))
    indptr = np.zeros(num_nodes + 1, np.int64)
    np.cumsum(np.bincount(dst, minlength=num_nodes), out=indptr[1:])
    return indptr, src[order].astype(index_dtype)


def star(deg: int):
    """Node 0 with in-neighbors 1..deg; the leaves have no in-edges."""
    return csc(deg + 1, np.arange(1, deg + 1), np.zeros(deg, np.int64))


def check_structure(indptr, indices, seeds, fanouts, nodes, sizes, hops):
    """The invariants of the plan layout, in terms of global ids."""
    assert nodes.dtype == np.int64 and sizes.dtype == np.int64
    assert sizes[0] == len(seeds) and sizes[-1] == nodes.size and (np.diff(sizes) >= 0).all()
    np.testing.assert_array_equal(nodes[:len(seeds)], seeds)
    assert np.unique(nodes).size == nodes.size, "input nodes repeat"
    for h, (ptr, idx) in enumerate(hops):
        n_dst, n_src = sizes[h], sizes[h + 1]
        assert ptr.dtype == np.int32 and idx.dtype == np.int32
        assert ptr.size == n_dst + 1 and ptr[0] == 0 and (np.diff(ptr) >= 0).all() and ptr[-1] == idx.size
        assert idx.size == 0 or (idx.min() >= 0 and idx.max() < n_src)
        new = nodes[n_dst:n_src]
        assert (np.diff(new) > 0).all(), "new nodes of a hop are not ascending"
        # every node added at hop h is the source of some hop-h edge
        assert set(new.tolist()) <= set(nodes[idx].tolist())
        for d in range(n_dst):
            v = nodes[d]
            nbrs = indices[indptr[v]:indptr[v + 1]].astype(np.int64)
            got = nodes[idx[ptr[d]:ptr[d + 1]]]
            want = nbrs.size if fanouts[h] < 0 else min(nbrs.size, fanouts[h])
            assert got.size == want
            assert (np.diff(got) >= 0).all(), "sources of a destination not in ascending global id"
            have = Counter(nbrs.tolist())
            for u, c in Counter(got.tolist()).items():
                assert c <= have[u], f"sampled edge {u}->{v} not in the graph (or more often than it occurs)"


# -- statistics --------------------------------------------------------------------------------

DRAWS = 3000


def _pick_counts(sampler, deg: int, fanout: int) -> np.ndarray:
    counts = np.zeros(deg, np.int64)
    for key in range(DRAWS):
        picked = sampler(key)
        assert len(picked) == fanout and len(set(picked)) == fanout, "a neighbor repeats within a destination"
        counts[np.asarray(picked)] += 1
    return counts


def test_each_neighbor_picked_with_probability_fanout_over_degree():
    deg, fanout = 40, 10
    indptr, indices = star(deg)

    def kernel(key):
        nodes, _, hops = run(indptr, indices, [0], [fanout], kernels.derive_key(12345, key))
        return (nodes[hops[0][1]] - 1).tolist()

    counts = _pick_counts(kernel, deg, fanout)
    assert counts.sum() == DRAWS * fanout
    p = chisquare(counts, np.full(deg, DRAWS * fanout / deg)).pvalue
    assert p > 1e-3, f"kernel fails uniformity: p = {p:.2e}, counts {counts.tolist()}"

    # control: the same test rejects Floyd's algorithm with an off-by-one bound
    def biased(key):
        return floyd(Stream(hash3(kernels.derive_key(12345, key), 1, 0)), deg, fanout, off_by_one=True)

    p_bad = chisquare(_pick_counts(biased, deg, fanout), np.full(deg, DRAWS * fanout / deg)).pvalue
    assert p_bad < 1e-3, f"the chi-square test does not catch a biased sampler (p = {p_bad:.2e})"


def test_every_subset_equally_likely():
    deg, fanout = 6, 3
    indptr, indices = star(deg)
    subsets = {s: i for i, s in enumerate(itertools.combinations(range(1, deg + 1), fanout))}
    counts = np.zeros(len(subsets), np.int64)
    for key in range(DRAWS):
        nodes, _, hops = run(indptr, indices, [0], [fanout], kernels.derive_key(7, key))
        counts[subsets[tuple(nodes[hops[0][1]].tolist())]] += 1
    p = chisquare(counts, np.full(len(subsets), DRAWS / len(subsets))).pvalue
    assert p > 1e-3, f"subsets not uniform: p = {p:.2e}"


def test_each_destination_draws_independently_of_the_others():
    """Seed 0 and 1 share the same 30 in-neighbors; with different keys per node their samples differ."""
    deg, fanout = 30, 5
    src = np.concatenate([np.arange(2, 2 + deg), np.arange(2, 2 + deg)])
    dst = np.concatenate([np.zeros(deg, np.int64), np.ones(deg, np.int64)])
    indptr, indices = csc(deg + 2, src, dst)
    same = 0
    for key in range(200):
        nodes, _, ((ptr, idx),) = run(indptr, indices, [0, 1], [fanout], key)
        same += np.array_equal(nodes[idx[ptr[0]:ptr[1]]], nodes[idx[ptr[1]:ptr[2]]])
    assert same < 5


def test_low_degree_nodes_and_fanout_minus_one_keep_every_neighbor():
    rng = np.random.default_rng(3)
    n = 300
    src, dst = rng.integers(0, n, 3000), rng.integers(0, n, 3000)
    keep = src != dst
    pairs = np.unique(np.stack([src[keep], dst[keep]]), axis=1)
    indptr, indices = csc(n, pairs[0], pairs[1])
    seeds = rng.choice(n, 40, replace=False)
    for fanouts in ([-1], [-1, -1], [8, -1]):
        nodes, sizes, hops = run(indptr, indices, seeds, fanouts, 99)
        check_structure(indptr, indices, seeds, fanouts, nodes, sizes, hops)
        for h, (ptr, idx) in enumerate(hops):
            for d in range(sizes[h]):
                v = nodes[d]
                nbrs = indices[indptr[v]:indptr[v + 1]]
                if fanouts[h] < 0 or nbrs.size <= fanouts[h]:
                    np.testing.assert_array_equal(nodes[idx[ptr[d]:ptr[d + 1]]], nbrs)
    # fanout larger than every degree: the same as -1, and no randomness involved
    a = run(indptr, indices, seeds, [10**6, 10**6], 1)
    b = run(indptr, indices, seeds, [-1, -1], 2)
    np.testing.assert_array_equal(a[0], b[0])
    for (pa, ia), (pb, ib) in zip(a[2], b[2]):
        np.testing.assert_array_equal(pa, pb)
        np.testing.assert_array_equal(ia, ib)


def test_floyd_draws_sorted_distinct_positions():
    indptr, indices = star(1000)
    for key in range(50):
        nodes, _, ((ptr, idx),) = run(indptr, indices, [0], [200], key)
        pos = nodes[idx] - 1
        assert pos.size == 200 and (np.diff(pos) > 0).all() and pos.min() >= 0 and pos.max() < 1000


# -- structure against the reference --------------------------------------------------------------

@st.composite
def graphs_and_batches(draw):
    n = draw(st.integers(1, 40))
    m = draw(st.integers(0, 250))
    src = np.array(draw(st.lists(st.integers(0, n - 1), min_size=m, max_size=m)), np.int64)
    dst = np.array(draw(st.lists(st.integers(0, n - 1), min_size=m, max_size=m)), np.int64)
    b = draw(st.integers(1, n))
    seeds = np.array(draw(st.permutations(range(n)))[:b], np.int64)
    fanouts = draw(st.lists(st.sampled_from([-1, 1, 2, 3, 5, 8]), min_size=1, max_size=3))
    key = draw(st.integers(0, M64))
    dtype = draw(st.sampled_from([np.int32, np.int64]))
    return n, src, dst, seeds, fanouts, key, dtype


@settings(max_examples=60, deadline=None)
@given(graphs_and_batches())
def test_kernel_matches_reference_and_layout(case):
    n, src, dst, seeds, fanouts, key, dtype = case
    indptr, indices = csc(n, src, dst, dtype)  # repeated edges allowed: a multigraph
    nodes, sizes, hops = run(indptr, indices, seeds, fanouts, key)
    check_structure(indptr, indices, seeds, fanouts, nodes, sizes, hops)
    r_nodes, r_sizes, r_hops = reference(indptr, indices, seeds, fanouts, key)
    np.testing.assert_array_equal(nodes, r_nodes)
    np.testing.assert_array_equal(sizes, r_sizes)
    for (ptr, idx), (rp, ri) in zip(hops, r_hops):
        np.testing.assert_array_equal(ptr, rp)
        np.testing.assert_array_equal(idx, ri)


def test_same_key_same_minibatch_different_key_different():
    rng = np.random.default_rng(1)
    n = 2000
    indptr, indices = csc(n, rng.integers(0, n, 40000), rng.integers(0, n, 40000))
    seeds = rng.choice(n, 64, replace=False)
    a = run(indptr, indices, seeds, [10, 5], 5)
    b = run(indptr, indices, seeds.copy(), [10, 5], 5)
    c = run(indptr, indices, seeds, [10, 5], 6)
    np.testing.assert_array_equal(a[0], b[0])
    for (pa, ia), (pb, ib) in zip(a[2], b[2]):
        np.testing.assert_array_equal(pa, pb)
        np.testing.assert_array_equal(ia, ib)
    assert not np.array_equal(a[2][0][1], c[2][0][1])
    check_structure(indptr, indices, seeds, [10, 5], *a)


def test_empty_graph_and_isolated_seeds():
    indptr, indices = np.zeros(6, np.int64), np.zeros(0, np.int32)
    nodes, sizes, hops = run(indptr, indices, [4, 0, 2], [3, -1], 0)
    np.testing.assert_array_equal(nodes, [4, 0, 2])
    np.testing.assert_array_equal(sizes, [3, 3, 3])
    for ptr, idx in hops:
        np.testing.assert_array_equal(ptr, [0, 0, 0, 0])
        assert idx.size == 0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 2**40), max_size=300))
def test_radix_argsort_is_a_stable_sort(values):
    keys = np.array(values, np.int64)
    sorted_keys, perm = kernels.radix_argsort(keys, keys.max() if keys.size else 0)
    np.testing.assert_array_equal(perm, np.argsort(keys, kind="stable"))
    np.testing.assert_array_equal(sorted_keys, np.sort(keys))


def test_derive_key_spreads_its_inputs():
    keys = {kernels.derive_key(s, sp, e, b) for s in range(3) for sp in range(3) for e in range(3) for b in range(20)}
    assert len(keys) == 3 * 3 * 3 * 20
    assert all(0 <= k <= M64 for k in keys)
    assert kernels.derive_key(1, 2) != kernels.derive_key(2, 1)


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_memmapped_topology(tmp_path, dtype):
    rng = np.random.default_rng(2)
    n = 5000
    indptr, indices = csc(n, rng.integers(0, n, 50000), rng.integers(0, n, 50000), dtype)
    np.save(tmp_path / "p.npy", indptr)
    np.save(tmp_path / "i.npy", indices)
    mp, mi = np.load(tmp_path / "p.npy", mmap_mode="r"), np.load(tmp_path / "i.npy", mmap_mode="r")
    seeds = rng.choice(n, 100, replace=False)
    a = run(np.asarray(mp), np.asarray(mi), seeds, [5, 5], 3)
    b = run(indptr, indices, seeds, [5, 5], 3)
    np.testing.assert_array_equal(a[0], b[0])
    check_structure(indptr, indices, seeds, [5, 5], *a)
