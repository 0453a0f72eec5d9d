"""Structure-only link scores: common neighbours and Adamic–Adar, the baselines a link-prediction GNN must beat.

For a pair ``(u, w)`` with neighbour sets ``N(u)``, ``N(w)`` (neighbours in either direction of the message-passing
graph — the stored topology, which lacks the val/test edges):

* common neighbours: ``|N(u) ∩ N(w)|``;
* Adamic–Adar: ``Σ_{z ∈ N(u) ∩ N(w)} 1 / log |N(z)|`` (a common neighbour has at least two neighbours).

:func:`plan_baselines` ranks each val/test positive of a link plan against the plan's own fixed negatives with these
scores, exactly as the trainer ranks the model's scores (:func:`~diskgraph.pipeline.link_task.ranks`: ties count
half), so the figures compare with a run's ``test_mrr`` and ``test_hits@K`` one for one.

>>> from diskgraph.link_baselines import plan_baselines
>>> plan_baselines("data/cora-link")["adamic_adar"]["mrr"]          # doctest: +SKIP

The neighbour lists are built in memory (int64, both directions: about 16 bytes per stored edge): a tool for graphs
that fit, not for the out-of-core scale.
"""

from __future__ import annotations

import os
from pathlib import Path

import numba
import numpy as np

BASELINES = ("common_neighbours", "adamic_adar")


def neighbour_lists(indptr: np.ndarray, indices: np.ndarray, num_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """The sorted, distinct neighbours of every node in either direction (self loops dropped), as a CSR:
    ``(ptr int64 [N + 1], nbr int64 [nnz])``, from the CSC over in-edges ``indptr``/``indices``."""
    indptr = np.asarray(indptr, dtype=np.int64)
    src = np.asarray(indices, dtype=np.int64)
    dst = np.repeat(np.arange(num_nodes, dtype=np.int64), np.diff(indptr))
    a = np.concatenate([src, dst])
    b = np.concatenate([dst, src])
    keep = a != b
    keys = np.unique(a[keep] * np.int64(num_nodes) + b[keep])
    rows, nbr = np.divmod(keys, np.int64(num_nodes))
    ptr = np.zeros(num_nodes + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=num_nodes), out=ptr[1:])
    return ptr, nbr


@numba.njit(cache=True, nogil=True)
def _pair_scores(ptr, nbr, weight, u, w, out):  # pragma: no cover  (compiled; tested through pair_scores)
    for i in range(u.shape[0]):
        a, a_end = ptr[u[i]], ptr[u[i] + 1]
        b, b_end = ptr[w[i]], ptr[w[i] + 1]
        s = 0.0
        while a < a_end and b < b_end:  # merge of two sorted lists
            x, y = nbr[a], nbr[b]
            if x == y:
                s += weight[x]
                a += 1
                b += 1
            elif x < y:
                a += 1
            else:
                b += 1
        out[i] = s


def pair_scores(ptr: np.ndarray, nbr: np.ndarray, u: np.ndarray, w: np.ndarray, kind: str) -> np.ndarray:
    """float64 ``[P]``: the ``kind`` score (``common_neighbours`` or ``adamic_adar``) of each pair ``(u[i], w[i])``
    over the neighbour lists of :func:`neighbour_lists`."""
    if kind not in BASELINES:
        raise ValueError(f"unknown structure score {kind!r}; choose one of {', '.join(BASELINES)}")
    deg = np.diff(ptr).astype(np.float64)
    if kind == "common_neighbours":
        weight = np.ones(len(deg))
    else:
        weight = np.where(deg > 1, 1.0 / np.log(np.maximum(deg, 2.0)), 0.0)
    u = np.ascontiguousarray(u, dtype=np.int64).ravel()
    w = np.ascontiguousarray(w, dtype=np.int64).ravel()
    out = np.empty(len(u), dtype=np.float64)
    _pair_scores(ptr, nbr, weight, u, w, out)
    return out


def plan_baselines(dataset: str | os.PathLike, plan: str = "default", split: str = "test") -> dict:
    """Common neighbours' and Adamic–Adar's ``mrr`` and ``hits@K`` on the positives and fixed negatives of
    ``split`` (``val`` or ``test``) of the link plan ``DATASET/plans/PLAN``: ``{name: {"mrr": float, "hits@1": …}}``.

    Raises:
        InputError: the dataset or plan does not open, the plan is not a link plan, or lacks ``split``.
    """
    import torch

    from .pipeline.link_task import HITS_AT, ranks
    from .store.dataset import open_dataset
    from .store.errors import InputError
    from .store.plan import open_plan

    ds = open_dataset(dataset)
    p = open_plan(Path(dataset) / "plans" / plan)
    if p.task != "link":
        raise InputError(f"plan {p.path} was sampled for --task {p.task}; structure scores rank the positives of a "
                         "link plan (preprocess sample --task link)")
    if split not in p.splits:
        raise InputError(f"plan {p.path} has no {split!r} split (it has {', '.join(p.splits)})")
    ptr, nbr = neighbour_lists(ds.indptr, ds.indices, ds.num_nodes)
    cols = {k: [] for k in BASELINES}
    for i in range(p.num_minibatches(split)):
        mb = p.minibatch(split, i)
        seeds = mb.seeds
        cand = np.concatenate([seeds[mb.link.dst][:, None], seeds[mb.link.neg]], axis=1)  # [P, 1 + K]
        u = np.repeat(seeds[mb.link.src], cand.shape[1])
        for k in BASELINES:
            cols[k].append(pair_scores(ptr, nbr, u, cand, k).reshape(cand.shape))
    out = {}
    for k in BASELINES:
        r = ranks(torch.from_numpy(np.concatenate(cols[k])))
        out[k] = {"mrr": float((1.0 / r).mean()), **{f"hits@{h}": float((r <= h).double().mean()) for h in HITS_AT}}
    return out


__all__ = ["BASELINES", "neighbour_lists", "pair_scores", "plan_baselines"]
