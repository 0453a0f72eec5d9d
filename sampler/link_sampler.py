"""Link-prediction minibatches: positive edges, negative destinations, and their endpoints' neighborhoods.

One function builds every link minibatch, for the plan sampler (``preprocess sample --task link``) and the
in-memory reference loader alike: :meth:`LinkSampler.minibatch`. So epoch ``e`` of the reference equals presampled
epoch ``e`` of a plan with the same seed and options, bit for bit.

What a minibatch is:

* **train**: the split's supervision edges are shuffled per epoch (the permutation
  :func:`~diskgraph.sampler.neighbor_sampler.epoch_order` draws from ``(seed, epoch)``) and cut into minibatches of
  ``batch_size`` positive edges ``(u_i, v_i)`` (the last one may be smaller). Each positive gets ``negatives`` (K)
  negative destinations drawn ``uniform`` over all nodes or ``degree`` (∝ in-degree^0.75 of the stored topology,
  the degree itself when the dataset is undirected); with ``shared_negatives`` the minibatch draws K negatives once
  and every positive uses them (as MariusGNN does). Training negatives are not filtered (a drawn negative may be a
  true edge, as in PyG's and DGL's negative samplers).
* **val / test**: every positive of the split once, in the split's order, in minibatches of ``eval_batch_size``;
  each positive gets ``eval_negatives`` (M) distinct negative destinations, fixed by the seed and the positive's
  index alone (not by the batch size), drawn uniformly among the nodes ``w`` for which ``(u, w)`` is no true edge:
  neither in the topology nor in any edge split (and, for an undirected dataset, neither is ``(w, u)``).
* the **seeds** are the sorted unique endpoints of the positives and negatives; their ``len(fanouts)``-hop
  neighborhood is sampled exactly as a node minibatch's
  (:func:`~diskgraph.sampler.neighbor_sampler.sample_minibatch` with
  :func:`~diskgraph.sampler.neighbor_sampler.minibatch_key`), and :class:`~diskgraph.store.plan.LinkTargets` gives
  each positive's and negative's position in the seeds.
* **seed edges excluded** (``exclude_seed_edges``, the default): a train minibatch's blocks lose every sampled edge
  that is one of its positives ``u -> v`` (and ``v -> u`` when the dataset is undirected), after sampling, as
  GraphBolt's ``exclude_seed_edges`` does. Without it the encoder of ``v`` reads ``u`` through the very edge it is
  asked to predict, which evaluation edges (absent from the graph) never offer: the model learns to look for the
  edge instead of predicting it. Both endpoints are seeds, so an excluded edge never brought a node of its own.

No leakage: the dataset's topology lacks the val/test edges (the import removes them, both directions when
undirected), so no training block contains one.

Randomness is counter based (a hash of the seed, the split and a counter), so minibatches do not depend on the thread
count or on the order they are built in.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from ..native import sampling as _kernels
from ..store.errors import InputError
from ..store.plan import LinkTargets, SampledMinibatch
from .minibatch import epoch_order, minibatch_key, sample_minibatch

NEGATIVE_SAMPLERS = ("uniform", "degree")
LINK_FLAGS = {"negatives": "--negatives", "negative_sampler": "--negative-sampler",
              "shared_negatives": "--shared-negatives", "eval_negatives": "--eval-negatives",
              "exclude_seed_edges": "--keep-seed-edges"}
"""The command-line flag of each :class:`LinkOptions` field (as errors name them; ``--keep-seed-edges`` is
``exclude_seed_edges`` negated)."""
DEGREE_POWER = 0.75
EDGE_SPLITS = ("train", "val", "test")
_M64 = (1 << 64) - 1


@dataclass(frozen=True)
class LinkOptions:
    """How link minibatches draw their negatives and blocks (``preprocess sample --task link``; recorded in a link
    plan's config, which the in-memory reference reads back to draw the same minibatches).

    Attributes:
        negatives: K, negative destinations per train positive (≥ 1).
        negative_sampler: ``uniform`` or ``degree`` (∝ degree^0.75).
        shared_negatives: a train minibatch draws K negatives once for all its positives.
        eval_negatives: M, fixed filtered negatives per val/test positive.
        exclude_seed_edges: drop a train minibatch's positive edges from its blocks (module docstring).
    """

    negatives: int = 1
    negative_sampler: str = "uniform"
    shared_negatives: bool = False
    eval_negatives: int = 100
    exclude_seed_edges: bool = True

    def check(self, num_nodes: int) -> "LinkOptions":
        """Refuse bad options with one sentence naming the flag; returns self."""
        check_link_options(self.negatives, self.negative_sampler, self.eval_negatives, num_nodes)
        return self

    def config(self) -> dict:
        """The plan config entries that record these options."""
        return {k: (int(v) if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else v)
                for k, v in asdict(self).items()}

    @classmethod
    def from_args(cls, args) -> "LinkOptions":
        """The options of parsed ``preprocess sample`` arguments (:data:`LINK_FLAGS` names their flags)."""
        return cls(negatives=args.negatives, negative_sampler=args.negative_sampler,
                   shared_negatives=args.shared_negatives, eval_negatives=args.eval_negatives,
                   exclude_seed_edges=not args.keep_seed_edges)

    @classmethod
    def from_config(cls, cfg: dict) -> "LinkOptions":
        """The options a link plan was sampled with (a plan from before ``exclude_seed_edges`` kept its seed edges)."""
        return cls(negatives=int(cfg.get("negatives", 1)), negative_sampler=cfg.get("negative_sampler", "uniform"),
                   shared_negatives=bool(cfg.get("shared_negatives", False)),
                   eval_negatives=int(cfg.get("eval_negatives", 100)),
                   exclude_seed_edges=bool(cfg.get("exclude_seed_edges", False)))


# -- counter-based random numbers -----------------------------------------------------------------

def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer over uint64 ``x`` (wrapping arithmetic)."""
    x = x.copy()
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def uniform01(key: int, counters: np.ndarray) -> np.ndarray:
    """float64 in [0, 1), one per uint64 counter, a hash of ``(key, counter)``."""
    with np.errstate(over="ignore"):
        c = np.asarray(counters, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        h = _mix(c ^ np.uint64(key & _M64))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def negatives_key(seed: int, split: str, epoch: int, batch: int) -> int:
    """The key of the negatives of minibatch ``batch`` of ``epoch`` of ``split`` (val/test: epoch = batch = 0, the
    positive's index is in the counter)."""
    return int(_kernels.derive_key(seed & _M64, zlib.crc32(f"negatives:{split}".encode()), epoch, batch))


# -- edge membership ------------------------------------------------------------------------------

def has_edge(indptr: np.ndarray, indices: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """bool [n]: whether the topology (CSC over in-edges, sources sorted per destination) holds edge
    ``src[i] -> dst[i]``; a vectorized binary search in each destination's in-neighbors."""
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    lo = np.asarray(indptr[dst], dtype=np.int64)
    hi = np.asarray(indptr[dst + 1], dtype=np.int64)
    while True:
        live = lo < hi
        if not live.any():
            break
        mid = (lo + hi) >> 1
        val = np.full(mid.shape, np.iinfo(np.int64).max, dtype=np.int64)
        val[live] = indices[mid[live]]
        less = live & (val < src)
        lo = np.where(less, mid + 1, lo)
        hi = np.where(live & ~less, mid, hi)
    end = np.asarray(indptr[dst + 1], dtype=np.int64)
    found = np.zeros(src.shape, dtype=bool)
    ok = lo < end
    found[ok] = np.asarray(indices[lo[ok]], dtype=np.int64) == src[ok]
    return found


class LinkSampler:
    """Builds the link minibatches of a dataset's edge splits (module docstring); used by the plan sampler and the
    in-memory loader.

    Args:
        indptr, indices: the CSC over in-edges (memory maps are fine).
        num_nodes: N.
        edge_splits: split name → int64 [2, E_s] (row 0 sources, row 1 destinations), as ``Dataset.edge_splits``.
        undirected: the dataset's edges are undirected (filtering checks both directions).
        fanouts, eval_fanouts: neighbors per hop for train and for val/test minibatches.
        batch_size, eval_batch_size: positive edges per train and per val/test minibatch.
        seed: sampling seed.
        options: negatives and seed-edge exclusion (:class:`LinkOptions`; default: its defaults).

    Raises:
        InputError: a bad option (naming its flag).
    """

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, num_nodes: int, edge_splits: dict[str, np.ndarray],
                 *, undirected: bool, fanouts: Sequence[int], batch_size: int, seed: int = 0,
                 options: LinkOptions | None = None, eval_fanouts: Sequence[int] | None = None,
                 eval_batch_size: int | None = None):
        self.options = opts = (options or LinkOptions()).check(num_nodes)
        self.indptr, self.indices = indptr, indices
        self.num_nodes = int(num_nodes)
        self.edges = {s: np.ascontiguousarray(e, dtype=np.int64).reshape(2, -1) for s, e in edge_splits.items()}
        self.undirected = bool(undirected)
        self.fanouts = [int(f) for f in fanouts]
        self.eval_fanouts = self.fanouts if eval_fanouts is None else [int(f) for f in eval_fanouts]
        self.batch_size = int(batch_size)
        self.eval_batch_size = self.batch_size if eval_batch_size is None else int(eval_batch_size)
        self.seed = int(seed)
        self.negatives = int(opts.negatives)
        self.negative_sampler = opts.negative_sampler
        self.shared_negatives = bool(opts.shared_negatives)
        self.eval_negatives = int(opts.eval_negatives)
        self._cdf: np.ndarray | None = None
        self._pair_keys: np.ndarray | None = None
        self._order: tuple[int, np.ndarray] | None = None

    # -- layout -----------------------------------------------------------------------------------

    def split_batch_size(self, split: str) -> int:
        return self.batch_size if split == "train" else self.eval_batch_size

    def minibatches_per_epoch(self, split: str) -> int:
        """Minibatches of one epoch of ``split``."""
        return -(-self.edges[split].shape[1] // self.split_batch_size(split))

    def k(self, split: str) -> int:
        """Negatives per positive in ``split``'s minibatches (K for train, M for val/test)."""
        return self.negatives if split == "train" else self.eval_negatives

    def positives(self, split: str, epoch: int, batch: int) -> np.ndarray:
        """int64 [P]: indices into ``edge_splits[split]`` of minibatch ``batch`` of ``epoch``'s positives."""
        n = self.edges[split].shape[1]
        bs = self.split_batch_size(split)
        if split != "train":
            return np.arange(batch * bs, min(n, (batch + 1) * bs), dtype=np.int64)
        o = self._order  # (one read: sampling threads may replace it)
        if o is None or o[0] != epoch:
            o = self._order = (epoch, epoch_order(np.arange(n, dtype=np.int64), self.seed, epoch))
        return o[1][batch * bs:(batch + 1) * bs]

    # -- negatives --------------------------------------------------------------------------------

    def _draw(self, key: int, counters: np.ndarray) -> np.ndarray:
        """int64 node ids, one per counter, from the negative sampler's distribution."""
        u = uniform01(key, counters)
        if self.negative_sampler == "uniform":
            return np.minimum((u * self.num_nodes).astype(np.int64), self.num_nodes - 1)
        if self._cdf is None:
            deg = np.diff(np.asarray(self.indptr, dtype=np.int64)).astype(np.float64)
            cdf = np.cumsum(deg ** DEGREE_POWER)
            if cdf[-1] <= 0:
                raise InputError("--negative-sampler degree needs a graph with edges; use --negative-sampler uniform")
            self._cdf = cdf
        ids = np.searchsorted(self._cdf, u * self._cdf[-1], side="right")
        return np.minimum(ids, self.num_nodes - 1).astype(np.int64)

    def train_negatives(self, split: str, epoch: int, batch: int, p: int) -> np.ndarray:
        """int64 [P, K] negative destinations of a train minibatch (shared: K drawn once, every row the same)."""
        key = negatives_key(self.seed, split, epoch, batch)
        k = self.negatives
        if self.shared_negatives:
            return np.broadcast_to(self._draw(key, np.arange(k, dtype=np.uint64)), (p, k)).copy()
        return self._draw(key, np.arange(p * k, dtype=np.uint64)).reshape(p, k)

    def _true_pairs(self) -> np.ndarray:
        """Sorted int64 keys ``u * N + w`` of every split edge (both directions when undirected)."""
        if self._pair_keys is None:
            n = np.int64(self.num_nodes)
            parts = []
            for e in self.edges.values():
                parts.append(e[0] * n + e[1])
                if self.undirected:
                    parts.append(e[1] * n + e[0])
            self._pair_keys = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
        return self._pair_keys

    def is_true_edge(self, u: np.ndarray, w: np.ndarray) -> np.ndarray:
        """bool: whether ``(u, w)`` is an edge of the topology or of any split (either direction when undirected)."""
        u = np.asarray(u, dtype=np.int64)
        w = np.asarray(w, dtype=np.int64)
        keys = self._true_pairs()
        q = u * np.int64(self.num_nodes) + w
        pos = np.minimum(np.searchsorted(keys, q), max(keys.size - 1, 0))
        out = (keys[pos] == q) if keys.size else np.zeros(q.shape, bool)
        out |= has_edge(self.indptr, self.indices, u, w)
        if self.undirected:
            q = w * np.int64(self.num_nodes) + u
            pos = np.minimum(np.searchsorted(keys, q), max(keys.size - 1, 0))
            if keys.size:
                out |= keys[pos] == q
            out |= has_edge(self.indptr, self.indices, w, u)
        return out

    def eval_negatives_of(self, split: str, edge_ids: np.ndarray) -> np.ndarray:
        """int64 [P, M]: the fixed, filtered negative destinations of positives ``edge_ids`` of ``split``.

        Each row is M distinct nodes ``w`` with ``(u, w)`` no true edge, drawn uniformly from the hash of
        ``(seed, split, edge id, round, draw)``; a positive whose candidates run short after a few rounds takes M
        of all its possible negatives, ordered by a hash.

        Raises:
            InputError: a positive has fewer than M possible negatives.
        """
        m, n = self.eval_negatives, self.num_nodes
        edge_ids = np.asarray(edge_ids, dtype=np.int64)
        src = self.edges[split][0][edge_ids]
        key = negatives_key(self.seed, split, 0, 0)
        out = np.full((len(edge_ids), m), -1, dtype=np.int64)
        todo = np.arange(len(edge_ids))
        width = 2 * m + 8
        for rnd in range(4):
            if todo.size == 0:
                break
            ctr = ((edge_ids[todo].astype(np.uint64)[:, None] << np.uint64(32))
                   | (np.uint64(rnd) << np.uint64(24)) | np.arange(width, dtype=np.uint64)[None, :])
            cand = np.minimum((uniform01(key, ctr) * n).astype(np.int64), n - 1)
            u = np.repeat(src[todo], width).reshape(len(todo), width)
            ok = ~self.is_true_edge(u.ravel(), cand.ravel()).reshape(cand.shape)
            # first occurrence only (distinct negatives), in draw order
            order = np.argsort(cand, axis=1, kind="stable")
            srt = np.take_along_axis(cand, order, axis=1)
            dup_sorted = np.zeros(srt.shape, dtype=bool)
            dup_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
            dup = np.zeros_like(dup_sorted)
            np.put_along_axis(dup, order, dup_sorted, axis=1)
            ok &= ~dup
            # earlier rounds' picks stay; this round adds what the row still lacks (distinct from them)
            have = (out[todo] >= 0).sum(axis=1)
            cs = np.cumsum(ok, axis=1)
            full = (have == 0) & (cs[:, -1] >= m)  # (most rows: the first M usable candidates, at once)
            if full.any():
                sel = ok[full] & (cs[full] <= m)
                out[todo[full]] = cand[full][sel].reshape(-1, m)
            for j in np.flatnonzero(~full):
                row = todo[j]
                got = out[row, :have[j]]
                c = cand[j][ok[j]]
                if have[j]:
                    c = c[~np.isin(c, got)]
                take = c[:m - have[j]]
                out[row, have[j]:have[j] + take.size] = take
            todo = todo[(out[todo] < 0).any(axis=1)]
            width *= 4
        for row in todo:  # scarce possible negatives: choose among all of them
            u = int(src[row])
            allw = np.arange(n, dtype=np.int64)
            possible = allw[~self.is_true_edge(np.full(n, u, np.int64), allw)]
            if possible.size < m:
                raise InputError(f"--eval-negatives {m} is more than the {possible.size} possible negatives of {split} "
                                 f"edge {int(edge_ids[row])} (source node {u}); lower --eval-negatives")
            ctr = (np.uint64(edge_ids[row]) << np.uint64(32)) | np.uint64(0xFF << 24) | possible.astype(np.uint64)
            out[row] = possible[np.argsort(uniform01(key, ctr), kind="stable")[:m]]
        return out

    # -- the minibatch ----------------------------------------------------------------------------

    def minibatch(self, split: str, epoch: int, batch: int) -> SampledMinibatch:
        """Minibatch ``batch`` of ``epoch`` of ``split``: its positives and negatives and the sampled neighborhood of
        their endpoints (``link`` set; the one function behind link plans and the in-memory reference)."""
        ids = self.positives(split, epoch, batch)
        e = self.edges[split]
        src, dst = e[0][ids], e[1][ids]
        neg = (self.train_negatives(split, epoch, batch, len(ids)) if split == "train"
               else self.eval_negatives_of(split, ids))
        train = split == "train"
        fan = self.fanouts if train else self.eval_fanouts
        mb = link_minibatch(self.indptr, self.indices, src, dst, neg, fan, minibatch_key(self.seed, split, epoch, batch),
                            epoch=epoch, batch=batch)
        if train and self.options.exclude_seed_edges:
            exclude_edges(mb, src, dst, undirected=self.undirected)
        return mb


def link_minibatch(indptr: np.ndarray, indices: np.ndarray, src: np.ndarray, dst: np.ndarray, neg: np.ndarray,
                   fanouts: Sequence[int], key: int | np.uint64, *, epoch: int = 0, batch: int = 0) -> SampledMinibatch:
    """A link minibatch of positives ``src[i] -> dst[i]`` (int64 [P]) and negative destinations ``neg`` (int64
    [P, K]): seeds = the sorted unique endpoints, their neighborhood sampled with ``key``
    (:func:`~diskgraph.sampler.neighbor_sampler.sample_minibatch`), ``link`` = positions into the seeds."""
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    neg = np.asarray(neg, dtype=np.int64).reshape(len(src), -1)
    seeds = np.unique(np.concatenate([src, dst, neg.ravel()]))
    mb = sample_minibatch(indptr, indices, seeds, fanouts, key, epoch=epoch, batch=batch)
    mb.link = LinkTargets(src=np.searchsorted(seeds, src), dst=np.searchsorted(seeds, dst),
                          neg=np.searchsorted(seeds, neg))
    return mb


def exclude_edges(mb: SampledMinibatch, src: np.ndarray, dst: np.ndarray, *, undirected: bool) -> int:
    """Drop the edges ``src[i] -> dst[i]`` (global ids, int64 [P]; also ``dst[i] -> src[i]`` when ``undirected``)
    from every hop of ``mb``'s blocks, in place; returns how many sampled edges went.

    A hop's block is a CSC over destinations: destination ``j`` (local) reads sources ``hop_indices[h][ptr[j]:ptr[j+1]]``,
    so the edge ``u -> v`` sits at destination ``v`` with source ``u``. Nodes stay (an excluded edge's source is a
    seed of a link minibatch, so it is in the node list anyway).
    """
    nodes = mb.input_nodes
    n = np.int64(max(int(nodes.max()) + 1, 1)) if nodes.size else np.int64(1)
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    keys = dst * n + src
    if undirected:
        keys = np.concatenate([keys, src * n + dst])
    keys = np.unique(keys)
    dropped = 0
    for h in range(mb.num_hops):
        ptr = mb.hop_indptr[h]
        idx = mb.hop_indices[h]
        if idx.size == 0 or keys.size == 0:
            continue
        deg = np.diff(ptr.astype(np.int64))
        edge_dst = np.repeat(nodes[:len(deg)], deg)
        q = edge_dst * n + nodes[idx]
        pos = np.minimum(np.searchsorted(keys, q), keys.size - 1)
        drop = keys[pos] == q
        k = int(drop.sum())
        if not k:
            continue
        keep_deg = deg - np.bincount(np.repeat(np.arange(len(deg)), deg)[drop], minlength=len(deg))
        new_ptr = np.zeros(len(ptr), dtype=ptr.dtype)
        np.cumsum(keep_deg, out=new_ptr[1:])
        mb.hop_indptr[h] = new_ptr
        mb.hop_indices[h] = np.ascontiguousarray(idx[~drop])
        dropped += k
    return dropped


def check_link_options(negatives, negative_sampler, eval_negatives, num_nodes: int) -> None:
    """Refuse bad link options with one sentence naming the flag."""
    for flag, v in (("--negatives", negatives), ("--eval-negatives", eval_negatives)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise InputError(f"{flag} {v!r} must be a whole number of at least 1")
    if negative_sampler not in NEGATIVE_SAMPLERS:
        raise InputError(f"--negative-sampler {negative_sampler!r} is not one of {', '.join(NEGATIVE_SAMPLERS)}")
    if eval_negatives > num_nodes - 1:
        raise InputError(f"--eval-negatives {eval_negatives} is more than the {num_nodes - 1} possible negatives of a "
                         f"graph of {num_nodes} nodes; lower --eval-negatives")


def dataset_edge_splits(ds) -> tuple[dict[str, np.ndarray], bool]:
    """The dataset's edge splits (``{split: int64 [2, E_s]}``) and whether it is undirected.

    Raises:
        InputError: the dataset has no edge split.
    """
    splits = getattr(ds, "edge_splits", None) or {}
    if not splits:
        raise InputError(f"dataset {ds.path} has no edge split for --task link; import it with --edge-split "
                         "(e.g. random:0.85,0.05,0.1) or --val-edges/--test-edges")
    info = getattr(ds, "edge_split_info", None) or {}
    return {s: np.asarray(e) for s, e in splits.items()}, bool(info.get("undirected", False))
