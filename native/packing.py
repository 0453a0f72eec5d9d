"""Kernels of the feature packer: gather the rows one feature slice contributes to each minibatch."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def gather_runs(block, lo, hi, flat, ptr, cursor, m, buf, runs):
    """Copy the rows of slice ``[lo, hi)`` that minibatches ``m, m+1, …`` need into ``buf``.

    ``block`` holds rows ``lo..hi-1`` (as machine words); minibatch ``k``'s
    sorted cold ids are ``flat[ptr[k]:ptr[k+1]]`` and ``cursor[k]`` is the
    position of its first id not yet written. For each minibatch with ids in
    the slice, its rows are appended to ``buf`` and one run ``(k, first
    position, count)`` is recorded in ``runs``. Stops when ``buf`` or ``runs``
    is full; returns ``(next minibatch, rows in buf, runs)``.
    """
    num = cursor.shape[0]
    cap = buf.shape[0]
    max_runs = runs.shape[0]
    width = block.shape[1]
    fill = 0
    nr = 0
    while m < num:
        c = cursor[m]
        e = ptr[m + 1]
        if c < e and flat[c] < hi:
            start = c
            while c < e and fill < cap:
                r = flat[c] - lo
                if r >= hi - lo:
                    break
                for w in range(width):
                    buf[fill, w] = block[r, w]
                fill += 1
                c += 1
            cursor[m] = c
            runs[nr, 0] = m
            runs[nr, 1] = start
            runs[nr, 2] = c - start
            nr += 1
            if fill == cap or nr == max_runs:
                if c < e and flat[c] < hi:
                    return m, fill, nr
                return m + 1, fill, nr
        m += 1
    return m, fill, nr


def word_dtype(row_bytes: int) -> np.dtype:
    """The widest unsigned integer type that divides ``row_bytes`` (rows are copied as words)."""
    for w in (np.uint64, np.uint32, np.uint16):
        if row_bytes % np.dtype(w).itemsize == 0:
            return np.dtype(w)
    return np.dtype(np.uint8)
