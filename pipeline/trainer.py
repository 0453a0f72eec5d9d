"""The training loop: epochs over a loader, evaluation, metrics, checkpoints and mid-epoch resume.

The loop is the pipeline's compute stage: it consumes :class:`~diskgraph.pipeline.blocks.Batch`
objects from a loader (the out-of-core :class:`~diskgraph.pipeline.loader.PackedLoader`, or the
in-memory reference :class:`~diskgraph.pipeline.memory_loader.InMemoryLoader`) whose read and
assemble stages run ahead in their own threads, and runs forward/backward/step.

Every epoch appends one JSON object to ``RUN_DIR/metrics.jsonl`` (and rewrites ``--log-json``)
with loss, the task's metrics (:mod:`~diskgraph.pipeline.tasks`: accuracy, micro-F1, RMSE, …), time per stage,
overlap, bytes read from disk, hit rates and peak memory; the last line is a summary with the test metrics of the
best-validation model. Callbacks (:mod:`~diskgraph.pipeline.callbacks`) run at the loop's hooks. With ``tensorboard`` the
same figures also go to TensorBoard event files (:mod:`~diskgraph.pipeline.tensorboard_log`).
Training and evaluation draw tqdm progress bars on a terminal (:class:`~diskgraph.store.progress.Progress`).

Checkpoints (``RUN_DIR/checkpoint.pt``, written atomically) hold the model, the optimizer, the learning-rate
scheduler (:mod:`~diskgraph.pipeline.optimizers`), early stopping's counters, the torch RNG states, the epoch,
the position in the epoch's minibatch order, the partial epoch's accumulators and the metrics history. A resumed run therefore continues mid-epoch and ends with the
same model as an uninterrupted run with the same seed.

Data-parallel runs (``dist``, :mod:`diskgraph.pipeline.distributed`): the model is wrapped in
``DistributedDataParallel``, each rank trains its own share of the epoch's minibatches, evaluation
is split across ranks and summed, and the epoch's record aggregates the ranks (times: the slowest
rank; counts and bytes: sums; per-rank figures under ``ranks``). Only rank 0 writes checkpoints,
logs and the best model; a checkpoint carries every rank's RNG state and partial-epoch sums.
"""

from __future__ import annotations

import io
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

from ..store.checksums import DATA_CHECKSUM, data_checksum
from ..store.errors import InputError
from ..store.files import write_atomic
from ..store.progress import Progress, format_bytes, log
from . import distributed as _dist
from .callbacks import Callback, EarlyStopping, TensorBoard
from .metrics import peak_gpu_bytes, peak_rss_bytes, process_read_bytes
from .optimizers import build_optimizer, build_scheduler
from .tasks import SumMetric, Task, WholeMetric, build_task

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_INFO_NAME = "checkpoint.json"
BEST_MODEL_NAME = "best_model.pt"
MODEL_CARD_NAME = "best_model.json"
"""Beside ``best_model.pt``: what makes the model again and what it was trained on (:func:`write_model_card`)."""
MODEL_CARD_FORMAT, MODEL_CARD_VERSION = "diskgraph.model", 1
METRICS_NAME = "metrics.jsonl"
CHECKPOINT_VERSION = 3
"""2: checkpoints record the run's identity (what it trains on and the model's options), resumes compare it, and the
file carries a checksum of its contents. 3: the partial epoch's metric sums are per metric (any task), and callbacks'
states are kept."""


class Loader(Protocol):
    """What the trainer needs from a loader."""

    def epoch(self, order, start: int = 0):  # -> Iterator[Batch]
        ...

    def epoch_stats(self) -> dict:
        ...


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


class StopTraining(Exception):
    """Raised by ``fit(max_steps=…)`` to stop as a crash would (tests of resume)."""


class StopRequested(Exception):
    """Raised by ``fit`` when its ``stop`` event was set: a checkpoint was saved first, so ``resume`` continues."""


@dataclass
class _EpochAccumulator:
    """Sums over the minibatches of the current epoch (saved in checkpoints)."""

    loss_sum: float = 0.0
    seeds: int = 0
    metric_sums: dict = field(default_factory=dict)
    """The training metrics' additive sums (:class:`~diskgraph.pipeline.tasks.SumMetric`), per metric name."""
    minibatches: int = 0
    compute_s: float = 0.0
    train_s: float = 0.0
    read_bytes: int = 0
    prior_stats: dict = field(default_factory=dict)
    """The loader's additive epoch statistics from earlier processes of this epoch (a resumed run)."""


def _json_value(v):
    """``v`` as JSON would give it back (tuples as lists), so a recorded identity compares equal to a fresh one."""
    return json.loads(json.dumps(v))


def _atomic_torch_save(obj, path: Path) -> None:
    write_atomic(path, lambda f: torch.save(obj, f), sync_dir=True)


