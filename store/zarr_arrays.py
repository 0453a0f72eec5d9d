"""Zarr v3 arrays written and read without the zarr library in the hot path.

diskgraph writes dense arrays as standard Zarr v3 arrays with one codec
(``bytes``, little endian: no compression), so every chunk file holds raw
rows and anyone can open the arrays with ``zarr.open_array`` alone. Writing
the chunk files ourselves keeps memory bounded (one chunk in flight) and lets
readers memory-map a single-chunk array (topology, labels, splits) directly.

Two layouts:

* single chunk (``chunk_shape == shape``): written as a stream whose final
  length is known only at the end (CSC indices after de-duplication).
  Memory-mappable: :meth:`RawArray.memmap`.
* row chunks (``chunk_shape = (chunk_rows, *row_shape)``): features, written
  row slice by row slice, read back with :meth:`RawArray.read_rows`.

``bfloat16`` has no Zarr v3 core data type; it is stored as ``uint16`` bit
patterns with the attribute ``diskgraph_dtype: bfloat16``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from .checksums import new_data_hasher
from .errors import FormatError
from .files import AppendFile, read_json, write_file

BFLOAT16 = "bfloat16"
"""Name of the bfloat16 logical dtype; arrays of it are numpy ``uint16`` bit patterns."""

_ZARR_DTYPES = {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                "float16", "float32", "float64"}


def _whole(v) -> int:
    """A non-negative whole number from JSON (not a bool or a float)."""
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"{v!r} is not a whole number")
    return v


def storage_dtype(dtype: str) -> np.dtype:
    """The numpy dtype that holds values of the logical ``dtype`` (bfloat16 → uint16)."""
    return np.dtype(np.uint16) if dtype == BFLOAT16 else np.dtype(dtype)


def itemsize(dtype: str) -> int:
    """Bytes per element of the logical ``dtype``."""
    return storage_dtype(dtype).itemsize


def _chunk_key(index: tuple[int, ...]) -> str:
    return "c/" + "/".join(str(i) for i in index)


def write_group(path: str | os.PathLike, attributes: dict | None = None) -> None:
    """Make ``path`` a Zarr v3 group (writes its ``zarr.json``)."""
    Path(path).mkdir(parents=True, exist_ok=True)
    meta = {"zarr_format": 3, "node_type": "group", "attributes": attributes or {}}
    write_file(Path(path) / "zarr.json", json.dumps(meta, indent=2).encode())


def write_array_metadata(path: str | os.PathLike, shape: tuple[int, ...], chunk_shape: tuple[int, ...],
                         dtype: str, attributes: dict | None = None) -> None:
    """Write the ``zarr.json`` of an uncompressed little-endian Zarr v3 array at ``path``."""
    sdt = storage_dtype(dtype)
    if sdt.name not in _ZARR_DTYPES:
        raise ValueError(f"unsupported dtype {dtype}")
    attrs = dict(attributes or {})
    if dtype == BFLOAT16:
        attrs["diskgraph_dtype"] = BFLOAT16
    fill = False if sdt.kind == "b" else (0.0 if sdt.kind == "f" else 0)
    meta = {
        "zarr_format": 3,
        "node_type": "array",
        "shape": list(shape),
        "data_type": sdt.name,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [max(1, c) for c in chunk_shape]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": fill,
        "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
        "attributes": attrs,
        "storage_transformers": [],
    }
    Path(path).mkdir(parents=True, exist_ok=True)
    write_file(Path(path) / "zarr.json", json.dumps(meta, indent=2).encode())


class StreamArrayWriter:
    """Write a single-chunk array whose length is known only when it ends.

    Append 1-D slices (or row blocks with ``row_shape``) with :meth:`append`;
    :meth:`finish` writes the metadata and returns ``(shape, sha256)`` where the
    hash covers the array's bytes in C order. Memory: none beyond the caller's slices.
    """

    def __init__(self, path: str | os.PathLike, dtype: str, row_shape: tuple[int, ...] = ()):
        self.path = Path(path)
        self.dtype = dtype
        self.sdt = storage_dtype(dtype)
        self.row_shape = tuple(row_shape)
        self.rows = 0
        self._hash = hashlib.sha256()
        chunk_file = self.path / _chunk_key((0,) * (1 + len(self.row_shape)))
        chunk_file.parent.mkdir(parents=True, exist_ok=True)
        self._chunk_file = chunk_file
        self._file = AppendFile(chunk_file)

    def append(self, values: np.ndarray) -> None:
        """Append rows; ``values`` must have this writer's dtype and row shape."""
        values = np.ascontiguousarray(values, dtype=self.sdt)
        if values.shape[1:] != self.row_shape:
            raise ValueError(f"row shape {values.shape[1:]} != {self.row_shape}")
        if values.size == 0:
            return
        self._hash.update(memoryview(values).cast("B"))
        self._file.write(values)
        self.rows += values.shape[0]

    def finish(self, attributes: dict | None = None) -> tuple[tuple[int, ...], str]:
        """Close the chunk file, write the metadata, return (shape, sha256 hex)."""
        self._file.close()
        if self.rows == 0:
            self._chunk_file.unlink()
        shape = (self.rows, *self.row_shape)
        write_array_metadata(self.path, shape, shape, self.dtype, attributes)
        return shape, self._hash.hexdigest()

    def abort(self) -> None:
        """Close the file without finishing (the directory is about to be removed)."""
        self._file.abort()


