"""`diskgraph train`: train a GNN from a packed plan (or in memory, as the reference), one run in the foreground.

A run directory (default ``DATASET/runs/PACK-MODEL-seedS``) holds ``checkpoint.pt``,
``best_model.pt``, ``metrics.jsonl`` and ``run.json`` (the options). ``--resume``
continues its checkpoint mid-epoch.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the run is data-parallel (:mod:`diskgraph.pipeline.distributed`,
docs/distributed.md): each rank trains its share of every epoch's minibatches — of the one pack, or of
its own pack ``NAME.rankR-of-W`` when the plan was sampled split — and rank 0 writes the run directory.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .pipeline.trainer import TrainConfig as _Config
from .preprocess import DEFAULT_NAME, PACKS_DIR, artifact_path
from .store.errors import InputError
from .store.progress import log

RUNS_DIR = "runs"


@dataclass
class TrainOptions:
    """Options of a training run (the CLI flags; recorded in ``run.json``).

    Attributes:
        pack: pack name under DATASET/packs (or a path); its plan gives fanouts and batches.
        model: ``sage``, ``gcn`` or ``gat``, or ``package.module:Class`` / ``path/to/file.py:Class``
            (:mod:`diskgraph.custom_models`).
        hidden: hidden width.
        layers: GNN layers; must equal the plan's hops (None: the plan's hops).
        dropout, lr, weight_decay, heads: model and optimizer settings (``lr``: the schedule's starting rate).
        optimizer: ``adam`` (default), ``adamw`` or ``sgd`` (:mod:`~diskgraph.pipeline.optimizers`).
        momentum: SGD momentum (``sgd`` only; 0: none).
        lr_schedule: ``constant`` (default), ``cosine`` (annealed to 0 over ``epochs``) or ``step``; stepped at each
            epoch's end.
        lr_step_size, lr_gamma: with ``step``: multiply the rate by ``lr_gamma`` every ``lr_step_size`` epochs.
        early_stopping: patience: stop after this many epochs without improvement of ``early_stopping_metric``
            (0: off); needs a val split (refused before training without one). The best model is kept as always.
        early_stopping_metric: ``val_loss`` or ``val_`` + a metric of the dataset's task (``val_acc``, ``val_auc``,
            ``val_micro_f1``, ``val_rmse``, ``val_mae``); default: the task's main one (``val_acc``, ``val_micro_f1``,
            ``val_rmse``).
        task: ``node`` or ``link`` (None: the plan's task); ``link`` trains link prediction on a plan sampled with
            ``preprocess sample --task link`` (an encoder — ``model`` — and ``decoder``; docs/link-prediction.md).
        decoder: with ``task="link"``: ``dot``, ``distmult`` or ``mlp`` (:mod:`diskgraph.link_models`).
        link_loss: with ``task="link"``: ``bce``, ``softmax`` or ``margin`` (:mod:`diskgraph.pipeline.link_task`).
        class_weights: ``balanced`` (from the train split's labels) or one weight per class (classification: the
            cross-entropy's class weights) or per label (multilabel: BCE's positive weights); None: unweighted.
        epochs: training epochs.
        seed: model init, dropout and epoch order.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda[:N]``.
        run_dir: run directory (default DATASET/runs/PACK-MODEL-seedS).
        log_json: also write the per-epoch JSON lines here.
        resume: continue the run directory's checkpoint.
        overwrite: start over in an existing run directory.
        checkpoint_every: minibatches between checkpoints (0: epoch ends only).
        queue_depth: bounded queue depth between pipeline stages.
        direct: read packed extents with O_DIRECT.
        reference: train in memory with online sampling instead (no pack; the parity reference).
        fanouts, batch_size: for ``reference`` without a plan (default: the pack's plan config).
        eval_test_every_epoch: evaluate test each epoch too.
        reference_features: with ``reference``: ``ram`` (load the table), ``mmap`` or ``mmap-random``
            (read it through memory maps, default advice or ``MADV_RANDOM``: the np.memmap baseline).
        step_log: append one JSON line per training minibatch to this file.
        tensorboard: also write per-epoch metrics (loss, accuracy, stage times, bytes read, hit rates, peak memory)
            as TensorBoard event files into this directory (rank 0; needs ``pip install "diskgraph[tensorboard]"``,
            refused before training without it).
        stop: an event that stops the run when set: the trainer checkpoints after the current minibatch and raises
            :class:`~diskgraph.pipeline.trainer.StopRequested` (the daemon's graceful shutdown; not in ``run.json``).
    """

    pack: str = DEFAULT_NAME
    model: str = "sage"
    hidden: int = 256
    layers: int | None = None
    dropout: float = 0.5
    lr: float = 0.003
    weight_decay: float = 0.0
    heads: int = 4
    epochs: int = 10
    seed: int = 0
    device: str = "auto"
    run_dir: str | None = None
    log_json: str | None = None
    resume: bool = False
    overwrite: bool = False
    checkpoint_every: int = 0
    queue_depth: int = 2
    direct: bool = True
    reference: bool = False
    fanouts: list[int] | None = None
    batch_size: int | None = None
    eval_test_every_epoch: bool = False
    reference_features: str = "ram"
    step_log: str | None = None
    tensorboard: str | None = None
    optimizer: str = _Config.optimizer  # the optimisation options' defaults are TrainConfig's
    momentum: float = _Config.momentum
    lr_schedule: str = _Config.lr_schedule
    lr_step_size: int = _Config.lr_step_size
    lr_gamma: float = _Config.lr_gamma
    early_stopping: int = _Config.early_stopping
    early_stopping_metric: str | None = _Config.early_stopping_metric
    class_weights: str | list[float] | None = None
    task: str | None = None
    decoder: str = "dot"
    link_loss: str = "bce"
    stop: object = field(default=None, repr=False, compare=False)


def default_run_dir(dataset: str | os.PathLike, pack: str, model: str, seed: int, reference: bool = False) -> Path:
    """``DATASET/runs/PACK-MODEL-seedS`` (``reference-MODEL-seedS`` for ``--reference``): where a run goes without
    ``--run-dir``; MODEL is the class name for ``--model module:Class``."""
    from .custom_models import model_label

    model = model_label(model)
    return Path(dataset) / RUNS_DIR / f"{'reference' if reference else Path(pack).name}-{model}-seed{seed}"


def resolve_device(name: str) -> torch.device:
    """``auto`` → cuda when available else cpu; refuses cuda on a machine without a GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name} asks for a GPU but torch sees none; use --device cpu")
    return dev


def rank_device(local_rank: int) -> torch.device:
    """The GPU of the data-parallel rank ``local_rank`` (``LOCAL_RANK``): ``cuda:LOCAL_RANK`` when this process sees
    that many GPUs (all of the node's), ``cuda:0`` when it sees exactly one (``CUDA_VISIBLE_DEVICES`` set per rank, as
    Slurm and Kubernetes do).

    Raises:
        InputError: neither — the process sees some GPUs, but not one per rank.
    """
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count > local_rank:
        return torch.device("cuda", local_rank)
    if count == 1:
        return torch.device("cuda", 0)
    raise InputError(f"rank with LOCAL_RANK {local_rank} sees {count} GPU(s), neither one per local rank nor exactly "
                     "one; give each process all of the node's GPUs or exactly one (CUDA_VISIBLE_DEVICES)")


def _open_pack(dataset: Path, name: str, ctx):
    """The pack this process trains from and whether it is already this rank's share (a split plan's pack).

    Raises:
        InputError: no such pack, or one split for another world size or rank.
    """
    from .store.packed import open_pack
    from .store.plan import shard_name

    rank, world = (ctx.rank, ctx.world_size) if ctx else (0, 1)
    pdir = artifact_path(dataset, PACKS_DIR, name, "--pack")
    if not pdir.exists() and world > 1 and (pdir.parent / shard_name(pdir.name, rank, world)).exists():
        pdir = pdir.parent / shard_name(pdir.name, rank, world)
    if not pdir.exists():
        split_for = sorted(p.name for p in pdir.parent.glob(f"{pdir.name}.rank*-of-*")) if pdir.parent.is_dir() else []
        if split_for:
            raise InputError(f"pack {pdir.name} was sampled split ({', '.join(split_for)}) for another number of ranks "
                             f"than this run's {world}; launch as many ranks as the split has, or sample and pack again "
                             f"with --shard R/{world}")
        raise InputError(f"pack {pdir} does not exist; make it with `diskgraph preprocess all {dataset}` "
                         f"(or pass --pack NAME)")
    pack = open_pack(pdir)
    shard = (pack.manifest.get("plan", {}).get("config") or {}).get("shard")
    if shard and (int(shard["rank"]), int(shard["world_size"])) != (rank, world):
        raise InputError(f"pack {pdir} holds share {shard['rank']} of a plan split for {shard['world_size']} ranks, "
                         f"but this is rank {rank} of {world}; launch {shard['world_size']} ranks with --pack "
                         f"{name.split('.rank')[0]}, or sample and pack again with --shard R/{world}")
    return pdir, pack, bool(shard)


def run_training(dataset: str | os.PathLike, opts: TrainOptions) -> dict:
    """Train as ``opts`` says on ``dataset``; returns the summary (also the log's last line).

    Under torchrun (``WORLD_SIZE`` > 1) this process is one rank of a data-parallel run.
    """
    from .pipeline import distributed

    if opts.tensorboard:
        from .pipeline.tensorboard_log import require_tensorboard

        require_tensorboard()
    device = resolve_device(opts.device)
    world = distributed.world_from_env()
    if world is not None and opts.reference:
        raise InputError("--reference trains in memory in one process; run it without torchrun")
    if world is not None and device.type == "cuda":
        device = rank_device(world[2])
        torch.cuda.set_device(device)
    ctx = distributed.init(device)
    ok = False
    try:
        summary = _run_training(dataset, opts, device, ctx)
        ok = True
        return summary
    finally:
        distributed.finish(ctx, barrier=ok)


def _run_training(dataset: str | os.PathLike, opts: TrainOptions, device: torch.device, ctx) -> dict:
    from .custom_models import build_custom_model, is_custom
    from .models import build_model
    from .pipeline import distributed
    from .pipeline.schedule import epoch_order
    from .pipeline.trainer import TrainConfig, Trainer
    from .store.dataset import open_dataset

    dataset = Path(dataset)
    ds = open_dataset(dataset)
    torch.manual_seed(opts.seed)
    plan = pack = None
    presplit = False
    if not opts.reference or opts.fanouts is None or opts.batch_size is None or opts.task == "link":
        from .store.plan import open_plan

        pdir, pack, presplit = _open_pack(dataset, opts.pack, ctx)
        plan = open_plan(pack.plan_path())
    link = _link_task(opts, plan)
    if ds.features is None or (ds.labels is None and not link):
        raise InputError(f"dataset {dataset} needs features and labels to train; import them with --features and --labels")
    if link:
        splits = [s for s in ("train", "val", "test") if s in plan.splits]
    else:
        splits = [s for s in ("train", "val", "test") if s in ds.splits and len(ds.splits[s])]
    if "train" not in splits:
        raise InputError(f"dataset {dataset} has no training {'edges' if link else 'nodes'}; import it with "
                         f"{'--edge-split' if link else '--train or --split'}")
    fanouts = opts.fanouts or plan.config["fanouts"]
    batch_size = opts.batch_size or plan.config["batch_size"]
    loaders = {}
    if opts.reference:
        from .pipeline.memory_loader import InMemoryLoader

        link_options = _link_sampling(plan) if link else {}
        first = None  # the loaders share one feature table (or one set of memory maps)
        for split in splits:
            if plan is not None and split not in plan.splits:
                continue  # evaluate the splits the packed run would: those of the plan
            f, b = fanouts, batch_size
            if link and split != "train":  # evaluation minibatches as the plan sampled them
                f, b = plan.config.get("eval_fanouts") or fanouts, plan.config.get("eval_batch_size") or batch_size
            loaders[split] = first = InMemoryLoader(ds, split, fanouts=list(f), batch_size=int(b),
                                                    seed=opts.seed, device=device, features=opts.reference_features,
                                                    share_features_with=first, **link_options)

        def order(split: str, epoch: int):
            return loaders[split].order(epoch)
    else:
        from .pipeline.loader import PackedLoader

        for split in splits:
            if split in pack.splits:
                loaders[split] = PackedLoader(ds, pack, plan, split, device=device, queue_depth=opts.queue_depth,
                                              direct=opts.direct)

        def order(split: str, epoch: int):
            rows = epoch_order(plan, split, epoch, opts.seed)
            if ctx is None or presplit:
                return rows
            return distributed.shard(rows, ctx.rank, ctx.world_size, equal=split == "train")

        if ctx is not None:
            _check_shares(plan, presplit, ctx)
    if opts.early_stopping and "val" not in loaders:  # refused before the run directory is touched
        raise InputError(f"--early-stopping watches {opts.early_stopping_metric or 'validation metrics'}, but dataset "
                         f"{dataset} has no val split in this run's plan; import it with a val split or drop "
                         "--early-stopping")
    if opts.layers is not None and opts.layers != len(fanouts):
        raise InputError(f"--layers {opts.layers} does not match the {len(fanouts)} hops the plan sampled "
                         f"(fanouts {','.join(map(str, fanouts))}); drop --layers or sample with {opts.layers} fanouts")
    if link:
        from .pipeline.link_task import LinkTask

        if opts.class_weights is not None:
            raise InputError("--class-weights applies to node classification; drop it for --task link")
        task = LinkTask(opts.hidden, opts.link_loss)  # the encoder's output: an embedding of --hidden
    else:
        task = dataset_task(ds, opts.class_weights)
    num_outputs = task.num_outputs
    if is_custom(opts.model):  # --model module:Class or file.py:Class (diskgraph.custom_models)
        model = build_custom_model(opts.model, ds.feature_dim, opts.hidden, num_outputs, len(fanouts),
                                   dropout=opts.dropout, heads=opts.heads)
    else:
        model = build_model(opts.model, ds.feature_dim, opts.hidden, num_outputs, len(fanouts), dropout=opts.dropout,
                            heads=opts.heads)
    if link:
        from .link_models import LinkModel

        model = LinkModel(model, opts.decoder, opts.hidden)
    model = model.to(device)
    run_dir = Path(opts.run_dir) if opts.run_dir else default_run_dir(dataset, opts.pack, opts.model, opts.seed,
                                                                     opts.reference)
    mode = ("reference" + ("" if opts.reference_features == "ram" else f"-{opts.reference_features}")
            if opts.reference else "packed")
    info = {"dataset": str(dataset), "task": task.kind, "model": opts.model, "mode": mode,
            "pack": None if opts.reference else str(pdir), "device": str(device),
            "fanouts": list(fanouts), "batch_size": int(batch_size)}
    if link:
        info.update(decoder=opts.decoder, link_loss=opts.link_loss, negatives=plan.config.get("negatives"),
                    eval_negatives=plan.config.get("eval_negatives"))
    if ctx is not None:
        info.update(world_size=ctx.world_size, backend=ctx.backend, presplit=presplit)
    config = TrainConfig(epochs=opts.epochs, lr=opts.lr, weight_decay=opts.weight_decay, seed=opts.seed,
                         checkpoint_every=opts.checkpoint_every, eval_test_every_epoch=opts.eval_test_every_epoch,
                         optimizer=opts.optimizer, momentum=opts.momentum, lr_schedule=opts.lr_schedule,
                         lr_step_size=opts.lr_step_size, lr_gamma=opts.lr_gamma, early_stopping=opts.early_stopping,
                         early_stopping_metric=opts.early_stopping_metric)
    identity = run_identity(opts, ds, None if opts.reference else pack, list(fanouts), int(batch_size), link)
    trainer = Trainer(model, loaders, order=order, run_dir=run_dir, config=config, device=device,
                      task=task, log_json=opts.log_json if ctx is None or ctx.is_main else None,
                      info=info, row_bytes=ds.features.row_bytes, step_log=opts.step_log, stop=opts.stop, dist=ctx,
                      identity=identity, tensorboard=opts.tensorboard or None)
    # the trainer checked its options (a metric to watch) before the run directory is touched
    if ctx is not None:  # rank 0 prepares the run directory; the others wait for it
        failure = None
        if ctx.is_main:
            try:
                _prepare_run_dir(run_dir, dataset, opts)
            except InputError as e:
                failure = str(e)
        failure = distributed.broadcast(failure)
        if failure:
            raise InputError(failure)
    else:
        _prepare_run_dir(run_dir, dataset, opts)
    if ctx is None or ctx.is_main:
        log.info("training %s on %s (%s, %s%s) into %s", opts.model, dataset, info["mode"], device,
                 f", {ctx.world_size} ranks ({ctx.backend})" if ctx else "", run_dir)
    try:
        return trainer.fit(resume=opts.resume)
    finally:
        for loader in loaders.values():
            close = getattr(loader, "close", None)
            if close:
                close()


def _link_task(opts: TrainOptions, plan) -> bool:
    """Whether the run trains link prediction: ``--task``, else the plan's task.

    Raises:
        InputError: ``--task`` and the plan disagree.
    """
    made_for = getattr(plan, "task", "node") if plan is not None else "node"
    task = opts.task or made_for
    if plan is not None and task != made_for:
        raise InputError(f"--task {task} asks for a plan sampled for it, but plan {plan.path} was sampled for "
                         f"--task {made_for}; sample one with `diskgraph preprocess sample --task {task}` and pack it")
    return task == "link"


def _link_sampling(plan) -> dict:
    """The in-memory reference's link options: the plan's negatives and sampler, so it draws the same minibatches."""
    from .sampler.link_sampler import LinkOptions

    return {"task": "link", "link_options": LinkOptions.from_config(plan.config)}


def dataset_task(ds, class_weights: str | list[float] | None = None):
    """The :class:`~diskgraph.pipeline.tasks.Task` of the dataset's labels (its manifest's kind and output width),
    with ``--class-weights`` (``balanced``: from the train split's targets).

    Raises:
        InputError: weights that do not fit the task (see :func:`~diskgraph.pipeline.tasks.build_task`).
    """
    from .pipeline.tasks import balanced_weights, build_task, parse_class_weights

    weights = parse_class_weights(class_weights)
    if weights == "balanced":
        weights = balanced_weights(ds.task, ds.targets(ds.splits["train"]), ds.num_outputs)
    return build_task(ds.task, ds.num_outputs, weights)


def run_identity(opts: TrainOptions, ds, pack, fanouts: list[int], batch_size: int, link: bool = False) -> dict:
    """What a run's checkpoints are bound to besides the trainer's config: the dataset's and pack's contents and the
    model and sampling options, named as the user gives them (a resume with any other value is refused)."""
    from .store.binding import artifact_identity, dataset_identity

    out = {"dataset": dataset_identity(ds), "pack": artifact_identity(pack) if pack is not None else None,
           "--model": opts.model, "--hidden": opts.hidden, "--layers": len(fanouts), "--dropout": opts.dropout,
           "--fanouts": fanouts, "--batch-size": batch_size, "--reference": opts.reference,
           "--reference-features": opts.reference_features if opts.reference else None,
           "--class-weights": opts.class_weights, "--task": "link" if link else "node",
           "--decoder": opts.decoder if link else None, "--link-loss": opts.link_loss if link else None}
    if opts.model == "gat" or ":" in opts.model:  # a custom model may take heads
        out["--heads"] = opts.heads
    return out


def _check_shares(plan, presplit: bool, ctx) -> None:
    """Refuse a data-parallel run whose ranks would train different numbers of minibatches (DDP would hang)."""
    from .pipeline import distributed

    per_epoch = plan.minibatches_per_epoch("train")
    if not presplit and per_epoch < ctx.world_size:
        raise InputError(f"plan {plan.path} has {per_epoch} train minibatches per epoch, fewer than the "
                         f"{ctx.world_size} ranks; sample it with a smaller --batch-size or launch fewer ranks")
    counts = distributed.all_gather(per_epoch if presplit else None)
    if presplit and len(set(counts)) > 1:
        raise InputError(f"the ranks' split plans hold different numbers of train minibatches per epoch ({counts}); "
                         "sample every share with the same options (--shard R/W of one plan)")


RUN_FILES = ("run.json", "checkpoint.pt", "checkpoint.json", "best_model.pt", "best_model.json", "metrics.jsonl")
"""The files a run writes into its run directory (``--overwrite`` removes these, and only these)."""


def _prepare_run_dir(run_dir: Path, dataset: Path, opts: TrainOptions) -> None:
    """Create (or, with ``overwrite``, clear the run files of) the run directory and record the options in
    ``run.json`` (a resumed run keeps the one its start recorded).

    Raises:
        InputError: a run is there and neither ``resume`` nor ``overwrite`` was given, or ``overwrite`` names a
            directory that holds other files but is not a run directory.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"run directory {run_dir} is a file; pass another --run-dir")
    if run_dir.exists() and not opts.resume:
        ours = [p for p in run_dir.iterdir() if p.name in RUN_FILES or (p.name.startswith(".") and ".tmp-" in p.name)]
        if not opts.overwrite and (run_dir / "checkpoint.pt").exists():
            raise InputError(f"run directory {run_dir} already holds a run; pass --resume to continue it, --overwrite to "
                             "start over, or --run-dir for another")
        if opts.overwrite and not ours and any(run_dir.iterdir()):
            raise InputError(f"--overwrite would start a run in {run_dir}, which holds files but is not a diskgraph run "
                             "directory (it has no run.json or checkpoint.pt); pass another --run-dir")
        if opts.overwrite:
            for p in ours:
                p.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    if opts.resume and (run_dir / "run.json").exists():
        return
    recorded = {k: v for k, v in opts.__dict__.items() if k != "stop"}
    (run_dir / "run.json").write_text(json.dumps({"dataset": str(dataset), **recorded}, indent=2, default=str))
