"""Out-of-core construction of CSC topology (in-edges grouped by destination).

The edge list is streamed in chunks and never held whole. Memory holds one
int64 counter per node plus at most one destination range's edges:

1. **count** — stream the edges, check every id, apply the edge options
   (drop self-loops, add reverse edges) and count in-degrees.
2. **partition** — cut the destination ids into ranges whose edges fit the
   memory budget (one range when everything fits).
3. **spill** (only with more than one range) — stream the edges again and
   append each chunk's edges, grouped by range, to one temporary file per range.
4. **place** — per range, counting-sort the edges by destination, sort each
   node's sources (and drop repeats with ``dedup``), then append the indices
   and indptr to their arrays on disk.

With one range, step 3 is skipped and step 4 streams the input a second time.
The result is deterministic for a given edge set: indices are sorted within
each destination, whatever the input order.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..native import csc as kernels
from .errors import InputError
from .files import AppendFile
from .progress import Progress, format_bytes, format_count, log
from .sources.edges import EdgeSource
from .zarr_arrays import StreamArrayWriter

PLACE_BYTES_PER_EDGE_SLACK = 4
"""Extra bytes per edge kept free during placement (segment sorts, cursors)."""


@dataclass
class CSCResult:
    """What :func:`build_csc` wrote.

    Attributes:
        num_edges: edges stored (after the edge options).
        input_edges: edges read from the input.
        self_loops_dropped, duplicates_dropped: edges removed by the options.
        indptr_sha256, indices_sha256: checksums of the arrays' bytes.
        index_dtype: dtype name of the indices.
        parts: number of destination ranges used.
        seconds: wall time.
        peak_edges_in_memory: the largest number of edges held at once in the place step.
    """

    num_edges: int
    input_edges: int
    self_loops_dropped: int
    duplicates_dropped: int
    indptr_sha256: str
    indices_sha256: str
    index_dtype: str
    parts: int
    seconds: float
    peak_edges_in_memory: int


def _validated(src: np.ndarray, dst: np.ndarray, start: int, num_nodes: int, label: str, nodes_from: str) -> None:
    for arr in (src, dst):
        if arr.size == 0:
            continue
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= num_nodes:
            bad = (arr < 0) | (arr >= num_nodes)
            i = int(np.argmax(bad))
            v = int(arr[i])
            which = "source" if arr is src else "target"
            if v < 0:
                raise InputError(f"{label} holds negative node id {v} ({which} of edge {start + i}); node ids must be 0..N-1: fix the ids")
            raise InputError(
                f"{label} holds node id {v} ({which} of edge {start + i}) but the graph has {num_nodes} nodes ({nodes_from}); "
                "fix the ids or pass --num-nodes"
            )


def transformed_edges(edges: EdgeSource, chunk_edges: int, num_nodes: int, nodes_from: str,
                      undirected: bool, drop_self_loops: bool, stats: dict | None = None):
    """Yield ``(src, dst)`` int64 chunks with ids checked and the edge options applied.

    ``stats`` (when given) accumulates ``input_edges`` and ``self_loops_dropped``.
    """
    for start, src, dst in edges.chunks(chunk_edges):
        _validated(src, dst, start, num_nodes, edges.label, nodes_from)
        if stats is not None:
            stats["input_edges"] += len(src)
        if drop_self_loops:
            keep = src != dst
            if not keep.all():
                if stats is not None:
                    stats["self_loops_dropped"] += int(len(keep) - keep.sum()) * (2 if undirected else 1)
                src, dst = src[keep], dst[keep]
        if undirected:
            src, dst = np.concatenate([src, dst]), np.concatenate([dst, src])
        yield src, dst


def max_node_id(edges: EdgeSource, chunk_edges: int, progress_desc: str = "scanning ids") -> int:
    """The largest node id in the input (-1 when empty); refuses negative ids."""
    hi = -1
    with Progress(progress_desc, edges.num_edges, "edges") as bar:
        for start, src, dst in edges.chunks(chunk_edges):
            for arr, which in ((src, "source"), (dst, "target")):
                if arr.size:
                    if arr.min() < 0:
                        i = int(np.argmax(arr < 0))
                        raise InputError(f"{edges.label} holds negative node id {int(arr[i])} ({which} of edge {start + i}); node ids must be 0..N-1: fix the ids")
                    hi = max(hi, int(arr.max()))
            bar.update(len(src))
    return hi


def _ensure_open_files(needed: int, memory_budget: int) -> None:
    """Raise the soft limit on open files to ``needed`` (one spill file per destination range)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise InputError(
                f"--memory-budget {format_bytes(memory_budget)} splits the topology into {needed - 64} ranges, more files "
                f"than this system lets one process open ({hard}); raise --memory-budget"
            )
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def _partition(counts: np.ndarray, max_edges: int) -> np.ndarray:
    """Range boundaries ``b`` (node ids) so that each range ``[b[i], b[i+1])`` has ≤ max_edges in-edges.

    A single node with more in-edges than ``max_edges`` gets a range of its own.
    """
    cum = np.cumsum(counts, dtype=np.int64)
    bounds = [0]
    n = counts.shape[0]
    base = 0
    while bounds[-1] < n:
        lo = bounds[-1]
        hi = int(np.searchsorted(cum, base + max_edges, side="right"))
        hi = max(hi, lo + 1)
        hi = min(hi, n)
        bounds.append(hi)
        base = int(cum[hi - 1])
    return np.asarray(bounds, dtype=np.int64)


