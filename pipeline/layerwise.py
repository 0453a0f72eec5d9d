"""Out-of-core layer-wise inference: every node's output of a GNN layer from all of its in-neighbors, one layer at a
time, with the node tables on disk and the work arranged so that disk I/O is large and sequential.

A layer reads two node tables written by the layer before (row ``v`` = node ``v``): the **gather table** ``G``
``[N, g]`` whose rows are combined over in-neighbors, and an optional **self table** ``S`` ``[N, s]`` read for each
destination itself. What the rows hold is the model's business (:class:`LayerProgram`, implemented per model in
:mod:`diskgraph.layer_programs`): for GraphSAGE with a hidden width below the input width ``G`` is the input
already projected, so a layer gathers the narrower of the two.

The work of one layer (a grid of destination partitions × source slices, as MariusGNN's edge buckets):

1. the destinations are cut into **partitions** of consecutive node ids, as many as the accumulators and the
   partition's in-edges need to stay within ``memory_budget``;
2. for each partition, its in-edges are read from the CSC topology (one sequential read) and grouped by the
   **source slice** they come from (a counting sort, :func:`~diskgraph.native.layerwise.regroup_by_slice`);
3. ``G`` is streamed slice by slice (sequential reads of ``slice_bytes``, the next slice read by a thread while
   the current one is combined; slices no edge of the partition reads are skipped) and each group is combined
   into the partition's accumulators (a sum for SAGE and GCN, an online softmax for GAT);
4. the partition's destinations are finished in row chunks (their own ``G``/``S`` rows read in order) and handed
   on in ascending node order: to the next layer's table writers, or to the output.

``G`` is therefore read once per partition: a graph whose accumulators fit the budget is read once per layer. The
statistics say how often: ``table_passes`` (bytes read ÷ the bytes of each table once) next to
``read_amplification`` (bytes read ÷ the bytes of the rows the partitions needed, as training reports it: the
cost of reading whole slices rather than single rows). Bytes read are the operating system's
(``/proc/self/io``); slices read from disk are dropped from the page cache after use, so they are not re-read
from memory for free.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

from ..native import layerwise as kernels
from ..store.errors import InputError
from ..store.progress import Progress, format_bytes, log
from ..store.zarr_arrays import BFLOAT16, RawArray, RowChunkWriter, write_array_metadata
from .metrics import peak_rss_bytes, process_read_bytes

SLICE_BYTES = 64 << 20
"""Bytes of one source slice of a gather table (float32), at most; a sixteenth of the budget when that is less."""

MIN_SLICE_BYTES = 64 << 10
"""Bytes of one source slice, at least."""

FINISH_ROWS = 32768
"""Destinations finished at once (their G/S rows, outputs and next tables), at most."""

EDGE_BYTES = 20
"""Memory per in-edge of a partition while it is combined: the source id as read (≤ 8), its destination (4), and the
regrouped source and destination (4 + 4)."""


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


@dataclass
class Ordering:
    """A partition order of a table's rows: nodes sorted by the set of destination partitions that read them, so that
    each partition reads only the runs of rows it needs, as sequential extents.

    Attributes:
        pos: int64 [N]: the row of node ``v`` is ``pos[v]``.
        runs: per partition, int64 ``[k, 2]`` row ranges ``[start, end)`` (ascending) it reads.
        needed_rows: the rows of all partitions' runs together (what the layer reads).
    """

    pos: np.ndarray
    runs: list[np.ndarray]
    needed_rows: int


def partition_order(topo: Topology, layout: "Layout", slice_edges: int = 1 << 24) -> Ordering | None:
    """The partition order of a gather table for ``layout`` (all destinations), or None when there is one partition
    or more than 64. One pass over the topology marks, for every source, the partitions that read it (a bit each);
    the nodes are then sorted by that set, stably, and each partition's runs are the groups whose set holds it."""
    parts = layout.partitions
    if not 2 <= len(parts) <= 64:
        return None
    n = topo.num_nodes
    sig = np.zeros(n, dtype=np.uint64)
    for q, (lo, hi) in enumerate(parts):
        e0, e1 = (int(v) for v in topo.ptr(lo, hi)[[0, -1]])
        for a in range(e0, e1, slice_edges):
            kernels.mark_sources(topo.sources(a, min(e1, a + slice_edges)), np.uint64(1) << np.uint64(q), sig)
    order = np.argsort(sig, kind="stable")
    pos = np.empty(n, dtype=np.int64)
    pos[order] = np.arange(n, dtype=np.int64)
    sig_sorted = sig[order]
    del sig, order
    starts = np.concatenate([[0], np.flatnonzero(np.diff(sig_sorted)) + 1]).astype(np.int64)
    ends = np.concatenate([starts[1:], [n]]).astype(np.int64)
    group_sig = sig_sorted[starts]
    del sig_sorted
    runs, needed = [], 0
    for q in range(len(parts)):
        has = (group_sig >> np.uint64(q)) & np.uint64(1) == 1
        r = np.stack([starts[has], ends[has]], axis=1) if has.any() else np.zeros((0, 2), dtype=np.int64)
        if len(r) > 1:  # merge runs that touch
            cut = np.flatnonzero(r[1:, 0] != r[:-1, 1]) + 1
            r = np.stack([r[np.concatenate([[0], cut]), 0], r[np.concatenate([cut - 1, [len(r) - 1]]), 1]], axis=1)
        runs.append(r)
        needed += int((r[:, 1] - r[:, 0]).sum())
    return Ordering(pos, runs, needed)


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


