"""How one layer of layer-wise inference (:mod:`diskgraph.pipeline.layerwise`) is cut within a memory budget:
destination partitions and source slices (:class:`Layout`, planned by :func:`plan_layout`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..store.errors import InputError
from ..store.progress import format_bytes
from .layer_program import LayerProgram
from .layer_tables import Table, Topology

SLICE_BYTES = 64 << 20
"""Bytes of one source slice of a gather table (float32), at most; a sixteenth of the budget when that is less."""

MIN_SLICE_BYTES = 64 << 10
"""Bytes of one source slice, at least."""

FINISH_ROWS = 32768
"""Destinations finished at once (their G/S rows, outputs and next tables), at most."""

EDGE_BYTES = 20
"""Memory per in-edge of a partition while it is combined: the source id as read (≤ 8), its destination (4), and the
regrouped source and destination (4 + 4)."""


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
