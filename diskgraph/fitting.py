"""Train your own ``torch.nn.Module`` with diskgraph's training loop: :func:`fit` and :class:`Trainer`.

>>> train = diskgraph.PackedLoader("data/cora", "train", seed=0)
>>> val = diskgraph.PackedLoader("data/cora", "val")
>>> summary = diskgraph.fit(model, train, val, run_dir="runs/mine", epochs=10,
...                         optimizer=torch.optim.AdamW(model.parameters(), lr=0.01),
...                         callbacks=[diskgraph.callbacks.EarlyStopping(patience=3)])

It is the loop ``diskgraph train`` runs (:class:`diskgraph.pipeline.trainer.Trainer`), with the parts you bring:
the loaders' read and assemble stages run ahead of your model in their own threads; every epoch is evaluated and
logged to ``RUN_DIR/metrics.jsonl``; the best model (by ``monitor``) is saved to ``RUN_DIR/best_model.pt``;
checkpoints (``RUN_DIR/checkpoint.pt``, at epoch ends and every ``checkpoint_every`` minibatches) hold the model,
optimizer, scheduler, callbacks, RNG states and the position in the epoch, so ``resume=True`` continues mid-epoch and
ends with the model an uninterrupted run would have. The summary (returned, and the last line of the log) holds the
best model's test metrics.

How your model is called: a class with ``diskgraph_input = "blocks"`` as ``model(batch.blocks, batch.x)``; any other
module as a PyG model on ``batch.to_pyg()`` (``model(x, edge_index)``, with the per-hop sizes when ``forward`` takes
``num_sampled_nodes_per_hop``), its first ``batch_size`` rows being the seeds'.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

import torch

from .store.errors import InputError


def _describe(loader) -> dict:
    """What a run records of a loader (a resume with another one is refused)."""
    from .store.binding import artifact_identity

    inner = loader._inner
    pack = getattr(inner, "pack", None)
    return {"kind": type(loader).__name__, "split": loader.split, "fanouts": list(loader.fanouts),
            "batch_size": int(loader.batch_size), "seed": int(loader.seed),
            "pack": artifact_identity(pack) if pack is not None else None}


class Trainer:
    """diskgraph's training loop around your model, optimizer, loss, metrics and callbacks.

    Args:
        model: a ``torch.nn.Module`` (moved to the train loader's device) whose outputs for the seeds are
            ``[batch_size, num_outputs]``: logits (classification, multilabel) or values (regression).
        train: a :class:`diskgraph.PackedLoader` or :class:`diskgraph.InMemoryLoader` over the train split.
        val, test: loaders over the val and test splits (same dataset), or None. Without val the best model is
            chosen on a training metric.
        run_dir: where checkpoints, ``best_model.pt`` and ``metrics.jsonl`` go (created).
        epochs: training epochs.
        optimizer: a ``torch.optim.Optimizer`` over the model's parameters (default: Adam with ``lr`` and
            ``weight_decay``).
        lr, weight_decay: of the default optimizer.
        scheduler: a learning-rate scheduler, stepped once at each epoch's end (with your optimizer only).
        loss: ``loss(out, y) -> 0-d tensor``, the seeds' mean loss (default: the dataset's task: cross-entropy,
            BCE with logits or MSE; :mod:`diskgraph.pipeline.tasks`).
        metrics: more metrics, ``{name: fn(out, y) -> float}`` (evaluated on the whole of val and test; higher is
            better) or :class:`~diskgraph.pipeline.tasks.SumMetric` / ``WholeMetric`` objects; logged as
            ``val_NAME`` and ``test_NAME``.
        callbacks: :mod:`diskgraph.callbacks` objects (``EarlyStopping``, ``Checkpoint``, ``TensorBoard``,
            ``LambdaCallback`` or your own ``Callback``).
        monitor: the epoch-record key that chooses the best model (default ``val_`` + the task's main metric:
            ``val_acc``, ``val_micro_f1`` or ``val_rmse``).
        class_weights: ``balanced`` or one weight per class / label, for the default loss.
        seed: seeds dropout (default: the train loader's seed).
        log_json: also write the per-epoch lines here.
        checkpoint_every: minibatches between mid-epoch checkpoints (0: epoch ends only).
        eval_test_every_epoch: evaluate test every epoch too (the summary always does, with the best model).
        step_log: append one JSON line per training minibatch to this file.

    Raises:
        InputError: loaders of different datasets, a monitor this task cannot watch, bad weights.
    """

    def __init__(self, model: torch.nn.Module, train, val=None, test=None, *, run_dir: str | os.PathLike,
                 epochs: int = 10, optimizer: torch.optim.Optimizer | None = None, lr: float = 0.003,
                 weight_decay: float = 0.0, scheduler=None, loss: Callable | None = None, metrics=None,
                 callbacks: Sequence = (), monitor: str | None = None, class_weights=None, seed: int | None = None,
                 log_json: str | os.PathLike | None = None, checkpoint_every: int = 0,
                 eval_test_every_epoch: bool = False, step_log: str | os.PathLike | None = None):
        from .pipeline.tasks import as_metrics
        from .pipeline.trainer import Trainer as _Trainer, TrainConfig
        from .store.binding import dataset_identity
        from .train import dataset_task

        if not isinstance(model, torch.nn.Module):
            raise InputError(f"model {type(model).__name__} is not a torch.nn.Module; pass your module")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise InputError(f"epochs {epochs!r} must be a whole number of at least 1")
        if scheduler is not None and optimizer is None:
            raise InputError("a scheduler needs the optimizer it schedules; pass optimizer= too")
        loaders = {name: ld for name, ld in (("train", train), ("val", val), ("test", test)) if ld is not None}
        for name, ld in loaders.items():
            if not hasattr(ld, "_inner") or not hasattr(ld, "order"):
                raise InputError(f"{name}= is a {type(ld).__name__}, not a diskgraph.PackedLoader or InMemoryLoader; "
                                 "build it with one of them")
        ds = train.dataset
        ident = dataset_identity(ds)
        for name, ld in loaders.items():
            if dataset_identity(ld.dataset) != ident:
                raise InputError(f"the {name} loader reads dataset {ld.dataset.path}, the train loader {ds.path}; "
                                 "give loaders of one dataset")
        self.task = dataset_task(ds, class_weights)
        self.device = train.device
        model.to(self.device)
        seed = int(train.seed if seed is None else seed)
        config = TrainConfig(epochs=epochs, lr=float(optimizer.param_groups[0]["lr"]) if optimizer else float(lr),
                             weight_decay=float(weight_decay), seed=seed, checkpoint_every=int(checkpoint_every),
                             eval_test_every_epoch=bool(eval_test_every_epoch),
                             optimizer=type(optimizer).__name__ if optimizer is not None else "adam")
        identity = {"dataset": ident, "model": f"{type(model).__module__}.{type(model).__qualname__}",
                    "parameters": {k: list(v.shape) for k, v in model.state_dict().items()},
                    "loaders": {name: _describe(ld) for name, ld in loaders.items()},
                    "loss": getattr(loss, "__qualname__", type(loss).__name__) if loss is not None else None,
                    "--class-weights": class_weights if isinstance(class_weights, (str, type(None)))
                    else [float(w) for w in class_weights]}
        info = {"dataset": str(ds.path), "task": self.task.kind, "model": identity["model"],
                "mode": "packed" if type(train).__name__ == "PackedLoader" else "reference",
                "device": str(self.device), "fanouts": list(train.fanouts), "batch_size": int(train.batch_size)}
        self.loaders = loaders
        self._trainer = _Trainer(
            model, {name: ld._inner for name, ld in loaders.items()},
            order=lambda split, epoch: loaders[split].order(epoch), run_dir=run_dir, config=config,
            device=self.device, task=self.task, log_json=log_json, info=info, row_bytes=ds.features.row_bytes,
            step_log=step_log, identity=identity, loss=loss, metrics=as_metrics(metrics), optimizer=optimizer,
            scheduler=scheduler, callbacks=list(callbacks), monitor=monitor)
        self.config = asdict(config)

    @property
    def model(self) -> torch.nn.Module:
        return self._trainer.model

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self._trainer.optimizer

    @property
    def run_dir(self) -> Path:
        return self._trainer.run_dir

    @property
    def history(self) -> list[dict]:
        """One record per finished epoch (the lines of ``metrics.jsonl``)."""
        return self._trainer.history

    @property
    def best(self) -> dict:
        """``{"val": value of the monitor, "epoch": e}`` of the best model so far."""
        return self._trainer.best

    def fit(self, resume: bool = False) -> dict:
        """Train (continuing ``run_dir``'s checkpoint with ``resume``); returns the summary: ``best_epoch``,
        ``best_MONITOR``, the best model's ``test_…`` and ``val_…`` metrics, ``seconds``. The model holds the best
        weights afterwards.

        Raises:
            InputError: ``resume`` without a checkpoint, or one made with another dataset, loader, model or options;
                a run directory that already holds a run (without ``resume``).
        """
        run_dir = self._trainer.run_dir
        if not resume and (run_dir / "checkpoint.pt").exists():
            raise InputError(f"run directory {run_dir} already holds a run; pass resume=True to continue it, or another "
                             "run_dir")
        return self._trainer.fit(resume=resume)

    def evaluate(self, split: str = "test") -> dict:
        """Loss and metrics of the model as it is now on ``split`` (``val`` or ``test``, as given)."""
        if split not in self.loaders:
            raise InputError(f"no {split} loader was given; pass {split}= to the Trainer")
        return self._trainer.evaluate(split)

    def close(self) -> None:
        """Close the loaders (their threads, the pack)."""
        for ld in self.loaders.values():
            ld.close()


def fit(model: torch.nn.Module, train, val=None, test=None, *, resume: bool = False, **options) -> dict:
    """Train ``model`` on ``train`` (choosing the best model on ``val``, reporting it on ``test``); returns the
    summary. ``options`` are :class:`Trainer`'s (``run_dir`` required, ``epochs``, ``optimizer``, ``loss``,
    ``metrics``, ``callbacks``, ``monitor``, …). The loaders stay open (close them, or use ``with``)."""
    return Trainer(model, train, val, test, **options).fit(resume=resume)
