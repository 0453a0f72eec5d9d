"""``diskgraph generate``: a synthetic graph written in a stream."""

from __future__ import annotations

import argparse

from .cli_common import EPILOG_SIZES, add_common, positive_int as _positive_int
from .store.errors import InputError
from .units import parse_bytes


def add_generate(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "generate", help="write a synthetic power-law graph with a planted signal",
        description="Write a synthetic graph of any size in a stream: R-MAT power-law topology, features and labels "
                    "with a planted signal that a GNN learns only by using neighbors. Writes a dataset directory "
                    "(--format dataset) or raw input files edges.npy/features.npy/labels.npy (--format raw) for "
                    "`diskgraph preprocess import`.",
        epilog="Example:\n  diskgraph generate --nodes 100000 --edges 2000000 --feature-dim 64 --classes 8 --seed 0 --out data/syn\n\n"
               + EPILOG_SIZES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=_positive_int, help="number of nodes (required)")
    p.add_argument("--edges", type=_positive_int, help="number of directed edges drawn (required; repeats and self-loops are dropped)")
    p.add_argument("--feature-dim", type=_positive_int, default=64, help="features per node (default: 64)")
    p.add_argument("--classes", type=_positive_int, default=8, help="number of classes (default: 8)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same graph (default: 0)")
    p.add_argument("--homophily", type=float, help="fraction of edges rewired to the source's class (default: the generator's)")
    p.add_argument("--signal", type=float, help="class signal in the features relative to unit noise (default: the generator's)")
    p.add_argument("--feature-dtype", choices=["float32", "float16", "bfloat16"], default="float32", help="stored feature type")
    p.add_argument("--split", default="random:0.6,0.2,0.2", help="random split, e.g. random:0.1,0.1,0.8 (default: random:0.6,0.2,0.2)")
    p.add_argument("--format", choices=["dataset", "raw"], default="dataset", help="dataset directory or raw .npy inputs (default: dataset)")
    p.add_argument("--out", metavar="DIR", help="directory to create (required)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--memory-budget", type=parse_bytes, metavar="SIZE",
                   help="bytes generating (and the import step of --format dataset) may hold; a graph that needs more "
                        "is refused before anything is written (default: half the available memory, at most 4 GiB)")
    add_common(p)
    p.set_defaults(func=_run_generate, section="generate", output=lambda a: (a.out, "--out"), atomic_output=True)
    return p


def _run_generate(args: argparse.Namespace) -> int:
    from . import generate

    for flag in ("nodes", "edges", "out"):
        if getattr(args, flag) is None:
            raise InputError(f"no --{flag} given; `diskgraph generate` needs --nodes, --edges and --out")
    if args.nodes == 0:
        raise InputError("--nodes 0 makes an empty graph; pass at least one node")
    kwargs = {k: getattr(args, k) for k in ("homophily", "signal") if getattr(args, k) is not None}
    if args.format == "raw":
        from .store.atomic import AtomicDirectory

        target = AtomicDirectory(args.out, overwrite=args.overwrite, kind=generate.RAW_FORMAT)
        target.check()
        generate.check_budgets(args.out, nodes=args.nodes, edges=args.edges, feature_dim=args.feature_dim,
                               classes=args.classes, feature_dtype=args.feature_dtype, raw=True,
                               memory_budget=args.memory_budget)
        with target as tmp:
            generate.write_raw_inputs(tmp, nodes=args.nodes, edges=args.edges, feature_dim=args.feature_dim,
                                      classes=args.classes, seed=args.seed, feature_dtype=args.feature_dtype, **kwargs)
        return 0
    generate.generate_dataset(args.out, nodes=args.nodes, edges=args.edges, feature_dim=args.feature_dim,
                              classes=args.classes, seed=args.seed, feature_dtype=args.feature_dtype, split=args.split,
                              memory_budget=args.memory_budget, overwrite=args.overwrite, **kwargs)
    return 0


