"""``diskgraph train``: train a GNN from a dataset directory's pack, in the foreground.

SIGINT (Ctrl-C) and SIGTERM stop the run gracefully: the trainer finishes the current minibatch, writes a
checkpoint and the command prints where it is and the command that resumes it, then exits with 130
(SIGINT) or 143 (SIGTERM), as the daemon's jobs do. A second signal stops at once (exit status 130).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import threading
from pathlib import Path

from .cli_common import add_common, fanouts, parse_fanouts, positive_int
from .store.errors import InputError

EXIT_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}
"""Exit status of a run stopped by each signal (128 + the signal's number, as a shell reports it)."""


def add_train(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "train", help="train a GNN from a packed plan (pipelined, out of core)",
        description="Train GraphSAGE, GCN, GAT or your own model from DATASET/packs/PACK for the dataset's task (node "
                    "classification, multi-label classification or regression, as imported): packed extents are "
                    "read with O_DIRECT, hot rows come from the GPU and pinned-host tiers, and reading, assembling and "
                    "compute overlap in three stages. Logs per epoch (loss, accuracy, stage times, overlap, bytes read, "
                    "hit rates, peak memory) to RUN_DIR/metrics.jsonl and --log-json; keeps the best-validation model; "
                    "checkpoints can be resumed mid-epoch.",
        epilog="Example:\n  diskgraph preprocess all --npz ../shared/datasets/cora/data.npz --out data/cora --fanouts 10,5 "
               "--batch-size 512\n  diskgraph train data/cora --model sage --hidden 256 --epochs 20 --seed 0 --log-json cora.jsonl"
               "\n\nData-parallel (one process per GPU, or gloo on CPUs; docs/distributed.md):\n"
               "  torchrun --nproc-per-node 2 -m diskgraph train data/cora --epochs 20 --log-json cora.jsonl",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", nargs="?", metavar="DATASET", help="dataset directory made by `preprocess all`")
    p.add_argument("--pack", default="default", help="pack name under DATASET/packs, or a pack directory (default: default)")
    m = p.add_argument_group("model")
    m.add_argument("--model", default="sage", metavar="MODEL",
                   help="sage, gcn or gat (default: sage, mean aggregator), or your own as package.module:Class or "
                        "path/to/file.py:Class, built as Class(in_channels, hidden_channels, out_channels, num_layers) "
                        "and called as model(x, edge_index) on PyG batches (docs/training.md, \"Your own model\")")
    m.add_argument("--hidden", type=positive_int, default=256, help="hidden width (default: 256); layers = the plan's hops")
    m.add_argument("--layers", type=positive_int, help="GNN layers; must equal the plan's hops (default: the plan's hops)")
    m.add_argument("--heads", type=positive_int, default=4, help="attention heads of GAT (default: 4)")
    m.add_argument("--dropout", type=float, default=0.5, help="dropout (default: 0.5)")
    lk = p.add_argument_group("link prediction")
    lk.add_argument("--task", choices=["node", "link"],
                    help="node: the dataset's labels; link: link prediction on a plan sampled with `preprocess sample "
                         "--task link` (MODEL encodes nodes into --hidden-wide embeddings, --decoder scores pairs; "
                         "metrics MRR and Hits@1/10/50) (default: the plan's task)")
    lk.add_argument("--decoder", choices=["dot", "distmult", "mlp"], default="dot",
                    help="with --task link: score of a pair: dot product, DistMult (a learned diagonal relation) or "
                         "an MLP on the Hadamard product (default: dot)")
    lk.add_argument("--link-loss", choices=["bce", "softmax", "margin"], default="bce",
                    help="with --task link: binary cross-entropy (positives 1, negatives 0), softmax cross-entropy of "
                         "each positive against its negatives, or a margin ranking loss (default: bce)")
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=positive_int, default=10, help="training epochs (default: 10)")
    o.add_argument("--lr", type=float, default=0.003, help="learning rate, where the schedule starts (default: 0.003)")
    o.add_argument("--weight-decay", type=float, default=0.0,
                   help="weight decay: L2 for adam and sgd, decoupled for adamw (default: 0)")
    o.add_argument("--optimizer", choices=["adam", "adamw", "sgd"], default="adam", help="optimizer (default: adam)")
    o.add_argument("--momentum", type=float, help="SGD momentum, with --optimizer sgd only (default: 0)")
    o.add_argument("--lr-schedule", choices=["constant", "cosine", "step"], default="constant",
                   help="learning-rate schedule, stepped at each epoch's end: cosine anneals to 0 over --epochs, step "
                        "multiplies by --lr-gamma every --lr-step-size epochs (default: constant)")
    o.add_argument("--lr-step-size", type=positive_int, metavar="EPOCHS",
                   help="with --lr-schedule step: epochs between decays (default: 10)")
    o.add_argument("--lr-gamma", type=float, help="with --lr-schedule step: factor of each decay (default: 0.1)")
    o.add_argument("--early-stopping", type=positive_int, default=0, metavar="PATIENCE",
                   help="stop after PATIENCE epochs without improvement of --early-stopping-metric; needs a val split "
                        "(default: off)")
    o.add_argument("--early-stopping-metric", metavar="METRIC",
                   help="what --early-stopping watches: val_loss or val_ + a metric of the dataset's task (val_acc, "
                        "val_auc; val_micro_f1 for multilabel; val_rmse, val_mae for regression) (default: the task's "
                        "main metric: val_acc, val_micro_f1 or val_rmse)")
    o.add_argument("--class-weights", metavar="W",
                   help="weigh the loss per class (classification) or per label (multilabel: positive weights): "
                        "balanced (from the train split's labels) or one number per class, e.g. 1,4,1 (default: none)")
    o.add_argument("--seed", type=int, default=0, help="seeds model init, dropout and the epoch order (default: 0)")
    r = p.add_argument_group("run")
    r.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N] (default: auto)")
    r.add_argument("--run-dir", metavar="DIR", help="run directory (default: DATASET/runs/PACK-MODEL-seedS)")
    r.add_argument("--log-json", metavar="FILE", help="also write one JSON object per epoch here; the last line is the summary")
    r.add_argument("--step-log", metavar="FILE", help="append one JSON line per training minibatch (epoch, position, loss, "
                                                     "seconds, bytes read) to FILE, flushed as it goes")
    r.add_argument("--tensorboard", metavar="DIR",
                   help="also write per-epoch metrics (loss, accuracy, stage times, bytes read, hit rates, peak memory) "
                        "as TensorBoard event files into DIR; needs pip install \"diskgraph[tensorboard]\"")
    r.add_argument("--resume", action="store_true", help="continue the run directory's checkpoint (mid-epoch)")
    r.add_argument("--overwrite", action="store_true", help="start over in an existing run directory")
    r.add_argument("--checkpoint-every", type=positive_int, default=0, metavar="N",
                   help="checkpoint every N minibatches as well as at epoch ends (default: epoch ends only)")
    r.add_argument("--eval-test-every-epoch", action="store_true", help="evaluate the test split every epoch too")
    pl = p.add_argument_group("pipeline")
    pl.add_argument("--queue-depth", type=positive_int, default=2, help="bounded queue depth between stages (default: 2)")
    pl.add_argument("--no-direct", dest="direct", action="store_false", help="buffered reads instead of O_DIRECT")
    pl.add_argument("--reference", action="store_true",
                    help="train in memory with online sampling instead (features in RAM, no pack): the accuracy reference")
    pl.add_argument("--reference-features", choices=["ram", "mmap", "mmap-random"], default="ram",
                    help="with --reference: ram loads the feature table; mmap / mmap-random read it through memory maps "
                         "(default readahead / MADV_RANDOM), as np.memmap training does — the baseline for tables larger "
                         "than memory (default: ram)")
    pl.add_argument("--fanouts", type=fanouts, help="fanouts for --reference (default: the pack's plan)")
    pl.add_argument("--batch-size", type=positive_int, help="batch size for --reference (default: the pack's plan)")
    add_common(p)
    p.set_defaults(func=run_train, section="train", output=lambda a: (run_dir_of(a), "--run-dir"),
                   interrupted=_interrupted)
    return p


