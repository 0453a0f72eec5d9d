"""The optimizer and learning-rate schedule of a run (``--optimizer``, ``--lr-schedule``), built from its settings.

* ``adam`` (the default): :class:`torch.optim.Adam`, ``weight_decay`` as an L2 term in the gradient;
* ``adamw``: :class:`torch.optim.AdamW`, decoupled weight decay;
* ``sgd``: :class:`torch.optim.SGD` with ``momentum`` (the only optimizer that takes it).

Schedules step once per epoch, at the epoch's end, so epoch ``e`` trains with ``lr_at(e)``:

* ``constant``: ``lr`` throughout;
* ``cosine``: :class:`torch.optim.lr_scheduler.CosineAnnealingLR` over the run's ``epochs`` (``T_max = epochs``,
  ``eta_min = 0``): ``lr · (1 + cos(π e / epochs)) / 2``;
* ``step``: :class:`torch.optim.lr_scheduler.StepLR`: ``lr · gamma ** (e // step_size)``.

The scheduler's state is part of a checkpoint, so a resumed run follows the schedule its start set (a resume with
more ``--epochs`` keeps the cosine period the run began with).
"""

from __future__ import annotations

import torch

from ..store.errors import InputError

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "step")


def build_optimizer(params, name: str = "adam", *, lr: float, weight_decay: float = 0.0,
                    momentum: float = 0.0) -> torch.optim.Optimizer:
    """``name``'s optimizer over ``params`` (see the module).

    Raises:
        InputError: an unknown name, a negative rate or decay, or ``momentum`` for an optimizer other than sgd.
    """
    if name not in OPTIMIZERS:
        raise InputError(f"--optimizer {name} is not one of {', '.join(OPTIMIZERS)}; pick one of them")
    if not lr > 0:
        raise InputError(f"--lr {lr} must be positive")
    if weight_decay < 0:
        raise InputError(f"--weight-decay {weight_decay} must not be negative")
    if momentum and name != "sgd":
        raise InputError(f"--momentum applies to --optimizer sgd only (this run: {name}); drop it or use sgd")
    if not 0 <= momentum < 1:
        raise InputError(f"--momentum {momentum} must be in [0, 1)")
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: str = "constant", *, epochs: int,
                    step_size: int = 10, gamma: float = 0.1) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The per-epoch learning-rate schedule of ``optimizer`` (None for ``constant``; see the module).

    Raises:
        InputError: an unknown schedule, or a step size below 1 or a gamma outside (0, 1].
    """
    if schedule not in SCHEDULES:
        raise InputError(f"--lr-schedule {schedule} is not one of {', '.join(SCHEDULES)}; pick one of them")
    if schedule == "constant":
        return None
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(int(epochs), 1), eta_min=0.0)
    if int(step_size) < 1:
        raise InputError(f"--lr-step-size {step_size} must be at least 1 epoch")
    if not 0 < gamma <= 1:
        raise InputError(f"--lr-gamma {gamma} must be in (0, 1]")
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=int(step_size), gamma=float(gamma))
