"""Offline neighbor sampling: every minibatch of every split, sampled before training into a plan.

>>> from diskgraph.sampler.neighbor_sampler import sample_plan
>>> sample_plan("data/cora", "data/cora/plans/default", fanouts=[10, 5], batch_size=512, seed=0)

What is sampled (the same as PyG's ``NeighborLoader`` / DGL's ``NeighborSampler``
with ``replace=False``): the train split is shuffled each epoch (a permutation
drawn from ``(seed, epoch)``) and cut into minibatches of ``batch_size`` seeds
(the last one may be smaller); val and test are cut in ascending id order, one
epoch each, with the eval fanouts. Each minibatch then takes ``len(fanouts)``
hops of uniform sampling without replacement over in-edges
(:func:`diskgraph.native.sampling.sample_minibatch`; layout in
:mod:`diskgraph.store.plan`).

Reproducibility: minibatch ``b`` of epoch ``e`` of split ``s`` draws from a key
hashed from ``(seed, s, e, b)``, and each destination's draws from
``(key, hop, node)``, so a plan is the same bit for bit whatever the thread count.

Memory: the topology is read only through fresh memory maps of the dataset's
arrays; the working set is the in-flight minibatches (``2 x threads``) plus one
int32 counter per node per split. The maps get an access advice
(:func:`topology_advice`): when the topology fits in half the memory left
(``MemAvailable``, and the headroom of a memory cgroup) they keep the kernel's
read-around, which loads a cold topology in large reads (measured: one epoch of
a cold 2M-node graph 2.3x faster than with ``MADV_RANDOM``); when it does not,
they are marked ``MADV_RANDOM``, one page per fault (measured under a 400 MiB
cap with a 790 MiB topology: 21x fewer bytes read and 2x faster than
read-around, which thrashes). Sampling a topology that does not fit is bound
by page-fault latency, so then the default thread count is raised to
``max(8, 4 x CPUs)`` to keep more reads in flight.
"""

from __future__ import annotations

import mmap
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..store.atomic import AtomicDirectory
from ..store.dataset import Dataset, open_dataset
from ..store.errors import InputError
from ..store.binding import plan_binding
from ..store.plan import PLAN_FORMAT, SPLITS, PlanSplitWriter, write_plan_manifest
from ..store.progress import Progress, format_bytes, format_count, log
from .link_sampler import LinkOptions
from .minibatch import epoch_order, minibatch_key, sample_minibatch

FANOUT_ORDER = "hop (fanouts[0] = neighbors of the seeds)"
SAMPLER = "uniform without replacement over in-edges"


# -- validation ---------------------------------------------------------------------------------

def _check_fanouts(fanouts, flag: str) -> list[int]:
    try:
        values = [int(f) for f in fanouts]
        ok = len(values) > 0 and all(not isinstance(f, bool) and int(f) == f for f in fanouts)
    except (TypeError, ValueError):
        ok = False
    if not ok or any(v == 0 or v < -1 for v in values):
        raise InputError(f"{flag} {fanouts!r} is not a fanout list; give one or more positive numbers per hop "
                         "(-1 = all neighbors), e.g. 10,15,20")
    return values


