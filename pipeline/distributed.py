"""Data-parallel training with ``torch.distributed``: world info, the minibatch share of each rank, reductions.

``diskgraph train`` under ``torchrun --nproc-per-node N [--nnodes M …]`` reads the
launcher's ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE``
(:func:`from_env`), joins the process group (NCCL on GPUs, gloo on the CPU) and
trains a :class:`torch.nn.parallel.DistributedDataParallel` model: every step,
each rank runs one minibatch of its own share and the gradients are averaged.

Shares (:func:`shard`): the epoch's order (a permutation of the epoch's plan
rows drawn from ``(seed, epoch)``, the same on every rank) is cut to a multiple
of the world size and rank ``r`` takes ``order[r::W]``. Every rank gets the
same number of minibatches (DDP needs the same number of steps), the shares are
disjoint, and they are a pure function of the seed, the epoch and the world
size. The ``M mod W`` minibatches cut off are the last ones of the shuffled
order, so they change from epoch to epoch. Evaluation splits its minibatches
the same way without cutting (``order[r::W]``; no gradients, so counts may
differ) and sums the counts across ranks.

A plan can also be sampled already split (``preprocess sample --shard R/W``,
:func:`~diskgraph.store.plan.shard_name`): rank ``r`` then trains the whole of its own plan and pack,
and the plan manifest's ``config.shard`` records ``{"rank", "world_size"}``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from ..store.errors import InputError


@dataclass(frozen=True)
class DistContext:
    """This process's place in a data-parallel run.

    Attributes:
        rank, world_size: global rank and number of processes.
        local_rank, local_world_size: rank and process count on this machine.
        backend: ``gloo`` or ``nccl``.
    """

    rank: int
    world_size: int
    local_rank: int = 0
    local_world_size: int = 1
    backend: str = "gloo"

    @property
    def is_main(self) -> bool:
        """Rank 0: writes checkpoints, logs and the best model."""
        return self.rank == 0


def _env_int(name: str, default: int | None = None) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise InputError(f"environment variable {name}={value!r} is not a whole number; launch with torchrun, which "
                         "sets it") from None


def world_from_env() -> tuple[int, int, int, int] | None:
    """``(rank, world_size, local_rank, local_world_size)`` from torchrun's variables; None outside a launcher
    or with a world of one."""
    world = _env_int("WORLD_SIZE")
    if world is None or world <= 1:
        return None
    rank = _env_int("RANK")
    if rank is None or not 0 <= rank < world:
        raise InputError(f"WORLD_SIZE={world} is set but RANK={os.environ.get('RANK')!r} is not in 0..{world - 1}; "
                         "launch with torchrun, which sets both")
    local_rank = _env_int("LOCAL_RANK", 0)
    local_world = _env_int("LOCAL_WORLD_SIZE", world)
    return rank, world, local_rank, local_world


BACKEND_ENV = "DISKGRAPH_DIST_BACKEND"
"""Overrides the process group's backend (``gloo`` or ``nccl``)."""


def init(device: torch.device) -> DistContext | None:
    """Join the process group torchrun describes (None when not launched by it, or with one process).

    Uses NCCL when ``device`` is CUDA (the caller picks the device: :func:`diskgraph.train.rank_device`), gloo
    otherwise; ``DISKGRAPH_DIST_BACKEND=gloo|nccl`` overrides the choice (gloo also reduces CUDA tensors: it lets
    several ranks share one GPU, which NCCL refuses). Sets torch's intra-op threads to ``max(1, CPUs // LOCAL_WORLD_SIZE)`` unless
    ``OMP_NUM_THREADS`` was set (torchrun sets it to 1 when it starts several processes).
    """
    world = world_from_env()
    if world is None:
        return None
    rank, size, local_rank, local_size = world
    import torch.distributed as dist

    backend = os.environ.get(BACKEND_ENV) or ("nccl" if device.type == "cuda" else "gloo")
    if backend not in ("gloo", "nccl") or (backend == "nccl" and device.type != "cuda"):
        raise InputError(f"{BACKEND_ENV}={backend} is not a backend for --device {device.type}; use gloo"
                         + (" or nccl" if device.type == "cuda" else ""))
    if backend == "nccl" and not dist.is_nccl_available():
        raise InputError("training on CUDA across processes needs NCCL, which this torch lacks; install a CUDA build "
                         "of torch or train with --device cpu (gloo)")
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local_size)))
    if not dist.is_initialized():
        if backend == "nccl":
            dist.init_process_group(backend, device_id=device)
        else:
            dist.init_process_group(backend)
    return DistContext(rank=rank, world_size=size, local_rank=local_rank, local_world_size=local_size,
                       backend=backend)


def finish(ctx: DistContext | None, barrier: bool = True) -> None:
    """Leave the process group, all ranks at once: with ``barrier`` (a run that ended normally) each rank waits for
    the others first, so none tears its communication threads down while another still talks to it (gloo then
    aborts a rank with "terminate called without an active exception"). A failed rank leaves at once."""
    if ctx is None:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()


def shard(order: np.ndarray, rank: int, world_size: int, *, equal: bool = True) -> np.ndarray:
    """Rank ``rank``'s share of an epoch's ``order``: ``order[rank::world_size]`` of the order cut to a multiple of
    ``world_size`` (``equal``; training), or of the whole order (``equal=False``; evaluation)."""
    order = np.asarray(order)
    if equal:
        order = order[: len(order) - len(order) % world_size]
    return order[rank::world_size]


# -- reductions --------------------------------------------------------------------------------------

def _reduce(values: list[float], op) -> list[float]:
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=op)
    return t.cpu().tolist()


def all_sum(values: list[float]) -> list[float]:
    """Element-wise sum over ranks."""
    import torch.distributed as dist

    return _reduce(values, dist.ReduceOp.SUM)


def all_max(values: list[float]) -> list[float]:
    """Element-wise maximum over ranks."""
    import torch.distributed as dist

    return _reduce(values, dist.ReduceOp.MAX)


def all_gather(obj) -> list:
    """Every rank's ``obj`` (picklable), in rank order."""
    import torch.distributed as dist

    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj, src: int = 0):
    """``obj`` of rank ``src`` on every rank (picklable)."""
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Overwrite every rank's parameters and buffers with those of rank ``src``."""
    import torch.distributed as dist

    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=src)
