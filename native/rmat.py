"""Counter-based kernels for the synthetic graph generator (R-MAT edges, Gaussian features).

Every value these kernels produce is a pure function of a 64-bit key and the
global index of the value (edge i, feature element (row, col)), computed with
the splitmix64 finaliser as a hash. Any slice of the stream is therefore
identical however the stream is chunked, on any machine and in any thread
order; nothing depends on numpy's random streams (whose algorithms may change
between numpy versions).

R-MAT edges (:func:`rmat_edges`)
    Edge i descends ``scale = max(1, ceil(log2 N))`` levels of the adjacency matrix; at
    each level it picks quadrant (0,0), (0,1), (1,0) or (1,1) with
    probabilities a, b, c, d (16-bit resolution, four levels per 64-bit hash),
    which sets one bit of the source and one bit of the destination.
    Both ids are then passed through a seeded bijection of ``[0, 2**scale)``
    (two rounds of odd-multiply-add and xor-shift, :func:`scramble`) so that
    degree is not correlated with id. When either id is ``>= N`` the whole
    edge is redrawn with the next attempt number (so the edge follows the
    R-MAT distribution conditioned on both ids being valid). An attempt
    succeeds with probability about ``(N / 2**scale)**2 >= 1/4`` on large
    graphs, so the rare edge that fails ``MAX_ATTEMPTS`` times (about 1e-8 of
    them) keeps its last draw folded with ``id % N``.
    Homophily: with probability ``homophily`` the destination is then moved
    to the node of the source's class in the destination's block of
    ``classes`` consecutive ids (``v' = v - v % C + u % C``, minus C when that
    passes N), so labels ``y = id % C`` are shared along the edge while the
    in-degree stays within the block of the R-MAT destination.
    Self loops and repeated edges are not avoided; the importer drops and
    merges them.

Gaussian features (:func:`gaussian_rows`)
    Element (row, col) is ``means[labels[row], col]`` plus a standard normal:
    the cosine (even col) or sine (odd col) half of a Box-Muller pair whose two
    24-bit uniforms come from one hash of (key, row, col // 2), computed in
    float32 (so the noise is bounded by ``sqrt(2 ln 2**24)``, about 5.8).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

MAX_ATTEMPTS = 64
"""Redraws of an edge whose endpoint falls outside ``[0, N)`` before folding it with ``% N``."""

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_MASK16 = np.uint64(0xFFFF)
_MASK24 = np.uint64(0xFFFFFF)


@njit(cache=True, inline="always")
def mix64(x):
    """splitmix64 finaliser: a bijective 64-bit hash of a uint64."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


@njit(cache=True, inline="always")
def hash3(key, a, b):
    """Hash of (key, a, b), all uint64, to a uint64."""
    h = mix64(key + _GOLDEN * (a + np.uint64(1)))
    return mix64(h ^ (_GOLDEN * (b + np.uint64(0x632BE59BD9B4E019))))


@njit(cache=True, inline="always")
def scramble(x, mask, shift, m1, k1, m2, k2):
    """A bijection of ``[0, mask + 1)`` (mask = 2**scale - 1); m1, m2 must be odd."""
    x = (x * m1 + k1) & mask
    x ^= x >> shift
    x = (x * m2 + k2) & mask
    x ^= x >> shift
    return x


