"""``diskgraph predict`` and ``diskgraph embed``: a trained model's output for the graph's nodes, out of core; and
``diskgraph score``: a link-prediction run's scores of given node pairs.

SIGINT (Ctrl-C) and SIGTERM stop the run between slices; the layers already finished stay in the scratch
directory beside OUT and the same command continues after them (exit status 130 / 143). Nothing opens as a
finished output until the run ends.
"""

from __future__ import annotations

import argparse
import shlex
import signal

from .cli_common import EPILOG_SIZES, add_common, fanouts, parse_fanouts, positive_int
from .cli_train import EXIT_STATUS, _Stopper
from .inference_options import EMBED_DTYPES, MODES, NODE_SETS, STORAGES, InferenceOptions, ScoreOptions
from .units import parse_bytes

_WHAT = {
    "predict": ("write a trained model's predictions for every node (out of core)",
                "Write the predictions of the nodes --nodes names, as the run's task says (classification: logits "
                "[M, C] float32 and predicted classes [M] int64; multilabel: logits [M, C] and predictions [M, C] "
                "uint8, 1 where the logit > 0; regression: predictions [M] or [M, T] float32, the model's values), from "
                "the best model of a `diskgraph train` run, into OUT: a Zarr v3 group with a manifest (open it with "
                "zarr.open_group(OUT)), rows in ascending node id order beside node_ids [M]. Exact mode (the default) "
                "runs layer-wise inference over every in-neighbor with the node tables on disk, reading them in large "
                "sequential slices within --memory-budget; --mode sampled uses the training fanouts instead."),
    "embed": ("write a trained model's node embeddings of one layer (out of core)",
              "Write the output of GNN layer --layer (after its activation; the last layer's are the logits) for the "
              "nodes --nodes names into OUT: embeddings [M, H] float32 or float16 beside node_ids [M], a Zarr v3 group "
              "with a manifest. Modes as for predict. For a link-prediction run (train --task link) the model is its "
              "encoder and --layer defaults to L, the encoder's output: the embedding its decoder scores (predict "
              "writes the same for such a run; score gives node pairs' scores)."),
}