def run_dir_of(args: argparse.Namespace) -> Path | None:
    """The run directory the parsed flags name: --run-dir, else DATASET/runs/PACK-MODEL-seedS (as train.py makes it)."""
    if args.run_dir:
        return Path(args.run_dir)
    if not args.dataset:
        return None
    from .train import default_run_dir

    return default_run_dir(args.dataset, args.pack, args.model, args.seed, args.reference)


def resume_command(args: argparse.Namespace) -> str:
    """The command line that continues this run from its checkpoint: this one with --resume (and no --overwrite)."""
    argv = [a for a in getattr(args, "argv", None) or ["train", str(args.dataset)] if a != "--overwrite"]
    return shlex.join(["diskgraph", *argv, *([] if "--resume" in argv else ["--resume"])])


def _checkpoint_note(args: argparse.Namespace) -> str | None:
    """``the checkpoint PATH (epoch E, minibatch P)`` when the run directory holds one, else None."""
    from .pipeline.trainer import CHECKPOINT_INFO_NAME, CHECKPOINT_NAME

    run_dir = run_dir_of(args)
    if run_dir is None or not (run_dir / CHECKPOINT_NAME).is_file():
        return None
    where = ""
    try:
        info = json.loads((run_dir / CHECKPOINT_INFO_NAME).read_text())
        where = f" (epoch {info['epoch']}, minibatch {info['position']})"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return f"the checkpoint {run_dir / CHECKPOINT_NAME}{where}"