def write_array(path: str | os.PathLike, values: np.ndarray, dtype: str | None = None,
                attributes: dict | None = None) -> tuple[tuple[int, ...], str]:
    """Write a whole in-memory array as a single-chunk array; returns (shape, sha256 hex)."""
    w = StreamArrayWriter(path, dtype or np.asarray(values).dtype.name, np.asarray(values).shape[1:])
    w.append(values)
    return w.finish(attributes)


class RowChunkWriter:
    """Write a 2-D ``[num_rows, *row_shape]`` array in row chunks, slice by slice.

    Rows must arrive in order through :meth:`append`. Each full chunk is written
    as one file as soon as it is complete; memory is one chunk
    (``chunk_rows * row_bytes``). :meth:`finish` pads the last chunk (the Zarr
    layout requires whole chunks), writes the metadata and returns the sha256
    of the logical rows in C order; with ``data_checksum``, :attr:`checksum` is then their
    :func:`~diskgraph.store.checksums.data_checksum` (what readers verify as they load the rows: the pack's tiers).
    """

    def __init__(self, path: str | os.PathLike, num_rows: int, row_shape: tuple[int, ...], dtype: str,
                 chunk_rows: int, data_checksum: bool = False):
        self.path = Path(path)
        self.num_rows = int(num_rows)
        self.row_shape = tuple(row_shape)
        self.dtype = dtype
        self.sdt = storage_dtype(dtype)
        self.chunk_rows = max(1, int(chunk_rows))
        self._buf = np.zeros((self.chunk_rows, *self.row_shape), dtype=self.sdt)
        self._fill = 0
        self._chunk_index = 0
        self.rows = 0
        self._hash = hashlib.sha256()
        self._xxh = new_data_hasher() if data_checksum else None
        self.checksum: int | None = None
        self.path.mkdir(parents=True, exist_ok=True)

    def _write_chunk(self) -> None:
        key = _chunk_key((self._chunk_index,) + (0,) * len(self.row_shape))
        f = self.path / key
        f.parent.mkdir(parents=True, exist_ok=True)
        if self._fill < self.chunk_rows:
            self._buf[self._fill:] = 0
        write_file(f, self._buf)
        self._chunk_index += 1
        self._fill = 0

    def append(self, rows: np.ndarray) -> None:
        """Append a block of rows (shape ``[k, *row_shape]``, this writer's dtype)."""
        rows = np.asarray(rows)
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"row shape {rows.shape[1:]} != {self.row_shape}")
        if rows.dtype != self.sdt:
            raise ValueError(f"dtype {rows.dtype} != {self.sdt}")
        if self.rows + rows.shape[0] > self.num_rows:
            raise ValueError("more rows than declared")
        data = memoryview(np.ascontiguousarray(rows)).cast("B")
        self._hash.update(data)
        if self._xxh is not None:
            self._xxh.update(data)
        pos = 0
        while pos < rows.shape[0]:
            take = min(self.chunk_rows - self._fill, rows.shape[0] - pos)
            self._buf[self._fill:self._fill + take] = rows[pos:pos + take]
            self._fill += take
            pos += take
            if self._fill == self.chunk_rows:
                self._write_chunk()
        self.rows += rows.shape[0]

    def finish(self, attributes: dict | None = None) -> tuple[tuple[int, ...], str]:
        """Write the last (padded) chunk and the metadata; returns (shape, sha256 hex)."""
        if self.rows != self.num_rows:
            raise ValueError(f"wrote {self.rows} rows of {self.num_rows}")
        if self._fill:
            self._write_chunk()
        shape = (self.num_rows, *self.row_shape)
        write_array_metadata(self.path, shape, (self.chunk_rows, *self.row_shape), self.dtype, attributes)
        self._buf = None
        self.checksum = self._xxh.intdigest() if self._xxh is not None else None
        return shape, self._hash.hexdigest()


