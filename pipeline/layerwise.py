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
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..native import layerwise as kernels
from ..store.errors import InputError
from ..store.progress import Progress, log
from ..store.zarr_arrays import RawArray
from .layer_layout import EDGE_BYTES, FINISH_ROWS, MIN_SLICE_BYTES, SLICE_BYTES, Layout, plan_layout
from .layer_order import ORDER_GAIN, Ordering, order_written_table, partition_order
from .layer_program import LayerProgram, StopCheck
from .layer_stats import LayerStats, LayerwiseResult
from .layer_tables import ChunkedRows, Table, TableShape, TableWriter, Topology
from .metrics import peak_rss_bytes, process_read_bytes

__all__ = [  # the engine's names, importable from here wherever they are defined
    "EDGE_BYTES", "FINISH_ROWS", "MIN_SLICE_BYTES", "ORDER_GAIN", "SLICE_BYTES", "STATE_NAME", "ChunkedRows",
    "LayerProgram", "LayerStats", "LayerwiseResult", "Layout", "Ordering", "StopCheck", "Table", "TableShape",
    "TableWriter", "Topology", "order_written_table", "partition_order", "plan_layout", "read_state", "run_layer",
    "run_layerwise",
]


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