def _interrupted(args: argparse.Namespace, _out) -> str:
    note = _checkpoint_note(args)
    if note is None:
        return f"interrupted before the first checkpoint; {run_dir_of(args) or 'the run directory'} holds nothing to resume"
    return f"interrupted; {note} is the last one written, continue from it with `{resume_command(args)}`"


class _Stopper:
    """SIGINT/SIGTERM handlers that ask the trainer to stop after the current minibatch (``event``); a second
    signal raises KeyboardInterrupt at once. Installed only in the main thread; :meth:`restore` puts back the
    handlers it replaced."""

    def __init__(self):
        self.event = threading.Event()
        self.signum: int | None = None
        self._old: dict = {}
        if threading.current_thread() is threading.main_thread():
            for sig in EXIT_STATUS:
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, _frame) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt
        self.signum = signum
        self.event.set()
        # os.write, not logging or print: a signal handler must not re-enter a buffered stream
        os.write(2, f"diskgraph: {signal.Signals(signum).name} received; stopping after the current minibatch to "
                    "write a checkpoint (send it again to stop at once)\n".encode())

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _check_overwrite(args: argparse.Namespace) -> None:
    """Refuse --overwrite of a directory that is not a diskgraph run directory (it would be deleted)."""
    run_dir = run_dir_of(args)
    if not args.overwrite or args.resume or run_dir is None or not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise InputError(f"refusing to start over in {run_dir}: it is a file, not a run directory; remove it yourself or "
                         "choose another --run-dir")
    if next(run_dir.iterdir(), None) is not None and not (run_dir / "run.json").is_file():
        raise InputError(f"refusing to start over in {run_dir}: it is not a diskgraph run directory (it has no run.json) "
                         "and --overwrite would delete it; remove it yourself or choose another --run-dir")


def options_from_args(args: argparse.Namespace) -> "TrainOptions":
    """The :class:`~diskgraph.train.TrainOptions` the parsed flags describe (refusing contradictory ones)."""
    from .train import TrainOptions

    if args.reference_features != "ram" and not args.reference:
        raise InputError("--reference-features applies to --reference runs only; add --reference or drop it")
    if args.epochs < 1:
        raise InputError("--epochs must be at least 1")
    from .custom_models import check_model_name

    check_model_name(args.model)
    _check_optimisation(args)
    return TrainOptions(pack=args.pack, model=args.model, hidden=args.hidden, layers=args.layers, dropout=args.dropout,
                        lr=args.lr, weight_decay=args.weight_decay, heads=args.heads, epochs=args.epochs, seed=args.seed,
                        device=args.device, run_dir=args.run_dir, log_json=args.log_json, resume=args.resume,
                        overwrite=args.overwrite, checkpoint_every=args.checkpoint_every,
                        queue_depth=max(1, args.queue_depth), direct=args.direct, reference=args.reference,
                        fanouts=parse_fanouts(args.fanouts) if args.fanouts else None, batch_size=args.batch_size,
                        eval_test_every_epoch=args.eval_test_every_epoch,
                        reference_features=args.reference_features, step_log=args.step_log,
                        tensorboard=args.tensorboard, optimizer=args.optimizer, momentum=args.momentum or 0.0,
                        lr_schedule=args.lr_schedule, lr_step_size=args.lr_step_size or 10,
                        lr_gamma=args.lr_gamma if args.lr_gamma is not None else 0.1,
                        early_stopping=args.early_stopping, early_stopping_metric=args.early_stopping_metric,
                        class_weights=_class_weights(args.class_weights), task=args.task, decoder=args.decoder,
                        link_loss=args.link_loss)


