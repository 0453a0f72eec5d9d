"""The minibatch primitives shared by node and link sampling: the random key of a minibatch, one minibatch's
sampled neighborhood, and an epoch's shuffle (re-exported by :mod:`diskgraph.sampler.neighbor_sampler`)."""

from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np

from ..native import sampling as _kernels
from ..store.errors import InputError
from ..store.plan import SampledMinibatch


def minibatch_key(seed: int, split: str, epoch: int, batch: int) -> np.uint64:
    """The random key of minibatch ``batch`` of ``epoch`` of ``split`` in a plan sampled with ``seed``."""
    return np.uint64(_kernels.derive_key(seed & ((1 << 64) - 1), zlib.crc32(split.encode()), epoch, batch))


def sample_minibatch(indptr: np.ndarray, indices: np.ndarray, seeds: np.ndarray, fanouts: Sequence[int],
                     key: int | np.uint64, *, epoch: int = 0, batch: int = 0) -> SampledMinibatch:
    """Sample the ``len(fanouts)``-hop neighborhood of ``seeds`` (distinct node ids) with random key ``key``.

    ``indptr``/``indices`` are the CSC over in-edges (memory maps are fine);
    ``fanouts`` are in hop order (``fanouts[0]`` for the seeds), -1 = all
    neighbors. Releases the GIL while it samples.

    Raises:
        InputError: a hop would exceed 2**31 - 1 sampled edges (int32 local ids).
    """
    seeds = np.ascontiguousarray(seeds, dtype=np.int64)
    fan = np.ascontiguousarray(fanouts, dtype=np.int64)
    status, nodes, sizes, ptr_flat, idx_flat = _kernels.sample_minibatch(
        np.asarray(indptr), np.asarray(indices), seeds, fan, np.uint64(key))
    if status:
        raise InputError(f"a minibatch of {len(seeds)} seeds samples more than 2**31 - 1 edges in one hop with "
                         f"fanouts {list(fanouts)}; lower --batch-size or --fanouts")
    hop_ptr, hop_idx = [], []
    a = b = 0
    for h in range(len(fan)):
        n = int(sizes[h]) + 1
        ptr = ptr_flat[a:a + n]
        a += n
        e = int(ptr[-1])
        hop_ptr.append(ptr)
        hop_idx.append(idx_flat[b:b + e])
        b += e
    return SampledMinibatch(epoch=epoch, batch=batch, input_nodes=nodes, layer_sizes=sizes,
                            hop_indptr=hop_ptr, hop_indices=hop_idx)


def epoch_order(train: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """The train seeds of ``epoch`` in their shuffled order (a permutation drawn from ``(seed, epoch)``)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed & ((1 << 64) - 1), epoch]))
    return np.asarray(train, dtype=np.int64)[rng.permutation(len(train))]
