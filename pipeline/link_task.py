"""Link prediction's loss and ranking metrics, on the scores of :class:`~diskgraph.link_models.LinkModel`.

The model's outputs for a minibatch are scores ``[P, 1 + K]``: column 0 each positive edge's score, columns 1..K
those of its K negatives (one negative per positive in training by default; the plan's fixed ``eval_negatives`` per
positive in evaluation). Losses (``--link-loss``):

* ``bce`` (default): binary cross-entropy with logits, positives labelled 1 and negatives 0, averaged over the
  positives' and the negatives' terms separately and summed (so K does not change the positives' weight);
* ``softmax``: cross-entropy of the positive against its negatives (the positive is class 0);
* ``margin``: ``max(0, 1 - s_pos + s_neg)`` averaged over every (positive, negative).

Metrics, per positive, from its rank among its negatives (ties count half: the mean of the optimistic and the
pessimistic rank, as OGB does): ``mrr`` (mean reciprocal rank, the main one) and ``hits@1``, ``hits@10``,
``hits@50`` (the fraction ranked within the first k). All are additive (sums over positives), so they are exact over
an epoch, a checkpoint and the ranks of a data-parallel run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..store.errors import InputError
from .tasks import SumMetric, Task

LINK_LOSSES = ("bce", "softmax", "margin")
HITS_AT = (1, 10, 50)


def ranks(scores: torch.Tensor) -> torch.Tensor:
    """Each positive's rank (1 = best) among its negatives: ``scores [P, 1 + K]`` → float64 ``[P]``."""
    pos = scores[:, :1]
    neg = scores[:, 1:]
    higher = (neg > pos).sum(1).double()
    ties = (neg == pos).sum(1).double()
    return 1.0 + higher + ties / 2.0


def _count(r: torch.Tensor) -> torch.Tensor:
    """The number of positives as a float64 0-d tensor where the ranks are (no copy from the host)."""
    return torch.full((), float(r.numel()), dtype=torch.float64, device=r.device)


class MRR(SumMetric):
    """Mean reciprocal rank of the positives among their negatives."""

    name = "mrr"

    def sums(self, out, y):
        r = ranks(out)
        return {"reciprocal_rank": (1.0 / r).sum(), "positives": _count(r)}

    def value(self, s):
        return s["reciprocal_rank"] / s["positives"] if s.get("positives") else float("nan")


class HitsAt(SumMetric):
    """Fraction of positives ranked within the first ``k``."""

    def __init__(self, k: int):
        self.k = int(k)
        self.name = f"hits@{self.k}"

    def sums(self, out, y):
        r = ranks(out)
        return {"hits": (r <= self.k).sum().double(), "positives": _count(r)}

    def value(self, s):
        return s["hits"] / s["positives"] if s.get("positives") else float("nan")


class LinkTask(Task):
    """Link prediction (see the module): ``loss(scores, y)`` and the ranking metrics.

    Args:
        dim: the embedding width (the encoder's output width).
        loss: ``bce``, ``softmax`` or ``margin``.
    """

    def __init__(self, dim: int, loss: str = "bce"):
        if loss not in LINK_LOSSES:
            raise InputError(f"--link-loss {loss!r} is not one of {', '.join(LINK_LOSSES)}")
        super().__init__("link", int(dim), None, [MRR()] + [HitsAt(k) for k in HITS_AT])
        self.loss_kind = loss

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        pos, neg = out[:, 0], out[:, 1:]
        if self.loss_kind == "softmax":
            return F.cross_entropy(out, torch.zeros(out.shape[0], dtype=torch.int64, device=out.device))
        if self.loss_kind == "margin":
            return F.relu(1.0 - pos.unsqueeze(1) + neg).mean()
        return (F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos))
                + F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg)))