def _add(sub, kind: str) -> argparse.ArgumentParser:
    short, long = _WHAT[kind]
    example = (f"  diskgraph train data/cora --run-dir runs/cora\n  diskgraph {kind} data/cora --run runs/cora "
               f"--out cora-{kind}" + (" --layer 1" if kind == "embed" else "") +
               "\n  python -c \"import zarr; g = zarr.open_group('cora-" + kind + "'); print(g['node_ids'][:5])\"\n\n")
    p = sub.add_parser(kind, help=short, description=long, epilog="Example:\n" + example + EPILOG_SIZES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", nargs="?", metavar="DATASET", help="the dataset directory the run was trained on")
    p.add_argument("--run", metavar="RUN_DIR", help="the training run directory (its best_model.pt and best_model.json)")
    p.add_argument("--out", metavar="OUT", help="output directory (a Zarr v3 group; written atomically)")
    p.add_argument("--nodes", default="all", metavar="SET",
                   help=f"which nodes: {', '.join(NODE_SETS)} or FILE.npy of node ids (default: all); rows come in "
                        "ascending id order, each node once")
    if kind == "embed":
        p.add_argument("--layer", type=positive_int, metavar="K",
                       help="GNN layer 1..L whose output to write (default: L-1, the last hidden layer; L = the logits; "
                            "for a link-prediction run: L, the encoder's output embedding that its decoder scores)")
        p.add_argument("--dtype", choices=EMBED_DTYPES, default="float32", help="embedding dtype (default: float32)")
    m = p.add_argument_group("mode")
    m.add_argument("--mode", choices=MODES, default="exact",
                   help="exact: every in-neighbor, layer by layer (default); sampled: the training fanouts")
    m.add_argument("--memory-budget", type=parse_bytes, metavar="SIZE",
                   help="memory the inference may hold (default: half the available memory, at most 4 GiB)")
    m.add_argument("--storage", choices=STORAGES, default="disk",
                   help="exact mode's node tables: disk (out of core, default), ram (load everything: the in-memory "
                        "reference) or mmap (features through np.memmap, rows gathered at random: the baseline)")
    m.add_argument("--fanouts", type=fanouts, help="sampled mode: fanouts per hop (default: the run's)")
    m.add_argument("--batch-size", type=positive_int, help="sampled mode: seeds per minibatch (default: the run's)")
    m.add_argument("--seed", type=int, default=0, help="sampled mode: sampling seed (default: 0)")
    m.add_argument("--device", default="auto", help="sampled mode: auto, cpu or cuda[:N] (default: auto)")
    m.add_argument("--no-direct", dest="direct", action="store_false", help="sampled mode: buffered reads, not O_DIRECT")
    o = p.add_argument_group("output")
    o.add_argument("--parquet", metavar="FILE", help="also write the output as a Parquet table")
    o.add_argument("--overwrite", action="store_true", help="replace an existing output of the same kind")
    o.add_argument("--log-json", metavar="FILE", help="append the JSON summary line (nodes, seconds, bytes read, "
                                                      "read amplification, peak memory) to FILE")
    add_common(p)
    p.set_defaults(func=run_infer, section=kind, kind=kind, output=lambda a: (a.out, "--out"),
                   interrupted=_interrupted)
    return p


def add_predict(sub) -> argparse.ArgumentParser:
    return _add(sub, "predict")


def add_embed(sub) -> argparse.ArgumentParser:
    return _add(sub, "embed")


def add_score(sub) -> argparse.ArgumentParser:
    """``diskgraph score DATASET --run RUN --pairs FILE --out FILE``."""
    example = ("  diskgraph train data/cora-link --task link --decoder dot --run-dir runs/cora-link\n"
               "  diskgraph score data/cora-link --run runs/cora-link --pairs pairs.csv --out scores.parquet\n\n")
    p = sub.add_parser("score", help="score node pairs with a link-prediction run (exact, out of core)",
                       description="Score the node pairs of --pairs with the encoder and decoder of a `diskgraph train "
                       "--task link` run: the encoder's exact embeddings of the pairs' endpoints (layer-wise over every "
                       "in-neighbor, with the node tables on disk within --memory-budget, as embed computes them), "
                       "then decoder(h_src, h_dst) per pair. --out's suffix chooses the format: .npy holds the scores "
                       "float32 [P] (the decoder's logits); .csv and .parquet hold src, dst, score and probability "
                       "(sigmoid of the score); rows in the pairs' order, written atomically.",
                       epilog="Example:\n" + example + EPILOG_SIZES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", nargs="?", metavar="DATASET", help="the dataset directory the run was trained on")
    p.add_argument("--run", metavar="RUN_DIR", help="the link-prediction run directory (train --task link)")
    p.add_argument("--pairs", metavar="FILE",
                   help="node pairs: .npy integer array [P, 2] ([2, P] also read when P != 2), or .csv/.txt with two "
                        "integer columns (src, dst; an optional header line)")
    p.add_argument("--out", metavar="FILE", help="scores file: FILE.npy, FILE.csv or FILE.parquet")
    m = p.add_argument_group("inference")
    m.add_argument("--memory-budget", type=parse_bytes, metavar="SIZE",
                   help="memory the inference may hold (default: half the available memory, at most 4 GiB)")
    m.add_argument("--storage", choices=STORAGES, default="disk",
                   help="node tables: disk (out of core, default), ram (load everything) or mmap (features through "
                        "np.memmap)")
    o = p.add_argument_group("output")
    o.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    o.add_argument("--log-json", metavar="FILE", help="append the JSON summary line (pairs, endpoints, seconds, bytes "
                                                      "read, peak memory) to FILE")
    add_common(p)
    p.set_defaults(func=run_score_cli, section="score", kind="score", output=lambda a: (a.out, "--out"),
                   interrupted=_interrupted)
    return p


def options_from_args(args: argparse.Namespace) -> InferenceOptions:
    """The :class:`~diskgraph.inference_options.InferenceOptions` the parsed flags describe."""
    return InferenceOptions(kind=args.kind, run=args.run, out=args.out, nodes=args.nodes,
                            layer=getattr(args, "layer", None), dtype=getattr(args, "dtype", "float32"),
                            mode=args.mode, memory_budget=args.memory_budget, storage=args.storage,
                            fanouts=parse_fanouts(args.fanouts) if args.fanouts else None,
                            batch_size=args.batch_size or None, parquet=args.parquet, device=args.device,
                            overwrite=args.overwrite, log_json=args.log_json, seed=args.seed, direct=args.direct)


def _command(args: argparse.Namespace) -> str:
    return shlex.join(["diskgraph", *(getattr(args, "argv", None) or [args.kind])])


def _interrupted(args: argparse.Namespace, _out) -> str:
    return (f"interrupted; {args.out or 'the output'} was not written; the layers finished so far stay beside it and "
            f"`{_command(args)}` continues after them")


def _stoppable(args: argparse.Namespace, request) -> dict | int:
    """Run ``request(stop_event)`` with SIGINT/SIGTERM turned into a stop between slices: its summary, or the exit
    status of a stopped run (after one sentence saying how to continue it)."""
    from .pipeline.trainer import StopRequested

    stopper = _Stopper()
    try:
        return request(stopper.event)
    except StopRequested:
        import sys

        name = signal.Signals(stopper.signum or signal.SIGINT).name
        print(f"diskgraph: stopped by {name}; {args.out} was not written, the layers finished so far stay beside "
              f"it and `{_command(args)}` continues after them", file=sys.stderr)
        return EXIT_STATUS.get(stopper.signum or signal.SIGINT, 130)
    finally:
        stopper.restore()


def run_infer(args: argparse.Namespace) -> int:
    from .inference import run_inference
    from .store.errors import InputError

    if not args.dataset:
        raise InputError(f"no dataset given; pass the dataset directory: diskgraph {args.kind} DIR --run RUN --out OUT")
    opts = options_from_args(args)

    def request(stop):
        opts.stop = stop
        return run_inference(args.dataset, opts)

    summary = _stoppable(args, request)
    if isinstance(summary, int):
        return summary
    print(f"{args.kind}: {summary['nodes']} nodes -> {args.out} ({summary['seconds']:.2f} s)")
    return 0


def run_score_cli(args: argparse.Namespace) -> int:
    from .link_scoring import run_score
    from .store.errors import InputError

    if not args.dataset:
        raise InputError("no dataset given; pass the dataset directory: diskgraph score DIR --run RUN --pairs FILE "
                         "--out FILE")
    summary = _stoppable(args, lambda stop: run_score(args.dataset, ScoreOptions(
        run=args.run, pairs=args.pairs, out=args.out, memory_budget=args.memory_budget, storage=args.storage,
        overwrite=args.overwrite, log_json=args.log_json, stop=stop)))
    if isinstance(summary, int):
        return summary
    print(f"score: {summary['pairs']} pairs -> {args.out} ({summary['seconds']:.2f} s)")
    return 0