@njit(cache=True, parallel=True, nogil=True)
def rmat_edges(key, start, scale, num_nodes, thresholds, scramble_params, homophily16, classes, src, dst):
    """Fill ``src[j], dst[j]`` with edge ``start + j`` of the R-MAT stream, for every j.

    Args:
        key: uint64 stream key (derived from the seed).
        start: int64 global index of the first edge.
        scale: int64 number of levels; ids are drawn in ``[0, 2**scale)``.
        num_nodes: int64 N (``1 <= N <= 2**scale``).
        thresholds: uint64[3] cumulative a, a+b, a+b+c scaled to 65536.
        scramble_params: uint64[4] (m1, k1, m2, k2) of :func:`scramble`, m1 and m2 odd.
        homophily16: uint64 rewiring probability scaled to 65536 (0: none, 65536: always).
        classes: int64 C (labels are ``id % C``; ``C <= N``).
        src, dst: int64[count] outputs.
    """
    count = src.shape[0]
    mask = (np.uint64(1) << np.uint64(scale)) - np.uint64(1)
    shift = np.uint64((scale + 1) // 2)
    t0, t1, t2 = thresholds[0], thresholds[1], thresholds[2]
    m1, k1, m2, k2 = scramble_params[0], scramble_params[1], scramble_params[2], scramble_params[3]
    n = np.uint64(num_nodes)
    nlevel_words = (scale + 3) // 4
    ckey = key ^ np.uint64(0x5851F42D4C957F2D)
    for j in prange(count):
        e = np.uint64(start + j)
        u = np.uint64(0)
        v = np.uint64(0)
        for attempt in range(MAX_ATTEMPTS):
            # The quadrant of a level is one 16-bit number r: u bit = r >= t1; v bit = r >= t0
            # when u bit is 0, r >= t2 when it is 1. The source is drawn first, so an attempt
            # whose source is out of range stops early; the destination then re-derives the
            # same r values (same hashes), so the pair is exactly the R-MAT draw.
            base = hash3(key, e, np.uint64(attempt))
            u = np.uint64(0)
            level = 0
            for w in range(nlevel_words):
                h = mix64(base + _GOLDEN * np.uint64(w + 1))
                for _q in range(4):
                    if level < scale:
                        u = (u << np.uint64(1)) | np.uint64((h & _MASK16) >= t1)
                        h >>= np.uint64(16)
                        level += 1
            u = scramble(u, mask, shift, m1, k1, m2, k2)
            if u >= n:
                continue
            v = np.uint64(0)
            level = 0
            for w in range(nlevel_words):
                h = mix64(base + _GOLDEN * np.uint64(w + 1))
                for _q in range(4):
                    if level < scale:
                        r = h & _MASK16
                        t = t2 if r >= t1 else t0
                        v = (v << np.uint64(1)) | np.uint64(r >= t)
                        h >>= np.uint64(16)
                        level += 1
            v = scramble(v, mask, shift, m1, k1, m2, k2)
            if v < n:
                break
        if u >= n or v >= n:  # every attempt failed: fold
            u = u % n
            v = v % n
        if homophily16 > np.uint64(0):
            h = hash3(ckey, e, np.uint64(0))
            if (h & _MASK16) < homophily16:
                c = np.uint64(classes)
                v2 = v - v % c + u % c
                if v2 >= n:
                    v2 -= c
                v = v2
        src[j] = np.int64(u)
        dst[j] = np.int64(v)


@njit(cache=True, parallel=True, nogil=True)
def gaussian_rows(key, start, labels, means, out):
    """Fill ``out[i, :]`` with ``means[labels[i]] + N(0, 1)`` noise for row ``start + i``.

    Args:
        key: uint64 stream key.
        start: int64 global index of the first row.
        labels: int64[count] class of each row (an index into ``means``).
        means: float32[C, dim] per-class offsets (all zeros for pure noise).
        out: float32 [count, dim] output (narrow to float16/bfloat16 afterwards).
    """
    count, dim = out.shape
    two_pi = np.float32(6.2831855)
    inv24 = np.float32(1.0 / 16777216.0)
    for i in prange(count):
        row = np.uint64(start + i)
        mu = means[labels[i]]
        for p in range((dim + 1) // 2):
            h = hash3(key, row, np.uint64(p))
            u1 = (np.float32(h >> np.uint64(40)) + np.float32(1.0)) * inv24  # (0, 1]
            u2 = np.float32((h >> np.uint64(8)) & _MASK24) * inv24  # [0, 1)
            rad = np.sqrt(np.float32(-2.0) * np.log(u1))
            ang = two_pi * u2
            c = 2 * p
            out[i, c] = mu[c] + rad * np.cos(ang)
            if c + 1 < dim:
                out[i, c + 1] = mu[c + 1] + rad * np.sin(ang)
