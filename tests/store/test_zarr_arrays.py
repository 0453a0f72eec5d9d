"""Zarr v3 arrays written by diskgraph (store.zarr_arrays): round trips, layout, interop with zarr."""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from diskgraph.store.errors import FormatError
from diskgraph.store.features_copy import bfloat16_to_float32, float32_to_bfloat16, nonfinite_mask
from diskgraph.store.zarr_arrays import RawArray, RowChunkWriter, StreamArrayWriter, write_array, write_group

DTYPES = ["float32", "float16", "int64", "int32", "uint8", "bfloat16"]


def _values(rng, shape, dtype):
    if dtype == "bfloat16":
        return float32_to_bfloat16(rng.standard_normal(shape).astype(np.float32))
    if np.dtype(dtype).kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    return rng.integers(0, 100, shape).astype(dtype)


@settings(max_examples=40, deadline=None)
@given(num_rows=st.integers(0, 60), dim=st.integers(1, 5), chunk_rows=st.integers(1, 17),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16), data=st.data())
def test_row_chunk_writer_round_trip(num_rows, dim, chunk_rows, dtype, seed, data):
    rng = np.random.default_rng(seed)
    values = _values(rng, (num_rows, dim), dtype)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "a"
        w = RowChunkWriter(path, num_rows, (dim,), dtype, chunk_rows)
        pos = 0
        while pos < num_rows:  # append in random block sizes, crossing chunk borders
            k = data.draw(st.integers(1, num_rows - pos))
            w.append(values[pos:pos + k])
            pos += k
        shape, sha = w.finish({"note": "x"})
        assert shape == (num_rows, dim)
        assert sha == hashlib.sha256(values.tobytes()).hexdigest()

        arr = RawArray(path)
        assert arr.shape == (num_rows, dim) and arr.dtype == dtype and arr.chunk_shape == (chunk_rows, dim)
        assert arr.num_chunks == -(-num_rows // chunk_rows)
        assert len([p for p in path.rglob("c/*/*") if p.is_file()]) == arr.num_chunks
        assert arr.nbytes == values.nbytes and arr.attributes["note"] == "x"
        np.testing.assert_array_equal(arr.read_rows(0, num_rows), values)
        a = data.draw(st.integers(0, num_rows))
        b = data.draw(st.integers(a, num_rows))
        np.testing.assert_array_equal(arr.read_rows(a, b), values[a:b])
        out = np.empty((b - a, dim), dtype=arr.storage_dtype)
        assert arr.read_rows(a, b, out=out) is out
        np.testing.assert_array_equal(out, values[a:b])
        # past the end is clipped
        np.testing.assert_array_equal(arr.read_rows(a, num_rows + 5), values[a:])
        step = data.draw(st.integers(1, 20))
        blocks = list(arr.iter_slices(step))
        assert [s for s, _ in blocks] == list(range(0, num_rows, step))
        if blocks:
            np.testing.assert_array_equal(np.concatenate([blk for _, blk in blocks]), values)
        assert arr.sha256(slice_bytes=int(step * arr.row_bytes)) == sha
        # the zarr library reads the same values
        z = zarr.open_array(str(path), mode="r")
        np.testing.assert_array_equal(z[:], values)
        if dtype == "bfloat16":
            assert z.dtype == np.uint16 and z.attrs["diskgraph_dtype"] == "bfloat16"


@settings(max_examples=30, deadline=None)
@given(lengths=st.lists(st.integers(0, 30), max_size=6), dtype=st.sampled_from(["int64", "int32", "float32"]),
       row=st.sampled_from([(), (3,)]))
def test_stream_array_writer_round_trip(lengths, dtype, row):
    rng = np.random.default_rng(len(lengths))
    parts = [_values(rng, (n, *row), dtype) for n in lengths]
    whole = np.concatenate(parts) if parts else np.zeros((0, *row), dtype=dtype)
    with tempfile.TemporaryDirectory() as d:
        w = StreamArrayWriter(Path(d) / "s", dtype, row)
        for p in parts:
            w.append(p)
        shape, sha = w.finish()
        assert shape == whole.shape and sha == hashlib.sha256(whole.tobytes()).hexdigest()
        arr = RawArray(Path(d) / "s")
        np.testing.assert_array_equal(arr.memmap(), whole)
        assert whole.size == 0 or not arr.memmap().flags.writeable
        np.testing.assert_array_equal(zarr.open_array(str(Path(d) / "s"), mode="r")[:], whole)


def test_write_array_and_group_open_with_zarr(tmp_path):
    write_group(tmp_path / "g", {"kind": "test"})
    write_array(tmp_path / "g" / "x", np.arange(10, dtype=np.int64))
    write_array(tmp_path / "g" / "empty", np.zeros(0, dtype=np.int64))
    g = zarr.open_group(str(tmp_path / "g"), mode="r")
    assert g.attrs["kind"] == "test"
    assert sorted(g.array_keys()) == ["empty", "x"]
    np.testing.assert_array_equal(g["x"][:], np.arange(10))
    assert g["empty"].shape == (0,)
    assert RawArray(tmp_path / "g" / "empty").memmap().shape == (0,)


def test_writer_rejects_wrong_rows(tmp_path):
    w = RowChunkWriter(tmp_path / "a", 4, (2,), "float32", 3)
    with pytest.raises(ValueError):
        w.append(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError):
        w.append(np.zeros((2, 2), np.float64))
    w.append(np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError):
        w.append(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="wrote 3 rows of 4"):
        w.finish()


def _small_array(tmp_path) -> Path:
    w = RowChunkWriter(tmp_path / "a", 10, (4,), "float32", 4)
    w.append(np.arange(40, dtype=np.float32).reshape(10, 4))
    w.finish()
    return tmp_path / "a"


def test_truncated_or_missing_chunk_is_a_format_error(tmp_path):
    path = _small_array(tmp_path)
    arr = RawArray(path)
    chunk = arr.chunk_path(1)
    chunk.write_bytes(chunk.read_bytes()[:-4])
    with pytest.raises(FormatError, match=rf"chunk file {chunk} holds 60 bytes where 64 are expected"):
        arr.read_rows(0, 10)
    np.testing.assert_array_equal(arr.read_rows(0, 4), np.arange(16, dtype=np.float32).reshape(4, 4))
    chunk.unlink()
    with pytest.raises(FormatError, match=rf"chunk file {chunk} is missing"):
        arr.read_rows(5, 6)


def test_metadata_problems_are_format_errors(tmp_path):
    with pytest.raises(FormatError, match="missing its zarr.json"):
        RawArray(tmp_path / "nothing")
    path = _small_array(tmp_path)
    (path / "zarr.json").write_text("{not json")
    with pytest.raises(FormatError, match="is not valid JSON"):
        RawArray(path)
    z = zarr.create_array(str(tmp_path / "compressed"), shape=(10, 4), chunks=(4, 4), dtype="float32",
                          compressors=zarr.codecs.ZstdCodec())
    z[:] = 1
    with pytest.raises(FormatError, match="did not write"):
        RawArray(tmp_path / "compressed")


def test_metadata_is_standard_zarr_v3(tmp_path):
    meta = json.loads((_small_array(tmp_path) / "zarr.json").read_text())
    assert meta["zarr_format"] == 3 and meta["node_type"] == "array"
    assert meta["codecs"] == [{"name": "bytes", "configuration": {"endian": "little"}}]
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [4, 4]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(width=32, allow_nan=False), min_size=1, max_size=50))
def test_bfloat16_conversion_rounds_to_nearest_even(values):
    torch = pytest.importorskip("torch")
    x = np.array(values, dtype=np.float32)
    bits = float32_to_bfloat16(x)
    want = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(bits, want)
    # every bfloat16 value converts to float32 and back unchanged
    np.testing.assert_array_equal(float32_to_bfloat16(bfloat16_to_float32(bits)), bits)


def test_bfloat16_specials():
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0], dtype=np.float32)
    bits = float32_to_bfloat16(x)
    back = bfloat16_to_float32(bits)
    assert np.isnan(back[0]) and back[1] == np.inf and back[2] == -np.inf
    np.testing.assert_array_equal(back[3:], [0.0, -0.0, 1.0])
    np.testing.assert_array_equal(nonfinite_mask(bits, "bfloat16"), [True, True, True, False, False, False])
    np.testing.assert_array_equal(nonfinite_mask(x, "float32"), [True, True, True, False, False, False])
