"""Read given rows of a dataset's feature table straight from its chunk files: the rows a bounded pack left unpacked.

A pack made with ``--max-blowup B`` packs only what fits ``B ×`` the feature table; a minibatch's other cold rows
(its ``table_nodes``, :mod:`diskgraph.store.packed`) are read here at training time. The feature table is a Zarr v3
array of uncompressed row chunks (:class:`~diskgraph.store.zarr_arrays.RawArray`): row ``r`` sits in chunk file
``r // chunk_rows`` at byte ``(r % chunk_rows) * row_bytes``. Reading it:

1. **runs** — the sorted ids become the 4 KiB pages that hold them, per chunk; pages closer than ``gap_pages`` apart
   are merged into one run (reading a few unneeded pages costs less than another request), and a run stops at
   ``max_run_bytes``;
2. **reads** — each run is one aligned ``O_DIRECT`` ``pread`` (the page cache is neither used nor filled; a file
   system that refuses ``O_DIRECT`` falls back to buffered reads, as :class:`~diskgraph.store.direct_io.DirectReader`
   does), issued from ``threads`` threads at once so the device sees a deep queue. Each thread runs one compiled loop
   over its runs (numba, calling libc's ``pread`` without the GIL): no Python work per request, which on a small
   machine costs more than the request itself;
3. **copy** — the needed rows are copied from the run's buffer into ``out`` in id order, in the same loop.

Every byte the runs fetch counts in :attr:`TableRead.bytes_read` (pages of unneeded rows included), so the loader's
read amplification stays honest.
"""

from __future__ import annotations

import ctypes
import os
import resource
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numba
import numpy as np

from .direct_io import ALIGNMENT, DirectReader, aligned_empty
from .errors import FormatError, InputError
from .zarr_arrays import RawArray

GAP_PAGES = 4
"""Pages between two needed pages of one chunk read through rather than split into two requests (16 KiB)."""

MAX_RUN_BYTES = 1 << 20
"""The longest single request (1 MiB): one buffer per thread of this size."""

READ_THREADS = 8
"""Requests in flight at once."""

READERS_PER_RUN = 3
"""Readers one training run may hold at once (its train, val and test loaders each have one)."""

FD_MARGIN = 256
"""Open files left for everything else when the reader raises the process's open-file limit for its chunk files."""

REIMPORT = "the dataset's feature table is damaged: import the dataset again"
"""The fix the messages about a missing or short chunk file name."""


@dataclass
class TableRead:
    """What one :meth:`FeatureTableReader.read_rows` did: rows delivered, requests and bytes read (pages, bytes)."""

    rows: int = 0
    requests: int = 0
    bytes_read: int = 0


@numba.njit(cache=True, nogil=True)
def plan_runs(ids, chunk_rows, row_bytes, gap_pages, max_run_pages):  # pragma: no cover  (compiled; tested)
    """Runs of pages covering the rows ``ids`` (int64, ascending, distinct).

    Returns int64 ``[R, 5]``: chunk, first page, page count, first row (index into ``ids``), row count.
    """
    n = ids.shape[0]
    out = np.empty((max(n, 1), 5), dtype=np.int64)
    r = -1
    for i in range(n):
        c = ids[i] // chunk_rows
        off = (ids[i] - c * chunk_rows) * row_bytes
        p0 = off // 4096
        p1 = (off + row_bytes - 1) // 4096
        if r >= 0 and out[r, 0] == c:
            end = out[r, 1] + out[r, 2] - 1  # last page of the run
            if p0 <= end + gap_pages + 1 and p1 - out[r, 1] + 1 <= max_run_pages:
                if p1 > end:
                    out[r, 2] = p1 - out[r, 1] + 1
                out[r, 4] += 1
                continue
        r += 1
        out[r, 0] = c
        out[r, 1] = p0
        out[r, 2] = p1 - p0 + 1
        out[r, 3] = i
        out[r, 4] = 1
    return out[:r + 1]


@numba.njit(cache=True, nogil=True)
def _copy_rows(buf, base, ids, first, count, chunk_rows, row_bytes, out):  # pragma: no cover  (compiled; tested)
    """Copy rows ``ids[first:first+count]`` from a run buffer starting at chunk byte ``base`` into ``out`` rows."""
    for i in range(first, first + count):
        c = ids[i] // chunk_rows
        off = (ids[i] - c * chunk_rows) * row_bytes - base
        out[i, :] = buf[off:off + row_bytes]


_libc = ctypes.CDLL(None, use_errno=True)
_pread = _libc.pread
_pread.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int64]
_pread.restype = ctypes.c_ssize_t


@numba.njit(nogil=True)
def _read_runs(fds, runs, buf, ids, chunk_rows, row_bytes, chunk_bytes, out):  # pragma: no cover  (compiled; tested)
    """Read every run (``plan_runs`` rows) into ``buf`` with ``pread`` on ``fds[chunk]`` and copy its rows into ``out``.

    Returns the bytes read (≥ 0), or ``-1 - r`` when run ``r`` failed (an error, or the file ended before the bytes
    its rows need: the caller says which file)."""
    addr = buf.ctypes.data
    total = 0
    for r in range(runs.shape[0]):
        c = runs[r, 0]
        start = runs[r, 1] * 4096
        length = runs[r, 2] * 4096
        need = min(length, chunk_bytes - start)  # the chunk file's last page may be short
        done = 0
        while done < length:
            got = _pread(fds[c], addr + done, length - done, start + done)
            if got <= 0:
                break
            done += got
        if done < need:
            return -1 - r
        total += done
        for i in range(runs[r, 3], runs[r, 3] + runs[r, 4]):
            cc = ids[i] // chunk_rows
            off = (ids[i] - cc * chunk_rows) * row_bytes - start
            out[i, :] = buf[off:off + row_bytes]
    return total


