"""The feature table read through memory maps of its chunk files: how ``np.memmap`` training reads features.

This is not how diskgraph trains (it reads packed extents with ``O_DIRECT``); it
is the baseline it is measured against — what a PyG or DGL user gets by putting
``np.memmap`` features behind a ``NeighborLoader`` — and it lets the in-memory
reference loader run on a feature table larger than memory.

Every chunk file of the Zarr feature array is mapped once (``mmap``, read only);
row ``r`` lives in chunk ``r // chunk_rows``. A gather touches the pages of the
rows it asks for; on a miss the kernel reads them from disk — with the default
advice it reads the whole readahead window around the fault (``read_ahead_kb``,
often 128 KiB–8 MiB), with ``MADV_RANDOM`` only the faulting page (4 KiB).

>>> mapped = MappedFeatures(dataset.features, advice="random")
>>> rows = mapped.gather(np.array([5, 1, 70000]))      # [3, F], the stored dtype
"""

from __future__ import annotations

import mmap
import os

import numpy as np

from .errors import InputError
from .zarr_arrays import RawArray

ADVICE = {"normal": mmap.MADV_NORMAL, "random": mmap.MADV_RANDOM, "sequential": mmap.MADV_SEQUENTIAL}
"""Access advice names accepted by :class:`MappedFeatures` → ``madvise`` constants."""


class MappedFeatures:
    """Gather feature rows through ``mmap`` of the table's chunk files.

    Args:
        features: the dataset's feature array (``Dataset.features``).
        advice: ``normal`` (the kernel's default readahead), ``random`` (``MADV_RANDOM``: no
            readahead) or ``sequential``.

    Attributes:
        shape: ``(num_nodes, feature_dim)``; ``dtype``: the stored numpy dtype (``uint16`` bit
            patterns for bfloat16); ``row_bytes``: bytes per row; ``advice``: the advice given.
    """

    def __init__(self, features: RawArray, advice: str = "normal"):
        if advice not in ADVICE:
            raise InputError(f"memory-map advice {advice!r} is not one of {', '.join(ADVICE)}")
        self.features = features
        self.advice = advice
        self.shape = (features.shape[0], features.row_items)
        self.dtype = features.storage_dtype
        self.row_bytes = features.row_bytes
        self.chunk_rows = features.chunk_shape[0]
        self._maps: list[mmap.mmap] = []
        self._views: list[np.ndarray] = []
        for i in range(features.num_chunks):
            path = features._check_chunk(i)
            fd = os.open(path, os.O_RDONLY)
            try:
                m = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
            finally:
                os.close(fd)
            m.madvise(ADVICE[advice])
            self._maps.append(m)
            self._views.append(np.frombuffer(m, dtype=self.dtype).reshape(self.chunk_rows, self.shape[1]))

    def gather(self, ids: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``ids`` (int, any order, repeats allowed) → ``[len(ids), F]`` in the stored dtype (a copy)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if out is None:
            out = np.empty((ids.size, self.shape[1]), dtype=self.dtype)
        if ids.size == 0:
            return out
        if ids.min() < 0 or ids.max() >= self.shape[0]:
            raise InputError(f"feature rows must lie in 0..{self.shape[0] - 1}")
        chunk = ids // self.chunk_rows
        order = np.argsort(chunk, kind="stable")
        sorted_chunks = chunk[order]
        present = np.unique(sorted_chunks)
        bounds = np.searchsorted(sorted_chunks, np.append(present, present[-1] + 1))
        for k, c in enumerate(present):
            pos = order[bounds[k]:bounds[k + 1]]
            out[pos] = self._views[c][ids[pos] - c * self.chunk_rows]
        return out

    def close(self) -> None:
        """Unmap the chunk files (views handed out before become invalid)."""
        self._views.clear()
        for m in self._maps:
            try:
                m.close()
            except BufferError:  # a numpy view is still alive; the map goes with it
                pass
        self._maps.clear()
