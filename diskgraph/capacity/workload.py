"""The work a plan describes, estimated from a small number of sampled minibatches.

:func:`sample_workload` draws minibatches from the real graph with the sampler's own keys
(:func:`~diskgraph.sampler.neighbor_sampler.minibatch_key`, :func:`~diskgraph.sampler.neighbor_sampler.epoch_order`),
so every sampled minibatch is exactly the one ``diskgraph preprocess sample`` will write; when a split
has no more minibatches than the sample size, all of them are drawn and the estimate is exact.
:func:`synthetic_workload` does the same on an R-MAT graph drawn from a summary (nodes, edges,
feature width), scaled down to at most ``max_nodes`` nodes.

From the sample come: nodes and edges per minibatch and per hop, the bytes of each plan row (the row is
serialized with the plan's schema), the access counts (each sampled minibatch stands for
``minibatches / sampled`` of its split) and from them the hot sets (:func:`select_hot_sets`, as the
packer chooses them) and each minibatch's cold rows, its extent and its pack-index row
(:func:`cold_rows`). With a partial sample, the hot set's hit rate mixes the in-sample rate
(optimistic: the tiers are chosen on the rows they are scored on) and the split-half rate (pessimistic:
tiers chosen on one half, scored on the other): with a fraction ``f`` of the minibatches sampled, the
in-sample rate weighs ``f + (1 - f) / 2``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from ..store.errors import InputError
from .timing import clock, fast_mean, per_unit_seconds, repeats_for

SPLIT_NAMES = ("train", "val", "test")
EXAMPLES = 4
"""Sampled minibatches per split kept whole, to time model steps on."""


@dataclass
class SplitSample:
    """The sampled minibatches of one split.

    Attributes:
        name, batch_size, fanouts: the split's sampling config.
        minibatches_per_epoch, epochs: the plan's counts (``total`` = their product).
        sizes: int64 [k, L+1] layer sizes of each sampled minibatch (seeds … inputs).
        edges: int64 [k, L] sampled edges per hop (hop 1 first).
        plan_row_bytes: int64 [k] bytes each row adds to the plan file.
        inputs: the sampled minibatches' input node ids.
        sample_s: seconds sampling them takes (one thread): the median seconds per sampled node and edge × their
            nodes and edges (each minibatch is timed :func:`~diskgraph.capacity.timing.repeats_for` times, so a
            split of a few minibatches still gives 32 timings; :func:`~diskgraph.capacity.timing.fast_mean` of them).
        examples: a few of the sampled minibatches whole (blocks included), spread over the sample, for timing
            model steps on them.
    """

    name: str
    batch_size: int
    fanouts: list[int]
    minibatches_per_epoch: int
    epochs: int
    sizes: np.ndarray
    edges: np.ndarray
    plan_row_bytes: np.ndarray
    inputs: list[np.ndarray]
    sample_s: float
    examples: list = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.minibatches_per_epoch * self.epochs

    @property
    def k(self) -> int:
        return len(self.inputs)

    @property
    def weight(self) -> float:
        """Plan rows each sampled minibatch stands for."""
        return self.total / max(self.k, 1)

    @property
    def exhaustive(self) -> bool:
        return self.k >= self.total


@dataclass
class Workload:
    """A graph, its feature rows and the sampled minibatches of every split.

    Attributes:
        num_nodes, num_edges: of the graph planned for.
        feature_dim, feature_dtype, row_bytes: its features; num_classes: the model's output width (classes,
            multilabel labels or regression targets: ``Dataset.num_outputs``).
        splits: split name → :class:`SplitSample`.
        scale: planned nodes ÷ nodes of the graph sampled (1 for the real graph).
        sampled_nodes: nodes of the graph the minibatches were drawn from.
        source: how it was obtained (``dataset DIR`` or ``synthetic …``).
        prior: float [sampled_nodes] a small tie-break for nodes the sample did not see (in-degree), or None.
        dataset_bytes: bytes of the dataset directory (measured, or computed for a summary).
        dataset_files: bytes per part of the dataset.
    """

    num_nodes: int
    num_edges: int
    feature_dim: int
    feature_dtype: str
    row_bytes: int
    num_classes: int
    splits: dict[str, SplitSample]
    scale: float
    sampled_nodes: int
    source: str
    prior: np.ndarray | None = None
    dataset_bytes: int = 0
    dataset_files: dict = field(default_factory=dict)
    chunk_rows: int = 0

    @property
    def exhaustive(self) -> bool:
        return self.scale == 1 and all(s.exhaustive for s in self.splits.values())

    @property
    def table_chunk_rows(self) -> int:
        """Rows per chunk file of the planned graph's feature table (the dataset's own; for a summary, what
        ``preprocess import`` would write: :func:`summary_chunk_rows`)."""
        return int(self.chunk_rows) or summary_chunk_rows(self.num_nodes, self.row_bytes)

    def table_ids(self, ids: np.ndarray) -> np.ndarray:
        """Sampled-graph node ids as rows of the planned graph's feature table: themselves on the real graph; on a
        scaled-down graph, ``floor(id * scale)``, which spreads a minibatch's rows over the full table as the full
        graph's would be (the same count over ``scale`` times the pages)."""
        if self.scale == 1:
            return ids
        return np.floor(ids.astype(np.float64) * self.scale).astype(np.int64)

    @property
    def num_hops(self) -> int:
        return len(next(iter(self.splits.values())).fanouts)


