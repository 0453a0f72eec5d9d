"""Kernels for building CSC topology (in-edges grouped by destination).

All kernels take plain numpy arrays. Node ids are int64 on entry; CSC indices
are int32 when the graph has fewer than 2**31 nodes, int64 otherwise.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, nogil=True)
def count_by_key(keys, lo, counts):
    """``counts[k - lo] += 1`` for every k in ``keys`` (all keys must be in range)."""
    for i in range(keys.shape[0]):
        counts[keys[i] - lo] += 1


@njit(cache=True, nogil=True)
def scatter_by_key(values, keys, lo, cursor, out):
    """Counting-sort placement: ``out[cursor[k - lo]++] = value`` for each (value, key) pair."""
    for i in range(keys.shape[0]):
        k = keys[i] - lo
        out[cursor[k]] = values[i]
        cursor[k] += 1


@njit(cache=True, nogil=True)
def group_by_part(src, dst, part_of_node, num_parts, out_src, out_dst, offsets):
    """Stable counting sort of edges by the part of their destination.

    Fills ``offsets`` (length ``num_parts + 1``) so that part p's edges are
    ``out_src[offsets[p]:offsets[p+1]]`` / ``out_dst[...]``.
    """
    offsets[:] = 0
    for i in range(dst.shape[0]):
        offsets[part_of_node[dst[i]] + 1] += 1
    for p in range(num_parts):
        offsets[p + 1] += offsets[p]
    cursor = offsets[:num_parts].copy()
    for i in range(dst.shape[0]):
        p = part_of_node[dst[i]]
        out_src[cursor[p]] = src[i]
        out_dst[cursor[p]] = dst[i]
        cursor[p] += 1


@njit(cache=True, parallel=True)
def sort_segments(indptr, values):
    """Sort ``values[indptr[v]:indptr[v+1]]`` in place for every segment v."""
    for v in prange(indptr.shape[0] - 1):
        a = indptr[v]
        b = indptr[v + 1]
        if b - a > 1:
            values[a:b].sort()


@njit(cache=True, parallel=True)
def count_unique_in_segments(indptr, values, out_counts):
    """``out_counts[v]`` = number of distinct values in sorted segment v."""
    for v in prange(indptr.shape[0] - 1):
        a = indptr[v]
        b = indptr[v + 1]
        c = 0
        for i in range(a, b):
            if i == a or values[i] != values[i - 1]:
                c += 1
        out_counts[v] = c


@njit(cache=True, parallel=True)
def compact_unique_segments(indptr, values, new_indptr, out):
    """Copy the distinct values of each sorted segment into ``out`` at ``new_indptr``."""
    for v in prange(indptr.shape[0] - 1):
        a = indptr[v]
        b = indptr[v + 1]
        j = new_indptr[v]
        for i in range(a, b):
            if i == a or values[i] != values[i - 1]:
                out[j] = values[i]
                j += 1


def index_dtype(num_nodes: int) -> np.dtype:
    """The dtype of CSC indices for a graph of ``num_nodes`` nodes."""
    return np.dtype(np.int32) if num_nodes < 2**31 else np.dtype(np.int64)


@njit(cache=True, nogil=True)
def check_segments(indptr, indices, base, num_nodes, unique):
    """Check CSC invariants for the nodes whose segments ``indptr`` describes.

    ``indices`` holds the entries from global position ``base`` on. Returns
    ``(code, node_offset)``: code 0 = fine, 1 = indptr decreases, 2 = an id out
    of ``[0, num_nodes)``, 3 = a segment not sorted, 4 = a repeated id in a
    segment (only when ``unique``).
    """
    for v in range(indptr.shape[0] - 1):
        a = indptr[v] - base
        b = indptr[v + 1] - base
        if b < a:
            return 1, v
        for i in range(a, b):
            x = indices[i]
            if x < 0 or x >= num_nodes:
                return 2, v
            if i > a:
                if x < indices[i - 1]:
                    return 3, v
                if unique and x == indices[i - 1]:
                    return 4, v
    return 0, -1
