"""What exact (layer-wise) inference — ``diskgraph predict`` / ``diskgraph embed`` — will take, before it runs:
the output's footprint on disk, the scratch tables, the partitions and bytes read of every layer, the time per
layer and the peak memory.

Everything is derived from the engine's own rules rather than re-stated:

* **Layer widths** come from the real layer programs (:func:`diskgraph.layer_programs.layer_programs` of a model
  built with :func:`diskgraph.models.build_model`): which table a layer gathers (``gather_width``; SAGE and GCN
  gather the narrower of input and output), its self table, accumulator and output widths.
* **Output footprint** (exact for the arrays): :class:`~diskgraph.store.inference_output.OutputWriter`'s columns and
  chunking (``min(M, 8 MiB ÷ row bytes)`` rows per chunk, the last chunk padded to a whole chunk) and the
  ``zarr.json`` files rendered by the writer's own metadata functions; the manifest is about 2 KiB (it holds paths,
  checksums and the run's summary).
* **Partition order** (the real topology only): for every gather table the engine writes — layer ``l + 1``'s for
  every layer ``l`` before the requested one, and layer 1's when it projects the features or when a copy of the
  features may pay — :func:`~diskgraph.pipeline.layerwise.order_written_table` itself is called as
  :func:`~diskgraph.pipeline.layerwise.run_layerwise` calls it (same ``fixed``, next width and ``copy_rows``; never for
  the final layer of a node set). When it orders a table, its :class:`~diskgraph.pipeline.layerwise.Ordering` (the
  rows each partition reads, as runs) and its layout are what the estimate of that layer uses (``partition_order``
  per pass). For a graph given by a summary (:class:`EvenTopology`: no in-edge sources) ordering is **not
  modelled**: every table is taken in node order, which reads at least as much as the engine would.
* **Scratch footprint** (exact): the tables :func:`~diskgraph.pipeline.layerwise.run_layerwise` writes beside the
  output — layer ``l + 1``'s G ``[N, gather_width]`` and S ``[N, self_width]`` float32 for every layer ``l``
  before the requested one, and layer 1's when its program does not gather the features themselves or the features
  are copied into partition order — each in chunks of ``8 MiB ÷ (4 × gather_width)`` rows with the last one padded,
  except a partition-ordered G: one chunk of exactly ``N × gather_width × 4`` bytes; with an ordered G, the
  ``gather-dst`` copy in node order (chunked as the others) when the layer's program reads the destinations' own G
  rows (``needs_gather_dst``) and they are not the features themselves; their ``zarr.json`` and the state file (its
  identity as :func:`diskgraph.inference.run_inference` writes it, with the budget, and the ``ordered`` field).
  The engine removes a layer's input tables once the next layer's are written (a resumed run needs only the last
  ones), so the scratch peak is the largest pair of consecutive layers' tables with the state file written beside
  them (``scratch.peak_bytes``; ``scratch.all_layers_bytes`` is the sum of every layer's tables).
* **Partitions** per layer: :func:`~diskgraph.pipeline.layerwise.plan_layout` itself, run on the dataset's CSC
  (``indptr``; an ordered layer's layout is the one ``order_written_table`` planned, which reads ``indices`` too) with
  the layer's program and gather table; for a graph given by a summary, on a stand-in
  whose in-edges are spread evenly over the nodes (the count depends on the sum of the in-degrees of each range,
  so skew moves it by at most one node per partition; the largest in-degree, which the budget must hold, is not
  known then).
* **Slices read** per layer (``slices_read``, as the engine counts them: per partition, the slices holding at least one
  of its in-edges' sources): for a partition-ordered G exactly the slices that intersect each partition's runs;
  otherwise the slices :func:`plan_layout` keeps resident once and every other slice once per partition (a graph
  whose edges are not ordered by locality has an edge from every slice into every partition).
* **Bytes read** per layer (what the engine asks the OS for): G — for an ordered table the rows of the partitions'
  runs (``Ordering.needed_rows``), else the slices read, whole — + the destinations' own G rows, only when the
  program reads them (``needs_gather_dst``: from the node-order copy, or the features, when G is ordered) and not
  for finishing chunks whose rows all lie in resident slices + S once + the topology (``indptr`` twice, by the
  layout and by the layer, ``indices`` once); before layer 1, the features once when the first program projects
  them or they are copied into partition order (and, for GCN, ``indices`` once for the out-degrees); before a layer
  whose table is ordered, ``indices`` once more and ``indptr`` (the ordering's pass over the in-edges, counted in the
  pass that writes the table). The engine's counter is the OS's: read-ahead past a slice's end and pages still
  cached move it either way (docs/planning.md has measured figures).
* **Time** per layer (and for the pass over the features that prepares layer 1's tables):
  ``max(read, compute) + write`` — the next slice is read by a thread while the current one is combined, the tables
  are written as rows are finished.

  - ``read`` = bytes read ÷ the profile's sequential read bandwidth (``disk.seq_read_Bps``);
  - ``compute`` = the combine, memory-bound: every in-edge's G row (``4 × gather_width`` bytes) streams through memory
    once, and every in-edge's ids are regrouped (:data:`~diskgraph.pipeline.layerwise.EDGE_BYTES`, written and read;
    with a node set, the in-edges of the other destinations too: they are read with the partition, then dropped),
    at the profile's copy bandwidth (``memory.copy_Bps``); + the dense projections (``prepare`` of the next layer's
    rows, ``finish``; 2 FLOPs per multiply-add) × the seconds per dense FLOP of the model's evaluation fit
    (``compute.models.<model>.eval``); + the rows each destination reads, accumulates and writes (4 bytes per
    float, written and read) at the copy bandwidth; + one fixed cost per kernel call (each slice combined into a
    partition, each partition, each chunk of ``finish_rows`` destinations finished) = the evaluation fit's constant
    per forward. (The fit's own per-edge term is not used: on sampled minibatches the dense work hides the
    aggregation and the fit often sets it to 0.) A table written in partition order adds, to the pass that writes
    it, its ordering (every in-edge's source read and marked: index bytes + 16 bytes, and a sort of ``N`` 8-byte
    keys taken as ``log2 N`` passes over them, at the copy bandwidth), and to the layer that reads it the
    remapping of every in-edge's source (16 bytes).
  - ``write`` = bytes written (the next layer's tables, or the output) ÷ the write bandwidth (``disk.write_Bps``;
    every chunk is synced) + the same bytes ÷ :data:`SHA256_BPS` (every array is hashed as it is written).

  The total adds the passes; the process's start (imports, loading the numba kernels, the model) is not in it.
* **Peak memory** = the calibrated process baseline (``process.base_anon_bytes``, as training's estimate) + the
  most the engine holds in any layer under the budget (:func:`plan_layout`'s own accounting: the resident slices,
  two slices in flight, the finishing buffers, the out-degrees, the largest partition's accumulators and in-edges,
  and for an ordered table the order's positions, ``8 × N`` bytes, and runs, both while it is written and while it
  is read) + the writers' chunk buffers (the next tables' or the output's, one chunk per array; an ordered table is
  written in place, with no chunk buffer) + the model's parameters.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from pathlib import Path

import numpy as np

from ..store.errors import InputError
from .profile import Hardware

MANIFEST_BYTES = 2048
"""About the bytes of an inference output's ``manifest.json`` (paths, checksums, the model and the summary)."""

