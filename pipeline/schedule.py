"""Which presampled minibatches an epoch reads, and in what order.

Training replays the plan's K presampled epochs: epoch ``e < K`` reads presampled epoch ``e`` in plan order (its
minibatches were cut from that epoch's own shuffle of the seeds, so this is the order the in-memory reference
draws them in, and the two runs see the same sequence of minibatches); a replay, epoch ``e >= K``, reads presampled
epoch ``e % K`` with its minibatches in a fresh order drawn from ``(seed, e)`` (DiskGNN's replay). Evaluation reads
every minibatch of its split once, in plan order. The order is a pure function of its inputs, so a resumed run knows
exactly which minibatches are left.
"""

from __future__ import annotations

import numpy as np

from ..store.plan import Plan

_ORDER_STREAM = 0x5EED0DE5


def epoch_order(plan: Plan, split: str, epoch: int, seed: int) -> np.ndarray:
    """Plan rows (int64) that epoch ``epoch`` of ``split`` reads, in reading order."""
    per_epoch = plan.minibatches_per_epoch(split)
    if split != "train":
        return np.arange(plan.num_minibatches(split), dtype=np.int64)
    presampled = plan.num_epochs(split)
    base = (epoch % presampled) * per_epoch
    if epoch < presampled:
        return base + np.arange(per_epoch, dtype=np.int64)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _ORDER_STREAM, int(epoch)]))
    return base + rng.permutation(per_epoch).astype(np.int64)
