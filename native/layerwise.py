"""Kernels of out-of-core layer-wise inference (:mod:`diskgraph.pipeline.layerwise`).

* :func:`regroup_by_slice` — a destination partition's in-edges (in CSC order: by destination, then source)
  grouped by the source slice they read from, a stable counting sort, so each group stays sorted by destination.
* :func:`count_distinct` — distinct sources of one group (the rows of the slice the group needs).
* :func:`sum_rows_into` — ``acc[dst[e]] += g[src[e]]`` over a group, in place, threads splitting the
  destinations (each destination's edges are summed by one thread, in edge order: deterministic).
* :func:`sum_rows_into_chunked` — the same over a table kept as a list of row chunks (memory maps).
* :func:`count_sources` — out-degree counts from a slice of CSC indices.
* :func:`mark_sources` — each source's set of destination partitions, as bits (the partition-ordered tables).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, nogil=True)
def regroup_by_slice(src, dst_local, slice_rows, num_slices, out_src, out_dst, group_ptr):
    """Group edges by source slice ``src // slice_rows``; stable.

    Args:
        src: int32/int64 [E] global source ids, edges in CSC order.
        dst_local: int32 [E] the destination of each edge, local to the partition (non-decreasing).
        slice_rows: rows per source slice; num_slices: slices of the table.
        out_src: int32 [E] output: source ids local to their slice (``src - p * slice_rows``).
        out_dst: int32 [E] output: ``dst_local`` in the grouped order.
        group_ptr: int64 [num_slices + 1] output: group p is ``[group_ptr[p], group_ptr[p+1])``.
    """
    group_ptr[:] = 0
    for e in range(src.shape[0]):
        group_ptr[src[e] // slice_rows + 1] += 1
    for p in range(num_slices):
        group_ptr[p + 1] += group_ptr[p]
    fill = group_ptr[:-1].copy()
    for e in range(src.shape[0]):
        p = src[e] // slice_rows
        k = fill[p]
        out_src[k] = src[e] - p * slice_rows
        out_dst[k] = dst_local[e]
        fill[p] = k + 1


@njit(cache=True, nogil=True)
def count_distinct(src_local, mark):
    """Distinct values of ``src_local`` (int32, each < ``len(mark)``); ``mark`` (uint8) is zero on entry and exit."""
    n = 0
    for e in range(src_local.shape[0]):
        s = src_local[e]
        if mark[s] == 0:
            mark[s] = 1
            n += 1
    for e in range(src_local.shape[0]):
        mark[src_local[e]] = 0
    return n


@njit(cache=True, nogil=True)
def _thread_bounds(dst, threads):
    """``threads + 1`` edge offsets that split ``dst`` (non-decreasing) into runs on destination boundaries."""
    n = dst.shape[0]
    bounds = np.empty(threads + 1, dtype=np.int64)
    bounds[0] = 0
    bounds[threads] = n
    for t in range(1, threads):
        b = max(n * t // threads, bounds[t - 1])
        while 0 < b < n and dst[b] == dst[b - 1]:
            b += 1
        bounds[t] = b
    return bounds


@njit(cache=True, nogil=True, parallel=True)
def sum_rows_into(acc, dst, src, g, threads):
    """``acc[dst[e]] += g[src[e]]`` for every edge ``e`` (``dst`` non-decreasing), float32, in place.

    Edges are split into ``threads`` runs on destination boundaries, so no two threads add into one row.
    """
    if dst.shape[0] == 0:
        return
    bounds = _thread_bounds(dst, threads)
    width = g.shape[1]
    for t in prange(threads):
        for e in range(bounds[t], bounds[t + 1]):
            row = acc[dst[e]]
            src_row = g[src[e]]
            for c in range(width):
                row[c] += src_row[c]


@njit(cache=True, nogil=True)
def count_sources(indices, counts):
    """``counts[u] += 1`` for every source ``u`` in ``indices`` (out-degrees, slice by slice)."""
    for e in range(indices.shape[0]):
        counts[indices[e]] += 1


@njit(cache=True, nogil=True, parallel=True)
def sum_rows_into_chunked(acc, dst, src, chunks, chunk_rows, threads):
    """:func:`sum_rows_into` with the source rows in a list of row chunks (``src // chunk_rows`` picks the chunk):
    the gathers of a table kept as several memory-mapped chunk files, in edge order."""
    if dst.shape[0] == 0:
        return
    bounds = _thread_bounds(dst, threads)
    width = acc.shape[1]
    for t in prange(threads):
        for e in range(bounds[t], bounds[t + 1]):
            row = acc[dst[e]]
            s = src[e]
            src_row = chunks[s // chunk_rows][s % chunk_rows]
            for c in range(width):
                row[c] += src_row[c]


@njit(cache=True, nogil=True)
def mark_sources(src, bit, sig):
    """``sig[u] |= bit`` for every source ``u`` in ``src`` (which destination partitions read each row)."""
    for e in range(src.shape[0]):
        sig[src[e]] |= bit
