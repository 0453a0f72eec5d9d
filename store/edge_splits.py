"""Train/val/test splits of the edges, drawn at import, for link prediction.

The edges are split into **supervision** edges; the val and test edges are left out of the stored topology (the
message-passing graph), the train edges stay in it (PyG's ``RandomLinkSplit`` default). With ``undirected`` the
split is over unordered pairs ``{u, v}`` (a pair and its reverse are one pair; a val/test pair removes both
directions) and the stored pairs are ``(min, max)``; without it, directed edges ``(src, dst)`` are split as given.
Self-loops are never supervision edges (they stay in the graph unless ``--drop-self-loops``). Repeated edges are
one pair: all copies go to the same split.

Stored (``DIR/edges/{train,val,test}``, int64 ``[2, E_s]``, row 0 source, row 1 destination, each pair once):
``val``/``test`` sorted by ``(src, dst)``, ``train`` by ``(dst, src)`` (it is read back from the topology).

How it scales (the edge list is streamed, never held):

* **random** (``--edge-split random:TRAIN,VAL,TEST``): each pair is hashed with the seed (SplitMix64 over
  ``(a, b, seed)``) to a uniform ``u`` in [0, 1); ``u < TRAIN`` is train, the next ``VAL`` val, the next ``TEST``
  test, the rest stay in the graph without being supervision edges. No shuffle: a first streaming pass collects
  the val/test pairs (about ``(VAL + TEST) * E`` keys of 8 bytes in memory), the topology build drops edges by the
  same hash chunk by chunk, and the train pairs are read back from the finished topology. Split sizes follow the
  fractions up to binomial noise (±1/sqrt(E) relative); the same seed gives the same split.
* **files** (``--val-edges``/``--test-edges``): the given pairs are held as sorted int64 keys ``a * N + b``; a
  first pass checks that each is an edge of the input, the build drops input edges whose key is among them, and
  train is every other pair of the topology.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from .csc_builder import _validated
from .errors import InputError
from .files import AppendFile
from .progress import Progress, format_count
from .sources.edges import EdgeSource, _check_edge_dtype, _check_edge_shape
from .sources.npy import open_npy, require_file
from .zarr_arrays import _chunk_key, write_array, write_array_metadata

log = logging.getLogger("diskgraph")

SPLIT_NAMES = ("train", "val", "test")
MAX_NODES = 3_037_000_499
"""The largest node count whose pair keys ``a * N + b`` fit int64."""

LEAK_WARN_FRACTION = 0.01
"""Warn (directed splits) when more than this share of the val/test pairs have their reverse in the graph."""

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer on uint64 values (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def pair_uniform(a: np.ndarray, b: np.ndarray, seed: int) -> np.ndarray:
    """A uniform float64 in [0, 1) per pair ``(a[i], b[i])``, a pure function of the pair and ``seed``."""
    s = np.uint64(int(seed) & 0xFFFFFFFFFFFFFFFF)
    with np.errstate(over="ignore"):
        h = _mix(np.asarray(a, dtype=np.int64).view(np.uint64) + _GOLDEN * (s + np.uint64(1)))
        h = _mix(h ^ (np.asarray(b, dtype=np.int64).view(np.uint64) + _GOLDEN))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def canonical(src: np.ndarray, dst: np.ndarray, undirected: bool) -> tuple[np.ndarray, np.ndarray]:
    """The pair an edge belongs to: ``(min, max)`` with ``undirected``, else ``(src, dst)``."""
    if undirected:
        return np.minimum(src, dst), np.maximum(src, dst)
    return src, dst


def parse_edge_split(spec: str) -> tuple[float, float, float]:
    """``random:0.85,0.05,0.1`` → (train, val, test) fractions; refused in one sentence unless every fraction is
    above 0 (an empty train split is of no use, and an empty array ``[2, 0]`` cannot be stored) and they sum to at
    most 1."""
    try:
        kind, fracs = spec.split(":", 1)
        parts = tuple(float(x) for x in fracs.split(","))
    except ValueError:
        kind, parts = "", ()
    if kind != "random" or len(parts) != 3 or not all(np.isfinite(parts)) or any(f < 0 for f in parts) \
            or min(parts) <= 0 or sum(parts) > 1 + 1e-9:
        raise InputError(f"--edge-split {spec!r} is not understood; write random:TRAIN,VAL,TEST with fractions above 0 "
                         "that sum to at most 1, e.g. random:0.85,0.05,0.1")
    return parts  # type: ignore[return-value]


@dataclass
class EdgeSplitSpec:
    """What edge split an import draws: ``random`` fractions with a seed, or given val/test edge files."""

    source: str
    fractions: tuple[float, float, float] | None = None
    seed: int = 0
    val_edges: str | None = None
    test_edges: str | None = None

    @classmethod
    def from_options(cls, edge_split: str | None, val_edges: str | None, test_edges: str | None,
                     seed: int = 0) -> "EdgeSplitSpec | None":
        """The spec of the command-line options (None when none is given); refuses a mix of the two ways."""
        if edge_split and (val_edges or test_edges):
            raise InputError("--edge-split draws the val/test edges and --val-edges/--test-edges give them; pass one or "
                             "the other")
        if edge_split:
            return cls("random", parse_edge_split(edge_split), int(seed))
        if val_edges or test_edges:
            if not (val_edges and test_edges):
                missing = "--test-edges" if val_edges else "--val-edges"
                raise InputError(f"an edge split from files needs both --val-edges and --test-edges; pass {missing} too")
            return cls("files", None, int(seed), str(val_edges), str(test_edges))
        return None


def read_edge_pairs(path: str | os.PathLike, option: str) -> tuple[np.ndarray, np.ndarray, str]:
    """``(src, dst, label)`` of a ``.npy`` ``[2, E]`` or ``[E, 2]`` integer array of edges."""
    what = "val edges" if "val" in option else "test edges"
    p = require_file(path, what, option)
    label = f"{what} file {p}"
    a = open_npy(p, what, option)
    rows_first = _check_edge_shape(a.shape, label)
    _check_edge_dtype(a.dtype, label)
    a = np.asarray(a)
    src, dst = (a[0], a[1]) if rows_first else (a[:, 0], a[:, 1])
    return src.astype(np.int64), dst.astype(np.int64), label


@dataclass
class EdgeSplitPlan:
    """The outcome of the first streaming pass (:func:`plan_edge_split`).

    Attributes:
        spec: what was asked.
        num_nodes, undirected: of the import.
        val, test: sorted unique pair keys ``a * N + b`` (canonical pairs).
        input_edges: edges read from the input.
        removed_input_edges: input edges that belong to a val/test pair (left out of the topology).
    """

    spec: EdgeSplitSpec
    num_nodes: int
    undirected: bool
    val: np.ndarray
    test: np.ndarray
    input_edges: int = 0
    removed_input_edges: int = 0
    _removal: np.ndarray | None = field(default=None, repr=False)

    @property
    def removal(self) -> np.ndarray:
        """Sorted keys of every val/test pair."""
        if self._removal is None:
            self._removal = np.sort(np.concatenate([self.val, self.test]))
        return self._removal

    @property
    def held_bytes(self) -> int:
        return int(self.val.nbytes + self.test.nbytes + self.removal.nbytes)

    def removed(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        """bool per edge: it belongs to a val/test pair (self-loops only when given in a file)."""
        a, b = canonical(src, dst, self.undirected)
        if self.spec.source == "random":
            t, v, s = self.spec.fractions
            u = pair_uniform(a, b, self.spec.seed)
            return (u >= t) & (u < t + v + s) & (src != dst)
        return _member(self.removal, a * self.num_nodes + b)

    def pairs(self, name: str) -> np.ndarray:
        """int64 ``[2, n]`` of the val or test pairs."""
        keys = self.val if name == "val" else self.test
        return np.stack([keys // self.num_nodes, keys % self.num_nodes]).astype(np.int64)


def _member(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    if sorted_keys.size == 0:
        return np.zeros(keys.shape, dtype=bool)
    pos = np.searchsorted(sorted_keys, keys)
    pos[pos == sorted_keys.size] = 0
    return sorted_keys[pos] == keys


def _describe(a: int, b: int, undirected: bool) -> str:
    return f"{{{a}, {b}}}" if undirected else f"({a} → {b})"


def plan_edge_split(spec: EdgeSplitSpec, edges: EdgeSource, num_nodes: int, nodes_from: str, *, undirected: bool,
                    drop_self_loops: bool, chunk_edges: int) -> EdgeSplitPlan:
    """Stream the edges once: check every id, collect the val/test pairs (random), or check that every given pair is
    an edge of the input (files). Refuses, in one sentence, an empty val or test split, a given pair that is not an
    edge, and val/test files that share a pair.
    """
    if num_nodes > MAX_NODES:
        raise InputError(f"an edge split needs pair keys a*N+b in int64, which {num_nodes} nodes exceed; import without "
                         "--edge-split/--val-edges")
    n = num_nodes
    given: dict[str, tuple[np.ndarray, str, np.ndarray, np.ndarray]] = {}
    if spec.source == "files":
        for name, path, option in (("val", spec.val_edges, "--val-edges"), ("test", spec.test_edges, "--test-edges")):
            src, dst, label = read_edge_pairs(path, option)
            _validated(src, dst, 0, n, label, nodes_from)
            a, b = canonical(src, dst, undirected)
            keys, first = np.unique(a * n + b, return_index=True)
            if keys.size == 0:
                raise InputError(f"{label} holds no edges; the {name} split needs at least one edge")
            given[name] = (keys, label, src[first], dst[first])
        common = np.intersect1d(given["val"][0], given["test"][0])
        if common.size:
            k = int(common[0])
            raise InputError(f"{given['val'][1]} and {given['test'][1]} both hold the pair "
                             f"{_describe(k // n, k % n, undirected)} ({common.size} shared in all); a pair may be "
                             "in one split only: remove it from one file")
    found = {name: np.zeros(g[0].size, dtype=bool) for name, g in given.items()}
    t, v, s = spec.fractions or (0.0, 0.0, 0.0)
    val_parts: list[np.ndarray] = []
    test_parts: list[np.ndarray] = []
    input_edges = removed = 0
    with Progress("edge split: scanning", edges.num_edges, "edges") as bar:
        for start, src, dst in edges.chunks(chunk_edges):
            _validated(src, dst, start, n, edges.label, nodes_from)
            input_edges += len(src)
            if drop_self_loops:
                keep = src != dst
                src, dst = src[keep], dst[keep]
            a, b = canonical(src, dst, undirected)
            if spec.source == "random":
                loop = src == dst
                u = pair_uniform(a, b, spec.seed)
                in_val = (u >= t) & (u < t + v) & ~loop
                in_test = (u >= t + v) & (u < t + v + s) & ~loop
                keys = a * n + b
                val_parts.append(np.unique(keys[in_val]))
                test_parts.append(np.unique(keys[in_test]))
                removed += int(in_val.sum() + in_test.sum())
            else:
                keys = a * n + b
                for name, (gkeys, *_rest) in given.items():
                    pos = np.searchsorted(gkeys, keys)
                    pos[pos == gkeys.size] = 0
                    hit = gkeys[pos] == keys
                    found[name][pos[hit]] = True
                    removed += int(hit.sum())
            bar.update(len(src))
    if spec.source == "files":
        for name, (gkeys, label, gsrc, gdst) in given.items():
            if not found[name].all():
                i = int(np.argmin(found[name]))
                pair = f"({int(gsrc[i])}, {int(gdst[i])})"
                what = "neither direction is an edge" if undirected else "it is not an edge"
                after = " after --drop-self-loops" if drop_self_loops and gsrc[i] == gdst[i] else ""
                raise InputError(f"{label} holds the pair {pair} but {what} of {edges.label}{after} "
                                 f"({int((~found[name]).sum())} such pairs in all); list only edges of the input graph")
        val, test = given["val"][0], given["test"][0]
    else:
        val = np.unique(np.concatenate(val_parts)) if val_parts else np.zeros(0, np.int64)
        test = np.unique(np.concatenate(test_parts)) if test_parts else np.zeros(0, np.int64)
        for name, keys, frac in (("val", val, v), ("test", test, s)):
            if keys.size == 0:
                raise InputError(f"--edge-split random:{t:g},{v:g},{s:g} leaves the {name} split empty ({input_edges} input "
                                 f"edges, {frac:g} of them expected in {name}); raise the {name} fraction or import a "
                                 "larger graph")
    plan = EdgeSplitPlan(spec, n, undirected, val.astype(np.int64), test.astype(np.int64), input_edges, removed)
    log.info("edge split (%s): %s val and %s test pairs; %s input edges left out of the topology", spec.source,
             format_count(val.size), format_count(test.size), format_count(removed))
    return plan


class KeptEdges(EdgeSource):
    """The input edges less those of the val/test pairs: what the topology is built from (ids already checked)."""

    def __init__(self, edges: EdgeSource, plan: EdgeSplitPlan):
        self.edges, self.plan = edges, plan
        self.label = edges.label
        self.num_edges = plan.input_edges - plan.removed_input_edges

    def chunks(self, max_edges: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        for start, src, dst in self.edges.chunks(max_edges):
            keep = ~self.plan.removed(src, dst)
            yield start, src[keep], dst[keep]

    def describe(self) -> dict:
        return self.edges.describe()


def _write_pairs_streamed(path: Path, blocks, spill: Path) -> tuple[tuple[int, int], str, int]:
    """Write ``[2, E]`` int64 from ``(src, dst)`` blocks: sources straight into the chunk file, destinations through
    ``spill`` appended after them. Returns (shape, sha256, E)."""
    import hashlib

    chunk = path / _chunk_key((0, 0))
    chunk.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    out, tmp = AppendFile(chunk), AppendFile(spill)
    count = 0
    try:
        for src, dst in blocks:
            src = np.ascontiguousarray(src, dtype=np.int64)
            h.update(memoryview(src).cast("B"))
            out.write(src)
            tmp.write(np.ascontiguousarray(dst, dtype=np.int64))
            count += len(src)
        tmp.close()
        with open(spill, "rb") as f:
            while True:
                block = np.fromfile(f, dtype=np.int64, count=1 << 21)
                if not block.size:
                    break
                h.update(memoryview(block).cast("B"))
                out.write(block)
        out.close()
    except BaseException:
        out.abort()
        tmp.abort()
        raise
    finally:
        if spill.exists():
            spill.unlink()
    write_array_metadata(path, (2, count), (2, count), "int64")
    return (2, count), h.hexdigest(), count


def write_edge_splits(out: Path, plan: EdgeSplitPlan, indptr: np.ndarray, indices: np.ndarray,
                      slice_edges: int = 1 << 22) -> dict[str, tuple[tuple[int, int], str]]:
    """Write ``out/{val,test}`` from the plan and ``out/train`` from the finished topology; returns name →
    (shape, sha256). Warns when a directed split leaves the reverse of many val/test pairs in the graph."""
    n = plan.num_nodes
    result = {}
    for name in ("val", "test"):
        shape, sha = write_array(out / name, plan.pairs(name), "int64")
        result[name] = (tuple(shape), sha)
    leaks = [0]
    removal = plan.removal

    def train_blocks():
        lo = 0
        while lo < n:
            hi = int(np.searchsorted(indptr, indptr[lo] + slice_edges, side="right")) - 1
            hi = min(max(hi, lo + 1), n)
            ptr = np.asarray(indptr[lo:hi + 1])
            src = np.asarray(indices[ptr[0]:ptr[-1]]).astype(np.int64)
            dst = np.repeat(np.arange(lo, hi, dtype=np.int64), np.diff(ptr))
            if not plan.undirected and src.size:
                leaks[0] += int(_member(removal, dst * n + src).sum())
            keep = (src < dst) if plan.undirected else (src != dst)
            if src.size > 1:
                keep[1:] &= (src[1:] != src[:-1]) | (dst[1:] != dst[:-1])
            if plan.spec.source == "random":
                keep &= pair_uniform(src, dst, plan.spec.seed) < plan.spec.fractions[0]
            yield src[keep], dst[keep]
            lo = hi

    shape, sha, count = _write_pairs_streamed(out / "train", train_blocks(), out / "_train_dst.bin")
    if count == 0:
        raise InputError(f"the edge split leaves the train split empty ({plan.input_edges} input edges, "
                         f"{plan.removed_input_edges} of them val/test); raise the train fraction or import a larger graph")
    result["train"] = (shape, sha)
    pairs = plan.val.size + plan.test.size
    if leaks[0] > LEAK_WARN_FRACTION * pairs:
        log.warning("edge split: %s of the %s val/test edges have their reverse edge in the message-passing graph (the "
                    "input holds both directions of many pairs), so a model can read them off the reverse edge; "
                    "import with --undirected to split over unordered pairs", format_count(leaks[0]),
                    format_count(pairs))
    return {name: result[name] for name in SPLIT_NAMES}


def edges_in_topology(indptr: np.ndarray, indices: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """bool per pair: ``src → dst`` is an edge of the CSC topology (a vectorized binary search in each destination's
    sorted sources)."""
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    lo = np.asarray(indptr[dst], dtype=np.int64)
    hi = np.asarray(indptr[dst + 1], dtype=np.int64)
    end = hi.copy()
    while True:
        active = lo < hi
        if not active.any():
            break
        mid = (lo + hi) // 2
        val = np.full(src.shape, np.iinfo(np.int64).max, dtype=np.int64)
        val[active] = np.asarray(indices[mid[active]], dtype=np.int64)
        go_right = active & (val < src)
        lo = np.where(go_right, mid + 1, lo)
        hi = np.where(active & ~go_right, mid, hi)
    hit = lo < end
    out = np.zeros(src.shape, dtype=bool)
    out[hit] = np.asarray(indices[lo[hit]], dtype=np.int64) == src[hit]
    return out


def split_problems(splits: dict[str, np.ndarray], info: dict | None, num_nodes: int, indptr: np.ndarray,
                   indices: np.ndarray, slice_pairs: int = 1 << 20) -> list[str]:
    """What is wrong with stored edge splits (for ``inspect --verify``): shapes, ids out of range, pairs stored twice
    or in two splits, val/test pairs (either direction when undirected) left in the topology, train pairs not in it."""
    problems: list[str] = []
    undirected = bool((info or {}).get("undirected", False))
    counts = (info or {}).get("counts") or {}
    keys: dict[str, np.ndarray] = {}
    for name, arr in splits.items():
        if arr.ndim != 2 or arr.shape[0] != 2:
            problems.append(f"edges/{name}: shape {tuple(arr.shape)}, expected [2, E]")
            continue
        if name in counts and counts[name] != arr.shape[1]:
            problems.append(f"edges/{name}: {arr.shape[1]} pairs but the manifest's edge_split counts {counts[name]}")
        for s in range(0, arr.shape[1], slice_pairs):
            block = np.asarray(arr[:, s:s + slice_pairs])
            if block.size and (block.min() < 0 or block.max() >= num_nodes):
                problems.append(f"edges/{name}: node id outside 0..N-1")
                break
            a, b = block
            if undirected and (a > b).any():
                problems.append(f"edges/{name}: a pair of an undirected split is not stored as (min, max)")
                break
            present = edges_in_topology(indptr, indices, a, b)
            if undirected and name != "train":
                present |= edges_in_topology(indptr, indices, b, a)
            if name == "train" and not present.all():
                i = int(np.argmin(present))
                problems.append(f"edges/train: pair ({int(a[i])}, {int(b[i])}) is not an edge of the topology")
                break
            if name != "train" and present.any():
                i = int(np.argmax(present))
                problems.append(f"edges/{name}: pair ({int(a[i])}, {int(b[i])}) is still in the topology")
                break
        else:
            if name != "train":
                keys[name] = arr[0].astype(np.int64) * num_nodes + arr[1]
    for name, k in keys.items():
        if np.unique(k).size != k.size:
            problems.append(f"edges/{name}: a pair is stored twice")
    if "val" in keys and "test" in keys and np.intersect1d(keys["val"], keys["test"]).size:
        problems.append("edges/val and edges/test share a pair")
    return problems
