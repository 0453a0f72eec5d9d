"""The in-memory reference loader: online sampling, features in RAM, no disk in the loop.

It is what ordinary neighbor-sampling training does (PyG's ``NeighborLoader``,
DGL's ``DataLoader``) with the project's own sampler, and is the baseline the
out-of-core :class:`~diskgraph.pipeline.loader.PackedLoader` must match in
accuracy. The whole feature table is loaded into memory (``features="ram"``), or —
as the baseline for tables larger than memory — read through memory maps of its
chunk files (``features="mmap"``, the kernel's default readahead, or
``"mmap-random"``, ``MADV_RANDOM``: :class:`~diskgraph.store.feature_mmap.MappedFeatures`),
which is what training with ``np.memmap`` features does.

Minibatches are numbered like a plan with unboundedly many presampled epochs:
row ``r`` is batch ``r % per_epoch`` of epoch ``r // per_epoch``. Its seeds are
that slice of the epoch's shuffled train nodes
(:func:`~diskgraph.sampler.neighbor_sampler.epoch_order`; val/test in ascending
id order), and it is sampled when read, with the key ``(seed, split, epoch,
batch)`` (:func:`~diskgraph.sampler.neighbor_sampler.minibatch_key`) — so every
epoch draws a fresh sample, and epoch ``e`` of a plan sampled with the same
seed, fanouts and batch size holds exactly the same minibatches.

With ``task="link"`` the minibatches are link-prediction ones of the dataset's edge splits, built by the same
function as a link plan's rows (:meth:`~diskgraph.sampler.link_sampler.LinkSampler.minibatch`): ``batch_size``
positive edges with their negatives, epoch ``e`` equal to presampled epoch ``e`` of a link plan with the same seed and
options, and ``y`` the int64 ``[P, 2 + K]`` positions (src, dst, K negatives) into the seeds
(:meth:`~diskgraph.store.plan.LinkTargets.targets`).

>>> loader = InMemoryLoader(dataset, "train", fanouts=[10, 5], batch_size=1024, seed=0)
>>> for batch in loader.epoch(loader.order(epoch)):
...     ...
"""

from __future__ import annotations

import os
import time
from typing import Sequence

import numpy as np
import torch

from ..sampler.link_sampler import LinkOptions, LinkSampler, dataset_edge_splits
from ..sampler.neighbor_sampler import epoch_order as shuffled_seeds
from ..sampler.neighbor_sampler import minibatch_key, sample_minibatch
from ..store.dataset import Dataset, open_dataset
from ..store.errors import InputError
from ..store.feature_mmap import MappedFeatures
from ..store.label_kinds import gather_targets
from ..store.plan import SampledMinibatch
from .blocks import Batch, make_block
from .stages import END, Stage, StageRun, overlap_stats
from .tiers import storage_tensor, torch_dtype

SAMPLE_THREAD = "diskgraph-sample"
ASSEMBLE_THREAD = "diskgraph-memory-assemble"