def write_checkpoint_file(state: dict, path: Path) -> None:
    """Write ``state`` as a checkpoint: torch's serialization of it, with its checksum around it (torch's own format
    reads a damaged tensor back without a word, so the checksum is what catches one)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    _atomic_torch_save({"format": "diskgraph.checkpoint", "version": CHECKPOINT_VERSION,
                        DATA_CHECKSUM: data_checksum(payload), "payload": payload}, path)


def read_checkpoint_file(path: Path) -> dict:
    """The state :func:`write_checkpoint_file` wrote to ``path``.

    Raises:
        InputError: the file cannot be read, is not a checkpoint of this version, or does not match its checksum.
    """
    def damaged(why) -> InputError:
        if isinstance(why, BaseException):
            why = f"{type(why).__name__}: {(str(why).splitlines() or [''])[0][:200]}"
        return InputError(f"checkpoint {path} cannot be read ({why}); it is damaged or was written by another version of "
                          "diskgraph, start a new run directory")

    try:
        envelope = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a damaged file fails inside torch's unpickler or zip reader in many ways
        raise damaged(e) from None
    if not isinstance(envelope, dict) or envelope.get("format") != "diskgraph.checkpoint":
        raise damaged("no diskgraph checkpoint envelope")
    if envelope.get("version") != CHECKPOINT_VERSION:
        raise InputError(f"checkpoint {path} has version {envelope.get('version')}, this diskgraph reads "
                         f"{CHECKPOINT_VERSION}; start a new run directory")
    payload = envelope.get("payload")
    if not isinstance(payload, bytes) or data_checksum(payload) != envelope.get(DATA_CHECKSUM):
        raise damaged(f"its contents do not match its {DATA_CHECKSUM} checksum")
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)
    except Exception as e:
        raise damaged(e) from None


def write_model_card(run_dir: Path, model: torch.nn.Module, identity: dict, info: dict, epoch: int,
                     monitor: str, value: float, task: Task) -> None:
    """Write ``RUN_DIR/best_model.json`` for the ``best_model.pt`` just saved: the model's :func:`build_model` arguments
    (``model.config``), the run's identity (dataset contents, pack, options), the task (kind, output width), the epoch
    and the value of the metric that chose it (``best``; also ``val_acc`` for classification), and the XXH3 of the
    weights file, so inference rebuilds the model and refuses other weights or another dataset. The card carries a
    checksum of its own fields (as manifests do)."""
    from ..store.checksums import MANIFEST_CHECKSUM_FIELD, manifest_checksum

    weights = (run_dir / BEST_MODEL_NAME).read_bytes()
    card = {"format": MODEL_CARD_FORMAT, "format_version": MODEL_CARD_VERSION,
            "model": getattr(model, "_diskgraph_config", None) or getattr(model, "config", None),
            "identity": _json_value(identity), "info": _json_value(info),
            "task": {"kind": task.kind, "num_outputs": task.num_outputs},
            "epoch": int(epoch), "best": {"metric": monitor, "value": float(value)},
            **({"val_acc": float(value)} if monitor == "val_acc" else {}),
            "weights": {"file": BEST_MODEL_NAME, "bytes": len(weights), DATA_CHECKSUM: data_checksum(weights)}}
    card[MANIFEST_CHECKSUM_FIELD] = manifest_checksum(card)
    write_atomic(run_dir / MODEL_CARD_NAME, lambda f: json.dump(card, f, indent=2), binary=False)


_RATIOS = {"epoch_s", "overlap", "minibatches_per_s", "read_gb_per_s", "gpu_hit_rate", "host_hit_rate", "cold_rate",
           "slowest_stage_s"}
"""Keys of a loader's ``epoch_stats()`` derived from the others: not summed across a resume."""


def model_outputs(net: torch.nn.Module, batch) -> torch.Tensor:
    """The seeds' outputs ``[batch_size, C]`` of ``net`` (or its ``DistributedDataParallel`` wrapper) on ``batch``.

    A model whose class has ``diskgraph_input = "blocks"`` (the built-in models do) is called on the blocks,
    ``net(batch.blocks, batch.x)``, and returns the seeds' outputs. Any other module is a PyG model: it is called on
    ``batch.to_pyg()`` as ``net(x, edge_index)`` (plus ``num_sampled_nodes_per_hop`` / ``num_sampled_edges_per_hop``
    when its ``forward`` takes them) and its first ``batch_size`` rows are returned
    (:func:`diskgraph.custom_models.call_style`).
    """
    inner = net.module if isinstance(net, torch.nn.parallel.DistributedDataParallel) else net
    call = getattr(inner, "_diskgraph_call", None)
    if call is None:
        from ..custom_models import call_style

        call = inner._diskgraph_call = call_style(inner)
    if call == "blocks":
        return net(batch.blocks, batch.x)
    data = batch.to_pyg()
    if call == "pyg-trim":
        out = net(data.x, data.edge_index, num_sampled_nodes_per_hop=data.num_sampled_nodes,
                  num_sampled_edges_per_hop=data.num_sampled_edges)
    else:
        out = net(data.x, data.edge_index)
    return out[: data.batch_size]


