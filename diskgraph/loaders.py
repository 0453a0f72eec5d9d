"""The public loaders: iterate a split's minibatches in your own training loop.

>>> loader = diskgraph.PackedLoader("data/cora", "train", pack="default", device="cpu", seed=0)
>>> for epoch in range(3):
...     loader.set_epoch(epoch)                  # like DistributedSampler.set_epoch
...     for batch in loader:                     # Batch: x, y, blocks, batch_size, to_pyg()
...         ...

:class:`PackedLoader` reads a pack made by ``diskgraph preprocess all`` (out of
core, the CLI's three-stage pipeline); :class:`InMemoryLoader` samples online
from a graph and feature table held in memory (the reference). Both yield
:class:`~diskgraph.pipeline.blocks.Batch` objects, so changing the one line
that builds the loader switches between them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .store.errors import InputError

_SHUFFLE_STREAM = 0x5EED0DE6



def _open_dataset_dir(dataset_dir, device, maker: str):
    """``(path, open dataset, torch device)`` of a loader's dataset directory (one-sentence refusals)."""
    from .store.dataset import open_dataset
    from .train import resolve_device

    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise InputError(f"dataset directory {dataset_dir} does not exist; make it with "
                         f"`diskgraph {maker} --out {dataset_dir} ...`")
    return dataset_dir, open_dataset(dataset_dir), resolve_device(str(device))

class _Loader:
    """What both loaders share: epochs, ``len``, iteration, closing."""

    split: str
    _epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch the next pass iterates (its shuffled order and, for a pack, its presampled epoch)."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise InputError(f"epoch {epoch!r} must be a whole number of at least 0")
        self._epoch = int(epoch)

    @property
    def epoch(self) -> int:
        """The epoch the next pass iterates (:meth:`set_epoch`)."""
        return self._epoch

    def __iter__(self) -> Iterator:
        """One epoch's batches in :meth:`order`."""
        return iter(self._inner.epoch(self.order(self._epoch)))

    def epoch_stats(self) -> dict:
        """Stage times, bytes read and hit rates of the running (or last) pass."""
        return self._inner.epoch_stats()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _num_classes(ds) -> int:
    """The model's output width (classes, multilabel labels or regression targets: ``Dataset.num_outputs``)."""
    return int(ds.num_outputs)


class PackedLoader(_Loader):
    """The minibatches of one split of a pack, read from disk by the out-of-core pipeline.

    Args:
        dataset_dir: a dataset directory prepared by ``diskgraph preprocess all`` (or import, sample, pack).
        split: ``train``, ``val`` or ``test``.
        pack: the pack's name (``--name`` of ``preprocess``; ``DATASET/packs/NAME``).
        device: where batches are delivered (``cpu``, ``cuda``, ``cuda:1``).
        seed: the shuffle seed; the same seed gives the same order every time.
        shuffle: draw a fresh minibatch order each epoch from ``(seed, epoch)`` (default: for ``train`` only);
            False reads the plan's order.
        prefetch: minibatches each pipeline stage may run ahead of your loop.
        direct: read with ``O_DIRECT`` (falls back to buffered reads where the filesystem refuses).
        reuse_buffers: assemble ``x`` into a few reused buffers (fastest): a batch's ``x`` is then valid until
            the next batch is asked for — clone it to keep it. False gives every batch its own ``x``.

    Each epoch of ``train`` replays one of the plan's presampled epochs (epoch ``e`` reads presampled epoch
    ``e % K``) in an order that is a function of ``(seed, e)``: the CLI's ``diskgraph train --seed`` order.

    Raises:
        InputError: no such dataset, pack or split; a pack of another dataset; no features or labels.
    """

    def __init__(self, dataset_dir: str | os.PathLike, split: str = "train", pack: str = "default",
                 device: str = "cpu", *, seed: int = 0, shuffle: bool | None = None, prefetch: int = 2,
                 direct: bool = True, reuse_buffers: bool = True):
        from .pipeline.loader import PackedLoader as _Packed
        from .store.plan import open_plan
        from .train import _open_pack

        dataset_dir, ds, dev = _open_dataset_dir(dataset_dir, device, "preprocess all")
        if ds.features is None or ds.labels is None:
            raise InputError(f"dataset {dataset_dir} needs features and labels to train; import them with "
                             "--features and --labels")
        pdir, opened, _ = _open_pack(dataset_dir, pack, None)
        try:
            plan = open_plan(opened.plan_path())
        finally:
            opened.close()
        self.dataset = ds
        self.plan = plan
        self.split = split
        self.seed = int(seed)
        self.shuffle = split == "train" if shuffle is None else bool(shuffle)
        self.pack_dir = pdir
        # the loader opens (and closes) the pack, its feature cache and its reader itself
        self._inner = _Packed(ds, pdir, plan, split, device=dev, queue_depth=prefetch, direct=direct,
                              reuse_buffers=reuse_buffers)
        self.device = self._inner.device
        self.fanouts = [int(f) for f in plan.config["fanouts"]]
        self.batch_size = int(plan.config["batch_size"])
        self.num_features = int(ds.feature_dim)
        self.num_classes = _num_classes(ds)

    def __repr__(self) -> str:
        return f"diskgraph.PackedLoader({str(self.pack_dir)!r}, split={self.split!r}, device={self.device})"

    def __len__(self) -> int:
        """Minibatches in one epoch."""
        if self.split == "train":
            return self.plan.minibatches_per_epoch(self.split)
        return self.plan.num_minibatches(self.split)

    def order(self, epoch: int) -> np.ndarray:
        """The plan rows epoch ``epoch`` reads, in reading order."""
        from .pipeline.schedule import epoch_order

        if self.split == "train":
            if self.shuffle:
                return epoch_order(self.plan, self.split, epoch, self.seed)
            per = self.plan.minibatches_per_epoch(self.split)
            return (int(epoch) % self.plan.num_epochs(self.split)) * per + np.arange(per, dtype=np.int64)
        rows = np.arange(self.plan.num_minibatches(self.split), dtype=np.int64)
        if self.shuffle:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, _SHUFFLE_STREAM, int(epoch)]))
            rows = rng.permutation(rows).astype(np.int64)
        return rows

    def close(self) -> None:
        """Stop a running pass and release the pack, its cache and the staging buffers."""
        self._inner.close()


