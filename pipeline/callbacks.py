"""Callbacks: your code at the training loop's hooks, with state that checkpoints keep.

The trainer (:class:`~diskgraph.pipeline.trainer.Trainer`, and :func:`diskgraph.fit`) calls each callback's hooks in
the order given:

- ``on_fit_start(trainer)`` — before the first epoch (also of a resumed run);
- ``on_batch_end(trainer, batch, loss)`` — after each training step (``loss``: the minibatch's mean loss, a detached
  0-d tensor on the compute device; ``float(loss)`` gives its value but, on a GPU, waits until the step has run, so
  the loop cannot queue the next step meanwhile — read it only when you need it, e.g. every N steps);
- ``on_epoch_end(trainer, record)`` — after each epoch's evaluation, with the epoch's record (the line
  ``metrics.jsonl`` gets: ``loss``, ``train_acc``, ``val_acc``, stage times, bytes read, …);
- ``on_fit_end(trainer, summary)`` — with the summary (the best-validation model's test metrics).

A callback may set ``trainer.stop_training = True`` (the run ends after this epoch's checkpoint) or call
``trainer.request_checkpoint()`` (a mid-epoch checkpoint after this minibatch). What ``state_dict()`` returns goes
into every checkpoint and comes back through ``load_state_dict`` on ``resume``, so a resumed run continues where an
uninterrupted one would be. In a data-parallel run every rank calls the hooks (``trainer.main`` is true on rank 0,
the one that writes files).
"""

from __future__ import annotations

import math
import os

from ..store.errors import InputError
from ..store.progress import log


class Callback:
    """Base class: every hook does nothing; override the ones you need (see the module)."""

    def on_fit_start(self, trainer) -> None:
        pass

    def on_batch_end(self, trainer, batch, loss) -> None:
        pass

    def on_epoch_end(self, trainer, record: dict) -> None:
        pass

    def on_fit_end(self, trainer, summary: dict) -> None:
        pass

    def state_dict(self) -> dict:
        """What a checkpoint keeps of this callback (JSON-like values)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class EarlyStopping(Callback):
    """Stop after ``patience`` epochs without improvement of ``monitor`` (``--early-stopping``).

    Args:
        monitor: a key of the epoch record: ``val_loss`` or ``val_`` + a metric (``val_acc``, ``val_micro_f1``,
            ``val_rmse``, …); None: the trainer's monitor (the task's main validation metric).
        patience: epochs without improvement before stopping (at least 1).
        mode: ``max``, ``min`` or None (``min`` for losses and metrics where lower is better, else ``max``).
        min_delta: the least change that counts as an improvement.

    The best model is kept as always (``best_model.pt``); the summary says ``stopped_early``.
    """

    def __init__(self, monitor: str | None = None, patience: int = 5, mode: str | None = None, min_delta: float = 0.0):
        if int(patience) < 1:
            raise InputError(f"early stopping's patience {patience} must be at least 1 epoch")
        if mode not in (None, "max", "min"):
            raise InputError(f"early stopping's mode {mode!r} must be max or min")
        self.monitor, self.patience, self.mode, self.min_delta = monitor, int(patience), mode, float(min_delta)
        self.best: float | None = None
        self.best_epoch = -1
        self.stale = 0
        self.stopped = False

    def on_fit_start(self, trainer) -> None:
        self.monitor = self.monitor or trainer.monitor
        trainer.check_monitor(self.monitor, "early stopping")
        if self.mode is None:
            self.mode = "max" if trainer.higher_is_better(self.monitor) else "min"

    def on_epoch_end(self, trainer, record: dict) -> None:
        value = record.get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        value = float(value)
        better = self.best is None or (value < self.best - self.min_delta if self.mode == "min"
                                       else value > self.best + self.min_delta)
        if better:
            self.best, self.best_epoch, self.stale = value, int(record["epoch"]), 0
            return
        self.stale += 1
        if self.stale >= self.patience and int(record["epoch"]) + 1 < trainer.config.epochs:
            self.stopped = True
            trainer.stop_training = True
            if trainer.main:
                log.info("early stopping after epoch %d: %s has not improved for %d epoch(s) (best %.4f at epoch %d)",
                         record["epoch"], self.monitor, self.stale, self.best, self.best_epoch)

    def state_dict(self) -> dict:
        return {"best": self.best, "epoch": self.best_epoch, "stale": self.stale, "stopped": self.stopped}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch = state.get("best"), int(state.get("epoch", -1))
        self.stale, self.stopped = int(state.get("stale", 0)), bool(state.get("stopped", False))


class Checkpoint(Callback):
    """A mid-epoch checkpoint every ``every`` training minibatches (epoch ends always checkpoint): a killed run
    loses at most that many steps."""

    def __init__(self, every: int):
        if int(every) < 1:
            raise InputError(f"Checkpoint(every={every}) must be at least 1 minibatch")
        self.every = int(every)

    def on_batch_end(self, trainer, batch, loss) -> None:
        if trainer.position % self.every == 0:
            trainer.request_checkpoint()


class TensorBoard(Callback):
    """Each epoch's record and the summary as TensorBoard scalars in ``logdir`` (``--tensorboard``; rank 0 only;
    :mod:`~diskgraph.pipeline.tensorboard_log`). Refused at once when the ``tensorboard`` package is missing."""

    def __init__(self, logdir: str | os.PathLike):
        from .tensorboard_log import require_tensorboard

        require_tensorboard()
        self.logdir = logdir
        self._log = None

    def on_fit_start(self, trainer) -> None:
        if trainer.main and self._log is None:
            from .tensorboard_log import TensorBoardLog

            self._log = TensorBoardLog(self.logdir)

    def on_epoch_end(self, trainer, record: dict) -> None:
        if self._log is not None:
            self._log.epoch(record)

    def on_fit_end(self, trainer, summary: dict) -> None:
        if self._log is not None:
            self._log.summary(summary)
            self._log.close()
            self._log = None


class LambdaCallback(Callback):
    """A callback from functions, e.g. a logger: ``LambdaCallback(on_epoch_end=lambda t, rec: wandb.log(rec))``."""

    def __init__(self, on_fit_start=None, on_batch_end=None, on_epoch_end=None, on_fit_end=None):
        for name, fn in (("on_fit_start", on_fit_start), ("on_batch_end", on_batch_end),
                         ("on_epoch_end", on_epoch_end), ("on_fit_end", on_fit_end)):
            if fn is not None:
                setattr(self, name, fn)