def _check_positive(value, flag: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{flag} {value!r} must be a whole number of at least 1")
    return int(value)


SEED_NODES_SPLIT = "nodes"
"""The split of a plan sampled from given seed nodes (``sample_plan(..., seed_nodes=ids)``)."""


def _check_seed_nodes(ids, num_nodes: int) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise InputError(f"seed nodes must be a 1-D array of integer node ids, got shape {arr.shape} dtype {arr.dtype}")
    if arr.size == 0:
        raise InputError("no seed nodes were given; pass at least one node id")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= num_nodes:
        raise InputError(f"seed node {lo if lo < 0 else hi} is outside the graph's 0..{num_nodes - 1}; pass ids of "
                         "this dataset's nodes")
    ascending = arr.size < 2 or bool((arr[1:] > arr[:-1]).all())  # (sorted ids need no copy to be checked)
    if not ascending and np.unique(arr).size != arr.size:
        raise InputError("the seed nodes repeat an id; pass distinct node ids")
    return arr


def _choose_splits(ds: Dataset, splits: Sequence[str] | None) -> list[str]:
    present = ds.splits
    if splits is None:
        chosen = [s for s in SPLITS if s in present and (s == "train" or len(present[s]) > 0)]
        if not chosen:
            raise InputError(f"dataset {ds.path} has no train, val or test split; import it with --split "
                             "(e.g. random:0.6,0.2,0.2) or --train/--val/--test")
    else:
        if isinstance(splits, str):
            splits = [splits]
        chosen = list(dict.fromkeys(splits))
        if not chosen:
            raise InputError("--splits is empty; name at least one of the dataset's splits (e.g. train)")
        for s in chosen:
            if s not in present:
                have = ", ".join(present) or "none"
                raise InputError(f"dataset {ds.path} has no {s!r} split (it has {have}); drop it from --splits")
            if len(present[s]) == 0:
                raise InputError(f"the {s!r} split of dataset {ds.path} is empty; drop it from --splits")
    if "train" in chosen and len(present["train"]) == 0:
        raise InputError(f"the train split of dataset {ds.path} is empty; re-import it with a non-empty --split")
    return chosen


# -- the plan -----------------------------------------------------------------------------------

ADVICE_ENV = "DISKGRAPH_SAMPLER_MADVISE"
"""Environment variable overriding the access advice for the topology maps: ``auto`` (default), ``random``, ``normal``."""


def _cgroup_headroom() -> int | None:
    """Bytes the memory cgroup(s) of this process may still charge, other than reclaimable cache (None: no cap)."""
    best = None
    try:
        lines = open("/proc/self/cgroup").read().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if "memory" in parts[1].split(","):  # cgroup v1
            root, limit_f, stat_key = Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes", "total_rss"
        elif parts[0] == "0" and parts[1] == "":  # cgroup v2
            root, limit_f, stat_key = Path("/sys/fs/cgroup"), "memory.max", "anon"
        else:
            continue
        rel = Path(parts[2].lstrip("/"))
        for d in [root / rel, *[root / p for p in rel.parents], root]:
            try:
                text = (d / limit_f).read_text().strip()
            except OSError:
                continue
            if text == "max" or int(text) >= 1 << 60:
                continue
            used = 0
            try:
                for kv in (d / "memory.stat").read_text().splitlines():
                    k, _, v = kv.partition(" ")
                    if k == stat_key:
                        used = int(v)
            except (OSError, ValueError):
                pass
            room = max(0, int(text) - used)
            best = room if best is None else min(best, room)
    return best


def topology_advice(topology_bytes: int) -> str:
    """``normal`` when the topology fits comfortably in the memory left (read-around then loads it in big
    reads and it stays cached), else ``random`` (each fault reads one page: read-around would evict
    pages still needed and multiply the bytes read). ``DISKGRAPH_SAMPLER_MADVISE`` overrides."""
    forced = os.environ.get(ADVICE_ENV, "auto")
    if forced in ("random", "normal"):
        return forced
    try:
        import psutil

        room = psutil.virtual_memory().available
    except Exception:  # psutil missing or /proc unreadable: assume room
        room = 1 << 62
    cg = _cgroup_headroom()
    if cg is not None:
        room = min(room, cg)
    return "normal" if topology_bytes <= room // 2 else "random"


def _topology_map(ds: Dataset, name: str, advice: str) -> np.ndarray:
    """A fresh memory map of a topology array (not the dataset's shared one), with ``advice`` applied."""
    arr = ds.array(name).memmap()
    m = getattr(arr, "_mmap", None)
    if advice == "random" and m is not None and hasattr(m, "madvise") and hasattr(mmap, "MADV_RANDOM"):
        try:
            m.madvise(mmap.MADV_RANDOM)
        except OSError:
            pass
    return arr


def _split_batches(seeds: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [seeds[i:i + batch_size] for i in range(0, len(seeds), batch_size)]


def _jobs(split: str, seeds_of_epoch, epochs: int, batch_size: int,
          keep=None) -> Iterator[tuple[str, int, int, np.ndarray]]:
    for e in range(epochs):
        for b, s in enumerate(_split_batches(seeds_of_epoch(e), batch_size)):
            if keep is None or keep(b):
                yield split, e, b, s


def _link_jobs(split: str, per_epoch: int, epochs: int, keep=None) -> Iterator[tuple[str, int, int, None]]:
    for e in range(epochs):
        for b in range(per_epoch):
            if keep is None or keep(b):
                yield split, e, b, None


def _choose_edge_splits(ds: Dataset, edge_splits: dict, splits: Sequence[str] | None) -> list[str]:
    """The edge splits a link plan samples (default: those of train/val/test the dataset has, non-empty)."""
    size = {s: int(np.asarray(e).reshape(2, -1).shape[1]) for s, e in edge_splits.items()}
    if splits is None:
        chosen = [s for s in SPLITS if size.get(s, 0) > 0]
    else:
        chosen = list(dict.fromkeys([splits] if isinstance(splits, str) else splits))
        for s in chosen:
            if s not in size:
                raise InputError(f"dataset {ds.path} has no {s!r} edge split (it has {', '.join(size) or 'none'}); "
                                 "drop it from --splits")
    if not chosen or ("train" in chosen and size.get("train", 0) == 0):
        raise InputError(f"the train edge split of dataset {ds.path} is empty; re-import it with a non-empty --edge-split")
    for s in chosen:
        if size[s] == 0:
            raise InputError(f"the {s!r} edge split of dataset {ds.path} is empty; drop it from --splits")
    return chosen


def shard_batches(split: str, per_epoch: int, rank: int, world_size: int) -> list[int]:
    """The minibatches ``b`` of one epoch that share ``rank`` of ``world_size`` samples: ``b % world_size == rank``,
    of the first ``per_epoch - per_epoch % world_size`` for train (equal counts; the smaller last one is among those
    cut), of all of them for val and test.

    Raises:
        InputError: the split has fewer minibatches than shares.
    """
    if per_epoch < world_size:
        flag = "--batch-size" if split == "train" else "--eval-batch-size"
        raise InputError(f"the {split} split has {per_epoch} minibatches, fewer than the {world_size} shares of "
                         f"--shard; lower {flag} or split into fewer shares")
    stop = per_epoch - per_epoch % world_size if split == "train" else per_epoch
    return list(range(rank, stop, world_size))


def sample_plan(dataset: str | os.PathLike | Dataset, out_dir: str | os.PathLike, *, fanouts: Sequence[int],
                batch_size: int, seed: int = 0, epochs: int = 1, eval_fanouts: Sequence[int] | None = None,
                eval_batch_size: int | None = None, splits: Sequence[str] | None = None,
                threads: int | None = None, overwrite: bool = False,
                shard: tuple[int, int] | None = None, seed_nodes: np.ndarray | None = None, task: str = "node",
                link_options: LinkOptions | None = None) -> Path:
    """Sample every minibatch of the dataset's splits into a plan directory at ``out_dir``.

    Args:
        dataset: a dataset directory or an open :class:`~diskgraph.store.dataset.Dataset`.
        out_dir: the plan directory to create (written atomically; by convention ``DATASET/plans/NAME``).
        fanouts: neighbors per node at each hop, nearest hop first (``fanouts[0]`` for the seeds); -1 = all.
        batch_size: seed nodes per train minibatch (the last one of an epoch may be smaller).
        seed: sampling seed; the same seed gives the same plan bit for bit.
        epochs: distinct shuffled epochs of the train split to presample.
        eval_fanouts, eval_batch_size: for val/test (default: ``fanouts``, ``batch_size``); the same
            number of hops as ``fanouts``.
        splits: which splits to sample (default: those of train/val/test the dataset has).
        threads: sampling threads (default: one per CPU; ``max(8, 4 x CPUs)`` when the topology does not fit
            in memory and sampling waits on page faults).
        overwrite: replace an existing ``out_dir``.
        shard: ``(rank, world_size)``: sample only that share of every epoch's minibatches
            (:func:`shard_batches`; data-parallel training with one plan per rank). Rows keep their global batch
            numbers and random keys, so they equal the same rows of the whole plan; the manifest's
            ``config.shard`` records ``{"rank", "world_size"}``.
        seed_nodes: sample these distinct node ids instead of the dataset's splits (inference): one split named
            :data:`SEED_NODES_SPLIT`, one epoch, cut into minibatches of ``batch_size`` in the given order (each
            minibatch's seeds in that order too), with ``fanouts``; not with ``splits`` or ``shard``. The manifest
            binds the plan to the graph and records the ids' sha256 (``dataset.seeds_sha256``) and
            ``config.seed_nodes`` (their count).
        task: ``node`` (minibatches of the node splits) or ``link`` (minibatches of the dataset's edge splits:
            ``batch_size`` positive edges with negatives, :mod:`diskgraph.sampler.link_sampler`; a version-3 plan whose
            rows carry ``link_*`` columns and whose config records ``task`` and the link options).
        link_options: link plans only: negatives and seed-edge exclusion
            (:class:`~diskgraph.sampler.link_sampler.LinkOptions`; default: its defaults).

    Returns:
        The plan directory.

    Raises:
        InputError: a bad option (naming its flag), a requested split missing from the
            dataset or empty, or ``out_dir`` exists without ``overwrite``.
    """
    fanouts = _check_fanouts(fanouts, "--fanouts")
    batch_size = _check_positive(batch_size, "--batch-size")
    epochs = _check_positive(epochs, "--epochs")
    if seed_nodes is not None and (eval_fanouts is not None or eval_batch_size is not None):
        raise InputError("seed nodes are sampled with --fanouts and --batch-size; do not give --eval-fanouts or "
                         "--eval-batch-size with them")
    eval_fanouts = fanouts if eval_fanouts is None else _check_fanouts(eval_fanouts, "--eval-fanouts")
    if len(eval_fanouts) != len(fanouts):
        raise InputError(f"--eval-fanouts {eval_fanouts} has {len(eval_fanouts)} hops but --fanouts {fanouts} has "
                         f"{len(fanouts)}; give both the same number of hops (one per GNN layer)")
    eval_batch_size = batch_size if eval_batch_size is None else _check_positive(eval_batch_size, "--eval-batch-size")
    threads = None if threads is None else _check_positive(threads, "--threads")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InputError(f"--seed {seed!r} must be a whole number")
    seed = int(seed)
    if task not in ("node", "link"):
        raise InputError(f"--task {task!r} is not one of node, link")

    ds = dataset if isinstance(dataset, Dataset) else open_dataset(dataset)
    link = None
    if task == "link":
        from .link_sampler import dataset_edge_splits

        if seed_nodes is not None:
            raise InputError("seed nodes are sampled for node tasks; do not give them with --task link")
        link_options = (link_options or LinkOptions()).check(ds.num_nodes)
        edge_splits, undirected = dataset_edge_splits(ds)
        chosen = _choose_edge_splits(ds, edge_splits, splits)
    elif seed_nodes is not None:
        if splits is not None or shard is not None or epochs != 1:
            raise InputError("seed nodes are sampled as a split of their own, once; do not give --splits, --shard or "
                             "--epochs with them")
        seed_nodes = _check_seed_nodes(seed_nodes, ds.num_nodes)
        chosen = [SEED_NODES_SPLIT]
    else:
        chosen = _choose_splits(ds, splits)
    atomic = AtomicDirectory(out_dir, overwrite=overwrite, option="--name", kind=PLAN_FORMAT)
    atomic.check()

    topo_bytes = ds.array("topology/indptr").nbytes + ds.array("topology/indices").nbytes
    advice = topology_advice(topo_bytes)
    if threads is None:
        cpus = os.cpu_count() or 1
        threads = cpus if advice == "normal" else max(8, 4 * cpus)
    indptr = np.asarray(_topology_map(ds, "topology/indptr", advice))
    indices = np.asarray(_topology_map(ds, "topology/indices", advice))
    num_hops = len(fanouts)
    if task == "link":
        from .link_sampler import LinkSampler

        link = LinkSampler(indptr, indices, ds.num_nodes, edge_splits, undirected=undirected, fanouts=fanouts,
                           batch_size=batch_size, seed=seed, options=link_options,
                           eval_fanouts=eval_fanouts, eval_batch_size=eval_batch_size)

    per_epoch: dict[str, int] = {}
    split_epochs: dict[str, int] = {}
    jobs = []
    for s in chosen:
        ep = epochs if s == "train" else 1
        if link is not None:
            per_epoch[s] = link.minibatches_per_epoch(s)
        else:
            nodes = seed_nodes if seed_nodes is not None else ds.splits[s]
            bs = batch_size if s == "train" else eval_batch_size
            per_epoch[s] = -(-len(nodes) // bs)
        keep = None
        if shard is not None:
            mine = set(shard_batches(s, per_epoch[s], *shard))
            keep, per_epoch[s] = mine.__contains__, len(mine)
        if link is not None:
            jobs.append(_link_jobs(s, per_epoch[s] if keep is None else link.minibatches_per_epoch(s), ep, keep))
        elif s == "train":
            jobs.append(_jobs(s, lambda e, nodes=nodes: epoch_order(nodes, seed, e), ep, bs, keep))
        else:
            jobs.append(_jobs(s, lambda e, nodes=nodes: np.asarray(nodes, dtype=np.int64), 1, bs, keep))
        split_epochs[s] = ep
    total = sum(per_epoch[s] * split_epochs[s] for s in chosen)
    fan_of = {s: (fanouts if s == "train" else eval_fanouts) for s in chosen}

    def work(job):
        split, e, b, seeds = job
        if link is not None:
            return link.minibatch(split, e, b)
        return sample_minibatch(indptr, indices, seeds, fan_of[split], minibatch_key(seed, split, e, b),
                                epoch=e, batch=b)

    # load (or compile) the kernel for this index dtype before the clock starts
    sample_minibatch(indptr, indices, np.zeros(0, np.int64), fanouts, 0)
    t0 = time.perf_counter()
    window = 2 * threads
    with atomic as tmp:
        writers: dict[str, PlanSplitWriter] = {
            s: PlanSplitWriter(tmp / f"{s}.arrow", ds.num_nodes, num_hops, task) for s in chosen}
        pending: deque = deque()
        pool = ThreadPoolExecutor(threads, thread_name_prefix="diskgraph-sample")
        try:
            with Progress("sampling", total, "minibatches") as bar:

                def drain(keep: int) -> None:
                    while len(pending) > keep:
                        split, fut = pending.popleft()
                        writers[split].write(fut.result())
                        bar.update(1)

                # one stream of jobs over all splits, so the window stays full across split boundaries
                for split_jobs in jobs:
                    for job in split_jobs:
                        pending.append((job[0], pool.submit(work, job)))
                        drain(window - 1)
                drain(0)
            for w in writers.values():
                w.close()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            for w in writers.values():
                w.abort()
            raise
        pool.shutdown(wait=True)
        seconds = time.perf_counter() - t0
        config = {"fanouts": fanouts, "batch_size": batch_size, "seed": seed, "epochs": epochs,
                  "eval_fanouts": eval_fanouts, "eval_batch_size": eval_batch_size, "fanout_order": FANOUT_ORDER,
                  "sampler": SAMPLER}
        if shard is not None:
            config["shard"] = {"rank": int(shard[0]), "world_size": int(shard[1])}
        if link is not None:
            config.update({"task": "link", **link_options.config(), "undirected": undirected})
            # the edge splits are bound by their sha256 (the graph binds the rest: val/test edges are not in it)
            binding = plan_binding(ds, [], {s: edge_splits[s].astype(np.int64).reshape(-1) for s in chosen})
        elif seed_nodes is not None:
            config["seed_nodes"] = int(len(seed_nodes))
            binding = plan_binding(ds, [], {SEED_NODES_SPLIT: seed_nodes})
        else:
            binding = plan_binding(ds, chosen)
        dataset_info = {**binding, "path": str(Path(ds.path).absolute())}
        write_plan_manifest(tmp, writers, config, dataset_info, seconds, per_epoch, split_epochs)
    minibatches = sum(w.minibatches for w in writers.values())
    nodes = sum(w.input_nodes for w in writers.values())
    edges = sum(w.sampled_edges for w in writers.values())
    rate = max(seconds, 1e-9)
    log.info("sampled %s minibatches (%s) in %.1f s with %d threads, topology (%s) read with %s access: "
             "%.1f minibatches/s, %s sampled nodes/s, %s sampled edges/s", f"{minibatches:,}",
             ", ".join(f"{s} {writers[s].minibatches:,}" for s in chosen), seconds, threads, format_bytes(topo_bytes),
             advice, minibatches / rate, format_count(nodes / rate), format_count(edges / rate))
    return Path(out_dir)