class RawArray:
    """A read-only view of an uncompressed Zarr v3 array written by diskgraph.

    Attributes:
        path: the array's directory.
        shape: the array's shape.
        chunk_shape: the chunk shape; ``chunk_shape[1:] == shape[1:]`` (rows are never split).
        dtype: the logical dtype name (``bfloat16`` for uint16 bit patterns).
        storage_dtype: the numpy dtype of the stored values.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        meta_file = self.path / "zarr.json"
        meta = read_json(meta_file, f"array {self.path} is missing its zarr.json; the directory is incomplete, rebuild it",
                         f"{meta_file} is not valid JSON; the directory is damaged, rebuild it")
        try:
            codecs = meta.get("codecs", [])
            if (meta.get("zarr_format") != 3 or meta.get("node_type") != "array" or len(codecs) != 1
                    or codecs[0].get("name") != "bytes"
                    or codecs[0].get("configuration", {}).get("endian", "little") != "little"):
                raise FormatError(
                    f"{meta_file} describes a Zarr array diskgraph did not write (it reads only uncompressed "
                    "little-endian Zarr v3 arrays); re-import the data with diskgraph"
                )
            self.shape = tuple(_whole(s) for s in meta["shape"])
            self.chunk_shape = tuple(_whole(c) for c in meta["chunk_grid"]["configuration"]["chunk_shape"])
            self.attributes = meta.get("attributes", {})
            self.dtype = self.attributes.get("diskgraph_dtype", meta["data_type"])
            if self.dtype != BFLOAT16 and self.dtype not in _ZARR_DTYPES:
                raise ValueError(f"data type {self.dtype!r}")
            self.storage_dtype = storage_dtype(self.dtype)
            if not self.shape or len(self.chunk_shape) != len(self.shape) or self.chunk_shape[1:] != self.shape[1:] \
                    or self.chunk_shape[0] < 1:
                raise ValueError("chunk shape")
        except (KeyError, TypeError, ValueError, AttributeError, IndexError):
            raise FormatError(f"{meta_file} lacks required fields or they disagree; the directory is damaged, "
                              "rebuild it") from None
        self.row_shape = self.shape[1:]
        self.row_items = int(np.prod(self.row_shape)) if self.row_shape else 1
        self.row_bytes = self.row_items * self.storage_dtype.itemsize

    @property
    def nbytes(self) -> int:
        """Logical bytes of the array (excluding chunk padding)."""
        return self.shape[0] * self.row_bytes

    @property
    def num_chunks(self) -> int:
        """Number of row chunks."""
        return -(-self.shape[0] // self.chunk_shape[0]) if self.shape[0] else 0

    def chunk_path(self, i: int) -> Path:
        """The file holding row chunk ``i``."""
        return self.path / _chunk_key((i,) + (0,) * len(self.row_shape))

    def _check_chunk(self, i: int) -> Path:
        p = self.chunk_path(i)
        want = self.chunk_shape[0] * self.row_bytes
        try:
            size = p.stat().st_size
        except FileNotFoundError:
            raise FormatError(f"chunk file {p} is missing; the array is incomplete, rebuild it") from None
        if size != want:
            raise FormatError(f"chunk file {p} holds {size} bytes where {want} are expected; it is truncated or damaged, rebuild it")
        return p

    def memmap(self) -> np.ndarray:
        """The whole array as a read-only memory map (single-chunk arrays only)."""
        if self.shape[0] == 0:
            return np.zeros(self.shape, dtype=self.storage_dtype)
        if self.num_chunks != 1:
            raise ValueError(f"{self.path} has {self.num_chunks} chunks; memmap needs one")
        p = self._check_chunk(0)
        return np.memmap(p, dtype=self.storage_dtype, mode="r", shape=(self.chunk_shape[0], *self.row_shape))[: self.shape[0]]

    def read_rows(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``[start, stop)`` read with positioned reads into ``out`` (allocated when None)."""
        start, stop = max(0, start), min(stop, self.shape[0])
        n = max(0, stop - start)
        if out is None:
            out = np.empty((n, *self.row_shape), dtype=self.storage_dtype)
        flat = out.reshape(-1).view(np.uint8)
        cr = self.chunk_shape[0]
        pos = start
        while pos < stop:
            ci, off = divmod(pos, cr)
            take = min(cr - off, stop - pos)
            p = self._check_chunk(ci)
            dst = flat[(pos - start) * self.row_bytes:(pos - start + take) * self.row_bytes]
            fd = os.open(p, os.O_RDONLY)
            try:
                got = os.preadv(fd, [dst], off * self.row_bytes)
            finally:
                os.close(fd)
            if got != len(dst):
                raise FormatError(f"short read from {p}; the file is truncated, rebuild the array")
            pos += take
        return out

    def iter_slices(self, rows_per_slice: int):
        """Yield ``(start, rows)`` blocks of at most ``rows_per_slice`` rows, in order."""
        rows_per_slice = max(1, int(rows_per_slice))
        for start in range(0, self.shape[0], rows_per_slice):
            yield start, self.read_rows(start, min(start + rows_per_slice, self.shape[0]))

    def sha256(self, slice_bytes: int = 32 << 20) -> str:
        """sha256 of the logical bytes in C order, read in slices of about ``slice_bytes``."""
        h = hashlib.sha256()
        for _start, block in self.iter_slices(max(1, slice_bytes // max(1, self.row_bytes))):
            h.update(memoryview(np.ascontiguousarray(block)).cast("B"))
        return h.hexdigest()