def _class_weights(spec: str | None):
    from .pipeline.tasks import parse_class_weights

    return parse_class_weights(spec)


def _check_optimisation(args: argparse.Namespace) -> None:
    """Refuse optimizer, schedule and early-stopping flags that do not go together (one sentence each)."""
    if args.lr <= 0:
        raise InputError(f"--lr {args.lr} must be positive")
    if args.weight_decay < 0:
        raise InputError(f"--weight-decay {args.weight_decay} must not be negative")
    if args.momentum is not None and args.optimizer != "sgd":
        raise InputError(f"--momentum applies to --optimizer sgd only (this run: {args.optimizer}); add --optimizer sgd "
                         "or drop --momentum")
    if args.momentum is not None and not 0 <= args.momentum < 1:
        raise InputError(f"--momentum {args.momentum} must be in [0, 1)")
    for flag, value in (("--lr-step-size", args.lr_step_size), ("--lr-gamma", args.lr_gamma)):
        if value is not None and args.lr_schedule != "step":
            raise InputError(f"{flag} applies to --lr-schedule step only (this run: {args.lr_schedule}); add "
                             f"--lr-schedule step or drop {flag}")
    if args.lr_step_size == 0:
        raise InputError("--lr-step-size must be at least 1 epoch")
    if args.lr_gamma is not None and not 0 < args.lr_gamma <= 1:
        raise InputError(f"--lr-gamma {args.lr_gamma} must be in (0, 1]")
    if args.early_stopping_metric is not None and not args.early_stopping:
        raise InputError("--early-stopping-metric needs --early-stopping PATIENCE; add it or drop the metric")


def run_train(args: argparse.Namespace) -> int:
    """Train in the foreground; a SIGINT/SIGTERM stops after a checkpoint (exit status 130/143, see the module)."""
    stopper = _Stopper()
    try:
        from .pipeline.trainer import StopRequested
        from .train import run_training

        if not args.dataset:
            raise InputError("no dataset given; pass the dataset directory: diskgraph train DIR")
        _check_overwrite(args)
        opts = options_from_args(args)
        opts.stop = stopper.event
        try:
            summary = run_training(args.dataset, opts)
        except StopRequested:
            return _stopped(args, stopper.signum or signal.SIGINT)
    finally:
        stopper.restore()
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 alone reports
        return 0
    tests = [k for k in summary if k.startswith("test_")]
    keys = [k for k in tests + [f"best_{summary.get('monitor')}", "best_epoch"] if summary.get(k) is not None]
    print(" ".join(f"{k}={summary[k]:.4f}" if isinstance(summary[k], float) else f"{k}={summary[k]}" for k in keys))
    if summary.get("stopped_early"):
        print(f"stopped early after {summary['epochs_run']} of {summary['epochs']} epochs (--early-stopping "
              f"{opts.early_stopping}, {opts.early_stopping_metric or summary.get('monitor')})")
    return 0


def _stopped(args: argparse.Namespace, signum: int) -> int:
    """Say where the checkpoint a stopped run wrote is and how to resume it; returns the exit status."""
    import sys

    name = signal.Signals(signum).name
    note = _checkpoint_note(args)
    if os.environ.get("RANK", "0") == "0":
        if note is None:
            print(f"diskgraph: stopped by {name} before the first minibatch; {run_dir_of(args)} holds nothing to resume, "
                  "run the command again to start", file=sys.stderr)
        else:
            print(f"diskgraph: stopped by {name}; {note} holds the run so far, continue it with "
                  f"`{resume_command(args)}`", file=sys.stderr)
    return EXIT_STATUS.get(signum, 130)
