"""Streaming readers of raw inputs (store.sources): every chunking reproduces the whole array."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from diskgraph.store.errors import InputError
from diskgraph.store.sources.edges import NpyEdges, NpzEdges, TableEdges, open_edges
from diskgraph.store.sources.features import (NpyFeatures, NpzFeatures, ParquetFeatures, RawFeatures, ZarrFeatures,
                                              open_features)
from diskgraph.store.sources.labels import as_index_split, check_labels, random_splits
from diskgraph.store.sources.npy import open_npy

E = 101


def _edges():
    rng = np.random.default_rng(0)
    return rng.integers(0, 1000, E), rng.integers(0, 1000, E)


def _collect_edges(source, max_edges):
    starts, src, dst = [], [], []
    for s, a, b in source.chunks(max_edges):
        assert a.dtype == np.int64 and b.dtype == np.int64 and len(a) == len(b) <= max_edges
        starts.append(s)
        src.append(a)
        dst.append(b)
    expect_starts = list(np.cumsum([0] + [len(a) for a in src[:-1]])) if src else []
    assert starts == expect_starts
    return np.concatenate(src), np.concatenate(dst)


LAYOUTS = ["[2,E]", "[E,2]", "[2,E] fortran", "[E,2] fortran"]


def _layout(src, dst, layout, dtype):
    a = np.stack([src, dst]).astype(dtype)
    if layout.startswith("[E,2]"):
        a = a.T.copy()
    return np.asfortranarray(a) if layout.endswith("fortran") else a


@pytest.fixture(scope="module")
def edge_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("edges")
    src, dst = _edges()
    files = {}
    for i, layout in enumerate(LAYOUTS):
        for dtype in ("int32", "int64"):
            a = _layout(src, dst, layout, dtype)
            np.save(d / f"{i}-{dtype}.npy", a)
            np.savez(d / f"{i}-{dtype}.npz", edges=a)
            np.savez_compressed(d / f"{i}-{dtype}-c.npz", edges=a)
            files[(layout, dtype)] = d / f"{i}-{dtype}"
    return src, dst, files


@settings(max_examples=30, deadline=None)
@given(layout=st.sampled_from(LAYOUTS), dtype=st.sampled_from(["int32", "int64"]), max_edges=st.integers(1, 120),
       kind=st.sampled_from(["npy", "npz", "npz-compressed"]))
def test_edge_chunks_reassemble(edge_files, layout, dtype, max_edges, kind):
    src, dst, files = edge_files
    base = files[(layout, dtype)]
    if kind == "npy":
        source = NpyEdges(f"{base}.npy")
        assert isinstance(source.array, np.memmap)  # memory-mapped, never loaded whole
    else:
        source = NpzEdges(f"{base}{'-c' if kind == 'npz-compressed' else ''}.npz", "edges")
    assert source.num_edges == E
    got_src, got_dst = _collect_edges(source, max_edges)
    np.testing.assert_array_equal(got_src, src)
    np.testing.assert_array_equal(got_dst, dst)


def test_npz_edges_upper_yields_both_directions(tmp_path):
    np.savez_compressed(tmp_path / "d.npz", edges_upper=np.array([[0, 1, 2], [3, 4, 5]], dtype=np.int32))
    s = NpzEdges(tmp_path / "d.npz", "edges_upper", symmetric_upper=True)
    assert s.num_edges == 6
    src, dst = _collect_edges(s, 2)
    assert list(zip(src.tolist(), dst.tolist())) == [(0, 3), (1, 4), (2, 5), (3, 0), (4, 1), (5, 2)]


@settings(max_examples=25, deadline=None)
@given(max_edges=st.integers(1, 60), cuts=st.lists(st.integers(0, E), max_size=3))
def test_table_edges_across_part_files(max_edges, cuts):
    src, dst = _edges()
    bounds = sorted({0, E, *cuts})
    with tempfile.TemporaryDirectory() as d:
        for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            pq.write_table(pa.table({"source": src[a:b], "target": dst[a:b]}), Path(d) / f"p{i}.parquet")
        source = open_edges(d)
        assert isinstance(source, TableEdges) and source.num_edges == E
        got_src, got_dst = _collect_edges(source, max_edges)
    np.testing.assert_array_equal(got_src, src)
    np.testing.assert_array_equal(got_dst, dst)


def test_edge_source_refusals(tmp_path):
    (tmp_path / "e.txt").write_text("0 1\n")
    with pytest.raises(InputError, match="cannot tell the format .*--edges-format"):
        open_edges(tmp_path / "e.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no .parquet or .csv part files"):
        open_edges(tmp_path / "empty")
    (tmp_path / "mixed").mkdir()
    pq.write_table(pa.table({"source": [0], "target": [1]}), tmp_path / "mixed" / "a.parquet")
    (tmp_path / "mixed" / "b.csv").write_text("source,target\n0,1\n")
    with pytest.raises(InputError, match="mixes Parquet and CSV"):
        open_edges(tmp_path / "mixed")
    (tmp_path / "null.csv").write_text("source,target\n0,1\n,2\n")
    with pytest.raises(InputError, match="empty values"):
        list(open_edges(tmp_path / "null.csv").chunks(10))


# -- features ----------------------------------------------------------------------------------------

ROWS, DIM = 53, 5


@pytest.fixture(scope="module")
def feature_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("feats")
    x = np.random.default_rng(1).standard_normal((ROWS, DIM)).astype(np.float32)
    np.save(d / "x.npy", x)
    np.savez_compressed(d / "x.npz", features=x)
    x.tofile(d / "x.bin")
    pq.write_table(pa.table({"v": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), DIM)}), d / "x.parquet",
                   row_group_size=11)
    pq.write_table(pa.table({f"c{j}": x[:, j] for j in range(DIM)}), d / "cols.parquet", row_group_size=17)
    z = zarr.create_array(str(d / "x.zarr"), shape=x.shape, chunks=(10, 2), dtype="float32",
                          compressors=zarr.codecs.ZstdCodec())
    z[:] = x
    return x, {
        "npy": lambda: NpyFeatures(d / "x.npy"),
        "npz": lambda: NpzFeatures(d / "x.npz"),
        "raw": lambda: RawFeatures(d / "x.bin", "float32", DIM),
        "parquet-list": lambda: ParquetFeatures(d / "x.parquet"),
        "parquet-columns": lambda: ParquetFeatures(d / "cols.parquet"),
        "zarr": lambda: ZarrFeatures(d / "x.zarr"),
    }


@settings(max_examples=30, deadline=None)
@given(kind=st.sampled_from(["npy", "npz", "raw", "parquet-list", "parquet-columns", "zarr"]),
       rows=st.integers(1, 70))
def test_feature_slices_reassemble(feature_files, kind, rows):
    x, open_source = feature_files
    source = open_source[kind]()
    assert (source.num_rows, source.dim, source.dtype) == (ROWS, DIM, "float32")
    starts, blocks = [], []
    for start, block in source.slices(rows):
        assert block.shape[1] == DIM and 0 < block.shape[0] <= rows
        starts.append(start)
        blocks.append(block)
    assert starts == list(range(0, ROWS, rows)) or kind.startswith("parquet")  # parquet: per row group
    np.testing.assert_array_equal(np.concatenate(blocks), x)


def test_feature_format_inference(feature_files, tmp_path):
    d = Path(feature_files[1]["npy"]().path).parent
    assert isinstance(open_features(d / "x.npy"), NpyFeatures)
    assert isinstance(open_features(d / "x.zarr"), ZarrFeatures)
    assert isinstance(open_features(d / "x.parquet"), ParquetFeatures)
    assert isinstance(open_features(d / "x.bin", dtype="float32", dim=DIM), RawFeatures)
    (tmp_path / "x.dat").write_bytes(b"\0" * 8)
    with pytest.raises(InputError, match="cannot tell the format .*--features-format"):
        open_features(tmp_path / "x.dat")
    assert open_features(tmp_path / "x.dat", "raw", "float16", 2).num_rows == 2
    np.save(tmp_path / "x3.npy", np.zeros((2, 2, 2), np.float32))
    with pytest.raises(InputError, match=r"shape \(2, 2, 2\).*2-D"):
        open_features(tmp_path / "x3.npy")
    (tmp_path / "notzarr").mkdir()
    with pytest.raises(InputError, match="cannot be opened as a Zarr array"):
        open_features(tmp_path / "notzarr", "zarr")


def test_ragged_parquet_lists_are_refused(tmp_path):
    pq.write_table(pa.table({"v": pa.array([[1.0, 2.0], [3.0]], pa.list_(pa.float32()))}), tmp_path / "r.parquet")
    src = ParquetFeatures(tmp_path / "r.parquet")
    with pytest.raises(InputError, match="lists of different lengths"):
        list(src.slices(10))


def test_open_npy_checks_size(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(100, dtype=np.int64))
    assert isinstance(open_npy(tmp_path / "a.npy", "x", "--x"), np.memmap)
    data = (tmp_path / "a.npy").read_bytes()
    (tmp_path / "b.npy").write_bytes(data[:-1])
    with pytest.raises(InputError, match="truncated: its header promises 800 bytes .* holds 799"):
        open_npy(tmp_path / "b.npy", "x", "--x")
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="holds Python objects"):
        open_npy(tmp_path / "o.npy", "x", "--x")
    np.save(tmp_path / "e.npy", np.zeros((0, 2), np.int64))
    assert open_npy(tmp_path / "e.npy", "x", "--x").shape == (0, 2)


# -- labels and splits -------------------------------------------------------------------------------

def test_check_labels():
    y, c = check_labels(np.array([0, 2, -1, 1]), 4, None, "y", "test")
    assert c == 3 and y.dtype == np.int64
    y, c = check_labels(np.array([0.0, 2.0, -1.0, 1.0]), 4, 4, "y", "test")  # integral floats are fine
    assert c == 4 and y.tolist() == [0, 2, -1, 1]
    assert check_labels(np.full(3, -1), 3, None, "y", "test")[1] == 0
    with pytest.raises(InputError, match="1-D"):
        check_labels(np.zeros((2, 2), np.int64), 2, None, "y", "test")


@pytest.mark.parametrize("labels, num_classes, match", [
    ([0, 2**31, 1], None, r"label 2147483648 at node 1, more classes than the graph's 3 nodes; .* renumber"),
    ([0, 3, 1], None, r"label 3 at node 1, more classes than the graph's 3 nodes"),
    ([0, 1, 1], 2**31 + 1, r"--num-classes 2147483649 is more classes than the graph's 3 nodes"),
    (np.array([0, 2**63, 1], dtype=np.uint64), None, r"label -9223372036854775808 at node 1"),
])
def test_labels_bounded_by_the_node_count(labels, num_classes, match):
    """Issue 12, finding 4: a label of 2**31 made inspect allocate 16 GiB and train 137 GB; class ids are bounded by
    the node count (dense ids 0..C-1 cannot outnumber the nodes), before anything is allocated."""
    with pytest.raises(InputError, match=match):
        check_labels(np.asarray(labels), 3, num_classes, "y", "test")


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 200), seed=st.integers(0, 1000), fr=st.tuples(*[st.integers(0, 10)] * 3),
       unlabelled=st.floats(0, 1))
def test_random_splits_properties(n, seed, fr, unlabelled):
    total = max(sum(fr), 10)
    fractions = tuple(f / total for f in fr)
    labels = np.where(np.random.default_rng(seed + 1).random(n) < unlabelled, -1, 1)
    a = random_splits(fractions, seed, n, labels)
    b = random_splits(fractions, seed, n, labels)
    pool = np.flatnonzero(labels >= 0)
    union = np.concatenate([a["train"], a["val"], a["test"]])
    assert np.unique(union).size == union.size and np.isin(union, pool).all()
    assert a["train"].size == round(fractions[0] * pool.size)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
        assert (np.diff(a[k]) > 0).all()
    no_labels = random_splits(fractions, seed, n, None)
    assert np.isin(np.concatenate(list(no_labels.values())), np.arange(n)).all()


def test_as_index_split():
    np.testing.assert_array_equal(as_index_split(np.array([3, 1, 2]), 5, "train", "t"), [1, 2, 3])
    np.testing.assert_array_equal(as_index_split(np.array([True, False, True]), 3, "train", "t"), [0, 2])
    with pytest.raises(InputError, match="dtype float64"):
        as_index_split(np.array([0.0]), 3, "train", "t")
    with pytest.raises(InputError, match="node index -1"):
        as_index_split(np.array([-1]), 3, "train", "t")
