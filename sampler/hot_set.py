"""Hot-set selection: which feature rows live in the GPU and pinned-host caches.

A plan's access counts say how often every node is read. The most-read rows go
to the GPU tier, the next ones to the pinned-host tier, and everything else is
packed per minibatch on disk (:mod:`diskgraph.store.packer`).

>>> score = expected_reads_per_epoch(plan)
>>> tiers = select_hot_sets(score, row_bytes=512, gpu_bytes=1 << 30, host_bytes=8 << 30)
>>> tiers["gpu"], tiers["host"]          # sorted int64 global node ids
"""

from __future__ import annotations

import numpy as np

from ..store.errors import InputError

SCORE_NAME = "expected_reads_per_epoch"
"""Name recorded in a pack's manifest for the score :func:`expected_reads_per_epoch` computes."""


def expected_reads_per_epoch(plan, splits: list[str] | None = None) -> np.ndarray:
    """float64 [N]: how many minibatches read each node in one epoch of training plus one evaluation pass.

    ``train counts / train epochs`` (the plan presamples several training
    epochs; one of them is replayed per epoch) ``+ val counts + test counts``.

    Args:
        plan: an opened plan (:func:`diskgraph.store.plan.open_plan`).
        splits: the splits to count (default: all of the plan's).
    """
    score = np.zeros(plan.num_nodes, dtype=np.float64)
    for split in splits if splits is not None else plan.splits:
        counts = np.asarray(plan.counts(split))
        epochs = max(1, plan.num_epochs(split))
        if epochs == 1:
            score += counts
        else:
            score += counts / epochs
    return score


def _top(score: np.ndarray, k: int) -> np.ndarray:
    """Ids of the ``k`` highest positive scores, best first (ties: lower id first)."""
    cand = np.flatnonzero(score > 0)
    if k <= 0 or cand.size == 0:
        return np.zeros(0, dtype=np.int64)
    s = score[cand]
    if k < cand.size:
        # keep everything strictly above the k-th largest score, then fill with the lowest ids tied at it
        kth = np.partition(s, cand.size - k)[cand.size - k]
        above = s > kth
        tied = np.flatnonzero(s == kth)[: k - int(above.sum())]
        keep = np.sort(np.concatenate([np.flatnonzero(above), tied]))
        cand, s = cand[keep], s[keep]
    key = -s.astype(np.float64) if s.dtype.kind == "f" else -s.astype(np.int64)
    order = np.argsort(key, kind="stable")  # stable: equal scores keep ascending ids
    return cand[order].astype(np.int64)


def select_hot_sets(score: np.ndarray, row_bytes: int, gpu_bytes: int, host_bytes: int) -> dict[str, np.ndarray]:
    """Pick the GPU and host tiers by score.

    Nodes are ranked by ``score`` descending (ties: lower id first); only nodes
    with ``score > 0`` are eligible. The first ``gpu_bytes // row_bytes`` go to
    the GPU tier, the next ``host_bytes // row_bytes`` to the host tier.

    Args:
        score: [N] float or integer scores (e.g. :func:`expected_reads_per_epoch`).
        row_bytes: bytes per feature row.
        gpu_bytes, host_bytes: tier capacities in bytes.

    Returns:
        ``{"gpu": ids, "host": ids}``, each sorted ascending, int64, disjoint.

    Raises:
        InputError: a negative capacity, a non-positive row size, or NaN scores.
    """
    score = np.asarray(score)
    if score.ndim != 1 or score.dtype.kind not in "iuf":
        raise InputError(f"hot-set scores must be a 1-D numeric array, got shape {score.shape} dtype {score.dtype}")
    if gpu_bytes < 0 or host_bytes < 0:
        raise InputError(f"cache sizes must not be negative (gpu {gpu_bytes}, host {host_bytes} bytes); pass 0 for no cache")
    if row_bytes <= 0:
        raise InputError(f"row_bytes {row_bytes} must be positive")
    if score.dtype.kind == "f" and np.isnan(score).any():
        raise InputError("hot-set scores contain NaN; compute them from the plan's counts")
    n_gpu = int(gpu_bytes) // int(row_bytes)
    n_host = int(host_bytes) // int(row_bytes)
    ranked = _top(score, n_gpu + n_host)
    return {"gpu": np.sort(ranked[:n_gpu]), "host": np.sort(ranked[n_gpu:n_gpu + n_host])}


def hot_sets_for_plan(plan, row_bytes: int, gpu_bytes: int, host_bytes: int) -> dict[str, np.ndarray]:
    """:func:`select_hot_sets` over :func:`expected_reads_per_epoch` of ``plan``."""
    return select_hot_sets(expected_reads_per_epoch(plan), row_bytes, gpu_bytes, host_bytes)
