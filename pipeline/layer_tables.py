"""The node tables of layer-wise inference (:mod:`diskgraph.pipeline.layerwise`): :class:`Table` (read by row ranges
as float32, on disk, in memory or memory-mapped), :class:`TableWriter` (a new table appended in node order, or written
in a partition order), :class:`TableShape` (a table not open) and :class:`Topology` (the dataset's CSC, read in
ranges)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..native import layerwise as kernels
from ..store.errors import InputError
from ..store.zarr_arrays import BFLOAT16, RawArray, RowChunkWriter, write_array_metadata

if TYPE_CHECKING:
    from .layer_order import Ordering


def _float32(rows: np.ndarray, dtype: str) -> np.ndarray:
    """Stored rows of logical ``dtype`` as float32 (a view when they already are)."""
    if dtype == BFLOAT16:
        return (rows.astype(np.uint32) << 16).view(np.float32)
    if rows.dtype == np.float32:
        return rows
    return rows.astype(np.float32)


class ChunkedRows:
    """A table's rows as its chunk files' memory maps: what ``--storage mmap`` gathers from, row by row in edge order
    over the whole table (as a layer-wise inference over an ``np.memmap`` feature table does); the page cache does
    the I/O.

    Attributes:
        chunks: a numba typed list of float32 ``[chunk_rows, width]`` memory maps.
        chunk_rows: rows per chunk.
    """

    def __init__(self, array: RawArray):
        from numba.typed import List

        self.chunk_rows = array.chunk_shape[0]
        self.chunks = List()
        for i in range(array.num_chunks):
            self.chunks.append(np.memmap(array._check_chunk(i), dtype=np.float32, mode="r",
                                         shape=(self.chunk_rows, int(np.prod(array.row_shape)))))

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (any order) as a new float32 array."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.chunks[0].shape[1]), dtype=np.float32)
        which = rows // self.chunk_rows
        for c in np.unique(which):
            sel = which == c
            out[sel] = self.chunks[int(c)][rows[sel] - int(c) * self.chunk_rows]
        return out


class Table:
    """A ``[num_rows, width]`` node table, read by row ranges as float32.

    Three kinds: ``disk`` (a Zarr array read with positioned reads in slices, pages dropped after use), ``ram`` (a
    numpy array in memory, one slice) and ``mmap`` (the Zarr array's chunk files as memory maps, one slice that is
    the whole table: the kernels gather rows at random in edge order and the page cache does the I/O — the
    memory-mapped baseline, :class:`ChunkedRows`).

    Attributes:
        num_rows, width: shape.
        dtype: the stored logical dtype (``float32``, ``float16``, ``bfloat16``).
        row_bytes: stored bytes per row.
    """

    def __init__(self, kind: str, array: RawArray | None = None, data: np.ndarray | None = None,
                 drop_cache: bool = True):
        self.kind = kind
        self.array = array
        self.data = data
        self.dtype = array.dtype if array is not None else data.dtype.name
        shape = array.shape if array is not None else data.shape
        self.num_rows = int(shape[0])
        self.width = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        self.row_bytes = array.row_bytes if array is not None else self.width * data.dtype.itemsize
        self.drop_cache = drop_cache
        self._fds: dict[int, int] = {}
        self.order: Ordering | None = None
        """Set when the rows are stored in partition order (row ``order.pos[v]`` holds node ``v``)."""
        self.dst_rows: Table | None = None
        """With :attr:`order`: the same rows in node order, read for the destinations themselves."""
        if kind == "mmap" and self.dtype != "float32":
            raise InputError(f"--storage mmap gathers float32 rows in place but {array.path} holds {self.dtype}; use "
                             "--storage disk or ram")

    @classmethod
    def on_disk(cls, array: RawArray, drop_cache: bool = True) -> "Table":
        return cls("disk", array=array, drop_cache=drop_cache)

    @classmethod
    def in_ram(cls, array: RawArray) -> "Table":
        """The whole array read into memory as float32 (the in-memory reference)."""
        disk = cls.on_disk(array, drop_cache=False)
        try:
            return cls("ram", data=np.ascontiguousarray(disk.read(0, disk.num_rows)))
        finally:
            disk.close()

    @property
    def nbytes(self) -> int:
        """Stored bytes of the table's rows."""
        return self.num_rows * self.row_bytes

    @property
    def natural_slice_rows(self) -> int | None:
        """Rows per slice this kind imposes (``ram``: all; ``mmap``: a chunk), None for ``disk`` (the budget decides)."""
        if self.kind == "ram":
            return max(1, self.num_rows)
        if self.kind == "mmap":
            return max(1, self.num_rows)
        return None

    def _fd(self, chunk: int) -> int:
        fd = self._fds.get(chunk)
        if fd is None:
            fd = self._fds[chunk] = os.open(self.array._check_chunk(chunk), os.O_RDONLY)
        return fd

    def slice(self, start: int, stop: int):
        """Rows ``[start, stop)`` for gathering: ``disk`` reads them (a new array), ``ram`` gives a view, ``mmap`` the
        whole table's :class:`ChunkedRows` (its one slice)."""
        if self.kind == "ram":
            return self.data[start:stop]
        if self.kind == "mmap":
            if (start, stop) != (0, self.num_rows):
                raise ValueError("an mmap table is gathered from as one slice")
            return ChunkedRows(self.array)
        return self.read(start, stop)

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``[start, stop)`` as a float32 array ``[stop - start, width]`` (into ``out`` when given: float32
        tables only)."""
        if self.data is not None:
            return np.array(self.data[start:stop], dtype=np.float32)
        arr = self.array
        if out is None or self.dtype != "float32":
            out = np.empty((stop - start, *arr.row_shape), dtype=arr.storage_dtype)
        flat = out.reshape(-1).view(np.uint8)
        cr, rb = arr.chunk_shape[0], arr.row_bytes
        pos = start
        while pos < stop:
            ci, off = divmod(pos, cr)
            take = min(cr - off, stop - pos)
            fd = self._fd(ci)
            dst = flat[(pos - start) * rb:(pos - start + take) * rb]
            done = 0
            while done < len(dst):
                got = os.preadv(fd, [dst[done:]], off * rb + done)
                if got == 0:
                    raise InputError(f"short read from {arr.chunk_path(ci)}; the file is truncated, rebuild it")
                done += got
            if self.drop_cache and self.kind == "disk":
                os.posix_fadvise(fd, off * rb, take * rb, os.POSIX_FADV_DONTNEED)
            pos += take
        return _float32(out.reshape(stop - start, -1), self.dtype)

    def read_runs(self, start: int, stop: int, runs: np.ndarray) -> np.ndarray:
        """Rows ``[start, stop)`` of which only those in ``runs`` (``[k, 2]`` row ranges, ascending) are read; the
        others are left unset (nothing gathers them)."""
        out = np.empty((stop - start, self.width), dtype=np.float32)
        a = int(np.searchsorted(runs[:, 1], start, side="right"))
        b = int(np.searchsorted(runs[:, 0], stop, side="left"))
        for r0, r1 in runs[a:b]:
            r0, r1 = max(int(r0), start), min(int(r1), stop)
            if r1 > r0:
                dst = out[r0 - start:r1 - start]
                in_place = self.dtype == "float32" and self.data is None
                got = self.read(r0, r1, dst if in_place else None)
                if not in_place:
                    dst[:] = got
        return out

    def take(self, ids: np.ndarray, span_rows: int) -> np.ndarray:
        """Rows ``ids`` (ascending) as float32 ``[len(ids), width]``, read as spans of at most ``span_rows`` rows."""
        if self.data is not None:
            return np.ascontiguousarray(self.data[ids], dtype=np.float32)
        out = np.empty((len(ids), self.width), dtype=np.float32)
        i = 0
        while i < len(ids):
            j = max(i + 1, int(np.searchsorted(ids, ids[i] + span_rows, side="left")))
            block = self.read(int(ids[i]), int(ids[j - 1]) + 1)
            out[i:j] = block[ids[i:j] - ids[i]]
            i = j
        return out

    def close(self) -> None:
        """Close the files this table opened (idempotent)."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}
        if self.dst_rows is not None:
            self.dst_rows.close()