def allow_open_files(count: int, what) -> None:
    """Make sure the process may hold ``count`` open files (the reader keeps every chunk file of the table open: a
    minibatch's rows touch most of them): raise the soft limit up to the hard one when it is lower.

    Raises:
        InputError: even the hard limit is lower, naming ``what`` and the fix.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= count:
        return
    if hard != resource.RLIM_INFINITY and hard < count:
        raise InputError(f"reading {what} needs {count} open files ({count - FD_MARGIN} chunk files and room for the "
                         f"rest), more than this process's open-file limit of {hard}; raise it (ulimit -n {count}) or "
                         "re-import the dataset with larger chunks")
    resource.setrlimit(resource.RLIMIT_NOFILE, (count, hard))


class FeatureTableReader:
    """Reads arbitrary rows of a feature table (a :class:`~diskgraph.store.zarr_arrays.RawArray` directory).

    Args:
        path: the feature table's directory (``DATASET/features``).
        direct: read with ``O_DIRECT`` (falls back to buffered reads where the file system refuses it).
        gap_pages, max_run_bytes, threads: see the module docstring.
    """

    def __init__(self, path: str | os.PathLike, *, direct: bool = True, gap_pages: int = GAP_PAGES,
                 max_run_bytes: int = MAX_RUN_BYTES, threads: int = READ_THREADS):
        self.array = RawArray(path)
        self.row_bytes = int(self.array.row_bytes)
        self.chunk_rows = int(self.array.chunk_shape[0])
        self.num_rows = int(self.array.shape[0])
        self.chunk_bytes = self.chunk_rows * self.row_bytes
        self.direct = bool(direct)
        self.gap_pages = int(gap_pages)
        self.max_run_pages = max(max_run_bytes // ALIGNMENT, -(-self.row_bytes // ALIGNMENT) + 1)
        self.threads = max(1, int(threads))
        self._readers: dict[int, DirectReader] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._buffers: list[np.ndarray] = []
        allow_open_files(READERS_PER_RUN * int(self.array.num_chunks) + FD_MARGIN, self.array.path)

    def _reader(self, chunk: int) -> DirectReader:
        r = self._readers.get(chunk)
        if r is None:
            r = self._readers[chunk] = DirectReader(self.array._check_chunk(chunk), direct=self.direct, fix=REIMPORT)
        return r

    def read_rows(self, ids: np.ndarray, out: np.ndarray) -> TableRead:
        """Read rows ``ids`` (int64, ascending, distinct, in ``0..num_rows-1``) into ``out`` (uint8
        ``[len(ids), row_bytes]``, row ``i`` for ``ids[i]``, or any array of that many bytes).

        Raises:
            FormatError: an id outside the table, or a chunk file missing or shorter than its rows.
        """
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        n = ids.shape[0]
        dst = out.reshape(-1).view(np.uint8)[: n * self.row_bytes].reshape(n, self.row_bytes)
        if n == 0:
            return TableRead()
        if ids[0] < 0 or ids[-1] >= self.num_rows:
            bad = int(ids[0] if ids[0] < 0 else ids[-1])
            raise FormatError(f"feature table {self.array.path} has rows 0..{self.num_rows - 1}, not {bad}; the pack "
                              "names rows of another dataset, pack the plan again")
        runs = plan_runs(ids, self.chunk_rows, self.row_bytes, self.gap_pages, self.max_run_pages)
        fds = np.full(int(runs[:, 0].max()) + 1, -1, dtype=np.int64)
        for c in np.unique(runs[:, 0]).tolist():  # open the chunk files here, not in the threads
            fds[c] = self._reader(c).fd
        nt = min(self.threads, len(runs))
        if len(self._buffers) < nt:
            self._buffers += [aligned_empty(self.max_run_pages * ALIGNMENT) for _ in range(nt - len(self._buffers))]
        parts = np.array_split(np.arange(len(runs)), nt)
        args = (fds, ids, self.chunk_rows, self.row_bytes, self.chunk_bytes, dst)
        if nt == 1:
            results = [(runs, _read_runs(fds, runs, self._buffers[0], *args[1:]))]
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="diskgraph-table")
            futures = [(runs[p], self._pool.submit(_read_runs, fds, runs[p], self._buffers[k], *args[1:]))
                       for k, p in enumerate(parts)]
            results = [(r, f.result()) for r, f in futures]
        got = 0
        for part, g in results:
            # a run the compiled loop could not read (O_DIRECT refused, a short file): read it again through the
            # reader, which falls back to buffered reads or says in one sentence what is wrong with the file
            got += g if g >= 0 else self._read_runs_py(part, ids, dst, self._buffers[0])
        return TableRead(rows=n, requests=len(runs), bytes_read=int(got))

    def _read_runs_py(self, runs: np.ndarray, ids: np.ndarray, dst: np.ndarray, buf: np.ndarray) -> int:
        total = 0
        for c, p0, pages, first, count in runs.tolist():
            start = p0 * ALIGNMENT
            length = pages * ALIGNMENT
            total += self._reader(c).read_into(start, length, buf, min_length=min(length, self.chunk_bytes - start))
            _copy_rows(buf, start, ids, first, count, self.chunk_rows, self.row_bytes, dst)
        return total

    def close(self) -> None:
        """Close the chunk files and stop the threads (idempotent)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for r in self._readers.values():
            r.close()
        self._readers.clear()
        self._buffers.clear()

    def __enter__(self) -> "FeatureTableReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["FeatureTableReader", "GAP_PAGES", "MAX_RUN_BYTES", "READ_THREADS", "REIMPORT", "TableRead", "plan_runs"]
