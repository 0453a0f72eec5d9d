"""Kernels of the feature packer.

* :func:`index_minibatch` — one minibatch's index row: each input node's tier and slot, and its cold
  ids sorted (a stable LSD radix sort, so equal to ``np.argsort(kind="stable")``).
* :func:`gather_runs` — gather the rows one feature slice contributes to each minibatch, as runs of
  whole rows (buffered writes at any byte offset).
* :func:`gather_pages` — the same, but as runs of whole 4 KiB pages for ``O_DIRECT`` writes: each
  minibatch keeps the not-yet-full last page of what it has written so far in a carry page, which is
  put in front of its next rows; its last page is zero-padded once its last row is in.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_RADIX_BITS = 11
"""Bits per pass of the radix sort (2048 buckets)."""


@njit(cache=True, nogil=True)
def index_minibatch(nodes, tier_of, slot_of, tier, slot, cold, order, tmp):
    """Tier, slot and sorted cold ids of one minibatch's input nodes.

    Args:
        nodes: int64 [L] the input nodes (global ids), plan order.
        tier_of, slot_of: int8 / int32 [N] each node's tier (0 cold, 1 host, 2 gpu) and slot in it.
        tier, slot: int8 / int32 [L] outputs, per input node; a cold node's slot is its rank among
            the minibatch's cold nodes by id (ties — repeated ids — in plan order).
        cold: int64 [L] output; ``cold[:k]`` are the cold ids, ascending.
        order, tmp: int64 [L] scratch.

    Returns:
        ``(k, n_gpu, bad)``: the number of cold nodes, of gpu-tier nodes, and -1 — or, when an id is
        outside ``0..N-1``, the position of the first such id (the outputs are then undefined).
    """
    n = tier_of.shape[0]
    size = nodes.shape[0]
    k = 0
    n_gpu = 0
    hi = 0
    for i in range(size):
        v = nodes[i]
        if v < 0 or v >= n:
            return 0, 0, i
        t = tier_of[v]
        tier[i] = t
        if t == 0:
            order[k] = i
            cold[k] = v
            k += 1
            if v > hi:
                hi = v
        else:
            slot[i] = slot_of[v]
            if t == 2:
                n_gpu += 1
    # sort positions order[:k] by key cold[:k] (stable): insertion sort when small, else LSD radix
    if k <= 64:
        for a in range(1, k):
            kv = cold[a]
            pv = order[a]
            b = a - 1
            while b >= 0 and cold[b] > kv:
                cold[b + 1] = cold[b]
                order[b + 1] = order[b]
                b -= 1
            cold[b + 1] = kv
            order[b + 1] = pv
    else:
        bits = 0
        while (np.int64(1) << bits) <= hi:
            bits += 1
        passes = max(1, (bits + _RADIX_BITS - 1) // _RADIX_BITS)
        width = (bits + passes - 1) // passes
        buckets = np.int64(1) << width
        mask = buckets - 1
        count = np.empty(buckets, np.int64)
        keys, pos = cold, order
        keys2, pos2 = tmp, np.empty(k, np.int64)
        for p in range(passes):
            shift = p * width
            count[:] = 0
            for a in range(k):
                count[(keys[a] >> shift) & mask] += 1
            total = 0
            for d in range(buckets):
                c = count[d]
                count[d] = total
                total += c
            for a in range(k):
                d = (keys[a] >> shift) & mask
                j = count[d]
                count[d] = j + 1
                keys2[j] = keys[a]
                pos2[j] = pos[a]
            keys, keys2 = keys2, keys
            pos, pos2 = pos2, pos
        if passes % 2 == 1:  # the result sits in the scratch arrays: move it to the outputs
            for a in range(k):
                cold[a] = keys[a]
                order[a] = pos[a]
    for j in range(k):
        slot[order[j]] = j
    return k, n_gpu, -1


@njit(cache=True, nogil=True)
def gather_runs(block, lo, hi, flat, start, end, cursor, m, m_end, buf, runs):
    """Copy the rows of slice ``[lo, hi)`` that minibatches ``m .. m_end-1`` need into ``buf``.

    ``block`` holds rows ``lo..hi-1`` (as machine words); minibatch ``k``'s
    sorted cold ids are ``flat[start[k]:end[k]]`` and ``cursor[k]`` is the
    position of its first id not yet written. For each minibatch with ids in
    the slice, its rows are appended to ``buf`` and one run ``(k, first
    position, count)`` is recorded in ``runs``. Stops when ``buf`` or ``runs``
    is full; returns ``(next minibatch, rows in buf, runs)``.
    """
    cap = buf.shape[0]
    max_runs = runs.shape[0]
    width = block.shape[1]
    fill = 0
    nr = 0
    while m < m_end:
        c = cursor[m]
        e = end[m]
        if c < e and flat[c] < hi:
            first = c
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
            runs[nr, 1] = first - start[m]
            runs[nr, 2] = c - first
            nr += 1
            if fill == cap or nr == max_runs:
                if c < e and flat[c] < hi:
                    return m, fill, nr
                return m + 1, fill, nr
        m += 1
    return m, fill, nr


@njit(cache=True, nogil=True)
def gather_pages(block, lo, hi, flat, start, end, cursor, m, m_end, ext_off, file_of, carry, page_words, buf, runs):
    """Like :func:`gather_runs`, but lays the rows out as whole pages, ready for ``O_DIRECT`` writes.

    Minibatch ``k``'s extent starts at byte ``ext_off[k]`` of file ``file_of[k]`` (page aligned) and
    has received ``cursor[k] - start[k]`` rows so far, of which the bytes past the last whole page
    wait in ``carry[k]`` (words; a page each). A run copies that carry, then the minibatch's rows
    in the slice, into ``buf`` at a page boundary; the whole pages of it are the run, and what is
    left over becomes the new carry. A run that completes the extent is zero-padded to a page
    boundary and written whole, so no carry is left behind. Runs lie back to back in ``buf``;
    runs that continue each other on disk are merged.

    Args:
        block: [hi - lo, width] words, the slice's rows.
        flat: the sorted cold ids (``flat[start[k]:end[k]]`` for minibatch ``k``).
        carry: [minibatches, page_words] words.
        buf: 1-D words, page aligned, a multiple of ``page_words`` long, at least two pages plus a row.
        runs: int64 [R, 4] output: (file, byte offset in the file, byte offset in buf, bytes).

    Returns:
        ``(next minibatch, words used in buf, runs)``; call again while the minibatch is < ``m_end``.
    """
    cap = buf.shape[0]
    max_runs = runs.shape[0]
    width = block.shape[1]
    itemsize = buf.itemsize
    fill = 0
    nr = 0
    while m < m_end:
        c = cursor[m]
        e = end[m]
        if c < e and flat[c] < hi:
            done = (c - start[m]) * width  # words of the extent received so far
            held = done % page_words  # of which the carry holds the last ones
            if fill + held + width > cap:
                return m, fill, nr  # full: not even one more row fits
            buf[fill:fill + held] = carry[m, :held]
            p = fill + held
            while c < e and p + width <= cap:
                r = flat[c] - lo
                if r >= hi - lo:
                    break
                dst = buf[p:p + width]  # (a view per row: indexing buf[p + w] directly copies 2x slower)
                src = block[r]
                for w in range(width):
                    dst[w] = src[w]
                p += width
                c += 1
            cursor[m] = c
            total = p - fill
            if c == e:
                length = -(-total // page_words) * page_words
                buf[p:fill + length] = 0
            else:
                length = total - total % page_words
                carry[m, :total - length] = buf[fill + length:p]
            if length > 0:
                f = file_of[m]
                off = ext_off[m] + (done - held) * itemsize
                if (nr > 0 and runs[nr - 1, 0] == f and runs[nr - 1, 1] + runs[nr - 1, 3] == off
                        and runs[nr - 1, 2] + runs[nr - 1, 3] == fill * itemsize):
                    runs[nr - 1, 3] += length * itemsize
                else:
                    runs[nr, 0] = f
                    runs[nr, 1] = off
                    runs[nr, 2] = fill * itemsize
                    runs[nr, 3] = length * itemsize
                    nr += 1
                fill += length
            if c < e and flat[c] < hi:
                return m, fill, nr  # the buffer is full mid-minibatch
            if nr == max_runs:
                return m + 1, fill, nr
        m += 1
    return m, fill, nr


def word_dtype(row_bytes: int) -> np.dtype:
    """The widest unsigned integer type that divides ``row_bytes`` (rows are copied as words)."""
    for w in (np.uint64, np.uint32, np.uint16):
        if row_bytes % np.dtype(w).itemsize == 0:
            return np.dtype(w)
    return np.dtype(np.uint8)
