"""What a run learns: the loss and the metrics of each kind of node label.

A :class:`Task` turns a model's outputs for a minibatch's seeds (``out``: float ``[B, num_outputs]``) and the seeds'
targets (``y``, as :meth:`diskgraph.store.dataset.Dataset.targets` gives them) into a loss, and names the metrics
the trainer logs:

============== ========================= ======================== ===================================================
kind           targets ``y``             loss                     metrics (``train_``/``val_``/``test_`` + name)
============== ========================= ======================== ===================================================
classification int64 ``[B]`` class ids    cross-entropy            ``acc`` (main); ``auc`` with two classes
multilabel     float32 ``[B, C]`` of 0/1  BCE with logits          ``micro_f1`` (main; logit > 0 is a positive),
                                                                   ``auc`` (micro: over every node-label pair)
regression     float32 ``[B]``/``[B, T]`` mean squared error       ``rmse`` (main), ``mae`` (over every target value)
============== ========================= ======================== ===================================================

Class weights (``--class-weights``): per class for classification (cross-entropy's ``weight``), per label for
multilabel (BCE's ``pos_weight``: how much a positive counts against a negative); ``balanced`` derives them from the
training split's labels (:func:`balanced_weights`).

A metric is either *additive* (:class:`SumMetric`: per-minibatch sums, e.g. correct and total, added up — exact over
an epoch, across a checkpoint and across the ranks of a data-parallel run; also computed on training minibatches) or
*whole* (:class:`WholeMetric`: a function of all of a split's outputs and targets at once, e.g. ROC-AUC; evaluation
only, it keeps the split's outputs in memory). Your own metrics for :func:`diskgraph.fit` are either kind; a plain
function ``fn(out, y) -> float`` is taken as a whole metric where higher is better.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..store.errors import InputError
from ..store.label_kinds import TASKS
from .metrics import roc_auc


class SumMetric:
    """A metric computed from sums over minibatches.

    Subclasses give :meth:`sums` (a dict of 0-d tensors for one minibatch, on the outputs' device; the trainer adds
    them up on that device and reads them once per epoch) and :meth:`value` (the metric from the added sums, as
    floats). ``name`` is the key suffix in the logs; ``higher_is_better`` its direction.

    :meth:`sums` should not read a value on the host (``float(t)``, ``t.item()``, ``bool(t)``, indexing with a boolean
    mask): on a GPU that waits for the training step to finish. A number instead of a tensor is accepted (it is added
    as it is).
    """

    name: str = ""
    higher_is_better: bool = True

    def sums(self, out: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def value(self, sums: dict[str, float]) -> float:
        raise NotImplementedError


class WholeMetric:
    """A metric of a whole split: ``fn(out, y) -> float`` on the concatenated outputs ``[n, num_outputs]`` (float32,
    CPU) and targets of every seed of the split (evaluation only).

    Args:
        name: the key suffix in the logs (``val_NAME``).
        fn: the metric.
        higher_is_better: its direction (for choosing the best model and early stopping).
    """

    def __init__(self, name: str, fn: Callable[[torch.Tensor, torch.Tensor], float], higher_is_better: bool = True):
        self.name, self.fn, self.higher_is_better = str(name), fn, bool(higher_is_better)

    def value_of(self, out: torch.Tensor, y: torch.Tensor) -> float:
        return float(self.fn(out, y))


class Accuracy(SumMetric):
    """Fraction of seeds whose largest logit is their class (classification)."""

    name = "acc"

    def sums(self, out, y):
        known = y >= 0  # -1: an unlabelled seed
        return {"correct": ((out.argmax(dim=1) == y) & known).sum(), "total": known.sum()}

    def value(self, s):
        return s["correct"] / s["total"] if s.get("total") else float("nan")


class MicroF1(SumMetric):
    """Micro-averaged F1 over every (node, label) pair; a logit above 0 is a predicted positive (multilabel)."""

    name = "micro_f1"

    def sums(self, out, y):
        pred, true = out > 0, y > 0.5
        return {"tp": (pred & true).sum(), "fp": (pred & ~true).sum(), "fn": (~pred & true).sum()}

    def value(self, s):
        denom = 2 * s.get("tp", 0.0) + s.get("fp", 0.0) + s.get("fn", 0.0)
        return 2 * s["tp"] / denom if denom else float("nan")


def _as_targets(out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(out, y, known)``: ``out`` shaped as ``y`` (a ``[B]`` target against ``[B, 1]`` outputs), and both set to 0
    where the target is unknown (NaN: an unlabelled seed; ``known`` is False there). Masking, not indexing: no wait
    on the device for the number of labelled seeds."""
    out = out[:, 0] if y.dim() == 1 and out.dim() == 2 else out
    known = ~torch.isnan(y)
    zero = torch.zeros((), dtype=out.dtype, device=out.device)
    return torch.where(known, out, zero), torch.where(known, y, zero.to(y.dtype)), known


