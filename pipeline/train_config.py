"""A training run's hyper-parameters and bookkeeping (:class:`TrainConfig`), recorded in checkpoints and logs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    """Hyper-parameters and bookkeeping of a run (recorded in checkpoints and logs).

    Attributes:
        epochs: training epochs.
        lr: learning rate (the schedule's starting value).
        weight_decay: weight decay (an L2 term for adam and sgd, decoupled for adamw).
        seed: seeds the model initialisation, dropout and the epoch orders.
        checkpoint_every: minibatches between checkpoints (0: only at epoch ends).
        eval_test_every_epoch: also evaluate the test split each epoch (the summary always does, with the best model).
        optimizer: ``adam``, ``adamw`` or ``sgd`` (:mod:`~diskgraph.pipeline.optimizers`).
        momentum: SGD momentum (sgd only).
        lr_schedule: ``constant``, ``cosine`` (over ``epochs``) or ``step``; stepped once per epoch, at its end.
        lr_step_size: with ``step``: epochs between decays.
        lr_gamma: with ``step``: the factor of each decay.
        early_stopping: patience in epochs: stop after this many epochs without improvement of
            ``early_stopping_metric`` (0: off; needs a val split).
        early_stopping_metric: ``val_loss`` or ``val_`` + one of the task's metrics (``val_acc``, ``val_micro_f1``,
            ``val_rmse``, …); None: the task's main validation metric.
    """

    epochs: int = 10
    lr: float = 0.003
    weight_decay: float = 0.0
    seed: int = 0
    checkpoint_every: int = 0
    eval_test_every_epoch: bool = False
    optimizer: str = "adam"
    momentum: float = 0.0
    lr_schedule: str = "constant"
    lr_step_size: int = 10
    lr_gamma: float = 0.1
    early_stopping: int = 0
    early_stopping_metric: str | None = None
