"""Partition order of the gather tables of layer-wise inference (:mod:`diskgraph.pipeline.layerwise`): rows sorted by
the set of destination partitions that read them (:class:`Ordering`, :func:`partition_order`), and whether a table
the engine writes goes in that order (:func:`order_written_table`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..native import layerwise as kernels
from ..store.progress import log
from .layer_layout import Layout, plan_layout
from .layer_program import LayerProgram
from .layer_tables import TableShape, Topology


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


ORDER_GAIN = 0.9
"""A gather table is written in partition order when its layer then reads at most this share of the rows it would
read in node order (one pass per partition). A copy of the features costs two passes more (a read and a write):
on the 2M-node benchmark graph (4 partitions reading 47 % of the rows each) the copy brought the read amplification
from 1.98 to 1.01 but took 13.5 s instead of 10.1 s on 2 CPUs, so it is made only when it saves more than that."""


def order_written_table(topo: Topology, prog: LayerProgram, next_width: int, budget: int, fixed: int,
                        copy_rows: int = 0, layer: int = 0) -> tuple[Ordering | None, Layout | None]:
    """Whether the gather table of a layer (``prog``, all nodes as destinations) that
    :func:`~diskgraph.pipeline.layerwise.run_layerwise` writes goes in partition order: ``(ordering, layout)`` when
    it does, ``(None, None)`` when not — G fits the budget whole (read once), the layout has one partition or more
    than 64, or the partitions would read more than :data:`ORDER_GAIN` of the rows node order reads (whole slices
    once per partition, or once when kept resident; ``copy_rows``: rows the copy itself costs, for the features).
    ``layout`` is then the one the layer runs with (planned without resident slices, with the ``8 * N`` bytes of the
    order's positions on top of ``fixed``)."""
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
