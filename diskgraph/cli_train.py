"""``diskgraph train``: train a GNN from a dataset directory's pack, in the foreground."""

from __future__ import annotations

import argparse
import os

from .cli_common import add_common, fanouts, parse_fanouts, positive_int
from .store.errors import InputError


def add_train(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "train", help="train a GNN from a packed plan (pipelined, out of core)",
        description="Train GraphSAGE, GCN or GAT for node classification from DATASET/packs/PACK: packed extents are "
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
    m.add_argument("--model", choices=["sage", "gcn", "gat"], default="sage", help="GNN (default: sage, mean aggregator)")
    m.add_argument("--hidden", type=positive_int, default=256, help="hidden width (default: 256); layers = the plan's hops")
    m.add_argument("--layers", type=positive_int, help="GNN layers; must equal the plan's hops (default: the plan's hops)")
    m.add_argument("--heads", type=positive_int, default=4, help="attention heads of GAT (default: 4)")
    m.add_argument("--dropout", type=float, default=0.5, help="dropout (default: 0.5)")
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=positive_int, default=10, help="training epochs (default: 10)")
    o.add_argument("--lr", type=float, default=0.003, help="Adam learning rate (default: 0.003)")
    o.add_argument("--weight-decay", type=float, default=0.0, help="Adam weight decay (default: 0)")
    o.add_argument("--seed", type=int, default=0, help="seeds model init, dropout and the epoch order (default: 0)")
    r = p.add_argument_group("run")
    r.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N] (default: auto)")
    r.add_argument("--run-dir", metavar="DIR", help="run directory (default: DATASET/runs/PACK-MODEL-seedS)")
    r.add_argument("--log-json", metavar="FILE", help="also write one JSON object per epoch here; the last line is the summary")
    r.add_argument("--step-log", metavar="FILE", help="append one JSON line per training minibatch (epoch, position, loss, "
                                                     "seconds, bytes read) to FILE, flushed as it goes")
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
    p.set_defaults(func=run_train, section="train")
    return p


def options_from_args(args: argparse.Namespace) -> "TrainOptions":
    """The :class:`~diskgraph.train.TrainOptions` the parsed flags describe (refusing contradictory ones)."""
    from .train import TrainOptions

    if args.reference_features != "ram" and not args.reference:
        raise InputError("--reference-features applies to --reference runs only; add --reference or drop it")
    if args.epochs < 1:
        raise InputError("--epochs must be at least 1")
    return TrainOptions(pack=args.pack, model=args.model, hidden=args.hidden, layers=args.layers, dropout=args.dropout,
                        lr=args.lr, weight_decay=args.weight_decay, heads=args.heads, epochs=args.epochs, seed=args.seed,
                        device=args.device, run_dir=args.run_dir, log_json=args.log_json, resume=args.resume,
                        overwrite=args.overwrite, checkpoint_every=args.checkpoint_every,
                        queue_depth=max(1, args.queue_depth), direct=args.direct, reference=args.reference,
                        fanouts=parse_fanouts(args.fanouts) if args.fanouts else None, batch_size=args.batch_size,
                        eval_test_every_epoch=args.eval_test_every_epoch,
                        reference_features=args.reference_features, step_log=args.step_log)


def run_train(args: argparse.Namespace) -> int:
    from .train import run_training

    if not args.dataset:
        raise InputError("no dataset given; pass the dataset directory: diskgraph train DIR")
    summary = run_training(args.dataset, options_from_args(args))
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 alone reports
        return 0
    keys = [k for k in ("test_acc", "test_auc", "best_val_acc", "best_epoch") if summary.get(k) is not None]
    print(" ".join(f"{k}={summary[k]:.4f}" if isinstance(summary[k], float) else f"{k}={summary[k]}" for k in keys))
    return 0
