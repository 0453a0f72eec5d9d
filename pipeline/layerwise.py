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
from ..store.zarr_arrays import BFLOAT16, RawArray, RowChunkWriter
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

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` as a new float32 array ``[stop - start, width]``."""
        if self.data is not None:
            return np.array(self.data[start:stop], dtype=np.float32)
        arr = self.array
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


class TableWriter:
    """Rows of a new ``[num_rows, width]`` float32 table, appended in node order: a Zarr array on disk, or an array in
    memory (``path`` None)."""

    def __init__(self, path: Path | None, num_rows: int, width: int, chunk_rows: int):
        self.path = path
        self.num_rows, self.width = int(num_rows), int(width)
        self.rows = 0
        if path is None:
            self._data = np.empty((self.num_rows, self.width), dtype=np.float32)
            self._writer = None
        else:
            self._data = None
            self._writer = RowChunkWriter(path, self.num_rows, (self.width,), "float32", chunk_rows)

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=np.float32)
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
        if self._writer is None:
            return Table("ram", data=self._data)
        self._writer.finish()
        array = RawArray(self.path)
        for i in range(array.num_chunks):
            fd = os.open(array.chunk_path(i), os.O_RDONLY)
            try:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        return Table(kind, array=array)


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
                next_width: int, budget: int, fixed: int = 0, slice_nodes: int = 1 << 20) -> Layout:
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
    candidates = [0] if natural is not None else sorted({0, num_slices, *range(0, num_slices, max(1, num_slices // 64))})
    for k in candidates:
        resident = k * slice_rows * prog.gather_width * 4
        streaming = 0 if k >= num_slices or natural is not None else 2 * slice_rows * slice_row
        avail = base - resident - streaming
        if avail < max_need:
            continue
        parts = max(1, -(-total // avail))
        reads = k + parts * (num_slices - k)
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

    def read(p: int) -> np.ndarray:
        return gather.slice(p * layout.slice_rows, min(gather.num_rows, (p + 1) * layout.slice_rows))

    executor = ThreadPoolExecutor(1, thread_name_prefix="diskgraph-layer-read")
    try:
        with Progress(f"layer {layer}", total_dst, unit=" nodes") as bar:
            for lo, hi in layout.partitions:
                st.partitions += 1
                ptr = topo.ptr(lo, hi)
                deg = np.diff(ptr)
                src = topo.sources(int(ptr[0]), int(ptr[-1]))
                st.needed_bytes += ptr.nbytes + src.nbytes
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

                def prefetch(i: int) -> None:  # the next slice to read from disk, one at a time
                    for q in todo[i:]:
                        if q not in resident and q not in futures:
                            if not futures:
                                futures[q] = executor.submit(read, q)
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
                            g_dst = gather.read(int(rows[0]), int(rows[-1]) + 1) if contiguous else \
                                gather.take(rows, layout.slice_rows)
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
    ``identity`` continues after the last finished layer. ``table_kind``: how the tables written there are read
    back (``disk`` or ``mmap``).
    """
    t0, rb0 = time.perf_counter(), process_read_bytes()
    n = topo.num_nodes
    out_degree = None
    if any(p.needs_out_degree for p in programs[:final_layer]):
        out_degree = torch.from_numpy(topo.out_degree())
    fixed = out_degree.numel() * 8 if out_degree is not None else 0
    state_path = scratch / STATE_NAME if scratch is not None else None
    first, gather, selfs = 1, features, None
    saved = read_state(scratch, identity)
    if saved is not None and 1 <= saved["done"] < final_layer:
        first = saved["done"] + 1
        gather = Table(table_kind, array=RawArray(scratch / f"layer{first}" / "gather"))
        if saved.get("self"):
            selfs = Table(table_kind, array=RawArray(scratch / f"layer{first}" / "self"))
        log.info("resuming layer-wise inference at layer %d from the tables in %s", first, scratch)
    stats: list[LayerStats] = []
    if first == 1 and not programs[0].identity_prepare:
        gather, selfs, prep = _prepare_first(programs[0], features, out_degree, scratch, budget, stop, table_kind)
        stats.append(prep)
    for layer in range(first, final_layer + 1):
        prog = programs[layer - 1]
        last = layer == final_layer
        nxt = programs[layer] if not last else None
        writers = None
        sel = selected if last else None
        if nxt is not None:
            d = scratch / f"layer{layer + 1}" if scratch is not None else None
            chunk = max(1, (8 << 20) // (4 * max(nxt.gather_width, 1)))
            gw = TableWriter(d / "gather" if d else None, n, nxt.gather_width, chunk)
            sw = TableWriter(d / "self" if d else None, n, nxt.self_width, chunk) if nxt.self_width else None
            writers = (gw, sw)

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

        next_width = (nxt.gather_width + nxt.self_width) if nxt is not None else prog.out_width
        layout = plan_layout(topo, sel, prog, gather, selfs.width if selfs is not None else 0, next_width, budget,
                             fixed)
        log.info("layer %d: %d partition(s) of destinations, source slices of %d rows (%d of %d kept in memory)",
                 layer, layout.num_partitions, layout.slice_rows, layout.resident_slices,
                 -(-gather.num_rows // layout.slice_rows))
        st = run_layer(layer, prog, gather, selfs, topo, sel, layout, on_rows, stop, threads)
        st.extra.update(slice_rows=layout.slice_rows, resident_slices=layout.resident_slices)
        stats.append(st)
        if gather is not features:
            gather.close()
        if selfs is not None:
            selfs.close()
        if writers is not None:
            gather = writers[0].finish(table_kind)
            selfs = writers[1].finish(table_kind) if writers[1] is not None else None
            if state_path is not None:
                _write_state(state_path, identity, layer, selfs is not None)
                shutil.rmtree(scratch / f"layer{layer}", ignore_errors=True)  # this layer's inputs: done with
    return LayerwiseResult(stats, time.perf_counter() - t0, process_read_bytes() - rb0, peak_rss_bytes(),
                           resumed_after=first - 1)


def _prepare_first(prog: LayerProgram, features: Table, out_degree, scratch: Path | None, budget: int,
                   stop: StopCheck, table_kind: str) -> tuple[Table, Table | None, LayerStats]:
    """The first layer's G (and S) from the features, in one sequential pass (when they are not the features); its
    statistics are those of "layer 0"."""
    st = LayerStats(0)
    t0, rb0 = time.perf_counter(), process_read_bytes()
    n = features.num_rows
    d = scratch / "layer1" if scratch is not None else None
    chunk = max(1, (8 << 20) // (4 * max(prog.gather_width, 1)))
    gw = TableWriter(d / "gather" if d else None, n, prog.gather_width, chunk)
    sw = TableWriter(d / "self" if d else None, n, prog.self_width, chunk) if prog.self_width else None
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
            bar.update(end - start)
    tables = gw.finish(table_kind), (sw.finish(table_kind) if sw is not None else None)
    st.seconds, st.read_bytes = time.perf_counter() - t0, process_read_bytes() - rb0
    st.needed_bytes = st.table_bytes = features.nbytes
    st.destinations = n
    st.extra["pass"] = "layer 1 inputs"
    return (*tables, st)


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


def _write_state(path: Path, identity: dict, done: int, has_self: bool) -> None:
    from ..store.files import write_atomic

    write_atomic(path, lambda f: json.dump({"identity": identity, "done": done, "self": has_self}, f), binary=False,
                 sync_dir=True)