# -- sampling ----------------------------------------------------------------------------------------

def plan_row_bytes(mb, schema: pa.Schema) -> int:
    """Bytes one minibatch adds to a plan file: its record-batch message plus its footer entry."""
    from ..store.plan import plan_record_batch

    return ipc_row_bytes(plan_record_batch(mb, schema))


def ipc_row_bytes(batch: pa.RecordBatch) -> int:
    """Bytes a record batch takes in an Arrow IPC file: the message as written (continuation prefix,
    metadata, body; 8-byte aligned) plus the 24-byte block entry it adds to the footer."""
    n = batch.serialize().size
    return n + (-n) % 8 + 24


def empty_ipc_file_bytes(schema: pa.Schema) -> int:
    """Bytes of an Arrow IPC file with ``schema`` and no rows (magic, schema message, footer)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, schema):
        pass
    return sink.getvalue().size


def _choose(total: int, k: int, rng: np.random.Generator) -> np.ndarray:
    if total <= k:
        return np.arange(total)
    return np.sort(rng.choice(total, size=k, replace=False))


def _sample_split(indptr, indices, name: str, nodes: np.ndarray, fanouts: list[int], batch_size: int, epochs: int,
                  seed: int, k: int, rng: np.random.Generator, shuffle: bool) -> SplitSample:
    from ..sampler.neighbor_sampler import epoch_order, minibatch_key, sample_minibatch
    from ..store.plan import plan_schema

    per_epoch = -(-len(nodes) // batch_size)
    total = per_epoch * epochs
    pick = _choose(total, k, rng)
    schema = plan_schema(len(fanouts))
    sizes, edges, rows, inputs, examples = [], [], [], [], []
    keep = set(np.linspace(0, len(pick) - 1, min(EXAMPLES, len(pick))).round().astype(int).tolist()) if len(pick) else set()
    orders: dict[int, np.ndarray] = {}
    reps = repeats_for(len(pick))
    times, work = [], []
    for pos, j in enumerate(pick.tolist()):
        e, b = divmod(j, per_epoch)
        if shuffle:
            if e not in orders:
                orders[e] = epoch_order(nodes, seed, e)
            order = orders[e]
        else:
            order = np.asarray(nodes, dtype=np.int64)
        seeds = order[b * batch_size:(b + 1) * batch_size]
        key = minibatch_key(seed, name, e, b)
        took = []
        for _ in range(reps):  # the same key draws the same minibatch: the repeats only time it again
            t0 = clock()
            mb = sample_minibatch(indptr, indices, seeds, fanouts, key, epoch=e, batch=b)
            took.append(clock() - t0)
        times.append(fast_mean(took))
        work.append(len(mb.input_nodes) + sum(len(x) for x in mb.hop_indices))
        sizes.append(np.asarray(mb.layer_sizes, dtype=np.int64))
        edges.append([len(x) for x in mb.hop_indices])
        rows.append(plan_row_bytes(mb, schema))
        inputs.append(np.ascontiguousarray(mb.input_nodes, dtype=np.int64))
        if pos in keep:
            examples.append(mb)
    L = len(fanouts)
    return SplitSample(name, batch_size, list(fanouts), per_epoch, epochs,
                       np.array(sizes, dtype=np.int64).reshape(-1, L + 1), np.array(edges, dtype=np.int64).reshape(-1, L),
                       np.array(rows, dtype=np.int64), inputs, per_unit_seconds(times, work) * sum(work), examples)


def _warm_kernel(indptr, indices, fanouts) -> None:
    """Load (or compile) the sampling kernel before anything is timed."""
    from ..sampler.neighbor_sampler import sample_minibatch

    sample_minibatch(indptr, indices, np.zeros(0, np.int64), fanouts, 0)


def _split_config(fanouts, batch_size, eval_fanouts, eval_batch_size, name):
    if name == "train":
        return list(fanouts), int(batch_size)
    return list(eval_fanouts or fanouts), int(eval_batch_size or batch_size)


def _dir_bytes(path) -> dict:
    """Bytes of a dataset directory per top-level part, leaving out plans/, packs/ and runs/."""
    from pathlib import Path

    out: dict[str, int] = {}
    for p in Path(path).rglob("*"):
        rel = p.relative_to(path).parts
        if not p.is_file() or rel[0] in ("plans", "packs", "runs") or rel[0].startswith("."):
            continue
        key = rel[0] if len(rel) > 1 else "manifest"
        out[key] = out.get(key, 0) + p.stat().st_size
    return out


def sample_workload(dataset, *, fanouts: list[int], batch_size: int, seed: int = 0, epochs: int = 1,
                    eval_fanouts: list[int] | None = None, eval_batch_size: int | None = None,
                    splits: list[str] | None = None, sample_minibatches: int = 64, rng_seed: int = 0) -> Workload:
    """Sample up to ``sample_minibatches`` minibatches per split of a dataset directory (the plan's own)."""
    from ..sampler.neighbor_sampler import _check_fanouts, _choose_splits
    from ..store.dataset import Dataset, open_dataset

    ds = dataset if isinstance(dataset, Dataset) else open_dataset(dataset)
    if ds.features is None:
        raise InputError(f"dataset {ds.path} has no features; a plan needs them (import it with --features)")
    fanouts = _check_fanouts(fanouts, "--fanouts")
    if eval_fanouts is not None:
        eval_fanouts = _check_fanouts(eval_fanouts, "--eval-fanouts")
        if len(eval_fanouts) != len(fanouts):
            raise InputError(f"--eval-fanouts {eval_fanouts} has {len(eval_fanouts)} hops but --fanouts {fanouts} "
                             f"has {len(fanouts)}; give both the same number of hops")
    chosen = _choose_splits(ds, splits)
    indptr, indices = np.asarray(ds.indptr), np.asarray(ds.indices)
    _warm_kernel(indptr, indices, fanouts)
    rng = np.random.default_rng(rng_seed)
    out = {}
    for name in chosen:
        fan, bs = _split_config(fanouts, batch_size, eval_fanouts, eval_batch_size, name)
        out[name] = _sample_split(indptr, indices, name, ds.splits[name], fan, bs, epochs if name == "train" else 1,
                                  seed, sample_minibatches, rng, shuffle=name == "train")
    prior = None
    if not all(s.exhaustive for s in out.values()):
        deg = np.diff(indptr).astype(np.float64)
        prior = deg / max(float(deg.max()), 1.0)
    files = _dir_bytes(ds.path)
    return Workload(ds.num_nodes, ds.num_edges, ds.feature_dim, str(ds.feature_dtype), int(ds.features.row_bytes),
                    int(ds.num_outputs or 2), out, 1.0,
                    ds.num_nodes, f"dataset {ds.path}", prior, sum(files.values()), files,
                    int(ds.features.chunk_shape[0]))


DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def summary_chunk_rows(nodes: int, row_bytes: int) -> int:
    """Rows per feature chunk file that ``preprocess import`` writes for ``nodes`` rows of ``row_bytes`` (its
    default memory budget: :func:`~diskgraph.store.features_copy.copy_features`)."""
    from ..store.features_copy import CHUNK_BYTES

    rows = max(1, CHUNK_BYTES // max(1, row_bytes))
    if nodes:
        chunks = -(-nodes // rows)
        rows = -(-nodes // chunks)
    return int(rows)


def summary_dataset_bytes(nodes: int, edges: int, feature_dim: int, dtype: str, split_nodes: int) -> dict:
    """The arrays of a dataset directory of this size (docs/dataset-format.md)."""
    index_bytes = 4 if nodes < 2**31 else 8
    return {"topology": 8 * (nodes + 1) + index_bytes * edges, "features": nodes * feature_dim * DTYPE_BYTES[dtype],
            "labels": 8 * nodes, "splits": 8 * split_nodes}


def rmat_csc(nodes: int, edges: int, seed: int = 0, rmat=(0.57, 0.19, 0.19, 0.05), classes: int = 16):
    """CSC over in-edges (int64 indptr, int32 indices) of :class:`~diskgraph.generate.SyntheticGraph`'s R-MAT edges,
    in memory, deduplicated and without self loops (as ``generate`` + ``import --dedup --drop-self-loops``)."""
    from ..generate import SyntheticGraph

    g = SyntheticGraph(nodes, edges, 8, min(classes, nodes), seed, rmat=rmat)
    src, dst = g.edges(0, edges)
    keep = src != dst
    key = np.unique(dst[keep].astype(np.int64) * nodes + src[keep].astype(np.int64))
    dst_u, src_u = np.divmod(key, nodes)
    indptr = np.zeros(nodes + 1, dtype=np.int64)
    np.cumsum(np.bincount(dst_u, minlength=nodes), out=indptr[1:])
    return indptr, src_u.astype(np.int32)


def synthetic_workload(*, nodes: int, edges: int, feature_dim: int, dtype: str = "float32", classes: int = 16,
                       split: tuple[float, float, float] = (0.6, 0.2, 0.2), fanouts: list[int], batch_size: int,
                       seed: int = 0, epochs: int = 1, eval_fanouts: list[int] | None = None,
                       eval_batch_size: int | None = None, sample_minibatches: int = 64, max_nodes: int = 1 << 20,
                       rmat: tuple[float, float, float, float] = (0.57, 0.19, 0.19, 0.05), rng_seed: int = 0) -> Workload:
    """Sample minibatches from an R-MAT graph with the summary's average degree and ``min(nodes, max_nodes)`` nodes
    (:class:`~diskgraph.generate.SyntheticGraph`, deduplicated, without self loops); the splits are random
    fractions ``split`` of the nodes, their minibatch counts those of the full-size graph."""
    from ..sampler.neighbor_sampler import _check_fanouts

    if dtype not in DTYPE_BYTES:
        raise InputError(f"--dtype {dtype!r} is not a feature type; use float32, float16 or bfloat16")
    for what, v in (("--nodes", nodes), ("--edges", edges), ("--feature-dim", feature_dim)):
        if v is None or v < 1:
            raise InputError(f"{what} {v!r} must be a positive whole number to plan from a summary")
    if len(split) != 3 or any(f < 0 for f in split) or sum(split) > 1 + 1e-9 or split[0] <= 0:
        raise InputError(f"--split {split} must be three non-negative fractions (train > 0) that sum to at most 1")
    fanouts = _check_fanouts(fanouts, "--fanouts")
    n_s = int(min(nodes, max_nodes))
    e_s = max(1, int(round(edges * n_s / nodes)))
    indptr, indices = rmat_csc(n_s, e_s, seed, rmat, classes)
    perm = np.random.default_rng(seed).permutation(n_s)
    bounds = np.cumsum([0] + [int(round(f * n_s)) for f in split])
    split_nodes = {name: np.sort(perm[bounds[i]:bounds[i + 1]]) for i, name in enumerate(SPLIT_NAMES)}
    _warm_kernel(indptr, indices, fanouts)
    rng = np.random.default_rng(rng_seed)
    out = {}
    scale = nodes / n_s
    for name in SPLIT_NAMES:
        if not len(split_nodes[name]):
            continue
        fan, bs = _split_config(fanouts, batch_size, eval_fanouts, eval_batch_size, name)
        s = _sample_split(indptr, indices, name, split_nodes[name], fan, bs, epochs if name == "train" else 1, seed,
                          sample_minibatches, rng, shuffle=name == "train")
        full = int(round(len(split_nodes[name]) * scale))
        s.minibatches_per_epoch = -(-full // bs)
        out[name] = s
    deg = np.diff(indptr).astype(np.float64)
    files = summary_dataset_bytes(nodes, edges, feature_dim, dtype, int(round(sum(split) * nodes)))
    return Workload(nodes, edges, feature_dim, dtype, feature_dim * DTYPE_BYTES[dtype], classes, out, scale, n_s,
                    f"synthetic R-MAT graph of {n_s:,} nodes and {len(indices):,} edges drawn from the summary "
                    f"(scale {scale:.3g})", deg / max(float(deg.max()), 1.0), sum(files.values()), files)


# -- hot sets and extents --------------------------------------------------------------------------------

def access_scores(w: Workload, which: str = "all") -> np.ndarray:
    """float64 [sampled_nodes]: estimated reads per epoch of each node (the packer's score) from the sample.

    ``which``: ``all`` sampled minibatches, or ``even`` / ``odd`` ones only (the split halves, each weighted
    up to stand for the whole split).
    """
    score = np.zeros(w.sampled_nodes, dtype=np.float64)
    for s in w.splits.values():
        idx = range(s.k) if which == "all" else range(0 if which == "even" else 1, s.k, 2)
        idx = list(idx)
        if not idx:
            continue
        weight = s.total / len(idx) / max(1, s.epochs)
        for i in idx:
            score[s.inputs[i]] += weight
    if w.prior is not None:
        score += 1e-6 * w.prior * (score.max() if score.size else 0.0)  # ranks the unseen by degree, below any seen
    return score


def tier_rows(w: Workload, gpu_bytes: int, host_bytes: int) -> tuple[int, int]:
    """Rows of the gpu and host tiers on the sampled graph (the planned cache's fraction of the nodes)."""
    rb = w.row_bytes
    return int(gpu_bytes // rb / w.scale), int(host_bytes // rb / w.scale)


def _tiers_from_score(score: np.ndarray, n_gpu: int, n_host: int) -> tuple[np.ndarray, np.ndarray]:
    from ..sampler.hot_set import select_hot_sets

    t = select_hot_sets(score, 1, n_gpu, n_host)
    tier_of = np.zeros(score.shape[0], dtype=np.int8)
    slot_of = np.zeros(score.shape[0], dtype=np.int32)
    for name, code in (("host", 1), ("gpu", 2)):
        tier_of[t[name]] = code
        slot_of[t[name]] = np.arange(t[name].size, dtype=np.int32)
    return tier_of, slot_of


@dataclass
class ColdRows:
    """Per sampled minibatch of each split: rows from each tier and the pack-index row's bytes.

    ``gpu``, ``host``, ``cold``: float arrays [k] per split (means of the in-sample and split-half
    estimates when the sample is partial); ``index_row_bytes`` likewise; ``tier_rows``: (gpu, host) rows
    of the planned tiers; ``index_s``: seconds the packer's index kernel and row building take per
    minibatch (the median seconds per input row, each sampled minibatch timed
    :func:`~diskgraph.capacity.timing.repeats_for` times, × the mean input rows); ``method``: how the
    rates were estimated.
    """

    gpu: dict[str, np.ndarray]
    host: dict[str, np.ndarray]
    cold: dict[str, np.ndarray]
    index_row_bytes: dict[str, np.ndarray]
    tier_rows: tuple[int, int]
    index_s: float
    method: str
    ids: dict[str, list[np.ndarray]] = field(default_factory=dict)
    cross_ids: dict[str, list[np.ndarray]] | None = None
    in_sample_weight: float = 1.0


def index_row(tier: np.ndarray, slot: np.ndarray, cold: np.ndarray, row_bytes: int, schema: pa.Schema) -> pa.RecordBatch:
    """A pack-index row as the packer writes it (offset 0; the other scalars do not change its size)."""
    from ..store.direct_io import round_up
    from ..store.packed import index_record_batch

    k = len(cold)
    return index_record_batch(0, 0, 0, k * row_bytes, round_up(k * row_bytes), k, tier, slot, cold)


def _index_rows(w: Workload, tier_of: np.ndarray, slot_of: np.ndarray, timed: bool):
    """Per split: gpu/host/cold rows and index-row bytes of every sampled minibatch under these tiers."""
    from ..native.packing import index_minibatch
    from ..store.packed import index_schema

    schema = index_schema()
    res = {}
    reps = repeats_for(sum(s.k for s in w.splits.values())) if timed else 1
    times, sizes = [], []
    for name, s in w.splits.items():
        g, h, c, rb = (np.zeros(s.k) for _ in range(4))
        ids = []
        for i, nodes in enumerate(s.inputs):
            size = nodes.shape[0]
            took = []
            for _ in range(reps):  # the repeats compute the same row again, to time it
                t0 = clock()
                t = np.empty(size, np.int8)
                slot = np.empty(size, np.int32)
                cold = np.empty(size, np.int64)
                k, n_gpu, _ = index_minibatch(nodes, tier_of, slot_of, t, slot, cold, np.empty(size, np.int64),
                                              np.empty(size, np.int64))
                rb[i] = ipc_row_bytes(index_row(t, slot, cold[:k], w.row_bytes, schema))
                took.append(clock() - t0)
            times.append(fast_mean(took))
            sizes.append(size)
            g[i], c[i] = n_gpu, k
            h[i] = size - n_gpu - k
            ids.append(cold[:k].copy())
        res[name] = (g, h, c, rb, ids)
    # seconds per minibatch: the median seconds per input row × the mean input rows
    index_s = per_unit_seconds(times, sizes) * float(np.mean(sizes)) if timed and sizes else 0.0
    return res, index_s


def cold_rows(w: Workload, gpu_bytes: int, host_bytes: int) -> ColdRows:
    """How the planned tiers split every sampled minibatch's input rows (see the module docstring)."""
    from ..native.packing import index_minibatch

    n_gpu, n_host = tier_rows(w, gpu_bytes, host_bytes)
    # load (or compile) the packer's kernel before it is timed
    z = np.zeros(1, np.int64)
    index_minibatch(z, np.zeros(1, np.int8), np.zeros(1, np.int32), np.zeros(1, np.int8), np.zeros(1, np.int32),
                    z.copy(), z.copy(), z.copy())
    tier_of, slot_of = _tiers_from_score(access_scores(w), n_gpu, n_host)
    full, index_s = _index_rows(w, tier_of, slot_of, timed=True)
    if w.exhaustive or (n_gpu + n_host) == 0:
        method = "exact: every minibatch sampled" if w.exhaustive else "no cache: every input row is cold"
        pick = full
        cross_ids, a_in = None, 1.0
    else:
        # split halves: tiers from the even minibatches scored on the odd ones and vice versa
        halves = {}
        for which in ("even", "odd"):
            t_of, s_of = _tiers_from_score(access_scores(w, which), n_gpu, n_host)
            halves[which], _ = _index_rows(w, t_of, s_of, timed=False)
        # the in-sample rate is right when (nearly) every minibatch is sampled; the further from that, the more
        # weight goes to the split-half rate: weight of in-sample = f + (1 - f) / 2, f = fraction sampled
        f = sum(s.k for s in w.splits.values()) / max(sum(s.total for s in w.splits.values()), 1)
        a_in = f + (1 - f) / 2
        pick = {}
        for name, s in w.splits.items():
            cross = [np.zeros(s.k) for _ in range(4)]
            for i in range(s.k):
                src = halves["odd" if i % 2 == 0 else "even"][name]  # tiers chosen without this minibatch
                for j in range(4):
                    cross[j][i] = src[j][i]
            pick[name] = tuple(a_in * a + (1 - a_in) * b for a, b in zip(full[name][:4], cross))
        method = (f"partial sample ({f:.0%} of the minibatches): {a_in:.2f} x the in-sample hit rate + {1 - a_in:.2f} "
                  "x the split-half one")
        cross_ids = {name: [halves["odd" if i % 2 == 0 else "even"][name][4][i] for i in range(s.k)]
                     for name, s in w.splits.items()}
    return ColdRows({n: v[0] for n, v in pick.items()}, {n: v[1] for n, v in pick.items()},
                    {n: v[2] for n, v in pick.items()}, {n: v[3] for n, v in pick.items()}, (n_gpu, n_host),
                    index_s, method, {n: v[4] for n, v in full.items()}, cross_ids, a_in)