def _mse_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the known targets: the mean over all (unknown ones are 0 - 0) scaled by
    ``all / known`` — exactly 1, so exactly ``F.mse_loss`` (and its gradient), when every target is known."""
    out, y, known = _as_targets(out, y)
    loss = F.mse_loss(out, y)
    return loss * (known.numel() / known.sum()).to(loss.dtype)


class RMSE(SumMetric):
    """Root mean squared error over every target value (regression)."""

    name = "rmse"
    higher_is_better = False

    def sums(self, out, y):
        out, y, known = _as_targets(out, y)
        d = out.double() - y.double()
        return {"squared_error": (d * d).sum(), "values": known.sum()}

    def value(self, s):
        return float(np.sqrt(s["squared_error"] / s["values"])) if s.get("values") else float("nan")


class MAE(SumMetric):
    """Mean absolute error over every target value (regression)."""

    name = "mae"
    higher_is_better = False

    def sums(self, out, y):
        out, y, known = _as_targets(out, y)
        return {"absolute_error": (out.double() - y.double()).abs().sum(), "values": known.sum()}

    def value(self, s):
        return s["absolute_error"] / s["values"] if s.get("values") else float("nan")


def _binary_auc(out: torch.Tensor, y: torch.Tensor) -> float:
    known = y >= 0
    return roc_auc(torch.softmax(out[known].double(), 1)[:, 1].numpy(), y[known].numpy())


def _micro_auc(out: torch.Tensor, y: torch.Tensor) -> float:
    return roc_auc(out.double().reshape(-1).numpy(), (y.reshape(-1) > 0.5).numpy())


@dataclass
class Task:
    """The loss and metrics of one kind of label (see the module).

    Attributes:
        kind: one of :data:`~diskgraph.store.label_kinds.TASKS`.
        num_outputs: the model's output width (classes, labels or targets).
        weights: class weights (classification) or positive weights (multilabel), float32 ``[num_outputs]``, or None.
        metrics: what the logs report, the main one first (it chooses the best model).
    """

    kind: str
    num_outputs: int
    weights: torch.Tensor | None = None
    metrics: Sequence[SumMetric | WholeMetric] = ()

    @property
    def main(self) -> SumMetric | WholeMetric:
        """The metric that chooses the best model and that early stopping watches by default."""
        return self.metrics[0]

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The mean loss over the labelled seeds (a 0-d tensor); unlabelled seeds (class -1, NaN targets) are left
        out."""
        w = None if self.weights is None else self.weights.to(out.device)
        if self.kind == "classification":
            return F.cross_entropy(out, y, weight=w, ignore_index=-1)
        if self.kind == "multilabel":
            return F.binary_cross_entropy_with_logits(out, y, pos_weight=w)
        return _mse_loss(out, y)

    def metric(self, name: str) -> SumMetric | WholeMetric | None:
        return next((m for m in self.metrics if m.name == name), None)


