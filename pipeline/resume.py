"""What a checkpoint holds of a :class:`~diskgraph.pipeline.trainer.Trainer`, and how a resumed run gets it back.

A checkpoint (``RUN_DIR/checkpoint.pt``, :mod:`~diskgraph.pipeline.checkpoint_file`) holds the model, the optimizer,
the learning-rate scheduler, the callbacks' states (early stopping's counters), the torch RNG states, the epoch, the
position in the epoch's minibatch order, the partial epoch's sums (:class:`~diskgraph.pipeline.epoch_record.EpochAccumulator`,
plain numbers) and the metrics history, plus the run's identity (``config`` and what it trains on). A resume with
other settings is refused in one sentence naming them; a data-parallel checkpoint carries every rank's RNG state and
partial-epoch sums.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict

import torch

from ..store.errors import InputError
from ..store.files import write_atomic
from ..store.progress import log
from . import distributed as _dist
from .checkpoint_file import CHECKPOINT_INFO_NAME, CHECKPOINT_NAME, json_value, read_checkpoint_file, \
    write_checkpoint_file
from .epoch_record import EpochAccumulator
from .train_config import TrainConfig


def rank_state(trainer) -> dict:
    """What differs between the ranks of a data-parallel run: RNG states and the partial epoch's sums."""
    return {"torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "accumulator": asdict(trainer.acc)}


def save_checkpoint(trainer) -> None:
    """Write ``trainer``'s full training state atomically, then ``checkpoint.json`` (epoch, position; readable without
    torch). In a data-parallel run every rank must call it (the ranks' states are gathered); rank 0 writes."""
    mine = rank_state(trainer)
    ranks = _dist.all_gather(mine) if trainer.dist is not None else [mine]
    if not trainer.main:
        return
    state = {
        "epoch": trainer.epoch, "position": trainer.position,
        "model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict() if trainer.scheduler is not None else None,
        "callbacks": [cb.state_dict() for cb in trainer.callbacks],
        **mine, "world_size": len(ranks), "ranks": ranks if len(ranks) > 1 else None,
        "history": trainer.history, "best": trainer.best,
        "config": asdict(trainer.config), "identity": trainer.identity, "info": trainer.info,
    }
    write_checkpoint_file(state, trainer.run_dir / CHECKPOINT_NAME)
    info = {"epoch": trainer.epoch, "position": trainer.position, "epochs": trainer.config.epochs,
            "saved_at": time.time()}
    write_atomic(trainer.run_dir / CHECKPOINT_INFO_NAME, lambda f: json.dump(info, f), binary=False)


def load_checkpoint(trainer) -> None:
    """Restore into ``trainer`` the state :func:`save_checkpoint` saved.

    Raises:
        InputError: no checkpoint, or one from a run with other settings.
    """
    path = trainer.run_dir / CHECKPOINT_NAME
    state = _read(trainer) if trainer.dist is None else _dist.broadcast(
        _read(trainer, catch=True) if trainer.main else None)
    if isinstance(state, InputError):
        raise state
    # settings a checkpoint from before they existed lacks had their defaults then
    saved = {**settings({**asdict(TrainConfig()), **state["config"]}), **state.get("identity", {})}
    now = {**settings(asdict(trainer.config)), **trainer.identity}
    differ = [k for k in sorted(set(saved) | set(now)) if json_value(saved.get(k)) != json_value(now.get(k))]
    if differ:
        diff = ", ".join(f"{k} {saved.get(k)!r} (this run: {now.get(k)!r})" for k in differ)
        raise InputError(f"checkpoint {path} was made with other settings: {diff}; resume with the "
                         "same dataset, pack and options, or start a new run directory")
    saved_world, world = int(state.get("world_size", 1)), trainer.dist.world_size if trainer.dist else 1
    if saved_world != world and int(state["position"]) != 0:
        raise InputError(f"checkpoint {path} stopped mid-epoch (minibatch {state['position']}) in a "
                         f"run of {saved_world} process(es), and this run has {world}; resume it with {saved_world}, "
                         "or from an epoch-end checkpoint with any number")
    try:
        trainer.model.load_state_dict(state["model"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        if trainer.scheduler is not None and state.get("scheduler") is not None:
            trainer.scheduler.load_state_dict(state["scheduler"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise InputError(f"checkpoint {path} does not fit this model ({str(e).splitlines()[0]}); "
                         "resume with the model options it was made with, or start a new run directory") from None
    trainer.epoch, trainer.position = int(state["epoch"]), int(state["position"])
    rank = trainer.dist.rank if trainer.dist else 0
    if saved_world == world:
        mine = state["ranks"][rank] if state.get("ranks") else state
        torch.set_rng_state(mine["torch_rng"])
        if mine.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(mine["cuda_rng"])
        trainer.acc = EpochAccumulator(**mine["accumulator"])
    else:  # an epoch boundary with another world size: fresh per-rank RNG streams for the epochs to come
        torch.manual_seed(trainer._rank_seed() + trainer.epoch)
        trainer.acc = EpochAccumulator()
    trainer.history, trainer.best = list(state["history"]), dict(state["best"])
    saved_callbacks = state.get("callbacks") or []
    if len(saved_callbacks) != len(trainer.callbacks):
        raise InputError(f"checkpoint {path} was made with {len(saved_callbacks)} callback(s) and "
                         f"this run has {len(trainer.callbacks)}; resume with the same callbacks (and "
                         "--early-stopping / --tensorboard), or start a new run directory")
    for cb, st in zip(trainer.callbacks, saved_callbacks):
        cb.load_state_dict(st)
    log.info("resuming %s at epoch %d, minibatch %d", trainer.run_dir, trainer.epoch, trainer.position)


def _read(trainer, catch: bool = False):
    """The checkpoint's contents (with ``catch``, a missing or unreadable checkpoint is returned as the error, for
    broadcast)."""
    path = trainer.run_dir / CHECKPOINT_NAME
    if not path.exists():
        e = InputError(f"run directory {trainer.run_dir} has no {CHECKPOINT_NAME} to resume from; start the run "
                       "without --resume")
        if catch:
            return e
        raise e
    try:
        return read_checkpoint_file(path)
    except InputError as e:
        if catch:
            return e
        raise


def settings(config: dict) -> dict:
    """A :class:`TrainConfig` as the options a user knows (``lr`` → ``--lr``), ``epochs`` aside (a resumed run may
    train more or fewer epochs)."""
    return {"--" + k.replace("_", "-"): v for k, v in config.items() if k != "epochs"}
