"""Per-epoch training metrics as TensorBoard scalars (``diskgraph train --tensorboard DIR``).

The trainer hands each epoch's record (the object it appends to ``metrics.jsonl``) to :meth:`TensorBoardLog.epoch`,
which writes it with :class:`torch.utils.tensorboard.SummaryWriter`, one step per epoch (the step is the epoch
number, from 0, as in ``metrics.jsonl``), and the run's summary to :meth:`TensorBoardLog.summary`. Only rank 0
of a data-parallel run makes one. Scalars (tags):

- ``loss/train``, ``loss/val``, ``loss/test`` and ``METRIC/SPLIT`` for each metric of the task
  (:mod:`~diskgraph.pipeline.tasks`): ``accuracy/train``, ``accuracy/val``, ``auc/val`` (two classes) for
  classification, ``micro_f1/…`` and ``auc/…`` for multilabel, ``rmse/…`` and ``mae/…`` for regression, and your own
  metrics' names — val and test when they were evaluated that epoch;
- ``time/epoch_s``, ``time/eval_s``, ``time/io_s``, ``time/verify_s`` and ``stage_s/read``, ``stage_s/assemble``,
  ``stage_s/compute`` (``stage_s/sample`` for the in-memory reference), ``pipeline/overlap`` (epoch ÷ slowest
  stage);
- ``io/read_bytes``, ``io/eval_read_bytes``, ``io/read_amplification``;
- ``hit_rate/gpu``, ``hit_rate/host``, ``hit_rate/cold`` (the tiers as ``metrics.jsonl`` names them: on a CPU run
  the "gpu" tier is the device's RAM);
- ``memory/peak_rss_bytes``, ``memory/peak_gpu_bytes``;
- from the summary, at the best epoch's step: ``summary/test_METRIC``, ``summary/val_METRIC`` and
  ``summary/best_MONITOR`` (``summary/test_acc``, ``summary/best_val_acc``, … for classification).

A figure the record does not hold (no validation split, no cold rows, no GPU) is left out rather than written as 0.

``tensorboard`` is an optional extra (``pip install "diskgraph[tensorboard]"``); :func:`require_tensorboard`
refuses a run that asks for it without it before training starts.
"""

from __future__ import annotations

import math
import os
import re

from ..store.errors import InputError

INSTALL_HINT = 'pip install "diskgraph[tensorboard]"'
_SPLIT_METRIC = re.compile(r"^(train|val|test)_(\w+)$")
_TAG = {"acc": "accuracy"}
"""Metric names whose TensorBoard tag is spelled out."""


def _summary_writer_class():
    """:class:`torch.utils.tensorboard.SummaryWriter`, or InputError when the ``tensorboard`` package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise InputError(f"--tensorboard needs the tensorboard package, which is not installed; install it with "
                         f"`{INSTALL_HINT}` or drop --tensorboard") from None
    return SummaryWriter


def require_tensorboard() -> None:
    """Refuse (InputError, one sentence naming the install command) when TensorBoard event files cannot be written."""
    _summary_writer_class()


def _number(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def epoch_scalars(rec: dict) -> dict[str, float]:
    """The TensorBoard tags and values of one epoch record of ``metrics.jsonl`` (see the module's list)."""
    pairs = [("loss/train", rec.get("loss"))]
    for key, value in rec.items():
        m = _SPLIT_METRIC.match(key)
        if m:
            pairs.append((f"{_TAG.get(m[2], m[2])}/{m[1]}", value))
    pairs += [(f"time/{k}", rec.get(k)) for k in ("epoch_s", "eval_s", "io_s", "verify_s")]
    pairs += [(f"stage_s/{stage.removesuffix('_s')}", s) for stage, s in (rec.get("stage_s") or {}).items()]
    pairs.append(("pipeline/overlap", rec.get("overlap")))
    pairs += [(f"io/{k}", rec.get(k)) for k in ("read_bytes", "eval_read_bytes", "read_amplification")]
    pairs += [(f"hit_rate/{tier}", v) for tier, v in (rec.get("hit_rate") or {}).items()]
    pairs += [(f"memory/{k}", rec.get(k)) for k in ("peak_rss_bytes", "peak_gpu_bytes")]
    return {tag: v for tag, v in ((tag, _number(v)) for tag, v in pairs) if v is not None}


def summary_scalars(summary: dict) -> dict[str, float]:
    """The TensorBoard tags and values of the run's summary (the last line of ``metrics.jsonl``)."""
    pairs = [(f"summary/{k}", v) for k, v in summary.items()
             if (k.startswith(("test_", "val_", "best_")) and not k.endswith("_loss")) and k != "best_epoch"]
    return {tag: v for tag, v in ((tag, _number(v)) for tag, v in pairs) if v is not None}


class TensorBoardLog:
    """Writes epoch records and the summary as TensorBoard scalars into ``logdir`` (created when missing).

    A resumed run writes a new event file beside the earlier ones; TensorBoard shows them as one run.
    """

    def __init__(self, logdir: str | os.PathLike):
        self.logdir = str(logdir)
        self.writer = _summary_writer_class()(log_dir=self.logdir)

    def epoch(self, rec: dict) -> None:
        """Write one epoch's record at step ``rec["epoch"]`` and flush (a killed run keeps the epochs it logged)."""
        step = int(rec["epoch"])
        for tag, value in epoch_scalars(rec).items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def summary(self, summary: dict) -> None:
        """Write the summary's figures (the best-validation model's test accuracy) at the best epoch's step."""
        step = max(int(summary.get("best_epoch") or 0), 0)
        for tag, value in summary_scalars(summary).items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