class InMemoryLoader(_Loader):
    """The minibatches of one split, sampled online from a graph and feature table in memory (the reference).

    Args:
        dataset_dir: a dataset directory (``diskgraph preprocess import`` is enough: no plan or pack needed).
        split: ``train``, ``val`` or ``test``.
        fanouts: neighbors per hop, ``fanouts[0]`` for the seeds (-1 = all).
        batch_size: seeds per minibatch.
        seed: sampling and shuffle seed (with a plan's fanouts, batch size and seed, epoch ``e`` holds
            exactly the minibatches of the plan's presampled epoch ``e``).
        device: where batches are delivered.
        features: ``ram`` (load the table), ``mmap`` or ``mmap-random`` (read it through memory maps).

    Train seeds are shuffled afresh every epoch (:meth:`set_epoch`), and every epoch draws a fresh sample.

    Raises:
        InputError: no such dataset or split, no features or labels, bad options.
    """

    def __init__(self, dataset_dir: str | os.PathLike, split: str = "train", *, fanouts: Sequence[int],
                 batch_size: int, seed: int = 0, device: str = "cpu", features: str = "ram"):
        from .pipeline.memory_loader import InMemoryLoader as _Memory

        dataset_dir, ds, dev = _open_dataset_dir(dataset_dir, device, "preprocess import")
        self._inner = _Memory(ds, split, fanouts=list(fanouts), batch_size=batch_size, seed=seed, device=dev,
                              features=features)
        self.dataset = ds
        self.split = split
        self.seed = int(seed)
        self.device = dev
        self.fanouts = list(self._inner.fanouts)
        self.batch_size = int(batch_size)
        self.num_features = int(ds.feature_dim)
        self.num_classes = _num_classes(ds)

    def __repr__(self) -> str:
        return f"diskgraph.InMemoryLoader({str(self.dataset.path)!r}, split={self.split!r}, device={self.device})"

    def __len__(self) -> int:
        """Minibatches in one epoch."""
        return len(self._inner)

    def order(self, epoch: int) -> np.ndarray:
        """The minibatch rows epoch ``epoch`` reads (the shuffle is in the seeds: see the class docstring)."""
        return self._inner.order(epoch)

    def close(self) -> None:
        """Release the feature table's memory maps (``mmap`` modes)."""
        self._inner.close()