class InMemoryLoader:
    """Minibatches of one split, sampled online from an in-memory graph and feature table.

    Args:
        dataset: the dataset (directory or open :class:`~diskgraph.store.dataset.Dataset`).
        split: ``train``, ``val`` or ``test``.
        fanouts: neighbors per hop (``fanouts[0]`` for the seeds; -1 = all), as for ``preprocess sample``.
        batch_size: seeds per minibatch.
        seed: sampling seed (the same as a plan's ``--seed`` gives the plan's minibatches).
        device: where batches are delivered.
        features: ``ram`` (load the table and check it against the dataset's checksum), ``mmap`` (memory-map it,
            default advice) or ``mmap-random`` (memory-map it with ``MADV_RANDOM``); the memory-mapped baselines read
            rows as training goes and do not check the table first (that would read it all). The topology, labels and
            the split are checked in every mode.
        share_features_with: another loader of the same dataset and ``features`` mode whose table (or memory
            maps) this one uses instead of loading its own (the train, val and test loaders of one run).
        queue_depth: minibatches the sampling and assembling threads may run ahead of the consumer.
        task: ``node`` (default) or ``link`` (minibatches of positive edges of the dataset's edge split ``split``;
            labels are not needed).
        link_options: link mode: as ``preprocess sample --task link`` (negatives, seed-edge exclusion:
            :class:`~diskgraph.sampler.link_sampler.LinkOptions`; default: its defaults).
    """

    FEATURE_MODES = ("ram", "mmap", "mmap-random")

    def __init__(self, dataset: Dataset | str | os.PathLike, split: str, *, fanouts: Sequence[int], batch_size: int,
                 seed: int = 0, device: torch.device | str = "cpu", features: str = "ram",
                 share_features_with: "InMemoryLoader | None" = None, queue_depth: int = 2, task: str = "node",
                 link_options: LinkOptions | None = None):
        self.dataset = dataset if isinstance(dataset, Dataset) else open_dataset(dataset)
        ds = self.dataset
        if task not in ("node", "link"):
            raise InputError(f"--task {task!r} is not one of node, link")
        self.link: LinkSampler | None = None
        edge_splits: dict = {}
        if task == "link":
            edge_splits, undirected = dataset_edge_splits(ds)
            if split not in edge_splits or np.asarray(edge_splits[split]).reshape(2, -1).shape[1] == 0:
                raise InputError(f"dataset {ds.path} has no {split!r} edges (its edge splits: "
                                 f"{', '.join(edge_splits) or 'none'})")
            if ds.features is None:
                raise InputError(f"dataset {ds.path} needs features to train on; import them")
        elif split not in ds.splits:
            raise InputError(f"dataset {ds.path} has no {split!r} split (it has {', '.join(ds.splits) or 'none'})")
        elif ds.features is None or ds.labels is None:
            raise InputError(f"dataset {ds.path} needs features and labels to train on; import them")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise InputError(f"--batch-size {batch_size!r} must be a whole number of at least 1")
        self.split = split
        self.fanouts = [int(f) for f in fanouts]
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.device = torch.device(device)
        self.indptr = np.asarray(ds.indptr)
        self.indices = np.asarray(ds.indices)
        if task == "link":
            self.nodes = np.zeros(0, dtype=np.int64)
            for name, values in (("topology/indptr", self.indptr), ("topology/indices", self.indices)):
                ds.check_array(name, values)
            self.link = LinkSampler(self.indptr, self.indices, ds.num_nodes, edge_splits, undirected=undirected,
                                    fanouts=self.fanouts, batch_size=self.batch_size, seed=self.seed,
                                    options=link_options)
            self.labels = None
            self.task = "link"
        else:
            self.nodes = np.asarray(ds.splits[split], dtype=np.int64)
            if self.nodes.size == 0:
                raise InputError(f"the {split} split of dataset {ds.path} is empty")
            # what it samples from is what was imported (once per open dataset; hashed through the maps it then uses)
            for name, values in (("topology/indptr", self.indptr), ("topology/indices", self.indices),
                                 (f"splits/{split}", ds.splits[split])):
                ds.check_array(name, values)
            self.labels = ds.verified_labels()
            self.task = ds.task
        if features not in self.FEATURE_MODES:
            raise InputError(f"reference features {features!r} is not one of {', '.join(self.FEATURE_MODES)}")
        torch_dtype(ds.feature_dtype)
        self.feature_mode = features
        self.mapped: MappedFeatures | None = None
        self.features: torch.Tensor | None = None
        self._owns_maps = share_features_with is None
        other = share_features_with
        if other is not None:
            if other.dataset.path != ds.path or other.feature_mode != features:
                raise InputError("share_features_with must be a loader of the same dataset and feature mode")
            self.features, self.mapped = other.features, other.mapped
        elif features == "ram":
            rows = ds.features.read_rows(0, ds.num_nodes)
            ds.check_array("features", rows)
            self.features = storage_tensor(rows, ds.feature_dtype)
        else:
            self.mapped = MappedFeatures(ds.features, advice="random" if features == "mmap-random" else "normal")
        self.per_epoch = (self.link.minibatches_per_epoch(split) if self.link is not None
                          else -(-self.nodes.size // self.batch_size))
        self._seed_cache: tuple[int, np.ndarray] | None = None
        self.queue_depth = int(queue_depth)
        self._active: StageRun | None = None
        self._last: StageRun | None = None

    def __len__(self) -> int:
        """Minibatches in one epoch."""
        return self.per_epoch

    def order(self, epoch: int, seed: int | None = None) -> np.ndarray:
        """The rows of epoch ``epoch`` in reading order (the shuffle is in the seeds, so batch order is natural).

        Val and test read epoch 0 every time: evaluation samples its neighbourhoods once, as a plan's val/test split
        does, so every evaluation of a run (and the packed run's) sees the same minibatches. ``seed`` is accepted for
        symmetry with :meth:`PackedLoader.order` and ignored (the loader's seed rules).
        """
        if self.split != "train":
            epoch = 0
        return int(epoch) * self.per_epoch + np.arange(self.per_epoch, dtype=np.int64)

    def epoch_seeds(self, epoch: int) -> np.ndarray:
        """The split's seed nodes in epoch ``epoch``'s order (train: shuffled per epoch; eval: ascending)."""
        if self.split != "train":
            return self.nodes
        if self._seed_cache is None or self._seed_cache[0] != epoch:
            self._seed_cache = (epoch, shuffled_seeds(self.nodes, self.seed, epoch))
        return self._seed_cache[1]

    def minibatch(self, row: int) -> SampledMinibatch:
        """Sample minibatch ``row`` (batch ``row % per_epoch`` of epoch ``row // per_epoch``)."""
        epoch, b = divmod(int(row), self.per_epoch)
        if self.link is not None:  # (val/test: the loader's fanouts and batch size are the eval ones)
            return self.link.minibatch(self.split, epoch, b)
        seeds = self.epoch_seeds(epoch)[b * self.batch_size:(b + 1) * self.batch_size]
        return sample_minibatch(self.indptr, self.indices, seeds, self.fanouts,
                                minibatch_key(self.seed, self.split, epoch, b), epoch=epoch, batch=b)

    def epoch(self, order=None, start: int = 0):
        """Iterate rows ``order[start:]`` (None: epoch 0) as :class:`~diskgraph.pipeline.blocks.Batch` objects."""
        order = self.order(0) if order is None else np.asarray(order, dtype=np.int64).reshape(-1)
        if order.size and order.min() < 0:
            raise InputError("an epoch order must hold row numbers ≥ 0")
        if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or not 0 <= start <= len(order):
            raise InputError(f"start position {start!r} is outside 0..{len(order)}")
        return self._iterate(order, int(start))

    def _iterate(self, order: np.ndarray, start: int):
        """Sampling and feature gathering run ahead of the consumer in the stage harness's threads
        (:mod:`diskgraph.pipeline.stages`), as the packed loader's read and assemble stages do."""
        if self._active is not None:
            self._active.shutdown()
        stages = [Stage("sample", SAMPLE_THREAD, source=lambda run: self._sample(run, order, start)),
                  Stage("assemble", ASSEMBLE_THREAD, transform=self._assemble_one)]
        run = StageRun(stages, self.queue_depth)
        use = run.totals["consume"] = {"compute_s": 0.0, "wait_s": 0.0, "inputs": 0, "seeds": 0}
        self._active = run
        try:
            run.begin()
            while True:
                t0 = time.perf_counter()
                batch = run.get_output()
                use["wait_s"] += time.perf_counter() - t0
                if batch is END:
                    break
                use["inputs"] += batch.stats["inputs"]
                use["seeds"] += batch.stats["seeds"]
                t1 = time.perf_counter()
                yield batch
                use["compute_s"] += time.perf_counter() - t1
        finally:
            run.shutdown()
            if self._active is run:
                self._active = None
                self._last = run

    def _sample(self, run: StageRun, order: np.ndarray, start: int):
        """The sampling stage: each minibatch's blocks and its seeds' targets."""
        tot = run.totals["sample"]
        for pos in range(start, len(order)):
            if run.stop.is_set():
                return
            t0 = time.perf_counter()
            mb = self.minibatch(int(order[pos]))
            blocks = [make_block(ns, nd, ptr, idx) for ns, nd, ptr, idx in mb.blocks()]
            y = torch.from_numpy(mb.link.targets() if mb.link is not None
                                 else gather_targets(self.labels, mb.seeds, self.task))
            busy = time.perf_counter() - t0
            tot["busy_s"] += busy
            yield pos, int(order[pos]), mb, blocks, y, busy

    def _assemble_one(self, run: StageRun, item, wait_in: float) -> Batch:
        """The assemble stage: the input rows from the table (or the memory maps), everything on the device."""
        pos, row, mb, blocks, y, sample_s = item
        t1 = time.perf_counter()
        if self.mapped is not None:
            x = storage_tensor(self.mapped.gather(mb.input_nodes), self.dataset.feature_dtype).to(torch.float32)
        else:
            nodes = torch.from_numpy(np.ascontiguousarray(mb.input_nodes, dtype=np.int64))
            x = self.features.index_select(0, nodes).to(torch.float32)
        if self.device.type != "cpu":
            x, y = x.to(self.device), y.to(self.device)
            blocks = [b.to(self.device) for b in blocks]
        busy = time.perf_counter() - t1
        run.totals["assemble"]["busy_s"] += busy
        n = int(mb.input_nodes.shape[0])
        stats = {"sample_s": sample_s, "read_s": 0.0, "assemble_s": busy, "assemble_input_wait_s": wait_in,
                 "bytes_read": 0, "rows_gpu": 0, "rows_host": 0, "rows_cold": 0, "rows_table": 0, "rows_memory": n, "inputs": n,
                 "seeds": int(y.shape[0])}
        return Batch(split=self.split, position=pos, index=row, blocks=blocks, x=x, y=y, input_nodes=mb.input_nodes,
                     stats=stats)

    def close(self) -> None:
        """Release the memory maps (``mmap`` modes)."""
        if self.mapped is not None and self._owns_maps:
            self.mapped.close()

    def epoch_stats(self) -> dict:
        """Sums over the running (or last) epoch, with the keys of :meth:`PackedLoader.epoch_stats` that apply."""
        run = self._active or self._last
        if run is None:
            return {}
        smp, asm, use = run.totals["sample"], run.totals["assemble"], run.totals["consume"]
        epoch_s = run.epoch_s
        minibatches = int(asm["minibatches"])
        busy = {"sample": float(smp["busy_s"]), "assemble": float(asm["busy_s"]), "compute": float(use["compute_s"])}
        out = {"minibatches": minibatches, "epoch_s": epoch_s, "sample_busy_s": busy["sample"],
               "read_busy_s": 0.0, "assemble_busy_s": busy["assemble"], "compute_s": busy["compute"],
               "sample_put_wait_s": float(smp["put_wait_s"]), "assemble_input_wait_s": float(asm["input_wait_s"]),
               "assemble_put_wait_s": float(asm["put_wait_s"]), "consumer_wait_s": float(use["wait_s"]),
               "bytes_read": 0, "inputs": int(use["inputs"]), "seeds": int(use["seeds"]), "rows_gpu": 0, "rows_host": 0,
               "rows_cold": 0, "rows_table": 0, "rows_memory": int(use["inputs"]),
               "minibatches_per_s": minibatches / epoch_s if epoch_s > 0 else 0.0, **overlap_stats(epoch_s, busy)}
        return out