SHA256_BPS = 1.0e9
"""Bytes per second of sha256 on one core (every array and table is hashed as it is written; about 1.2 GB/s on the
2-vCPU Xeon of docs/planning.md)."""

TABLE_CHUNK_BYTES = 8 << 20
"""Bytes per chunk of a scratch table's rows, by the gather width (as
:func:`~diskgraph.pipeline.layerwise.run_layerwise` chooses them)."""

KINDS = ("predict", "embed")


# -- the engine's pieces, without a trained model ----------------------------------------------------

def programs_for(model: str, in_dim: int, hidden: int, classes: int, layers: int, heads: int = 4) -> list:
    """The layer programs of a freshly built model of this shape (the widths do not depend on the weights)."""
    import torch

    from ..layer_programs import layer_programs
    from ..models import build_model

    with torch.device("meta"):
        try:
            net = build_model(model, in_dim, hidden, classes, layers, heads=heads)
        except Exception:  # noqa: BLE001 - a layer that cannot live on the meta device: build it for real
            net = None
    if net is None:
        net = build_model(model, in_dim, hidden, classes, layers, heads=heads)
    return layer_programs(net)


def _conv_dims(prog) -> tuple[int, int]:
    c = prog.conv
    out = c.out_dim * getattr(c, "heads", 1) if hasattr(c, "heads") else c.out_dim
    return int(c.in_dim), int(out)


def prepare_flops(prog, n: int) -> float:
    """FLOPs of ``prog.prepare`` on ``n`` rows (2 per multiply-add)."""
    din, dout = _conv_dims(prog)
    name = type(prog).__name__
    if name == "SAGEProgram":
        return 2.0 * 2 * n * din * dout if prog.project else 0.0
    if name == "GCNProgram":
        return 2.0 * n * din * dout if prog.project else 0.0
    return 2.0 * n * din * dout  # GAT: z = W x (the attention scores are elementwise)


def finish_flops(prog, n: int) -> float:
    """FLOPs of ``prog.finish`` on ``n`` destinations (2 per multiply-add)."""
    din, dout = _conv_dims(prog)
    name = type(prog).__name__
    if name == "SAGEProgram":
        return 0.0 if prog.project else 2.0 * 2 * n * din * dout
    if name == "GCNProgram":
        return 0.0 if prog.project else 2.0 * n * din * dout
    return 0.0