def build_csc(out: Path, edges: EdgeSource, num_nodes: int, nodes_from: str, *, undirected: bool = False,
              dedup: bool = False, drop_self_loops: bool = False, memory_budget: int,
              tmp_dir: Path | None = None, part_edges: int | None = None,
              held_bytes: int = 0) -> CSCResult:
    """Build the CSC arrays ``out/indptr`` (int64 [N+1]) and ``out/indices`` ([E], int32 or int64).

    ``memory_budget`` (bytes) bounds what this step holds: ``8 * (N + 1)`` bytes of
    counts plus edge chunks and one destination range at a time. ``part_edges``
    caps the edges per destination range below what the budget allows (tests
    use it to exercise the multi-range path on small graphs). ``held_bytes`` is
    memory the caller holds meanwhile (labels, splits), taken off the budget.

    Raises:
        InputError: an id out of range, or a budget too small for the node count.
    """
    t0 = time.perf_counter()
    idx_dtype = kernels.index_dtype(num_nodes)
    w = idx_dtype.itemsize
    node_bytes = 8 * (num_nodes + 1) * 2 + held_bytes  # counts + a cumulative copy while partitioning
    edge_room = memory_budget - node_bytes
    min_room = 16 << 20
    if edge_room < min_room:
        raise InputError(
            f"--memory-budget {format_bytes(memory_budget)} is too small for {num_nodes} nodes: building the topology needs "
            f"about {format_bytes(node_bytes + min_room)} (16 bytes per node, 8 more per labelled node and split entry, plus room for edges); raise --memory-budget"
        )
    # A chunk of input expands to src+dst int64 (16 B/edge), twice with undirected, plus temporaries.
    chunk_edges = int(np.clip(edge_room // 4 // (64 if undirected else 40), 1 << 14, 1 << 23))
    stats = {"input_edges": 0, "self_loops_dropped": 0}

    # 1. count
    counts = np.zeros(num_nodes, dtype=np.int64)
    with Progress("topology: counting", edges.num_edges, "edges") as bar:
        for src, dst in transformed_edges(edges, chunk_edges, num_nodes, nodes_from, undirected, drop_self_loops, stats):
            kernels.count_by_key(dst, 0, counts)
            bar.update(len(src) // (2 if undirected else 1))
    total = int(counts.sum())
    log.info("topology: %s input edges, %s after options, in %.1f s", format_count(stats["input_edges"]),
             format_count(total), time.perf_counter() - t0)

    # 2. partition: placement holds the range's src+dst (2w or 16 B), the indices (w) and slack.
    place_room = edge_room - chunk_edges * (64 if undirected else 40)
    per_edge = 2 * w + w + (w if dedup else 0) + PLACE_BYTES_PER_EDGE_SLACK
    max_part_edges = max(1 << 16, place_room // per_edge)
    if part_edges is not None:
        max_part_edges = min(max_part_edges, max(1, part_edges))
    bounds = _partition(counts, max_part_edges)
    parts = len(bounds) - 1
    if parts > 1:
        log.info("topology: %d destination ranges of at most %s edges (budget %s)", parts,
                 format_count(max_part_edges), format_bytes(memory_budget))

    indptr_w = StreamArrayWriter(out / "indptr", "int64")
    indices_w = StreamArrayWriter(out / "indices", idx_dtype.name)
    spill_dir = None
    spills: list[AppendFile] = []
    try:
        if parts > 1:
            _ensure_open_files(parts + 64, memory_budget)
            spill_dir = Path(tmp_dir or out) / "_spill"
            spill_dir.mkdir(parents=True, exist_ok=True)
            # sync and drop each spill file every few MiB so dirty pages stay within the budget
            flush = int(np.clip(memory_budget // (8 * parts), 1 << 20, 64 << 20))
            spills = [AppendFile(spill_dir / f"part{p}.bin", flush_bytes=flush) for p in range(parts)]
            part_of = np.repeat(np.arange(parts, dtype=np.int32), np.diff(bounds))
            offsets = np.zeros(parts + 1, dtype=np.int64)
            with Progress("topology: spilling", edges.num_edges, "edges") as bar:
                for src, dst in transformed_edges(edges, chunk_edges, num_nodes, nodes_from, undirected, drop_self_loops):
                    gs = np.empty(len(src), dtype=idx_dtype)
                    gd = np.empty(len(dst), dtype=idx_dtype)
                    kernels.group_by_part(src, dst, part_of, parts, gs, gd, offsets)
                    for p in np.flatnonzero(np.diff(offsets)):
                        a, b = offsets[p], offsets[p + 1]
                        spills[p].write(np.column_stack([gs[a:b], gd[a:b]]))
                    bar.update(len(src) // (2 if undirected else 1))
            for f in spills:
                f.close()
            del part_of

        indptr_w.append(np.zeros(1, dtype=np.int64))
        stored = 0
        dups = 0
        peak = 0
        with Progress("topology: placing", total, "edges") as bar:
            for p in range(parts):
                lo, hi = int(bounds[p]), int(bounds[p + 1])
                local_ptr = np.zeros(hi - lo + 1, dtype=np.int64)
                np.cumsum(counts[lo:hi], out=local_ptr[1:])
                n_edges = int(local_ptr[-1])
                peak = max(peak, n_edges)
                out_idx = np.empty(n_edges, dtype=idx_dtype)
                cursor = local_ptr[:-1].copy()
                if parts == 1:
                    for src, dst in transformed_edges(edges, chunk_edges, num_nodes, nodes_from, undirected, drop_self_loops):
                        kernels.scatter_by_key(src, dst, lo, cursor, out_idx)
                else:
                    pair_bytes = 2 * w
                    path = spill_dir / f"part{p}.bin"
                    got = path.stat().st_size // pair_bytes
                    if got != n_edges:
                        raise RuntimeError(f"spill file {path} holds {got} edges, expected {n_edges}")
                    block_pairs = max(1, min(16 << 20, memory_budget // 16) // pair_bytes)
                    with open(path, "rb") as f:
                        while True:
                            pairs = np.fromfile(f, dtype=idx_dtype, count=2 * block_pairs).reshape(-1, 2)
                            if not len(pairs):
                                break
                            kernels.scatter_by_key(pairs[:, 0], pairs[:, 1], lo, cursor, out_idx)
                    os.unlink(path)
                kernels.sort_segments(local_ptr, out_idx)
                if dedup:
                    uniq = np.empty(hi - lo, dtype=np.int64)
                    kernels.count_unique_in_segments(local_ptr, out_idx, uniq)
                    new_ptr = np.zeros(hi - lo + 1, dtype=np.int64)
                    np.cumsum(uniq, out=new_ptr[1:])
                    if new_ptr[-1] != n_edges:
                        compact = np.empty(int(new_ptr[-1]), dtype=idx_dtype)
                        kernels.compact_unique_segments(local_ptr, out_idx, new_ptr, compact)
                        dups += n_edges - int(new_ptr[-1])
                        out_idx, local_ptr = compact, new_ptr
                indices_w.append(out_idx)
                indptr_w.append(stored + local_ptr[1:])
                stored += int(local_ptr[-1])
                bar.update(n_edges)
                del out_idx
        (_, indptr_sha), (_, indices_sha) = indptr_w.finish(), indices_w.finish()
    except BaseException:
        indptr_w.abort()
        indices_w.abort()
        for f in spills:
            f.abort()
        raise
    finally:
        if spill_dir is not None:
            for f in spill_dir.glob("*"):
                f.unlink()
            spill_dir.rmdir()
    dt = time.perf_counter() - t0
    log.info("topology: wrote CSC with %s edges (%s self-loops, %s duplicates dropped) in %.1f s, %s edges/s",
             format_count(stored), format_count(stats["self_loops_dropped"]), format_count(dups), dt,
             format_count(stats["input_edges"] / max(dt, 1e-9)))
    return CSCResult(num_edges=stored, input_edges=stats["input_edges"], self_loops_dropped=stats["self_loops_dropped"],
                     duplicates_dropped=dups, indptr_sha256=indptr_sha, indices_sha256=indices_sha,
                     index_dtype=idx_dtype.name, parts=parts, seconds=dt, peak_edges_in_memory=peak)
