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

from ..sampler.neighbor_sampler import epoch_order as shuffled_seeds
from ..sampler.neighbor_sampler import minibatch_key, sample_minibatch
from ..store.dataset import Dataset, open_dataset
from ..store.errors import InputError
from ..store.feature_mmap import MappedFeatures
from ..store.label_kinds import gather_targets
from ..store.plan import SampledMinibatch
from .blocks import Batch, make_block
from .cache import storage_tensor, torch_dtype


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
    """

    FEATURE_MODES = ("ram", "mmap", "mmap-random")

    def __init__(self, dataset: Dataset | str | os.PathLike, split: str, *, fanouts: Sequence[int], batch_size: int,
                 seed: int = 0, device: torch.device | str = "cpu", features: str = "ram",
                 share_features_with: "InMemoryLoader | None" = None):
        self.dataset = dataset if isinstance(dataset, Dataset) else open_dataset(dataset)
        ds = self.dataset
        if split not in ds.splits:
            raise InputError(f"dataset {ds.path} has no {split!r} split (it has {', '.join(ds.splits) or 'none'})")
        if ds.features is None or ds.labels is None:
            raise InputError(f"dataset {ds.path} needs features and labels to train on; import them")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise InputError(f"--batch-size {batch_size!r} must be a whole number of at least 1")
        self.split = split
        self.fanouts = [int(f) for f in fanouts]
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.device = torch.device(device)
        self.nodes = np.asarray(ds.splits[split], dtype=np.int64)
        if self.nodes.size == 0:
            raise InputError(f"the {split} split of dataset {ds.path} is empty")
        self.indptr = np.asarray(ds.indptr)
        self.indices = np.asarray(ds.indices)
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
        self.per_epoch = -(-self.nodes.size // self.batch_size)
        self._seed_cache: tuple[int, np.ndarray] | None = None
        self._stats: dict = {}

    def __len__(self) -> int:
        """Minibatches in one epoch."""
        return self.per_epoch

    def order(self, epoch: int, seed: int | None = None) -> np.ndarray:
        """The rows of epoch ``epoch`` in reading order (the shuffle is in the seeds, so batch order is natural).

        ``seed`` is accepted for symmetry with :meth:`PackedLoader.order` and ignored (the loader's seed rules).
        """
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
        tot = dict.fromkeys(("sample_s", "assemble_s", "compute_s", "minibatches", "inputs", "seeds"), 0)
        self._stats = tot
        t_start = time.perf_counter()
        try:
            for pos in range(start, len(order)):
                t0 = time.perf_counter()
                mb = self.minibatch(int(order[pos]))
                blocks = [make_block(ns, nd, ptr, idx) for ns, nd, ptr, idx in mb.blocks()]
                t1 = time.perf_counter()
                if self.mapped is not None:
                    x = storage_tensor(self.mapped.gather(mb.input_nodes), self.dataset.feature_dtype).to(torch.float32)
                else:
                    nodes = torch.from_numpy(np.ascontiguousarray(mb.input_nodes, dtype=np.int64))
                    x = self.features.index_select(0, nodes).to(torch.float32)
                y = torch.from_numpy(gather_targets(self.labels, mb.seeds, self.task))
                if self.device.type != "cpu":
                    x, y = x.to(self.device), y.to(self.device)
                    blocks = [b.to(self.device) for b in blocks]
                t2 = time.perf_counter()
                n = int(mb.input_nodes.shape[0])
                stats = {"sample_s": t1 - t0, "read_s": 0.0, "assemble_s": t2 - t1, "bytes_read": 0,
                         "rows_gpu": 0, "rows_host": 0, "rows_cold": 0, "rows_memory": n, "inputs": n,
                         "seeds": int(y.shape[0])}
                tot["sample_s"] += t1 - t0
                tot["assemble_s"] += t2 - t1
                tot["minibatches"] += 1
                tot["inputs"] += n
                tot["seeds"] += int(y.shape[0])
                t3 = time.perf_counter()
                yield Batch(split=self.split, position=pos, index=int(order[pos]), blocks=blocks, x=x, y=y,
                            input_nodes=mb.input_nodes, stats=stats)
                tot["compute_s"] += time.perf_counter() - t3
        finally:
            tot["epoch_s"] = time.perf_counter() - t_start

    def close(self) -> None:
        """Release the memory maps (``mmap`` modes)."""
        if self.mapped is not None and self._owns_maps:
            self.mapped.close()

    def epoch_stats(self) -> dict:
        """Sums over the running (or last) epoch, with the keys of :meth:`PackedLoader.epoch_stats` that apply."""
        t = self._stats
        if not t:
            return {}
        epoch_s = t.get("epoch_s", 0.0)
        busy = {"sample": t["sample_s"], "assemble": t["assemble_s"], "compute": t["compute_s"]}
        slowest = max(busy, key=busy.get)
        return {"minibatches": t["minibatches"], "epoch_s": epoch_s, "sample_busy_s": t["sample_s"],
                "read_busy_s": 0.0, "assemble_busy_s": t["assemble_s"], "compute_s": t["compute_s"],
                "bytes_read": 0, "inputs": t["inputs"], "seeds": t["seeds"], "rows_gpu": 0, "rows_host": 0,
                "rows_cold": 0, "rows_memory": t["inputs"],
                "minibatches_per_s": t["minibatches"] / epoch_s if epoch_s > 0 else 0.0,
                "slowest_stage": slowest, "slowest_stage_s": busy[slowest],
                "overlap": epoch_s / busy[slowest] if busy[slowest] > 0 else None}