def _add_stats(total: dict, part: dict) -> dict:
    """``total`` plus the additive numeric entries of a loader's ``epoch_stats()``."""
    out = dict(total)
    for k, v in part.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in _RATIOS:
            out[k] = out.get(k, 0) + v
    return out


class Trainer:
    """Runs training epochs, evaluation, logging and checkpointing.

    Args:
        model: a module called on each batch as :func:`model_outputs` says (the built-in models on blocks).
        loaders: split name → loader (``train`` required; ``val``/``test`` optional).
        order: ``order(split, epoch) -> plan rows`` (None: the loader's own order).
        run_dir: where checkpoints, the best model and ``metrics.jsonl`` go.
        config: see :class:`TrainConfig`.
        device: the compute device.
        num_classes: output classes of a classification run (when ``task`` is not given; 2 adds ROC-AUC).
        task: the loss and metrics (:mod:`~diskgraph.pipeline.tasks`; classification, multilabel, regression).
        log_json: also write the metrics lines to this file (rewritten after each epoch).
        info: extra fields for the first log line's ``run`` record (dataset, pack, model, …).
        row_bytes: bytes of one feature row (for read amplification); 0 when unknown.
        step_log: append one JSON line per training minibatch here (epoch, position, plan row, input rows, loss,
            seconds since the epoch's start, bytes read by the process so far and since the epoch's start); flushed per line so a watcher
            — or whoever finds the run killed — sees how far it got. Rank ``r > 0`` of a data-parallel run
            writes ``STEP_LOG.rank{r}``.
        dist: the data-parallel context (None: one process); ``order`` must then give this rank's share.
        tensorboard: also write each epoch's metrics (and the summary's) as TensorBoard scalars into this directory
            (:mod:`~diskgraph.pipeline.tensorboard_log`; rank 0 only; needs the ``tensorboard`` package).
        identity: what the run is bound to besides ``config`` — the data it trains on and the model's options, as
            ``{name: JSON value}`` (names as the user knows them, e.g. ``--dropout``, ``dataset``). Saved in every
            checkpoint; a resume with another value of any of them (or of ``config``, ``epochs`` aside) is refused
            in one sentence naming it.
        loss: ``loss(out, y) -> 0-d tensor``, the seeds' mean loss (default: the task's).
        metrics: more metrics besides the task's (:func:`~diskgraph.pipeline.tasks.as_metrics`).
        optimizer, scheduler: your own (default: built from ``config``); the scheduler is stepped once per epoch.
            Both are saved in checkpoints.
        callbacks: :class:`~diskgraph.pipeline.callbacks.Callback` objects, after the ones ``config`` and
            ``tensorboard`` ask for (early stopping, TensorBoard).
        monitor: the epoch-record key that chooses the best model (default ``val_`` + the task's main metric;
            ``train_…`` without a val split).
    """

    def __init__(self, model: torch.nn.Module, loaders: dict[str, Loader], *,
                 order: Callable[[str, int], np.ndarray | None], run_dir: str | os.PathLike, config: TrainConfig,
                 device: torch.device, num_classes: int | None = None, task: Task | None = None,
                 log_json: str | os.PathLike | None = None,
                 info: dict | None = None, row_bytes: int = 0, step_log: str | os.PathLike | None = None,
                 stop=None, dist: _dist.DistContext | None = None, identity: dict | None = None,
                 tensorboard: str | os.PathLike | None = None, loss: Callable | None = None,
                 metrics: list[SumMetric | WholeMetric] | None = None, optimizer: torch.optim.Optimizer | None = None,
                 scheduler=None, callbacks: list[Callback] | None = None, monitor: str | None = None):
        self.model = model
        self.identity = dict(identity or {})
        self.dist = dist
        self.main = dist is None or dist.is_main
        self.net = model  # what training steps call: the model, or its DistributedDataParallel wrapper
        if dist is not None:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
            if step_log and dist.rank:
                step_log = f"{step_log}.rank{dist.rank}"
        self.loaders = loaders
        self.order = order
        self.run_dir = Path(run_dir)
        self.config = config
        self.device = device
        if task is None:
            if num_classes is None:
                raise TypeError("Trainer needs task= (or num_classes= for classification)")
            task = build_task("classification", num_classes)
        self.task = task
        self.loss_fn = loss or task.loss
        self.metrics: list[SumMetric | WholeMetric] = list(task.metrics) + list(metrics or [])
        names = [m.name for m in self.metrics]
        if len(set(names)) != len(names):
            raise InputError(f"metric names must differ, and {', '.join(sorted({n for n in names if names.count(n) > 1}))} "
                             f"is given twice (the task's own metrics: {', '.join(m.name for m in task.metrics)}); "
                             "rename yours")
        self.log_json = Path(log_json) if log_json else None
        self.info = info or {}
        self.row_bytes = row_bytes
        self.step_log = Path(step_log) if step_log else None
        self.stop = stop
        split = "val" if "val" in loaders else "train"
        self.monitor = monitor or f"{split}_{task.main.name}"
        """The epoch record's key that chooses the best model (default: the task's main metric on val)."""
        self.check_monitor(self.monitor, "the best model")
        self.optimizer = optimizer if optimizer is not None else build_optimizer(
            model.parameters(), config.optimizer, lr=config.lr, weight_decay=config.weight_decay,
            momentum=config.momentum)
        self.scheduler = scheduler if optimizer is not None else build_scheduler(
            self.optimizer, config.lr_schedule, epochs=config.epochs, step_size=config.lr_step_size,
            gamma=config.lr_gamma)
        self.callbacks: list[Callback] = []
        if config.early_stopping:
            self.check_monitor(config.early_stopping_metric or self.monitor, "--early-stopping")
            self.callbacks.append(EarlyStopping(config.early_stopping_metric, config.early_stopping))
        if tensorboard is not None:
            self.callbacks.append(TensorBoard(tensorboard))
        self.callbacks += list(callbacks or [])
        self.stop_training = False
        """Set by a callback (early stopping): the run ends after the current epoch's checkpoint."""
        self._checkpoint_requested = False
        self.history: list[dict] = []
        self.best = {"val": None, "epoch": -1}
        self.epoch = 0
        self.position = 0
        self.acc = _EpochAccumulator()

    def check_monitor(self, key: str, what: str) -> None:
        """Refuse (one sentence) an epoch-record key that a run of this task and splits cannot watch.

        ``key`` is ``SPLIT_loss`` or ``SPLIT_METRIC``; train may watch only additive metrics (evaluation computes
        the others), val needs a val loader.
        """
        split, _, name = key.partition("_")
        metric = next((m for m in self.metrics if m.name == name), None)
        ok = (split == "val" and (name == "loss" or metric is not None)) or \
            (split == "train" and isinstance(metric, SumMetric))
        if not ok:
            choices = ["val_loss"] + [f"val_{m.name}" for m in self.metrics] + \
                [f"train_{m.name}" for m in self.metrics if isinstance(m, SumMetric)]
            raise InputError(f"{what} cannot watch {key}: this {self.task.kind} run reports "
                             f"{', '.join(choices)}; pick one of them")
        if split == "val" and "val" not in self.loaders:
            raise InputError(f"{what} watches {key}, but this run has no val split; import the dataset with a val split "
                             f"or watch a train metric")

    def higher_is_better(self, key: str) -> bool:
        """The direction of an epoch-record key (losses: lower is better)."""
        name = key.partition("_")[2]
        metric = next((m for m in self.metrics if m.name == name), None)
        return name != "loss" and (metric is None or metric.higher_is_better)

    def _improves(self, value: float | None) -> bool:
        if value is None or not math.isfinite(value):
            return False
        best = self.best["val"]
        if best is None:
            return True
        return value > best if self.higher_is_better(self.monitor) else value < best

    def request_checkpoint(self) -> None:
        """Save a mid-epoch checkpoint after the current training minibatch (for callbacks)."""
        self._checkpoint_requested = True

    # -- checkpoints ------------------------------------------------------------------------------

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT_NAME

    def _rank_state(self) -> dict:
        """What differs between the ranks of a data-parallel run: RNG states and the partial epoch's sums."""
        return {"torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "accumulator": asdict(self.acc)}

    def save_checkpoint(self) -> None:
        """Write the full training state atomically, then ``checkpoint.json`` (epoch, position; readable without torch).

        In a data-parallel run every rank must call it (the ranks' states are gathered); rank 0 writes.
        """
        mine = self._rank_state()
        ranks = _dist.all_gather(mine) if self.dist is not None else [mine]
        if not self.main:
            return
        state = {
            "epoch": self.epoch, "position": self.position,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "callbacks": [cb.state_dict() for cb in self.callbacks],
            **mine, "world_size": len(ranks), "ranks": ranks if len(ranks) > 1 else None,
            "history": self.history, "best": self.best,
            "config": asdict(self.config), "identity": self.identity, "info": self.info,
        }
        write_checkpoint_file(state, self.checkpoint_path)
        info = {"epoch": self.epoch, "position": self.position, "epochs": self.config.epochs, "saved_at": time.time()}
        write_atomic(self.run_dir / CHECKPOINT_INFO_NAME, lambda f: json.dump(info, f), binary=False)

    def load_checkpoint(self) -> None:
        """Restore the state saved by :meth:`save_checkpoint`.

        Raises:
            InputError: no checkpoint, or one from a run with other settings.
        """
        state = self._read_checkpoint() if self.dist is None else _dist.broadcast(
            self._read_checkpoint(catch=True) if self.main else None)
        if isinstance(state, InputError):
            raise state
        # settings a checkpoint from before they existed lacks had their defaults then
        saved = {**self._settings({**asdict(TrainConfig()), **state["config"]}), **state.get("identity", {})}
        now = {**self._settings(asdict(self.config)), **self.identity}
        differ = [k for k in sorted(set(saved) | set(now)) if _json_value(saved.get(k)) != _json_value(now.get(k))]
        if differ:
            diff = ", ".join(f"{k} {saved.get(k)!r} (this run: {now.get(k)!r})" for k in differ)
            raise InputError(f"checkpoint {self.checkpoint_path} was made with other settings: {diff}; resume with the "
                             "same dataset, pack and options, or start a new run directory")
        saved_world, world = int(state.get("world_size", 1)), self.dist.world_size if self.dist else 1
        if saved_world != world and int(state["position"]) != 0:
            raise InputError(f"checkpoint {self.checkpoint_path} stopped mid-epoch (minibatch {state['position']}) in a "
                             f"run of {saved_world} process(es), and this run has {world}; resume it with {saved_world}, "
                             "or from an epoch-end checkpoint with any number")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None and state.get("scheduler") is not None:
                self.scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise InputError(f"checkpoint {self.checkpoint_path} does not fit this model ({str(e).splitlines()[0]}); "
                             "resume with the model options it was made with, or start a new run directory") from None
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        rank = self.dist.rank if self.dist else 0
        if saved_world == world:
            mine = state["ranks"][rank] if state.get("ranks") else state
            torch.set_rng_state(mine["torch_rng"])
            if mine.get("cuda_rng") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(mine["cuda_rng"])
            self.acc = _EpochAccumulator(**mine["accumulator"])
        else:  # an epoch boundary with another world size: fresh per-rank RNG streams for the epochs to come
            torch.manual_seed(self._rank_seed() + self.epoch)
            self.acc = _EpochAccumulator()
        self.history, self.best = list(state["history"]), dict(state["best"])
        saved_callbacks = state.get("callbacks") or []
        if len(saved_callbacks) != len(self.callbacks):
            raise InputError(f"checkpoint {self.checkpoint_path} was made with {len(saved_callbacks)} callback(s) and "
                             f"this run has {len(self.callbacks)}; resume with the same callbacks (and "
                             "--early-stopping / --tensorboard), or start a new run directory")
        for cb, st in zip(self.callbacks, saved_callbacks):
            cb.load_state_dict(st)
        log.info("resuming %s at epoch %d, minibatch %d", self.run_dir, self.epoch, self.position)

    def _read_checkpoint(self, catch: bool = False):
        """The checkpoint's contents (with ``catch``, a missing checkpoint is returned as the error, for broadcast)."""
        if not self.checkpoint_path.exists():
            e = InputError(f"run directory {self.run_dir} has no {CHECKPOINT_NAME} to resume from; start the run "
                           "without --resume")
            if catch:
                return e
            raise e
        try:
            return read_checkpoint_file(self.checkpoint_path)
        except InputError as e:
            if catch:
                return e
            raise

    @staticmethod
    def _settings(config: dict) -> dict:
        """A :class:`TrainConfig` as the options a user knows (``lr`` → ``--lr``), ``epochs`` aside (a resumed run may
        train more or fewer epochs)."""
        return {"--" + k.replace("_", "-"): v for k, v in config.items() if k != "epochs"}

    def _rank_seed(self) -> int:
        """The torch seed of this rank's dropout stream: the run's seed on rank 0, distinct on the others."""
        return self.config.seed + 1_000_003 * (self.dist.rank if self.dist else 0)

    # -- logging ----------------------------------------------------------------------------------

    def _write_logs(self, lines: list[dict]) -> None:
        if not self.main:
            return
        text = "".join(json.dumps(line) + "\n" for line in lines)
        for path in [self.run_dir / METRICS_NAME] + ([self.log_json] if self.log_json else []):
            write_atomic(path, lambda f: f.write(text), binary=False)

    # -- evaluation -------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, split: str) -> dict:
        """``SPLIT_loss`` and ``SPLIT_NAME`` for each metric of the current model on ``split`` (on every rank, over
        the minibatches of all ranks). Whole metrics (ROC-AUC, yours) see the split's outputs at once."""
        loader = self.loaders[split]
        self.model.eval()
        loss_sum, total = 0.0, 0
        sums: dict[str, dict[str, float]] = {}
        keep = any(isinstance(m, WholeMetric) for m in self.metrics)
        outs, ys = [], []
        order = self.order(split, self.epoch)
        with Progress(f"evaluating {split}", len(order) if order is not None else None, "minibatches") as bar:
            for batch in loader.epoch(order):
                out = model_outputs(self.model, batch)
                n = batch.num_seeds
                loss_sum += float(self.loss_fn(out, batch.y)) * n
                total += n
                _add_metric_sums(sums, self.metrics, out, batch.y)
                if keep:
                    outs.append(out.float().cpu())
                    ys.append(batch.y.cpu())
                bar.update(1)
        flat = _flatten(sums)
        if self.dist is not None:
            keys = sorted(set().union(*_dist.all_gather(sorted(flat))))
            values = _dist.all_sum([loss_sum, total] + [flat.get(k, 0.0) for k in keys])
            loss_sum, total, flat = values[0], int(values[1]), dict(zip(keys, values[2:]))
            if keep:
                outs, ys = (sum(parts, []) for parts in zip(*_dist.all_gather((outs, ys))))
        out = {f"{split}_loss": loss_sum / max(total, 1), **_metric_values(self.metrics, _unflatten(flat), split)}
        if keep and outs:
            all_out, all_y = torch.cat(outs), torch.cat(ys)
            for m in self.metrics:
                if isinstance(m, WholeMetric):
                    out[f"{split}_{m.name}"] = m.value_of(all_out, all_y)
        return out

    # -- training ---------------------------------------------------------------------------------

    def _train_epoch(self, max_steps: list[int] | None) -> None:
        loader = self.loaders["train"]
        order = self.order("train", self.epoch)
        total = len(order) if order is not None else None
        self.model.train()
        t_start = time.perf_counter()
        rb_start = process_read_bytes()
        steps = open(self.step_log, "a") if self.step_log else None
        try:
            self._train_minibatches(loader, order, total, t_start, rb_start, max_steps, steps)
        finally:
            if steps:
                steps.close()

    def _train_minibatches(self, loader: Loader, order, total: int | None, t_start: float, rb_start: int,
                           max_steps: list[int] | None, steps) -> None:
        t_epoch, rb_epoch = t_start, rb_start
        with Progress(f"epoch {self.epoch}", total, "minibatches") as bar:
            bar.update(self.position)
            for batch in loader.epoch(order, start=self.position):
                t0 = time.perf_counter()
                self.optimizer.zero_grad(set_to_none=True)
                out = model_outputs(self.net, batch)
                loss = self.loss_fn(out, batch.y)
                loss.backward()
                self.optimizer.step()
                n = batch.num_seeds
                loss_value = float(loss.detach())
                self.acc.loss_sum += loss_value * n
                _add_metric_sums(self.acc.metric_sums, self.metrics, out.detach(), batch.y)
                self.acc.seeds += n
                self.acc.minibatches += 1
                self.acc.compute_s += time.perf_counter() - t0
                self.position += 1
                bar.update(1)
                if steps:
                    rb = process_read_bytes()
                    steps.write(json.dumps({"epoch": self.epoch, "position": self.position, "of": total,
                                            "minibatch": int(batch.index),
                                            "inputs": int(batch.x.shape[0]), "loss": loss_value,
                                            "seconds": time.perf_counter() - t_epoch,
                                            "read_bytes": rb, "epoch_read_bytes": rb - rb_epoch}) + "\n")
                    steps.flush()
                for cb in self.callbacks:
                    cb.on_batch_end(self, batch, loss_value)
                if self._checkpoint_requested or (self.config.checkpoint_every and
                                                  self.position % self.config.checkpoint_every == 0):
                    self._checkpoint_requested = False
                    self._checkpoint_mid_epoch(t_start, rb_start, loader)
                    t_start, rb_start = time.perf_counter(), process_read_bytes()
                if self._stop_requested():
                    self._checkpoint_mid_epoch(t_start, rb_start, loader)
                    raise StopRequested()
                if max_steps is not None:
                    max_steps[0] -= 1
                    if max_steps[0] <= 0:
                        raise StopTraining()
        self.acc.train_s += time.perf_counter() - t_start
        self.acc.read_bytes += process_read_bytes() - rb_start
        self.acc.prior_stats = _add_stats(self.acc.prior_stats, loader.epoch_stats())

    def _checkpoint_mid_epoch(self, t_start: float, rb_start: int, loader: Loader) -> None:
        """Save, with this process's loader statistics so far folded into what the checkpoint carries."""
        self.acc.train_s += time.perf_counter() - t_start
        self.acc.read_bytes += process_read_bytes() - rb_start
        prior = self.acc.prior_stats
        self.acc.prior_stats = _add_stats(prior, loader.epoch_stats())
        try:
            self.save_checkpoint()
        finally:
            self.acc.prior_stats = prior  # the running epoch's statistics are added again at its end

    def _epoch_record(self, eval_s: float, eval_read_bytes: int, eval_metrics: dict) -> dict:
        a = self.acc
        s = a.prior_stats  # the whole epoch's loader statistics, after _train_epoch
        ranks = None
        if self.dist is not None:
            a, s, eval_s, eval_read_bytes, ranks = self._across_ranks(eval_s, eval_read_bytes)
        stage = {"read_s": float(s.get("read_busy_s", 0.0)), "assemble_s": float(s.get("assemble_busy_s", 0.0)),
                 "compute_s": a.compute_s}
        if s.get("sample_busy_s"):
            stage["sample_s"] = float(s["sample_busy_s"])  # the in-memory reference samples online
        slowest = max(stage.values())
        rows = {t: int(s.get(f"rows_{t}", 0)) for t in ("gpu", "host", "cold")}
        all_rows = sum(rows.values())
        cold_bytes = rows["cold"] * self.row_bytes
        rec = {
            "epoch": self.epoch,
            "loss": a.loss_sum / max(a.seeds, 1),
            **_metric_values(self.metrics, a.metric_sums, "train"),
            **eval_metrics,
            "epoch_s": a.train_s,
            "eval_s": eval_s,
            "minibatches": a.minibatches,
            "stage_s": stage,
            "io_s": float(s.get("io_s", 0.0)),
            "verify_s": float(s.get("verify_s", 0.0)),
            "queue_wait_s": {k[:-7]: float(v) for k, v in s.items() if k.endswith("_wait_s")},
            "overlap": a.train_s / slowest if slowest > 0 else None,
            "read_bytes": a.read_bytes,
            "eval_read_bytes": eval_read_bytes,
            "cold_bytes_needed": cold_bytes,
            "read_amplification": a.read_bytes / cold_bytes if cold_bytes else None,
            "extent_bytes": int(s.get("bytes_read", 0)),
            "hit_rate": {t: rows[t] / all_rows for t in rows} if all_rows else {},
            "peak_rss_bytes": peak_rss_bytes() if ranks is None else max(r["peak_rss_bytes"] for r in ranks),
            "peak_gpu_bytes": peak_gpu_bytes(self.device) if ranks is None else max(r["peak_gpu_bytes"] for r in ranks),
        }
        if ranks is not None:
            rec["world_size"] = len(ranks)
            rec["ranks"] = ranks
        return rec

    def _across_ranks(self, eval_s: float, eval_read_bytes: int):
        """The epoch's sums and loader statistics over all ranks: times are the slowest rank's (``*_s``: maximum),
        counts and bytes the sums; plus each rank's own figures."""
        a, s = self.acc, self.acc.prior_stats
        mine = {"rank": self.dist.rank, "minibatches": a.minibatches, "seeds": a.seeds, "epoch_s": a.train_s,
                "compute_s": a.compute_s, "read_bytes": a.read_bytes, "extent_bytes": int(s.get("bytes_read", 0)),
                "eval_s": eval_s, "eval_read_bytes": eval_read_bytes, "peak_rss_bytes": peak_rss_bytes(),
                "peak_gpu_bytes": peak_gpu_bytes(self.device)}
        parts = _dist.all_gather((asdict(a), s, mine))
        acc, stats = {}, {}
        for part_acc, part_stats, _ in parts:
            for total, part in ((acc, part_acc), (stats, part_stats)):
                for k, v in part.items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool):
                        total[k] = max(total.get(k, v), v) if k.endswith("_s") else total.get(k, 0) + v
        ranks = [p[2] for p in parts]
        sums: dict = {}
        for part_acc, _, _ in parts:
            for name, part in part_acc["metric_sums"].items():
                for k, v in part.items():
                    sums.setdefault(name, {})[k] = sums.get(name, {}).get(k, 0.0) + v
        acc["metric_sums"] = sums
        return (_EpochAccumulator(**acc), stats, max(r["eval_s"] for r in ranks),
                sum(r["eval_read_bytes"] for r in ranks), ranks)

    def fit(self, resume: bool = False, max_steps: int | None = None) -> dict:
        """Train ``config.epochs`` epochs (continuing a checkpoint with ``resume``); returns the summary.

        ``max_steps`` stops (raising :class:`StopTraining`) after that many minibatches, as a crash would.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self.load_checkpoint()
        else:
            torch.manual_seed(self._rank_seed())
        steps = [max_steps] if max_steps is not None else None
        t_run = time.perf_counter()
        for cb in self.callbacks:
            cb.on_fit_start(self)
        self.stop_training = any(getattr(cb, "stopped", False) for cb in self.callbacks)  # a resumed stopped run
        while self.epoch < self.config.epochs and not self.stop_training:
            if self._stop_requested():
                raise StopRequested()  # the epoch-end checkpoint already holds this point
            self._train_epoch(steps)
            eval_metrics: dict = {}
            t_eval, rb_eval = time.perf_counter(), process_read_bytes()
            if "val" in self.loaders:
                eval_metrics.update(self.evaluate("val"))
            if self.config.eval_test_every_epoch and "test" in self.loaders:
                eval_metrics.update(self.evaluate("test"))
            rec = self._epoch_record(time.perf_counter() - t_eval, process_read_bytes() - rb_eval, eval_metrics)
            rec["lr"] = float(self.optimizer.param_groups[0]["lr"])  # the rate this epoch trained with
            self.history.append(rec)
            val = rec.get(self.monitor)
            if self._improves(val):
                self.best = {"val": float(val), "epoch": self.epoch}
                if self.main:
                    _atomic_torch_save(self.model.state_dict(), self.run_dir / BEST_MODEL_NAME)
                    write_model_card(self.run_dir, self.model, self.identity, self.info, self.epoch, self.monitor,
                                     float(val), self.task)
            if self.main:
                self._log_epoch(rec)
            for cb in self.callbacks:
                cb.on_epoch_end(self, rec)
            if self.scheduler is not None:
                self.scheduler.step()  # once per epoch, at its end
            self.epoch += 1
            self.position = 0
            self.acc = _EpochAccumulator()
            self.save_checkpoint()
            self._write_logs(self.history)
        summary = self._summary(time.perf_counter() - t_run)
        self._write_logs(self.history + [summary])
        for cb in self.callbacks:
            cb.on_fit_end(self, summary)
        return summary

    def _stop_requested(self) -> bool:
        if self.stop is None:
            return False
        if self.dist is not None:  # every rank stops at the same minibatch
            return _dist.all_max([float(self.stop.is_set())])[0] > 0
        return self.stop.is_set()

    def _summary(self, seconds: float) -> dict:
        out = {"summary": True, "task": self.task.kind, "epochs": self.config.epochs, "best_epoch": self.best["epoch"],
               "monitor": self.monitor, f"best_{self.monitor}": self.best["val"], "seconds": seconds,
               "epochs_run": self.epoch,
               "stopped_early": any(getattr(cb, "stopped", False) for cb in self.callbacks), **self.info}
        best_path = self.run_dir / BEST_MODEL_NAME
        if self.main and best_path.exists():
            self.model.load_state_dict(torch.load(best_path, map_location=self.device, weights_only=True))
        if self.dist is not None:  # rank 0's best model, whether or not the run directory is shared
            _dist.broadcast_module(self.model)
            out["seconds"] = _dist.all_max([seconds])[0]
        for split in ("test", "val"):
            if split in self.loaders:
                m = self.evaluate(split)
                out.update({k: v for k, v in m.items() if not k.endswith("_loss")})
        return out

    def _log_epoch(self, rec: dict) -> None:
        stage = rec["stage_s"]
        parts = [f"epoch {rec['epoch']}", f"loss {rec['loss']:.4f}"]
        parts += [f"{k.replace('_', ' ', 1)} {rec[k]:.4f}" for m in self.metrics for k in (f"train_{m.name}",
                  f"val_{m.name}") if isinstance(rec.get(k), float)]
        parts.append(f"{rec['epoch_s']:.2f} s (read {stage['read_s']:.2f}, assemble {stage['assemble_s']:.2f}, "
                     f"compute {stage['compute_s']:.2f}" + (f", overlap {rec['overlap']:.2f})" if rec["overlap"] else ")"))
        parts.append(f"read {format_bytes(rec['read_bytes'])}" +
                     (f" (amplification {rec['read_amplification']:.3f})" if rec["read_amplification"] else ""))
        if rec["hit_rate"]:
            # on a CPU run both hot tiers are RAM: the "gpu" tier is the compute device's (the host's) memory
            where = {"gpu": "GPU" if self.device.type == "cuda" else "device tier (RAM)",
                     "host": "pinned host" if self.device.type == "cuda" else "host tier (RAM)", "cold": "disk"}
            parts.append("input rows from " + ", ".join(f"{where.get(t, t)} {v:.1%}" for t, v in rec["hit_rate"].items()))
        parts.append(f"peak RSS {format_bytes(rec['peak_rss_bytes'])}")
        log.info(", ".join(parts))


def _add_metric_sums(sums: dict, metrics, out: torch.Tensor, y: torch.Tensor) -> None:
    """Add one minibatch's sums of each additive metric to ``sums`` (metric name → sum name → float)."""
    for m in metrics:
        if isinstance(m, SumMetric):
            total = sums.setdefault(m.name, {})
            for k, v in m.sums(out, y).items():
                total[k] = total.get(k, 0.0) + float(v)


def _metric_values(metrics, sums: dict, split: str) -> dict:
    """``{SPLIT_NAME: value}`` of the additive metrics from their added sums."""
    return {f"{split}_{m.name}": m.value(sums.get(m.name, {})) for m in metrics if isinstance(m, SumMetric)}


def _flatten(sums: dict) -> dict:
    return {f"{name}\0{k}": v for name, part in sums.items() for k, v in part.items()}


def _unflatten(flat: dict) -> dict:
    out: dict = {}
    for key, v in flat.items():
        name, k = key.split("\0", 1)
        out.setdefault(name, {})[k] = v
    return out