def build_task(kind: str, num_outputs: int, weights: Sequence[float] | np.ndarray | None = None) -> Task:
    """The :class:`Task` of labels of ``kind`` with ``num_outputs`` classes / labels / targets.

    Raises:
        InputError: an unknown kind, or weights of the wrong length, negative, or given for regression.
    """
    if kind not in TASKS:
        raise InputError(f"task {kind!r} is not one of {', '.join(TASKS)}")
    w = None
    if weights is not None:
        if kind == "regression":
            raise InputError("--class-weights applies to classification and multilabel datasets; this one holds "
                             "regression targets: drop --class-weights")
        w = torch.as_tensor(np.asarray(weights, dtype=np.float32))
        if w.dim() != 1 or w.shape[0] != num_outputs:
            what = "classes" if kind == "classification" else "labels"
            raise InputError(f"--class-weights gives {w.numel()} weights but the dataset has {num_outputs} {what}; "
                             f"give one weight per {what[:-1]}, or balanced")
        if not torch.isfinite(w).all() or (w < 0).any() or not (w > 0).any():
            raise InputError("--class-weights must be finite, non-negative and not all 0")
    if kind == "classification":
        metrics = [Accuracy()] + ([WholeMetric("auc", _binary_auc)] if num_outputs == 2 else [])
    elif kind == "multilabel":
        metrics = [MicroF1(), WholeMetric("auc", _micro_auc)]
    else:
        metrics = [RMSE(), MAE()]
    return Task(kind, int(num_outputs), w, metrics)


def balanced_weights(kind: str, targets: np.ndarray, num_outputs: int) -> np.ndarray:
    """``--class-weights balanced`` from the training targets: ``n / (C · count_c)`` per class (scikit-learn's
    "balanced"; a class absent from the split gets 0), or ``negatives / positives`` per label for multilabel (1 for a
    label with no positive or no negative). float32 ``[num_outputs]``."""
    if kind == "classification":
        y = np.asarray(targets, dtype=np.int64)
        y = y[y >= 0]
        counts = np.bincount(y, minlength=num_outputs).astype(np.float64)
        with np.errstate(divide="ignore"):
            w = np.where(counts > 0, y.size / (num_outputs * counts), 0.0)
        return w.astype(np.float32)
    if kind == "multilabel":
        y = np.asarray(targets) > 0.5
        pos = y.sum(axis=0).astype(np.float64)
        neg = y.shape[0] - pos
        return np.where((pos > 0) & (neg > 0), neg / np.maximum(pos, 1), 1.0).astype(np.float32)
    raise InputError("--class-weights applies to classification and multilabel datasets; this one holds regression "
                     "targets: drop --class-weights")


def parse_class_weights(spec: str | None) -> str | list[float] | None:
    """``--class-weights``: None, ``balanced``, or comma-separated numbers (one per class / label).

    Raises:
        InputError: anything else.
    """
    if spec is None or spec == "":
        return None
    if isinstance(spec, (list, tuple)):
        return [float(v) for v in spec]
    if spec == "balanced":
        return "balanced"
    try:
        return [float(v) for v in str(spec).split(",")]
    except ValueError:
        raise InputError(f"--class-weights {spec!r} is not understood; write balanced or one number per class, e.g. "
                         "1,2.5,1") from None


def as_metrics(metrics) -> list[SumMetric | WholeMetric]:
    """A user's metrics for :func:`diskgraph.fit`: a dict ``{name: fn(out, y) -> float}`` (whole metrics, higher is
    better) or a sequence of :class:`SumMetric` / :class:`WholeMetric` objects.

    Raises:
        InputError: something else.
    """
    if metrics is None:
        return []
    if isinstance(metrics, dict):
        items = [WholeMetric(name, fn) if callable(fn) and not isinstance(fn, (SumMetric, WholeMetric)) else fn
                 for name, fn in metrics.items()]
    else:
        items = list(metrics)
    for m in items:
        if not isinstance(m, (SumMetric, WholeMetric)) or not m.name:
            raise InputError(f"metric {m!r} is neither a function nor a SumMetric / WholeMetric with a name; pass "
                             "{name: fn(out, y) -> float} or metric objects")
    return items
