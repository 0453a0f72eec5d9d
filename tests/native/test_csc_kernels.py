"""The CSC kernels of diskgraph.native.csc against plain numpy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diskgraph.native import csc as kernels

SETTINGS = settings(max_examples=40, deadline=None)


@st.composite
def keyed_values(draw, max_keys=12, max_len=80):
    n = draw(st.integers(1, max_keys))
    m = draw(st.integers(0, max_len))
    keys = np.array(draw(st.lists(st.integers(0, n - 1), min_size=m, max_size=m)), dtype=np.int64)
    values = np.array(draw(st.lists(st.integers(0, 10**6), min_size=m, max_size=m)), dtype=np.int64)
    return n, keys, values


@st.composite
def segments(draw, max_segments=10, max_len=8, max_value=6):
    lens = draw(st.lists(st.integers(0, max_len), min_size=0, max_size=max_segments))
    indptr = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(lens, out=indptr[1:])
    values = np.array(draw(st.lists(st.integers(0, max_value), min_size=int(indptr[-1]), max_size=int(indptr[-1]))),
                      dtype=np.int32)
    return indptr, values


@SETTINGS
@given(keyed_values(), st.integers(0, 5))
def test_count_by_key_matches_bincount(kv, lo):
    n, keys, _ = kv
    counts = np.zeros(n, dtype=np.int64)
    kernels.count_by_key(keys + lo, lo, counts)
    np.testing.assert_array_equal(counts, np.bincount(keys, minlength=n))
    # it accumulates: a second call doubles the counts
    kernels.count_by_key(keys + lo, lo, counts)
    np.testing.assert_array_equal(counts, 2 * np.bincount(keys, minlength=n))


@SETTINGS
@given(keyed_values(), st.integers(0, 5))
def test_scatter_by_key_is_a_stable_counting_sort(kv, lo):
    n, keys, values = kv
    counts = np.bincount(keys, minlength=n)
    cursor = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    out = np.full(keys.size, -1, dtype=np.int64)
    kernels.scatter_by_key(values, keys + lo, lo, cursor, out)
    order = np.argsort(keys, kind="stable")
    np.testing.assert_array_equal(out, values[order])
    np.testing.assert_array_equal(cursor, np.cumsum(counts))


@SETTINGS
@given(keyed_values(max_keys=20), st.integers(1, 6))
def test_group_by_part_is_stable_and_complete(kv, num_parts):
    n, dst, src = kv
    num_parts = min(num_parts, n)
    # contiguous ranges of node ids, like _partition makes
    cuts = np.linspace(0, n, num_parts + 1).astype(np.int64)
    part_of = np.repeat(np.arange(num_parts, dtype=np.int32), np.diff(cuts))
    out_src = np.empty(src.size, dtype=np.int32)
    out_dst = np.empty(dst.size, dtype=np.int32)
    offsets = np.full(num_parts + 1, 99, dtype=np.int64)
    kernels.group_by_part(src, dst, part_of, num_parts, out_src, out_dst, offsets)
    parts = part_of[dst]
    order = np.argsort(parts, kind="stable")
    np.testing.assert_array_equal(out_src, src[order])
    np.testing.assert_array_equal(out_dst, dst[order])
    np.testing.assert_array_equal(offsets, np.concatenate([[0], np.cumsum(np.bincount(parts, minlength=num_parts))]))


@SETTINGS
@given(segments())
def test_sort_segments_sorts_each_segment_only(seg):
    indptr, values = seg
    expect = values.copy()
    for a, b in zip(indptr[:-1], indptr[1:]):
        expect[a:b] = np.sort(expect[a:b])
    kernels.sort_segments(indptr, values)
    np.testing.assert_array_equal(values, expect)


@SETTINGS
@given(segments())
def test_unique_in_segments(seg):
    indptr, values = seg
    kernels.sort_segments(indptr, values)
    counts = np.empty(indptr.size - 1, dtype=np.int64)
    kernels.count_unique_in_segments(indptr, values, counts)
    uniq = [np.unique(values[a:b]) for a, b in zip(indptr[:-1], indptr[1:])]
    np.testing.assert_array_equal(counts, [u.size for u in uniq])
    new_ptr = np.zeros(indptr.size, dtype=np.int64)
    np.cumsum(counts, out=new_ptr[1:])
    out = np.full(int(new_ptr[-1]), -1, dtype=values.dtype)
    kernels.compact_unique_segments(indptr, values, new_ptr, out)
    expect = np.concatenate(uniq) if uniq else np.zeros(0, dtype=values.dtype)
    np.testing.assert_array_equal(out, expect)


def test_check_segments_codes():
    ptr = np.array([0, 2, 3, 5], dtype=np.int64)
    assert tuple(kernels.check_segments(ptr, np.array([0, 1, 2, 0, 2], np.int32), 0, 3, True)) == (0, -1)
    # a base offset: indices hold entries from global position 10 on
    assert tuple(kernels.check_segments(ptr + 10, np.array([0, 1, 2, 0, 2], np.int32), 10, 3, True)) == (0, -1)
    assert tuple(kernels.check_segments(np.array([0, 2, 1, 5], np.int64), np.zeros(5, np.int32), 0, 3, False))[0] == 1
    assert tuple(kernels.check_segments(ptr, np.array([0, 1, 3, 0, 2], np.int32), 0, 3, False)) == (2, 1)
    assert tuple(kernels.check_segments(ptr, np.array([0, 1, -1, 0, 2], np.int32), 0, 3, False)) == (2, 1)
    assert tuple(kernels.check_segments(ptr, np.array([0, 1, 2, 2, 0], np.int32), 0, 3, False)) == (3, 2)
    # repeats are fine without `unique`, a problem with it
    rep = np.array([1, 1, 2, 0, 2], np.int32)
    assert tuple(kernels.check_segments(ptr, rep, 0, 3, False)) == (0, -1)
    assert tuple(kernels.check_segments(ptr, rep, 0, 3, True)) == (4, 0)


@pytest.mark.parametrize("n, dtype", [(0, np.int32), (2**31 - 1, np.int32), (2**31, np.int64), (2**40, np.int64)])
def test_index_dtype(n, dtype):
    assert kernels.index_dtype(n) == np.dtype(dtype)
