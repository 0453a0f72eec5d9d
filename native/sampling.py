"""Kernel for offline neighbor sampling: one multi-hop minibatch, uniform without replacement over in-edges.

:func:`sample_minibatch` takes plain numpy arrays (memory maps passed through
``np.asarray`` work: the topology is only read, mostly in ascending order) and
releases the GIL, so a thread pool samples several minibatches at once.

Layout of the result (see ``diskgraph.store.plan``): ``nodes_0`` = the seeds in
the order given; at hop ``h = 1..L`` every node of ``nodes_{h-1}`` is a
destination and draws ``min(deg, fanouts[h-1])`` distinct in-neighbors
(``-1`` = all of them); the sources not yet in ``nodes_{h-1}`` are appended in
ascending global id, so ``nodes_{h-1}`` is a prefix of ``nodes_h``. Hop ``h``
is a CSC over its ``n_{h-1}`` destinations whose indices are local ids (int32)
of the sources, listed in ascending global id within each destination (the
sampled positions are sorted before ``indices`` is read, and ``indices`` is
sorted per destination).

Randomness is counter based: the draws of destination ``v`` at hop ``h`` are a
splitmix64 stream keyed by ``hash(key, h, v)``, so a minibatch is a pure function
of (topology, seeds, fanouts, key) — identical in any thread, order or run.
Positions are drawn with Floyd's algorithm into a sorted buffer (``k`` draws,
each a binary search and a short shift: ``O(k^2)`` at worst per destination,
independent of its degree), each bounded draw exact (Lemire's multiply-shift
with rejection). Destinations whose degree is at most the fanout (or fanout
-1) keep all their in-edges and draw nothing.

Destinations are visited in ascending global id, so the reads of ``indptr``
and ``indices`` sweep the memory maps front to back once per hop; results go
straight into each destination's slot (its local id).

Memory per minibatch is proportional to its sampled edges: relabelling global ids
to local ones sorts the sampled ids (LSD radix sort with a permutation) and
merges them with the sorted set of nodes seen so far; no array of size ``N``
is touched.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .rmat import hash3, mix64

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_LOW32 = np.uint64(0xFFFFFFFF)
_TWO32 = np.uint64(1 << 32)
_INT32_MAX = 2**31 - 1

ERR_TOO_MANY_EDGES = 1
"""Status of :func:`sample_minibatch`: a hop sampled more than 2**31 - 1 edges or nodes (int32 overflow)."""


def mix64_py(x: int) -> int:
    """Python twin of the splitmix64 finaliser (for deriving keys outside numba)."""
    m = (1 << 64) - 1
    x &= m
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & m
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & m
    return x ^ (x >> 31)


def derive_key(*parts: int) -> int:
    """A uint64 key (as a Python int) hashed from non-negative integers, e.g. (seed, split, epoch, batch)."""
    m = (1 << 64) - 1
    h = 0x6A09E667F3BCC909
    for p in parts:
        h = mix64_py((h + 0x9E3779B97F4A7C15 + (int(p) & m)) & m) ^ ((h << 7) & m)
    return mix64_py(h)


@njit(cache=True, inline="always")
def _next(state):
    """Advance a splitmix64 state; returns (new state, 64 random bits)."""
    state = state + _GOLDEN
    return state, mix64(state)


@njit(cache=True, inline="always")
def _below(state, n):
    """A uniform integer in ``[0, n)`` (n >= 1, uint64) and the new state."""
    if n <= _TWO32:
        state, r = _next(state)
        x = r >> np.uint64(32)
        m = x * n
        low = m & _LOW32
        if low < n:
            t = (_TWO32 - n) % n
            while low < t:
                state, r = _next(state)
                x = r >> np.uint64(32)
                m = x * n
                low = m & _LOW32
        return state, m >> np.uint64(32)
    state, r = _next(state)
    return state, r % n  # bias below n / 2**64: immaterial


@njit(cache=True, inline="always")
def _floyd_sorted(state, deg, k, pos):
    """Draw ``k`` distinct positions of ``[0, deg)`` uniformly (Floyd) into ``pos[:k]``, ascending."""
    cnt = 0
    for j in range(deg - k, deg):
        state, t64 = _below(state, np.uint64(j + 1))
        t = np.int64(t64)
        lo = 0
        hi = cnt
        while lo < hi:
            mid = (lo + hi) >> 1
            if pos[mid] < t:
                lo = mid + 1
            else:
                hi = mid
        if lo < cnt and pos[lo] == t:
            pos[cnt] = j  # j exceeds every position drawn so far
        else:
            for q in range(cnt, lo, -1):
                pos[q] = pos[q - 1]
            pos[lo] = t
        cnt += 1
    return state


@njit(cache=True, nogil=True)
def radix_argsort(keys, max_key):
    """Sort non-negative int64 ``keys`` (all <= ``max_key``); returns (sorted keys, permutation).

    LSD radix sort with up to 11-bit digits, stable; ``sorted[i] == keys[perm[i]]``.
    """
    n = keys.shape[0]
    bits = 1
    while bits < 63 and (np.int64(1) << bits) <= max_key:
        bits += 1
    passes = (bits + 10) // 11
    width = (bits + passes - 1) // passes
    buckets = 1 << width
    mask = np.int64(buckets - 1)
    k_a = keys.copy()
    p_a = np.arange(n, dtype=np.int64)
    k_b = np.empty(n, dtype=np.int64)
    p_b = np.empty(n, dtype=np.int64)
    count = np.empty(buckets + 1, dtype=np.int64)
    shift = 0
    for _ in range(passes):
        count[:] = 0
        for i in range(n):
            count[((k_a[i] >> shift) & mask) + 1] += 1
        for b in range(buckets):
            count[b + 1] += count[b]
        for i in range(n):
            d = (k_a[i] >> shift) & mask
            c = count[d]
            k_b[c] = k_a[i]
            p_b[c] = p_a[i]
            count[d] = c + 1
        k_a, k_b = k_b, k_a
        p_a, p_b = p_b, p_a
        shift += width
    return k_a, p_a


@njit(cache=True, nogil=True)
def sample_minibatch(indptr, indices, seeds, fanouts, key):
    """Sample one minibatch's ``L = len(fanouts)`` hops around ``seeds``.

    Args:
        indptr: int64 [N+1], CSC over in-edges.
        indices: int32/int64 [E], sources of each destination, sorted per destination.
        seeds: int64 [B], distinct node ids (nodes_0, in this order).
        fanouts: int64 [L] in hop order (``fanouts[0]`` = neighbors drawn per seed), each >= 1 or -1 (all).
        key: uint64, the minibatch's random key.

    Returns:
        ``(status, nodes, layer_sizes, indptr_flat, indices_flat)``: status 0 or
        :data:`ERR_TOO_MANY_EDGES`; nodes int64 [n_L] global ids (position = local
        id); layer_sizes int64 [L+1]; the L hops' int32 CSC indptrs (lengths
        ``n_{h-1} + 1``) and int32 local indices (lengths ``e_h``), concatenated.
    """
    key = np.uint64(key)
    num_hops = fanouts.shape[0]
    n0 = seeds.shape[0]
    layer_sizes = np.zeros(num_hops + 1, dtype=np.int64)
    layer_sizes[0] = n0
    nodes = seeds.copy()
    # the nodes seen so far, sorted by global id, with their local ids
    order = np.argsort(seeds)
    sorted_g = seeds[order]
    sorted_l = order.astype(np.int64)
    pos = np.empty(64, dtype=np.int64)  # sampled positions of one destination; grows to the largest sample

    hop_ptrs = []
    hop_idx = []
    for h in range(num_hops):
        n_prev = nodes.shape[0]
        fan = fanouts[h]
        # pass 1, destinations in ascending global id: degree and sample size, per local id
        start = np.empty(n_prev, dtype=np.int64)
        deg = np.empty(n_prev, dtype=np.int64)
        ptr = np.zeros(n_prev + 1, dtype=np.int64)
        for j in range(n_prev):
            v = sorted_g[j]
            loc = sorted_l[j]
            a = indptr[v]
            d = indptr[v + 1] - a
            start[loc] = a
            deg[loc] = d
            ptr[loc + 1] = d if (fan < 0 or d <= fan) else fan
        for i in range(n_prev):
            ptr[i + 1] += ptr[i]
        e = ptr[n_prev]
        if e > _INT32_MAX or n_prev + e > _INT32_MAX:
            return ERR_TOO_MANY_EDGES, nodes, layer_sizes, np.empty(0, np.int32), np.empty(0, np.int32)
        # pass 2, same order: draw positions, read the sources' global ids into each destination's slot
        src = np.empty(e, dtype=np.int64)
        max_src = np.int64(0)
        hop_key = np.uint64(h + 1)
        for j in range(n_prev):
            loc = sorted_l[j]
            a = start[loc]
            d = deg[loc]
            o = ptr[loc]
            k = ptr[loc + 1] - o
            if k == d:
                for i in range(k):
                    s = np.int64(indices[a + i])
                    src[o + i] = s
                    if s > max_src:
                        max_src = s
            else:
                if k > pos.shape[0]:
                    pos = np.empty(k, dtype=np.int64)
                state = hash3(key, hop_key, np.uint64(sorted_g[j]))
                _floyd_sorted(state, d, k, pos)
                for i in range(k):
                    s = np.int64(indices[a + pos[i]])
                    src[o + i] = s
                    if s > max_src:
                        max_src = s
        # relabel: sort the sampled ids, merge with the nodes seen so far, new ones get the next local ids
        ks, perm = radix_argsort(src, max_src)
        local = np.empty(e, dtype=np.int32)
        new_g = np.empty(e, dtype=np.int64)
        n_new = 0
        p = 0
        i = 0
        while i < e:
            u = ks[i]
            while p < n_prev and sorted_g[p] < u:
                p += 1
            if p < n_prev and sorted_g[p] == u:
                loc = sorted_l[p]
            else:
                loc = n_prev + n_new
                new_g[n_new] = u
                n_new += 1
            while i < e and ks[i] == u:
                local[perm[i]] = loc
                i += 1
        n_h = n_prev + n_new
        grown = np.empty(n_h, dtype=np.int64)
        grown[:n_prev] = nodes
        grown[n_prev:] = new_g[:n_new]
        nodes = grown
        layer_sizes[h + 1] = n_h
        hop_ptrs.append(ptr.astype(np.int32))
        hop_idx.append(local)
        if h + 1 < num_hops:
            # merge the new ids into the sorted set for the next hop
            mg = np.empty(n_h, dtype=np.int64)
            ml = np.empty(n_h, dtype=np.int64)
            a_i = 0
            b_i = 0
            for q in range(n_h):
                if b_i >= n_new or (a_i < n_prev and sorted_g[a_i] < new_g[b_i]):
                    mg[q] = sorted_g[a_i]
                    ml[q] = sorted_l[a_i]
                    a_i += 1
                else:
                    mg[q] = new_g[b_i]
                    ml[q] = n_prev + b_i
                    b_i += 1
            sorted_g = mg
            sorted_l = ml

    total_ptr = 0
    total_idx = 0
    for h in range(num_hops):
        total_ptr += hop_ptrs[h].shape[0]
        total_idx += hop_idx[h].shape[0]
    ptr_flat = np.empty(total_ptr, dtype=np.int32)
    idx_flat = np.empty(total_idx, dtype=np.int32)
    a_i = 0
    b_i = 0
    for h in range(num_hops):
        m = hop_ptrs[h].shape[0]
        ptr_flat[a_i:a_i + m] = hop_ptrs[h]
        a_i += m
        m = hop_idx[h].shape[0]
        idx_flat[b_i:b_i + m] = hop_idx[h]
        b_i += m
    return 0, nodes, layer_sizes, ptr_flat, idx_flat