def parameter_count(progs: list) -> int:
    """Parameters of the layers behind ``progs``."""
    return int(sum(t.numel() for p in progs for t in p.conv.parameters()))


class EvenTopology:
    """A stand-in for :class:`~diskgraph.pipeline.layerwise.Topology` of a graph known by its counts: the in-edges
    spread evenly over the nodes (the first ``edges % nodes`` nodes one more)."""

    def __init__(self, num_nodes: int, num_edges: int):
        self.num_nodes, self.num_edges = int(num_nodes), int(num_edges)
        self._q, self._r = divmod(self.num_edges, max(1, self.num_nodes))

    def ptr(self, lo: int, hi: int) -> np.ndarray:
        v = np.arange(lo, hi + 1, dtype=np.int64)
        return v * self._q + np.minimum(v, self._r)


def _metadata_bytes(tmp: Path, name: str, shape, chunk_shape, dtype: str) -> int:
    from ..store.zarr_arrays import write_array_metadata

    write_array_metadata(tmp / name, tuple(shape), tuple(chunk_shape), dtype)
    return (tmp / name / "zarr.json").stat().st_size


def _chunked_bytes(num_rows: int, chunk_rows: int, row_bytes: int) -> int:
    """Bytes of an array's chunk files: whole chunks, the last one padded."""
    return -(-num_rows // chunk_rows) * chunk_rows * row_bytes if num_rows else 0


def output_columns(kind: str, width: int, dtype: str = "float32", task: dict | None = None) -> dict:
    """The columns of an output, as :func:`diskgraph.inference.run_inference` declares them (``task``: the predict
    output's :func:`~diskgraph.store.inference_output.output_task`; default: classification into ``width`` classes)."""
    from ..store.inference_output import embed_columns, output_task, predict_columns

    if kind == "predict":
        return predict_columns(task or output_task("classification", width))
    return embed_columns(width, dtype)


def output_footprint(kind: str, num_rows: int, width: int, dtype: str = "float32", task: dict | None = None) -> dict:
    """Bytes of an inference output of ``num_rows`` rows: per array (chunk files + ``zarr.json``, exact), the group's
    ``zarr.json`` (exact) and the manifest (about :data:`MANIFEST_BYTES`)."""
    from ..store.inference_output import INFERENCE_FORMAT, INFERENCE_VERSION, _default_chunk_rows
    from ..store.zarr_arrays import storage_dtype, write_group

    cols = output_columns(kind, width, dtype, task)
    arrays = {}
    with tempfile.TemporaryDirectory(prefix="diskgraph-plan-") as t:
        tmp = Path(t)
        for name, (row_shape, dt) in cols.items():
            row_bytes = int(np.prod(row_shape, dtype=np.int64) if row_shape else 1) * storage_dtype(dt).itemsize
            rows = _default_chunk_rows(num_rows, row_bytes)
            data = _chunked_bytes(num_rows, rows, row_bytes)
            meta = _metadata_bytes(tmp, name, (num_rows, *row_shape), (rows, *row_shape), dt)
            arrays[name] = {"bytes": data + meta, "data_bytes": data, "logical_bytes": num_rows * row_bytes,
                            "chunk_rows": rows, "chunks": -(-num_rows // rows), "dtype": dt,
                            "shape": [num_rows, *row_shape]}
        write_group(tmp / "group", {"description": f"diskgraph {kind} output: {', '.join(cols)} "
                                                   f"({num_rows} rows, one per node)",
                                    "format": INFERENCE_FORMAT, "format_version": INFERENCE_VERSION})
        group = (tmp / "group" / "zarr.json").stat().st_size
    arrays_bytes = sum(a["bytes"] for a in arrays.values())
    return {"arrays": arrays, "arrays_bytes": arrays_bytes, "group_bytes": group, "manifest_bytes": MANIFEST_BYTES,
            "bytes": arrays_bytes + group + MANIFEST_BYTES}


def table_footprint(tmp: Path, name: str, num_rows: int, gather_width: int, width: int) -> dict:
    """One scratch table written by :class:`~diskgraph.pipeline.layerwise.TableWriter` (chunk rows by the gather
    width, as the engine chooses them for both tables of a layer)."""
    chunk = max(1, TABLE_CHUNK_BYTES // (4 * max(gather_width, 1)))
    data = _chunked_bytes(num_rows, chunk, 4 * width)
    meta = _metadata_bytes(tmp, name, (num_rows, width), (chunk, width), "float32")
    return {"bytes": data + meta, "data_bytes": data, "logical_bytes": num_rows * 4 * width, "chunk_rows": chunk}


def ordered_table_footprint(tmp: Path, name: str, num_rows: int, width: int) -> dict:
    """One partition-ordered gather table (:class:`~diskgraph.pipeline.layerwise.TableWriter` with an order): a
    single chunk file of exactly ``num_rows × width × 4`` bytes (no padding) and its ``zarr.json``."""
    data = num_rows * 4 * width
    meta = _metadata_bytes(tmp, name, (num_rows, width), (num_rows, width), "float32")
    return {"bytes": data + meta, "data_bytes": data, "logical_bytes": data, "chunk_rows": num_rows,
            "partition_order": True}


def _state_bytes(final_layer: int, done: int, has_self: bool, ordered: bool, budget: int) -> int:
    """``layerwise-state.json`` as :func:`~diskgraph.pipeline.layerwise._write_state` writes it for the identity
    :func:`diskgraph.inference.run_inference` gives (its checksums are ``sha256:`` + 64 hex digits; the budget is
    part of it)."""
    sha = "sha256:" + "0" * 64
    identity = {"dataset": sha, "model": sha, "final_layer": final_layer, "mode": "exact", "storage": "disk",
                "memory_budget": int(budget)}
    return len(json.dumps({"identity": identity, "done": done, "self": has_self, "ordered": ordered}).encode())


def _run_slices(runs: np.ndarray, slice_rows: int) -> int:
    """Slices of ``slice_rows`` rows that intersect ``runs`` (``[k, 2]`` ascending, disjoint row ranges)."""
    if not len(runs):
        return 0
    first, last = runs[:, 0] // slice_rows, (runs[:, 1] - 1) // slice_rows
    return int((last - first + 1).sum() - (first[1:] == last[:-1]).sum())


def _dst_rows_read(layout, selected: np.ndarray | None, num_nodes: int, resident: int) -> int:
    """Destinations whose own G rows :func:`~diskgraph.pipeline.layerwise.run_layer` reads from disk when it finishes
    them: all, but those of finishing chunks whose rows all lie in the first ``resident`` slices (kept in memory)."""
    if not resident:
        return num_nodes if selected is None else len(selected)
    total, sr, fr = 0, layout.slice_rows, layout.finish_rows
    for lo, hi in layout.partitions:
        if selected is None:
            ids = np.arange(lo, hi, dtype=np.int64)
        else:
            a, b = np.searchsorted(selected, [lo, hi])
            ids = selected[a:b]
        ends = ids[np.minimum(np.arange(fr, len(ids) + fr, fr), len(ids)) - 1]  # each chunk's last row
        sizes = np.diff(np.minimum(np.arange(0, len(ids) + fr, fr), len(ids)))[:len(ends)]
        total += int(sizes[ends // sr >= resident].sum())
    return total


class _QuietOrdering(logging.Filter):
    """Drops the engine's "written in partition order" line while the planner asks the same question."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.funcName != "order_written_table"


# -- the estimate ------------------------------------------------------------------------------------

def _selected(nodes, num_nodes: int) -> np.ndarray | None:
    """``nodes`` (None: all; a count: that many spread evenly; ids: those) as the engine's ``selected``."""
    if nodes is None:
        return None
    if isinstance(nodes, (int, np.integer)):
        m = int(nodes)
        if not 1 <= m <= num_nodes:
            raise InputError(f"--inference-nodes {m} is not between 1 and the graph's {num_nodes:,} nodes")
        if m == num_nodes:
            return None
        return np.unique(np.linspace(0, num_nodes - 1, m).round().astype(np.int64))
    sel = np.unique(np.asarray(nodes, dtype=np.int64))
    return None if len(sel) == num_nodes else sel


def _edges_into(topo, selected: np.ndarray | None, num_edges: int, step: int = 1 << 20) -> int:
    """In-edges of the selected destinations (all: ``num_edges``)."""
    if selected is None:
        return int(num_edges)
    total = 0
    n = topo.num_nodes
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        a, b = np.searchsorted(selected, [lo, hi])
        if a == b:
            continue
        deg = np.diff(topo.ptr(lo, hi))
        total += int(deg[selected[a:b] - lo].sum())
    return total


def _partition_peak(topo, layout, selected: np.ndarray | None, per_dst: int) -> int:
    """The largest partition's accumulators and in-edges (what :func:`plan_layout` charges it)."""
    from ..pipeline.layerwise import EDGE_BYTES

    peak = 0
    for a, b in layout.partitions:
        edges = int(topo.ptr(b, b)[0] - topo.ptr(a, a)[0])
        dst = (b - a) if selected is None else int(np.searchsorted(selected, b) - np.searchsorted(selected, a))
        peak = max(peak, edges * EDGE_BYTES + dst * per_dst)
    return peak


def estimate_inference(*, num_nodes: int, num_edges: int, feature_dim: int, feature_row_bytes: int, num_classes: int,
                       hw: Hardware, feature_dtype: str = "float32", model: str = "sage", hidden: int = 256,
                       layers: int = 2, heads: int = 4,
                       kind: str = "predict", layer: int | None = None, dtype: str = "float32", nodes=None,
                       memory_budget: int = 1 << 30, topology=None, index_bytes: int | None = None,
                       budget_flag: str = "--memory-budget", task: dict | None = None) -> dict:
    """Footprint, scratch, partitions, bytes read, time and peak memory of one exact inference request (see the
    module docstring for how each is derived).

    Args:
        num_nodes, num_edges, feature_dim, feature_row_bytes, num_classes: the graph (row bytes of the stored
            features: 4 × dim for float32).
        hw: the hardware profile (disk bandwidths, the model's evaluation compute fit, the process baseline).
        model, hidden, layers, heads: the trained model (``layers`` = the training fanouts' hops).
        kind: ``predict`` (logits float32 + predictions) or ``embed`` (``layer``'s output in ``dtype``).
        layer: ``embed``'s layer (default: the last hidden one, as ``diskgraph embed``).
        nodes: the output's nodes: None (all), a count M (spread evenly) or the ids.
        memory_budget: the inference's ``--memory-budget``.
        topology: the dataset's :class:`~diskgraph.pipeline.layerwise.Topology` (None: :class:`EvenTopology`, on
            which partition order is not modelled: it has no in-edge sources).
        index_bytes: bytes per stored in-edge source id (default: 4 below 2^31 nodes, else 8).
        budget_flag: the flag named when the budget is too small.
        task: what ``predict`` writes (:func:`~diskgraph.store.inference_output.output_task`; default:
            classification into ``num_classes`` classes).

    Raises:
        InputError: an unknown kind, a layer out of range, or a budget too small for the engine.
    """
    from ..pipeline.layerwise import TableShape, order_written_table, plan_layout

    if kind not in KINDS:
        raise InputError(f"--inference {kind!r} is unknown; choose predict or embed")
    if kind == "predict" and layer is not None:
        raise InputError("--inference-layer applies to --inference embed only (predict writes the last layer's logits)")
    if kind == "predict" and dtype != "float32":
        raise InputError("--inference-dtype applies to --inference embed only (predict writes float32 outputs and its predictions)")
    final = layers if kind == "predict" else (layer if layer is not None else max(1, layers - 1))
    if not 1 <= final <= layers:
        raise InputError(f"--inference-layer {final} is out of range: the model has {layers} layer(s) (one per "
                         f"--fanouts hop); give 1..{layers}")
    n, e = int(num_nodes), int(num_edges)
    budget = int(memory_budget)
    progs = programs_for(model, feature_dim, hidden, num_classes, layers, heads)
    topo = topology if topology is not None else EvenTopology(n, e)
    isz = int(index_bytes or (4 if n < 2**31 else 8))
    selected = _selected(nodes, n)
    m = n if selected is None else len(selected)
    width = num_classes if final == layers else progs[final - 1].out_width
    out = output_footprint(kind, m, width, dtype, task if kind == "predict" else None)

    disk = hw.get("disk") or {}
    read_bw, write_bw = float(disk.get("seq_read_Bps") or 1e9), float(disk.get("write_Bps") or 1e9)
    mem_bw = float(hw.get("memory.copy_Bps") or 5e9)
    coef = [0.0, 0.0, 0.0, 0.0]
    try:
        coef = [float(v) for v in hw.compute(model)["eval"]]
    except InputError:
        pass
    c_call, c_flop = coef[0], coef[1]
    from ..pipeline.layerwise import EDGE_BYTES

    def compute_s(edges: int, flops: float, node_floats: float, calls: int) -> float:
        """Seconds of the CPU work of a pass (see the module docstring)."""
        return ((edges * EDGE_BYTES * 2 + node_floats * 4 * 2) / mem_bw + flops * c_flop + calls * c_call)

    def write_s(nbytes: int) -> float:
        return nbytes / write_bw + nbytes / SHA256_BPS

    fixed = n * 8 if any(p.needs_out_degree for p in progs[:final]) else 0
    topo_bytes = 2 * (n + 1) * 8 + e * isz
    real = hasattr(topo, "sources")  # the dataset's CSC: the engine's partition order can be computed on it

    def widths_after(lyr: int) -> int:
        nxt = progs[lyr] if lyr < final else None
        return (nxt.gather_width + nxt.self_width) if nxt is not None else progs[lyr - 1].out_width

    def ordering_for(lyr: int, copy_rows: int = 0):
        """``(Ordering, Layout)`` of layer ``lyr``'s gather table when the engine writes it in partition order, else
        ``(None, None)``: run_layerwise's own ``ordering_for``."""
        if not real or (lyr == final and selected is not None):
            return None, None
        quiet = _QuietOrdering()
        engine_log = logging.getLogger("diskgraph")
        engine_log.addFilter(quiet)
        try:
            return order_written_table(topo, progs[lyr - 1], widths_after(lyr), budget, fixed, copy_rows, lyr)
        except InputError as err:
            raise InputError(str(err).replace("--memory-budget", budget_flag)) from None
        finally:
            engine_log.removeFilter(quiet)

    def order_work(order) -> tuple[int, float, int]:
        """(bytes read, bytes through memory, bytes held) of computing ``order``: one pass over the in-edges (indptr
        by partition, the sources), every source's partition bits marked, N keys sorted; the positions and runs."""
        if order is None:
            return 0, 0.0, 0
        runs = sum(len(r) for r in order.runs)
        return (e * isz + (n + 1) * 8, e * (isz + 16) + n * 16 * max(1.0, math.log2(max(n, 2))),
                8 * n + 16 * runs)

    passes = []
    tables = {}
    scratch_sizes: dict[int, int] = {}  # layer the tables feed -> their bytes
    orders: dict[int, tuple] = {}  # layer -> (Ordering, Layout) of its partition-ordered gather table
    with tempfile.TemporaryDirectory(prefix="diskgraph-plan-") as t:
        tmp = Path(t)

        def write_tables(lyr: int, prog, order, dst_copy: bool) -> tuple[int, int]:
            """The tables that feed layer ``lyr`` (``order``: G in partition order; ``dst_copy``: with its node-order
            copy): (bytes on disk, the writers' chunk buffers)."""
            g = ordered_table_footprint(tmp, f"l{lyr}g", n, prog.gather_width) if order is not None else \
                table_footprint(tmp, f"l{lyr}g", n, prog.gather_width, prog.gather_width)
            s = table_footprint(tmp, f"l{lyr}s", n, prog.gather_width, prog.self_width) if prog.self_width else None
            d = table_footprint(tmp, f"l{lyr}d", n, prog.gather_width, prog.gather_width) if dst_copy else None
            tables[f"layer{lyr}"] = {"gather": g, **({"self": s} if s else {}), **({"gather-dst": d} if d else {})}
            total = sum(x["bytes"] for x in (g, s, d) if x)
            scratch_sizes[lyr] = total
            # chunk buffers the writers hold (zero-filled on allocation: only the rows written are ever touched); an
            # ordered G is written in place
            chunk = max(1, TABLE_CHUNK_BYTES // (4 * max(prog.gather_width, 1)))
            widths = (0 if order is not None else prog.gather_width) + prog.self_width + \
                (prog.gather_width if d else 0)
            return total, min(n, chunk) * 4 * widths

        first = progs[0]
        identity_first = bool(first.identity_prepare)
        order1, layout1 = ordering_for(1, copy_rows=2 * n if identity_first else 0)
        if order1 is not None:
            orders[1] = (order1, layout1)
        if identity_first and order1 is None:
            gather_row, gather_dtype = int(feature_row_bytes), feature_dtype
        else:
            # _prepare_first: the features read once, layer 1's tables written (in partition order when order1)
            dst_copy = order1 is not None and first.needs_gather_dst and not identity_first
            written, buf = write_tables(1, first, order1, dst_copy)
            o_read, o_mem, o_held = order_work(order1)
            read = n * int(feature_row_bytes) + (e * isz if fixed else 0) + o_read
            # _prepare_first's row block: the features as float32 and their G and S rows
            row_floats = feature_dim + first.gather_width + first.self_width
            block = max(1, min(n, max(1 << 20, budget // 8) // max(1, 4 * row_floats)))
            out_floats = first.gather_width * (2 if dst_copy else 1) + first.self_width
            compute = compute_s(e if fixed else 0, prepare_flops(first, n), n * (feature_dim + out_floats),
                                -(-n // block)) + o_mem / mem_bw
            rs, ws = read / read_bw, write_s(written)
            passes.append({"pass": "inputs", "partition_order": order1 is not None, "read_bytes": int(read),
                           "written_bytes": int(written), "read_s": rs, "compute_s": compute, "write_s": ws,
                           "seconds": max(rs, compute) + ws,
                           "memory_bytes": int(fixed + buf + block * 4 * row_floats + o_held)})
            gather_row, gather_dtype = 4 * first.gather_width, "float32"
        for lyr in range(1, final + 1):
            prog = progs[lyr - 1]
            last = lyr == final
            nxt = progs[lyr] if not last else None
            sel = selected if last else None
            next_width = widths_after(lyr)
            order, layout = orders.get(lyr, (None, None))
            if layout is None:
                gather = TableShape(n, gather_row, gather_dtype)
                try:
                    layout = plan_layout(topo, sel, prog, gather, prog.self_width, next_width, budget, fixed)
                except InputError as err:
                    raise InputError(str(err).replace("--memory-budget", budget_flag)) from None
            next_order = None
            if nxt is not None:  # the engine orders the next table before it runs this layer
                next_order, next_layout = ordering_for(lyr + 1)
                if next_order is not None:
                    orders[lyr + 1] = (next_order, next_layout)
            dst = m if last else n
            edges = _edges_into(topo, sel, e)
            g_pass = n * gather_row
            s_row = 4 * prog.self_width
            slices = max(1, -(-n // layout.slice_rows))
            resident = min(getattr(layout, "resident_slices", 0), slices)
            resident_rows = min(n, resident * layout.slice_rows)
            if order is not None:
                # each partition reads only its runs, from the slices they intersect (never resident)
                slices_read = sum(_run_slices(r, layout.slice_rows) for r in order.runs)
                g_read = order.needed_rows * gather_row
            else:
                # resident slices once, the others once per partition
                slices_read = resident + layout.num_partitions * (slices - resident)
                g_read = (resident_rows + layout.num_partitions * (n - resident_rows)) * gather_row
            # the destinations' own G rows (node order: the features for layer 1 when they are gathered, else G or
            # its node-order copy), only when the program reads them and they are not in resident slices; their S
            own_row = int(feature_row_bytes) if lyr == 1 and identity_first else 4 * prog.gather_width
            own = _dst_rows_read(layout, sel, n, resident) * own_row if prog.needs_gather_dst else 0
            o_read, o_mem, o_held = order_work(next_order)
            read = g_read + own + dst * s_row + topo_bytes + o_read
            if nxt is not None:
                written, wbuf = write_tables(lyr + 1, nxt, next_order,
                                             next_order is not None and bool(nxt.needs_gather_dst))
                flops = finish_flops(prog, dst) + prepare_flops(nxt, dst)
            else:
                # the output writer holds one chunk per array
                written = out["bytes"]
                wbuf = sum(a["data_bytes"] // max(1, a["chunks"]) for a in out["arrays"].values())
                flops = finish_flops(prog, dst)
            node_floats = dst * (prog.gather_width + prog.self_width + prog.state_width + prog.out_width + next_width)
            calls = slices_read + -(-dst // layout.finish_rows) + layout.num_partitions
            # every in-edge of the partitions is read and regrouped (those of unselected destinations dropped); the
            # combine: every kept in-edge's G row streams through memory once; an ordered G: every source remapped
            compute = compute_s(e, flops, node_floats, calls) + edges * prog.gather_width * 4 / mem_bw + \
                ((e * 16 if order is not None else 0) + o_mem) / mem_bw
            rs, ws = read / read_bw, write_s(written)
            # what plan_layout charges: resident slices, two slices in flight (unless all are resident), finishing
            # buffers (rows of G, S, outputs and next tables, twice over for temporaries)
            slice_row = prog.gather_width * 4 + (gather_row if gather_dtype != "float32" else 0)
            slice_mem = resident * layout.slice_rows * prog.gather_width * 4 + \
                (0 if resident >= slices else 2 * layout.slice_rows * slice_row)
            fw = prog.gather_width + prog.self_width + 2 * prog.out_width + next_width + prog.state_width
            finish_mem = layout.finish_rows * 8 * fw
            per_dst = (prog.state_width + (prog.self_width if prog.self_in_state else 0)) * 4 + 8
            part_mem = _partition_peak(topo, layout, sel, per_dst)
            held = order_work(order)[2] + o_held  # this layer's order (read) and the next one's (written)
            passes.append({
                "pass": f"layer {lyr}", "layer": lyr, "partitions": layout.num_partitions,
                "partition_order": order is not None,
                "slice_rows": layout.slice_rows, "slices": slices, "resident_slices": resident,
                "slices_read": int(slices_read), "needed_rows": int(order.needed_rows) if order is not None else None,
                "finish_rows": layout.finish_rows, "destinations": int(dst),
                "edges": int(edges), "gather_width": prog.gather_width, "self_width": prog.self_width,
                "gather_bytes": int(g_pass), "read_bytes": int(read), "written_bytes": int(written),
                "read_s": rs, "compute_s": compute, "write_s": ws, "seconds": max(rs, compute) + ws,
                "memory_bytes": int(slice_mem + finish_mem + fixed + part_mem + wbuf + held)})
            gather_row, gather_dtype = (4 * nxt.gather_width, "float32") if nxt is not None else (gather_row,
                                                                                                  gather_dtype)
    # the scratch directory at its fullest: when the state after layer l is written, layer l's input tables and
    # layer l + 1's are both there (then l's are removed); a 1-layer request leaves layer 1's tables, no state
    events = [(scratch_sizes.get(lyr, 0) + scratch_sizes.get(lyr + 1, 0),
               _state_bytes(final, lyr, bool(progs[lyr].self_width), (lyr + 1) in orders, budget))
              for lyr in range(1, final)] or [(scratch_sizes.get(1, 0), 0)]
    two, state = max(events, key=lambda ev: (ev[0] + ev[1], ev[0]))
    tables_bytes = sum(scratch_sizes.values())
    base = int(hw.get("process.base_anon_bytes", 0) or 0)
    engine = max(p["memory_bytes"] for p in passes)
    params = parameter_count(progs) * 4
    layers_out = [p for p in passes if "layer" in p]
    result = {
        "mode": "exact", "kind": kind, "layer": final, "num_layers": layers, "dtype": dtype if kind == "embed" else
        "float32", "nodes": int(m), "width": int(width), "memory_budget": budget,
        "model": {"name": model, "hidden": int(hidden), "heads": int(heads), "layers": int(layers)},
        "output_bytes": int(out["bytes"]), "output": out,
        "scratch_bytes": int(two + state),
        "scratch": {"tables": tables, "all_layers_bytes": int(tables_bytes), "state_bytes": state,
                    "peak_bytes": int(two + state)},
        "disk_peak_bytes": int(out["bytes"] + two + state),
        "partitions": [p["partitions"] for p in layers_out],
        "partition_order": [p["partition_order"] for p in layers_out],
        "read_bytes": int(sum(p["read_bytes"] for p in passes)),
        "written_bytes": int(sum(p["written_bytes"] for p in passes)),
        "seconds": float(sum(p["seconds"] for p in passes)),
        "peak_host_bytes": int(base + engine + params),
        "memory": {"process": base, "engine": int(engine), "parameters": int(params)},
        "passes": passes,
        "topology": "the dataset's CSC" if real else
                    "in-edges spread evenly over the nodes (a summary: no degree array; partition order not "
                    "modelled)",
        "how": {
            "output": "OutputWriter's columns and chunks (min(M, 8 MiB / row bytes) rows, last chunk padded) and "
                      "zarr.json rendered by its writer: exact; manifest about 2 KiB",
            "scratch": "each layer's G [N, gather_width] and S [N, self_width] float32 tables as the engine writes "
                       "them (chunks of 8 MiB / (4 x gather_width) rows, last padded; a partition-ordered G one file "
                       "of N x gather_width x 4 bytes, with its node-order copy gather-dst when the layer reads the "
                       "destinations' own rows); peak: two consecutive layers' tables and the state file: exact",
            "partitions": "pipeline.layerwise.plan_layout on " + ("the dataset's indptr; partition order by "
                                                                   "pipeline.layerwise.order_written_table on its CSC"
                                                                   if real else "in-edges spread evenly (node order)"),
            "read": "per layer: an ordered G: the rows of each partition's runs; else G's resident slices once and "
                    "its other slices once per partition; the destinations' own G rows when the layer reads them "
                    "(not those in resident slices), S once, indptr x 2, indices once (+ the features once when "
                    "layer 1 projects or copies them; + indices once per ordered table); the OS counter adds "
                    "read-ahead",
            "time": "per pass: max(read / sequential read bandwidth, compute) + written / write bandwidth + written / "
                    "sha256 rate; compute = (edges x (4 x gather width + 2 x EDGE_BYTES) + node floats x 8) / memory "
                    "copy bandwidth + dense FLOPs x the eval fit's s/FLOP + kernel calls (slices, partitions, "
                    "finishing chunks) x the eval fit's constant",
            "memory": "process baseline + the most the engine holds in a layer (slices, finishing buffers, "
                      "out-degrees, the largest partition, partition orders' positions) + the writers' chunk buffers "
                      "+ parameters",
        },
    }
    if not math.isfinite(result["seconds"]):  # pragma: no cover - a profile with a zero rate
        raise ValueError("the inference time is not finite; check the hardware profile")
    return result


def estimate_inference_for_dataset(dataset, hw: Hardware, *, nodes: str | int | None = "all", **kw) -> dict:
    """:func:`estimate_inference` for a dataset directory: its counts, its CSC's ``indptr`` and, for ``nodes`` given
    as ``all|train|val|test|unlabelled|FILE.npy``, the very node set ``predict --nodes`` selects."""
    from ..inference import select_nodes
    from ..pipeline.layerwise import Topology
    from ..store.dataset import Dataset, open_dataset

    ds = dataset if isinstance(dataset, Dataset) else open_dataset(dataset)
    if ds.features is None:
        raise InputError(f"dataset {ds.path} has no features; a model needs them")
    indices = ds.array("topology/indices")
    topo = Topology(ds.array("topology/indptr"), indices, ds.num_nodes)
    if isinstance(nodes, str) and not nodes.isdigit():
        sel = select_nodes(ds, nodes)  # None: all
        if sel is not None and not len(sel):
            raise InputError(f"--inference-nodes {nodes} names no node of {ds.path}; choose another node set")
    else:
        sel = None if nodes is None else int(nodes)
    from ..store.inference_output import output_task

    classes = int(ds.num_outputs or 2)  # the model's output width (classes, multilabel labels, regression targets)
    task = output_task(ds.task, classes, ds.manifest.get("target_shape")) if ds.num_outputs else None
    return estimate_inference(num_nodes=ds.num_nodes, num_edges=ds.num_edges, feature_dim=ds.feature_dim,
                              feature_row_bytes=int(ds.features.row_bytes), feature_dtype=str(ds.features.dtype),
                              num_classes=classes, hw=hw, nodes=sel, task=task,
                              topology=topo, index_bytes=int(indices.row_bytes), **kw)