class LayerProgram(Protocol):
    """One GNN layer, split for layer-wise inference (implemented per model in :mod:`diskgraph.layer_programs`).

    Attributes:
        gather_width: floats per row of the gather table G.
        self_width: floats per row of the self table S (0: none).
        state_width: floats of accumulator per destination.
        out_width: floats per output row.
        needs_out_degree: whether :meth:`prepare` needs the nodes' out-degrees.
        needs_gather_dst: whether :meth:`finish` reads the destinations' own G rows (else it gets None).
        self_in_state: whether the destinations' S rows are needed while combining (GAT's destination scores):
            they are read with the partition and handed to :meth:`init_state`, not to :meth:`finish`.
        identity_prepare: whether :meth:`prepare` returns its input as G and no S (then the input table is
            gathered from directly, with no copy written).
    """

    gather_width: int
    self_width: int
    state_width: int
    out_width: int
    needs_out_degree: bool
    needs_gather_dst: bool
    self_in_state: bool
    identity_prepare: bool

    def prepare(self, h: torch.Tensor, out_degree: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(G rows, S rows or None)`` of the nodes whose layer input is ``h`` [n, in]."""

    def init_state(self, n: int, s_dst: torch.Tensor | None) -> torch.Tensor:
        """The accumulators of ``n`` destinations, ``[n, state_width]`` (``s_dst``: their S rows when
        ``self_in_state``)."""

    def add(self, state: torch.Tensor, dst: np.ndarray, src: np.ndarray, g: np.ndarray, threads: int) -> None:
        """Combine the edges ``src → dst`` (int32, local to the slice / partition, ``dst`` non-decreasing) of one
        slice ``g`` (float32 ``[rows, gather_width]``) into ``state``."""

    def finish(self, state: torch.Tensor, g_dst: torch.Tensor | None, s_dst: torch.Tensor | None,
               in_degree: torch.Tensor) -> torch.Tensor:
        """The layer's output ``[n, out_width]`` (before the activation) of ``n`` destinations."""


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


@dataclass
class LayerStats:
    """What one layer did: seconds, partitions, bytes read (OS-counted) and the bytes of rows it needed."""

    layer: int
    seconds: float = 0.0
    partitions: int = 0
    slices_read: int = 0
    read_bytes: int = 0
    needed_bytes: int = 0
    table_bytes: int = 0
    destinations: int = 0
    edges: int = 0
    extra: dict = field(default_factory=dict)

    def record(self) -> dict:
        return {"layer": self.layer, "seconds": round(self.seconds, 4), "partitions": self.partitions,
                "slices_read": self.slices_read, "destinations": self.destinations, "edges": self.edges,
                "read_bytes": self.read_bytes, "needed_bytes": self.needed_bytes, "table_bytes": self.table_bytes,
                "read_amplification": round(self.read_bytes / self.needed_bytes, 4) if self.needed_bytes else None,
                **self.extra}


@dataclass
class Layout:
    """How one layer is cut: destination partitions (node-id ranges) and source slices, within a memory budget."""

    partitions: list[tuple[int, int]]
    slice_rows: int
    finish_rows: int
    resident_slices: int = 0
    """The first ``resident_slices`` slices of G are read once and kept for every partition."""

    @property
    def num_partitions(self) -> int:
        return len(self.partitions)


def _node_costs(topo: Topology, selected: np.ndarray | None, per_dst: int, slice_nodes: int):
    """Yield ``(lo, cost)``: the partition memory (bytes) of nodes ``lo..lo+len(cost)-1`` as destinations."""
    n = topo.num_nodes
    for lo in range(0, n, slice_nodes):
        hi = min(n, lo + slice_nodes)
        deg = np.diff(topo.ptr(lo, hi))
        if selected is None:
            yield lo, deg * EDGE_BYTES + per_dst
        else:
            sel = np.zeros(hi - lo, dtype=np.int64)
            a, b = np.searchsorted(selected, [lo, hi])
            sel[selected[a:b] - lo] = per_dst
            yield lo, deg * EDGE_BYTES + sel


def plan_layout(topo: Topology, selected: np.ndarray | None, prog: LayerProgram, gather: Table, self_width: int,
                next_width: int, budget: int, fixed: int = 0, slice_nodes: int = 1 << 20,
                allow_resident: bool = True) -> Layout:
    """Cut a layer into destination partitions and source slices that fit ``budget`` bytes, reading G as little as
    the budget allows.

    Memory held: the finishing buffers (``finish_rows`` rows of G, S, the outputs and the next tables, twice over
    for temporaries), ``fixed`` (e.g. out-degrees), the slices of G kept **resident** across partitions (read once),
    two slices in flight for the others (the one combined and the one being read), and per partition
    ``state_width * 4 + 8`` bytes per destination plus :data:`EDGE_BYTES` per in-edge. Among the numbers of
    resident slices ``K``, the one with the fewest slice reads — ``K + partitions(K) * (slices - K)`` — is chosen
    (all of G when it fits: each layer then reads G once).

    Raises:
        InputError: the budget cannot hold the buffers and one node of the highest in-degree.
    """
    converts = gather.dtype != "float32"
    slice_row = prog.gather_width * 4 + (gather.row_bytes if converts else 0)
    natural = gather.natural_slice_rows
    if natural is not None:
        slice_rows = natural
    else:
        slice_bytes = max(MIN_SLICE_BYTES, min(SLICE_BYTES, budget // 16))
        slice_rows = max(1, min(gather.num_rows, slice_bytes // max(1, slice_row)))
    num_slices = max(1, -(-gather.num_rows // slice_rows))
    finish_width = prog.gather_width + self_width + 2 * prog.out_width + next_width + prog.state_width
    finish_rows = max(1, min(FINISH_ROWS, budget // 16 // max(1, 8 * finish_width)))
    finish_mem = finish_rows * 8 * finish_width
    per_dst = (prog.state_width + (self_width if prog.self_in_state else 0)) * 4 + 8
    total, max_need = 0, 0
    for _lo, cost in _node_costs(topo, selected, per_dst, slice_nodes):
        total += int(cost.sum())
        max_need = max(max_need, int(cost.max(initial=0)))
    base = budget - finish_mem - fixed
    best = None
    candidates = [0] if natural is not None or not allow_resident else \
        sorted({0, num_slices, *range(0, num_slices, max(1, num_slices // 64))})
    for k in candidates:
        resident = k * slice_rows * prog.gather_width * 4
        streaming = 0 if k >= num_slices or natural is not None else 2 * slice_rows * slice_row
        avail = base - resident - streaming
        if avail < max_need:
            continue
        parts = max(1, -(-total // avail))
        # the destinations' own G rows are read again at finishing unless their slices are kept
        reads = k + parts * (num_slices - k) + (num_slices - k if prog.needs_gather_dst else 0)
        if best is None or reads < best[0]:
            best = (reads, k, avail)
    if best is None:
        need = finish_mem + fixed + 2 * slice_rows * slice_row + max_need
        raise InputError(f"--memory-budget {format_bytes(budget)} is too small for layer-wise inference of this graph "
                         f"(source slices, finishing buffers and one node of the largest in-degree need "
                         f"{format_bytes(need)}); give --memory-budget {format_bytes(int(need * 1.25))} or more")
    _reads, resident_slices, avail = best
    parts: list[tuple[int, int]] = []
    start, used = 0, 0
    for lo, cost in _node_costs(topo, selected, per_dst, slice_nodes):
        csum = np.cumsum(cost)
        pos = 0
        while pos < len(csum):
            done = csum[pos - 1] if pos else 0
            k = int(np.searchsorted(csum[pos:] - done, avail - used, side="right"))
            if k == len(csum) - pos:
                used += int(csum[-1] - done)
                break
            end = lo + pos + k
            parts.append((start, end))
            start, used, pos = end, 0, pos + k
    if start < topo.num_nodes:
        parts.append((start, topo.num_nodes))
    if selected is not None:
        parts = [(a, b) for a, b in parts if np.searchsorted(selected, b) > np.searchsorted(selected, a)]
    return Layout(parts, slice_rows, finish_rows, min(resident_slices, num_slices))


class StopCheck(Protocol):
    def __call__(self) -> None: ...


def run_layer(layer: int, prog: LayerProgram, gather: Table, selfs: Table | None, topo: Topology,
              selected: np.ndarray | None, layout: Layout, emit: Callable[[np.ndarray, torch.Tensor], None],
              stop: StopCheck, threads: int | None = None) -> LayerStats:
    """Run one layer over the destinations (all nodes, or ``selected``: ascending ids) and hand every destination's
    output to ``emit(node_ids, rows)`` in ascending node order, in chunks of at most ``layout.finish_rows``.

    ``stop()`` is called between slices and may raise to end the run.
    """
    threads = threads or max(1, torch.get_num_threads())
    st = LayerStats(layer)
    t0, rb0 = time.perf_counter(), process_read_bytes()
    num_slices = -(-gather.num_rows // layout.slice_rows)
    mark = np.zeros(layout.slice_rows, dtype=np.uint8)
    g_bytes_row = gather.row_bytes
    total_dst = topo.num_nodes if selected is None else len(selected)
    resident: dict[int, np.ndarray] = {}
    resident_need: dict[int, np.ndarray] = {}

    def read(q: int, p: int) -> np.ndarray:
        start, stop = p * layout.slice_rows, min(gather.num_rows, (p + 1) * layout.slice_rows)
        if gather.order is not None:  # partition order: only the runs of rows partition q reads
            return gather.read_runs(start, stop, gather.order.runs[q])
        return gather.slice(start, stop)

    executor = ThreadPoolExecutor(1, thread_name_prefix="diskgraph-layer-read")
    try:
        with Progress(f"layer {layer}", total_dst, unit=" nodes") as bar:
            for q, (lo, hi) in enumerate(layout.partitions):
                st.partitions += 1
                ptr = topo.ptr(lo, hi)
                deg = np.diff(ptr)
                src = topo.sources(int(ptr[0]), int(ptr[-1]))
                st.needed_bytes += ptr.nbytes + src.nbytes
                if gather.order is not None:
                    src = gather.order.pos[src]
                node_local = np.repeat(np.arange(hi - lo, dtype=np.int32), deg)
                if selected is None:
                    ids = np.arange(lo, hi, dtype=np.int64)
                    dst_local = node_local
                else:
                    a, b = np.searchsorted(selected, [lo, hi])
                    ids = selected[a:b]
                    pos = np.full(hi - lo, -1, dtype=np.int32)
                    pos[ids - lo] = np.arange(len(ids), dtype=np.int32)
                    dl = pos[node_local]
                    keep = dl >= 0
                    src, dst_local = src[keep], dl[keep]
                    deg = deg[ids - lo]
                del node_local
                nq = len(ids)
                st.destinations += nq
                st.edges += len(src)
                out_src = np.empty(len(src), dtype=np.int32)
                out_dst = np.empty(len(src), dtype=np.int32)
                group_ptr = np.empty(num_slices + 1, dtype=np.int64)
                kernels.regroup_by_slice(src, dst_local, layout.slice_rows, num_slices, out_src, out_dst, group_ptr)
                del src, dst_local
                s_part = None
                if prog.self_in_state and selfs is not None:
                    s_part = torch.from_numpy(selfs.read(lo, hi) if selected is None else
                                              selfs.take(ids, layout.slice_rows))
                    st.needed_bytes += nq * selfs.row_bytes
                state = prog.init_state(nq, s_part)
                del s_part
                todo = [p for p in range(num_slices) if group_ptr[p + 1] > group_ptr[p]]
                futures: dict = {}

                def prefetch(i: int, part: int = q) -> None:  # the next slice to read from disk, one at a time
                    for sl in todo[i:]:
                        if sl not in resident and sl not in futures:
                            if not futures:
                                futures[sl] = executor.submit(read, part, sl)
                            return

                prefetch(0)
                for i, p in enumerate(todo):
                    stop()
                    a, b = int(group_ptr[p]), int(group_ptr[p + 1])
                    if p in resident:
                        g = resident[p]
                    else:
                        g = futures.pop(p).result()
                        st.slices_read += 1
                        if p < layout.resident_slices:
                            resident[p] = g
                            resident_need[p] = np.zeros(len(g), dtype=bool)
                    prefetch(i + 1)
                    if p in resident_need:
                        resident_need[p][out_src[a:b]] = True
                    else:
                        st.needed_bytes += kernels.count_distinct(out_src[a:b], mark) * g_bytes_row
                    prog.add(state, out_dst[a:b], out_src[a:b], g, threads)
                    del g
                del out_src, out_dst
                in_deg = torch.from_numpy(deg.astype(np.float32))
                for f0 in range(0, nq, layout.finish_rows):
                    f1 = min(nq, f0 + layout.finish_rows)
                    rows = ids[f0:f1]
                    contiguous = selected is None
                    g_dst = None
                    if prog.needs_gather_dst:
                        g_dst = _resident_rows(resident, layout.slice_rows, rows, contiguous)
                        if g_dst is not None:
                            for p in np.unique(rows // layout.slice_rows):
                                sel = rows[rows // layout.slice_rows == p] - int(p) * layout.slice_rows
                                resident_need[int(p)][sel] = True
                        else:
                            own = gather.dst_rows if gather.order is not None else gather
                            g_dst = own.read(int(rows[0]), int(rows[-1]) + 1) if contiguous else \
                                own.take(rows, layout.slice_rows)
                            st.needed_bytes += len(rows) * g_bytes_row
                    s_dst = None
                    if selfs is not None and not prog.self_in_state:
                        s_dst = selfs.read(int(rows[0]), int(rows[-1]) + 1) if contiguous else \
                            selfs.take(rows, layout.slice_rows)
                        st.needed_bytes += len(rows) * selfs.row_bytes
                    out = prog.finish(state[f0:f1], None if g_dst is None else torch.from_numpy(g_dst),
                                      None if s_dst is None else torch.from_numpy(s_dst), in_deg[f0:f1])
                    emit(rows, out)
                    bar.update(len(rows))
                del state
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    st.needed_bytes += sum(int(need.sum()) for need in resident_need.values()) * g_bytes_row
    resident.clear()
    st.seconds = time.perf_counter() - t0
    st.read_bytes = process_read_bytes() - rb0
    st.table_bytes = gather.nbytes + (selfs.nbytes if selfs is not None else 0) + topo.indptr.nbytes + \
        topo.indices.nbytes
    return st


def _resident_rows(resident: dict, slice_rows: int, rows: np.ndarray, contiguous: bool) -> np.ndarray | None:
    """Rows ``rows`` (ascending node ids) of G from the slices kept in memory, or None when one is not kept."""
    which = rows // slice_rows
    parts = np.unique(which)
    if any(int(p) not in resident for p in parts):
        return None
    if contiguous and len(parts) == 1:
        base = int(parts[0]) * slice_rows
        return np.ascontiguousarray(resident[int(parts[0])][int(rows[0]) - base:int(rows[-1]) + 1 - base])
    out = np.empty((len(rows), resident[int(parts[0])].shape[1]), dtype=np.float32)
    for p in parts:
        sel = which == p
        out[sel] = resident[int(p)][rows[sel] - int(p) * slice_rows]
    return out


@dataclass
class LayerwiseResult:
    """What :func:`run_layerwise` did, per layer and in all."""

    layers: list[LayerStats]
    seconds: float
    read_bytes: int
    peak_rss_bytes: int
    resumed_after: int = 0

    def summary(self) -> dict:
        needed = sum(s.needed_bytes for s in self.layers)
        tables = sum(s.table_bytes for s in self.layers)
        return {"seconds": round(self.seconds, 4), "read_bytes": self.read_bytes, "needed_bytes": needed,
                "read_amplification": round(self.read_bytes / needed, 4) if needed else None,
                "table_bytes": tables, "table_passes": round(self.read_bytes / tables, 4) if tables else None,
                "peak_rss_bytes": self.peak_rss_bytes, "resumed_after_layer": self.resumed_after,
                "layers": [s.record() for s in self.layers]}


STATE_NAME = "layerwise-state.json"


@dataclass
class TableShape:
    """What :func:`plan_layout` reads of a gather table that is not open: one this module is about to write (float32),
    or one the capacity planner models."""

    num_rows: int
    row_bytes: int
    dtype: str = "float32"
    natural_slice_rows: None = None


ORDER_GAIN = 0.9
"""A gather table is written in partition order when its layer then reads at most this share of the rows it would
read in node order (one pass per partition). A copy of the features costs two passes more (a read and a write):
on the 2M-node benchmark graph (4 partitions reading 47 % of the rows each) the copy brought the read amplification
from 1.98 to 1.01 but took 13.5 s instead of 10.1 s on 2 CPUs, so it is made only when it saves more than that."""


def order_written_table(topo: Topology, prog: LayerProgram, next_width: int, budget: int, fixed: int,
                        copy_rows: int = 0, layer: int = 0) -> tuple[Ordering | None, Layout | None]:
    """Whether the gather table of a layer (``prog``, all nodes as destinations) that this module writes goes in
    partition order: ``(ordering, layout)`` when it does, ``(None, None)`` when not — G fits the budget whole (read
    once), the layout has one partition or more than 64, or the partitions would read more than
    :data:`ORDER_GAIN` of the rows node order reads (whole slices once per partition, or once when kept resident;
    ``copy_rows``: rows the copy itself costs, for the features). ``layout`` is then the one the layer runs with
    (planned without resident slices, with the ``8 * N`` bytes of the order's positions on top of ``fixed``)."""
    n = topo.num_nodes
    table = TableShape(n, 4 * prog.gather_width)
    node_order = plan_layout(topo, None, prog, table, prog.self_width, next_width, budget, fixed)
    slices = -(-n // node_order.slice_rows)
    if node_order.resident_slices >= slices:
        return None, None
    resident_rows = min(n, node_order.resident_slices * node_order.slice_rows)
    node_order_rows = resident_rows + node_order.num_partitions * (n - resident_rows)
    layout = plan_layout(topo, None, prog, table, prog.self_width, next_width, budget, fixed + 8 * n,
                         allow_resident=False)
    order = partition_order(topo, layout)
    if order is None or order.needed_rows + copy_rows > ORDER_GAIN * node_order_rows:
        return None, None
    log.info("layer %d: gather table written in partition order (its %d partitions read %.0f %% of the rows node "
             "order would)", layer, layout.num_partitions, 100 * order.needed_rows / node_order_rows)
    return order, layout


def run_layerwise(programs: list[LayerProgram], features: Table, topo: Topology, *, final_layer: int,
                  selected: np.ndarray | None, activation: Callable[[torch.Tensor], torch.Tensor],
                  emit: Callable[[np.ndarray, torch.Tensor], None], budget: int, scratch: Path | None,
                  identity: dict, stop: StopCheck, threads: int | None = None,
                  table_kind: str = "disk") -> LayerwiseResult:
    """Run layers ``1..final_layer`` of ``programs`` over the whole graph and emit layer ``final_layer``'s rows for
    the ``selected`` nodes (None: all), activated when it is not the last layer.

    Layers before ``final_layer`` run over every node and write the next layer's tables under ``scratch`` (None: in
    memory). After each layer a state file there records it and the layer's own input tables are removed (so the
    scratch directory holds at most two layers' tables), and a run stopped or killed and started again with the same
    ``identity`` (which must cover the budget) continues after the last finished layer. ``table_kind``: how the
    tables written there are read back (``disk`` or ``mmap``).

    When a layer's gather table does not fit the budget and its destination partitions would each read only part of
    it, the table is written in **partition order** (:func:`partition_order`): rows sorted by the set of partitions
    that read them, so each partition reads just its runs, sequentially, instead of the whole table; the
    destinations' own rows then come from a copy in node order. The features themselves are copied into that order
    (one more sequential read and write) when that still saves reads (:data:`ORDER_GAIN`).
    """
    t0, rb0 = time.perf_counter(), process_read_bytes()
    n = topo.num_nodes
    out_degree = None
    if any(p.needs_out_degree for p in programs[:final_layer]):
        out_degree = torch.from_numpy(topo.out_degree())
    fixed = out_degree.numel() * 8 if out_degree is not None else 0
    state_path = scratch / STATE_NAME if scratch is not None else None
    planned: dict[int, Layout] = {}

    def widths_after(layer: int) -> int:
        nxt = programs[layer] if layer < final_layer else None
        return (nxt.gather_width + nxt.self_width) if nxt is not None else programs[layer - 1].out_width

    def ordering_for(layer: int, copy_rows: int = 0) -> tuple[Ordering | None, Layout | None]:
        """The partition order for layer ``layer``'s gather table (written by this module), and its layout."""
        if scratch is None or table_kind != "disk" or (layer == final_layer and selected is not None):
            return None, None
        return order_written_table(topo, programs[layer - 1], widths_after(layer), budget, fixed, copy_rows, layer)

    first, gather, selfs = 1, features, None
    saved = read_state(scratch, identity)
    if saved is not None and 1 <= saved["done"] < final_layer:
        first = saved["done"] + 1
        d = scratch / f"layer{first}"
        gather = Table(table_kind, array=RawArray(d / "gather"))
        if saved.get("self"):
            selfs = Table(table_kind, array=RawArray(d / "self"))
        if saved.get("ordered"):
            gather.order, planned[first] = ordering_for(first)
            if gather.order is None:
                raise InputError(f"the scratch tables in {scratch} were written in an order this run does not make "
                                 "again; remove that directory and run again")
            if (d / "gather-dst").exists():
                gather.dst_rows = Table(table_kind, array=RawArray(d / "gather-dst"))
        log.info("resuming layer-wise inference at layer %d from the tables in %s", first, scratch)
    stats: list[LayerStats] = []
    if first == 1:
        identity_first = programs[0].identity_prepare
        order, layout1 = ordering_for(1, copy_rows=2 * n if identity_first else 0)
        if order is not None or not identity_first:
            gather, selfs, prep = _prepare_first(programs[0], features, out_degree, scratch, budget, stop, table_kind,
                                                 order)
            if order is not None:
                planned[1] = layout1
            stats.append(prep)
    for layer in range(first, final_layer + 1):
        prog = programs[layer - 1]
        last = layer == final_layer
        nxt = programs[layer] if not last else None
        writers = None
        sel = selected if last else None
        if nxt is not None:
            d = scratch / f"layer{layer + 1}" if scratch is not None else None
            order, planned_next = ordering_for(layer + 1)
            chunk = max(1, (8 << 20) // (4 * max(nxt.gather_width, 1)))
            gw = TableWriter(d / "gather" if d else None, n, nxt.gather_width, chunk, order)
            sw = TableWriter(d / "self" if d else None, n, nxt.self_width, chunk) if nxt.self_width else None
            dw = TableWriter(d / "gather-dst", n, nxt.gather_width, chunk) if order is not None and \
                nxt.needs_gather_dst else None
            writers = (gw, sw, dw)
            if planned_next is not None:
                planned[layer + 1] = planned_next

        def on_rows(ids: np.ndarray, out: torch.Tensor, prog_next=nxt, writers=writers, last=last) -> None:
            if last:
                emit(ids, activation(out) if final_layer < len(programs) else out)
                return
            h = activation(out)
            deg = out_degree[ids[0]:ids[-1] + 1] if out_degree is not None else None
            g_rows, s_rows = prog_next.prepare(h, deg)
            writers[0].append(g_rows.numpy())
            if writers[1] is not None:
                writers[1].append(s_rows.numpy())
            if writers[2] is not None:
                writers[2].append(g_rows.numpy())

        layout = planned.get(layer) or plan_layout(topo, sel, prog, gather, selfs.width if selfs is not None else 0,
                                                   widths_after(layer), budget, fixed)
        log.info("layer %d: %d partition(s) of destinations, source slices of %d rows (%d of %d kept in memory)%s",
                 layer, layout.num_partitions, layout.slice_rows, layout.resident_slices,
                 -(-gather.num_rows // layout.slice_rows), ", partition order" if gather.order is not None else "")
        st = run_layer(layer, prog, gather, selfs, topo, sel, layout, on_rows, stop, threads)
        st.extra.update(slice_rows=layout.slice_rows, resident_slices=layout.resident_slices,
                        partition_order=gather.order is not None)
        stats.append(st)
        if gather is not features:
            gather.close()
        if selfs is not None:
            selfs.close()
        if writers is not None:
            gather = writers[0].finish(table_kind)
            selfs = writers[1].finish(table_kind) if writers[1] is not None else None
            if writers[2] is not None:
                gather.dst_rows = writers[2].finish(table_kind)
            if state_path is not None:
                _write_state(state_path, identity, layer, selfs is not None, gather.order is not None)
                shutil.rmtree(scratch / f"layer{layer}", ignore_errors=True)  # this layer's inputs: done with
    return LayerwiseResult(stats, time.perf_counter() - t0, process_read_bytes() - rb0, peak_rss_bytes(),
                           resumed_after=first - 1)


def _prepare_first(prog: LayerProgram, features: Table, out_degree, scratch: Path | None, budget: int,
                   stop: StopCheck, table_kind: str, order: Ordering | None = None
                   ) -> tuple[Table, Table | None, LayerStats]:
    """The first layer's G (and S) from the features, in one sequential pass — when they are not the features, or
    to write them in partition ``order`` —; its statistics are those of "layer 0"."""
    st = LayerStats(0)
    t0, rb0 = time.perf_counter(), process_read_bytes()
    n = features.num_rows
    d = scratch / "layer1" if scratch is not None else None
    chunk = max(1, (8 << 20) // (4 * max(prog.gather_width, 1)))
    gw = TableWriter(d / "gather" if d else None, n, prog.gather_width, chunk, order)
    sw = TableWriter(d / "self" if d else None, n, prog.self_width, chunk) if prog.self_width else None
    # the destinations' own rows in node order: the features themselves, or a copy of what is gathered
    dw = TableWriter(d / "gather-dst", n, prog.gather_width, chunk) if order is not None and \
        prog.needs_gather_dst and not prog.identity_prepare else None
    rows = max(1, min(n, max(1 << 20, budget // 8) // max(1, 4 * (features.width + prog.gather_width +
                                                                    prog.self_width))))
    with Progress("layer 1 inputs", n, unit=" nodes") as bar:
        for start in range(0, n, rows):
            stop()
            end = min(n, start + rows)
            h = torch.from_numpy(features.read(start, end))
            g, s = prog.prepare(h, out_degree[start:end] if out_degree is not None else None)
            gw.append(g.numpy())
            if sw is not None:
                sw.append(s.numpy())
            if dw is not None:
                dw.append(g.numpy())
            bar.update(end - start)
    gather = gw.finish(table_kind)
    if order is not None and prog.needs_gather_dst:
        gather.dst_rows = dw.finish(table_kind) if dw is not None else features
    st.seconds, st.read_bytes = time.perf_counter() - t0, process_read_bytes() - rb0
    st.needed_bytes = st.table_bytes = features.nbytes
    st.destinations = n
    st.extra["pass"] = "layer 1 inputs" + (" (partition order)" if order is not None else "")
    return gather, (sw.finish(table_kind) if sw is not None else None), st


def read_state(scratch: Path | None, identity: dict) -> dict | None:
    """The state file a run with ``identity`` left in ``scratch`` (the last finished layer), or None (absent, or
    written by another request)."""
    path = scratch / STATE_NAME if scratch is not None else None
    if path is None or not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or state.get("identity") != json.loads(json.dumps(identity)):
        return None
    return state


def _write_state(path: Path, identity: dict, done: int, has_self: bool, ordered: bool = False) -> None:
    from ..store.files import write_atomic

    write_atomic(path, lambda f: json.dump({"identity": identity, "done": done, "self": has_self, "ordered": ordered},
                                           f), binary=False, sync_dir=True)