class TableWriter:
    """Rows of a new ``[num_rows, width]`` float32 table, appended in node order: a Zarr array on disk, or an array in
    memory (``path`` None)."""

    def __init__(self, path: Path | None, num_rows: int, width: int, chunk_rows: int, order: Ordering | None = None):
        self.path = path
        self.num_rows, self.width = int(num_rows), int(width)
        self.rows = 0
        self.order = order
        self._fd = -1
        if order is not None:  # one chunk, rows written where the order puts them
            self._data = self._writer = None
            chunk = path / "c" / "0" / "0"
            chunk.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(chunk, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            os.ftruncate(self._fd, self.num_rows * self.width * 4)
        elif path is None:
            self._data = np.empty((self.num_rows, self.width), dtype=np.float32)
            self._writer = None
        else:
            self._data = None
            self._writer = RowChunkWriter(path, self.num_rows, (self.width,), "float32", chunk_rows)

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        if self.order is not None:
            at = self.order.pos[self.rows:self.rows + len(rows)]
            idx = np.argsort(at, kind="stable")
            at, rows = at[idx], rows[idx]
            cut = np.concatenate([[0], np.flatnonzero(np.diff(at) != 1) + 1, [len(at)]])
            rb = self.width * 4
            for a, b in zip(cut[:-1], cut[1:]):
                os.pwrite(self._fd, memoryview(rows[a:b]).cast("B"), int(at[a]) * rb)
            self.rows += len(rows)
            return
        if self._writer is not None:
            self._writer.append(rows)
        else:
            self._data[self.rows:self.rows + len(rows)] = rows
        self.rows += len(rows)

    def finish(self, kind: str = "disk") -> Table:
        """The finished table, opened for reading as ``kind`` (``disk`` or ``mmap``; in memory: ``ram``).

        On disk the chunk files are synced and dropped from the page cache, so the next layer reads them from the
        disk (and the OS counts those reads) rather than from pages this process just wrote.
        """
        if self.order is not None:
            if self.rows != self.num_rows:
                raise ValueError(f"wrote {self.rows} rows of {self.num_rows}")
            os.close(self._fd)
            self._fd = -1
            shape = (self.num_rows, self.width)
            write_array_metadata(self.path, shape, shape, "float32")
        elif self._writer is None:
            return Table("ram", data=self._data)
        else:
            self._writer.finish()
        array = RawArray(self.path)
        for i in range(array.num_chunks):
            fd = os.open(array.chunk_path(i), os.O_RDONLY)
            try:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        table = Table(kind, array=array)
        table.order = self.order
        return table


@dataclass
class TableShape:
    """What :func:`plan_layout` reads of a gather table that is not open: one the engine is about to write (float32),
    or one the capacity planner models."""

    num_rows: int
    row_bytes: int
    dtype: str = "float32"
    natural_slice_rows: None = None


@dataclass
class Topology:
    """The dataset's CSC (in-edges by destination), read in ranges: ``indptr`` int64 [N+1], ``indices`` [E]."""

    indptr: RawArray
    indices: RawArray
    num_nodes: int

    def ptr(self, lo: int, hi: int) -> np.ndarray:
        """``indptr[lo:hi+1]``."""
        return self.indptr.read_rows(lo, hi + 1)

    def sources(self, e0: int, e1: int) -> np.ndarray:
        """``indices[e0:e1]``."""
        return self.indices.read_rows(e0, e1)

    def out_degree(self, slice_edges: int = 1 << 24) -> np.ndarray:
        """int64 [N] out-degree of every node (one sequential pass over the indices)."""
        counts = np.zeros(self.num_nodes, dtype=np.int64)
        total = self.indices.shape[0]
        for e0 in range(0, total, slice_edges):
            kernels.count_sources(self.sources(e0, min(total, e0 + slice_edges)), counts)
        return counts
