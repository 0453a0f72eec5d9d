"""The ``diskgraph`` command line: one entry point, subcommands, config files.

Every subcommand has ``--help``; ``--config FILE`` supplies options from TOML
or YAML and ``--print-config`` shows the resolved options and exits. Bad input
ends with exit status 2 and one sentence on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from .config import apply_config, render_config
from .store.errors import InputError
from .store.progress import format_bytes, set_quiet
from .units import parse_bytes

EPILOG_SIZES = "Sizes accept K/M/G/T (powers of 1024, also KiB/MiB/GiB) or KB/MB/GB (powers of 1000)."


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("general")
    g.add_argument("--config", metavar="FILE", help="read options from a TOML or YAML file (flags given here win)")
    g.add_argument("--print-config", action="store_true", help="print the resolved options as TOML and exit")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings and errors only")
    g.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _positive_int(text: str) -> int:
    try:
        v = int(str(text).replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return v


# -- preprocess import -----------------------------------------------------------------------------

def _add_import(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "import", help="raw edges/features/labels/splits → a dataset directory",
        description="Import a raw graph into a validated, versioned dataset directory (Zarr v3 arrays + manifest). "
                    "The topology is built as CSC over in-edges by an out-of-core counting sort that holds at most "
                    "--memory-budget bytes; features are copied in row slices. The output appears only when complete.",
        epilog="Examples:\n"
               "  diskgraph preprocess import --npz ../shared/datasets/cora/data.npz --out data/cora\n"
               "  diskgraph preprocess import --edges edges.parquet --features feats.npy --labels y.npy \\\n"
               "      --split random:0.8,0.1,0.1 --undirected --dedup --out data/mygraph\n\n" + EPILOG_SIZES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    i = p.add_argument_group("inputs")
    i.add_argument("--npz", metavar="PATH", help="a data.npz with edges[/edges_upper], features, labels, train_idx/val_idx/test_idx "
                   "(the shared datasets' layout); other input flags override its parts")
    i.add_argument("--edges", metavar="PATH", help="edges: .npy [2,E] or [E,2]; Parquet/CSV file or directory of part files")
    i.add_argument("--edges-format", choices=["npy", "parquet", "csv"], help="format of --edges (default: from the name)")
    i.add_argument("--src-column", default="source", help="source-id column of Parquet/CSV edges (default: source; "
                   "digits mean a 0-based position in a CSV without header)")
    i.add_argument("--dst-column", default="target", help="target-id column of Parquet/CSV edges (default: target)")
    i.add_argument("--features", metavar="PATH", help="node features: .npy, Zarr array, Parquet, or raw binary (with --dtype/--dim)")
    i.add_argument("--features-format", choices=["npy", "zarr", "parquet", "raw"], help="format of --features (default: from the name)")
    i.add_argument("--feature-column", help="Parquet list column holding each node's vector (default: the only list column, "
                   "else one float column per dimension)")
    i.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="value type of raw binary features")
    i.add_argument("--dim", type=_positive_int, help="features per node of raw binary features")
    i.add_argument("--labels", metavar="PATH", help="class id per node (.npy or Parquet), -1 = unlabelled")
    i.add_argument("--label-column", help="column of Parquet labels (default: the only column)")
    s = p.add_argument_group("splits")
    s.add_argument("--train", metavar="PATH", help="training nodes: index array or boolean mask (.npy/.parquet)")
    s.add_argument("--val", metavar="PATH", help="validation nodes: index array or boolean mask")
    s.add_argument("--test", metavar="PATH", help="test nodes: index array or boolean mask")
    s.add_argument("--split", metavar="SPEC", help="random split of the labelled nodes, e.g. random:0.6,0.2,0.2 "
                   "(default when labels come without splits: random:0.6,0.2,0.2)")
    s.add_argument("--seed", type=int, default=0, help="seed of the random split (default: 0)")
    o = p.add_argument_group("graph options")
    o.add_argument("--undirected", action="store_true", help="add the reverse of every edge")
    o.add_argument("--dedup", action="store_true", help="keep one copy of repeated edges")
    o.add_argument("--drop-self-loops", action="store_true", help="remove edges from a node to itself")
    o.add_argument("--num-nodes", type=_positive_int, help="node count (default: feature rows, else labels, else largest id + 1)")
    o.add_argument("--num-classes", type=_positive_int, help="class count (default: largest label + 1)")
    o.add_argument("--feature-dtype", choices=["float32", "float16", "bfloat16"], help="store features as this type "
                   "(default: as given; float64 becomes float32)")
    o.add_argument("--allow-nonfinite", action="store_true", help="accept NaN/inf features")
    r = p.add_argument_group("output and resources")
    r.add_argument("--out", metavar="DIR", help="dataset directory to create (required)")
    r.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    r.add_argument("--memory-budget", type=parse_bytes, metavar="SIZE",
                   help="bytes the import may hold (default: half the available memory, at most 4 GiB)")
    _common(p)
    p.set_defaults(func=_run_import, section="import")
    return p


def _run_import(args: argparse.Namespace) -> int:
    from .store.importer import ImportOptions, import_dataset
    from .store.sources.edges import open_edges
    from .store.sources.features import open_features
    from .store.sources.labels import load_labels, parse_random_split
    from .store.sources.npz_layout import open_npz_dataset
    from .store.sources.labels import read_node_array

    if not args.out:
        raise InputError("no output directory given; pass --out DIR")
    if not args.npz and not args.edges:
        raise InputError("no edges given; pass --edges PATH (or --npz PATH for a data.npz)")
    edges = features = labels = None
    labels_label = "labels"
    splits: dict = {}
    if args.npz:
        npz = open_npz_dataset(args.npz)
        edges, features, labels, labels_label, splits = npz.edges, npz.features, npz.labels, npz.labels_label, npz.splits
    if args.edges:
        edges = open_edges(args.edges, args.edges_format, args.src_column, args.dst_column)
    if args.features:
        features = open_features(args.features, args.features_format, args.dtype, args.dim, args.feature_column)
    if args.labels:
        labels, labels_label = load_labels(args.labels, args.label_column)
    explicit = {name: getattr(args, name) for name in ("train", "val", "test") if getattr(args, name)}
    random_split = None
    if explicit:
        if args.split:
            raise InputError("--split and --train/--val/--test both give splits; use one or the other")
        splits = {name: (read_node_array(path, f"{name} split", f"--{name}"), f"{name} split file {path}")
                  for name, path in explicit.items()}
    elif args.split:
        splits = {}
        random_split = (parse_random_split(args.split), args.seed)
    elif not splits and labels is not None:
        logging.getLogger("diskgraph").info("no splits given: drawing random:0.6,0.2,0.2 with seed %d over the labelled nodes", args.seed)
        random_split = ((0.6, 0.2, 0.2), args.seed)
    opts = ImportOptions(undirected=args.undirected, dedup=args.dedup, drop_self_loops=args.drop_self_loops,
                         allow_nonfinite=args.allow_nonfinite, memory_budget=args.memory_budget,
                         num_nodes=args.num_nodes, num_classes=args.num_classes, feature_dtype=args.feature_dtype,
                         overwrite=args.overwrite)
    import_dataset(args.out, edges, features=features, labels=labels, labels_label=labels_label,
                   splits=splits or None, random_split=random_split, options=opts)
    return 0


# -- generate --------------------------------------------------------------------------------------

def _add_generate(sub) -> argparse.ArgumentParser:
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
    p.add_argument("--memory-budget", type=parse_bytes, metavar="SIZE", help="bytes the import step may hold")
    _common(p)
    p.set_defaults(func=_run_generate, section="generate")
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

        with AtomicDirectory(args.out, overwrite=args.overwrite) as tmp:
            generate.write_raw_inputs(tmp, nodes=args.nodes, edges=args.edges, feature_dim=args.feature_dim,
                                      classes=args.classes, seed=args.seed, feature_dtype=args.feature_dtype, **kwargs)
        return 0
    generate.generate_dataset(args.out, nodes=args.nodes, edges=args.edges, feature_dim=args.feature_dim,
                              classes=args.classes, seed=args.seed, feature_dtype=args.feature_dtype, split=args.split,
                              memory_budget=args.memory_budget, overwrite=args.overwrite, **kwargs)
    return 0


# -- inspect ---------------------------------------------------------------------------------------

def _add_inspect(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "inspect", help="summarize a dataset directory; --verify re-checks it",
        description="Print a dataset's nodes, edges, in-degree statistics, features, labels, splits and sizes on disk. "
                    "--verify re-reads every array and checks checksums and invariants (exit status 1 on a problem).")
    p.add_argument("dataset", nargs="?", metavar="DATASET", help="dataset directory")
    p.add_argument("--verify", action="store_true", help="re-check checksums and invariants (reads everything)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    _common(p)
    p.set_defaults(func=_run_inspect, section="inspect")
    return p


def _run_inspect(args: argparse.Namespace) -> int:
    from .store.dataset import open_dataset

    if not args.dataset:
        raise InputError("no dataset given; pass the dataset directory: diskgraph inspect DIR")
    ds = open_dataset(args.dataset)
    info = ds.stats()
    problems = None
    if args.verify:
        problems = ds.verify()
        info["verify"] = {"ok": not problems, "problems": problems}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(_render_stats(info))
    return 1 if problems else 0


def _render_stats(info: dict) -> str:
    d = info["in_degree"]
    lines = [
        f"dataset       {info['path']}  (format version {info['format_version']})",
        f"nodes         {info['num_nodes']:,}",
        f"edges         {info['num_edges']:,}  (stored, CSC over in-edges)",
        f"in-degree     min {d['min']}  median {d['median']}  p99 {d['p99']}  max {d['max']}  mean {d['mean']:.2f}  "
        f"isolated {d['isolated_nodes']:,}",
    ]
    if info["feature_dim"]:
        lines.append(f"features      {info['num_nodes']:,} x {info['feature_dim']} {info['feature_dtype']}  "
                     f"({format_bytes(info['feature_bytes'])})")
    else:
        lines.append("features      none")
    if "label_counts" in info:
        counts = ", ".join(f"{c}: {n:,}" for c, n in info["label_counts"].items())
        lines.append(f"classes       {info['num_classes']}  ({counts}; unlabelled {info['unlabelled_nodes']:,})")
    else:
        lines.append("labels        none")
    if info["splits"]:
        lines.append("splits        " + "  ".join(f"{k} {v:,}" for k, v in info["splits"].items()))
    disk = info["disk_bytes"]
    parts = "  ".join(f"{k} {format_bytes(v)}" for k, v in disk.items() if k != "total")
    lines.append(f"on disk       {format_bytes(disk['total'])}  ({parts})")
    if "verify" in info:
        v = info["verify"]
        lines.append("verify        ok: checksums and invariants hold" if v["ok"] else
                     "verify        FAILED:\n" + "\n".join(f"  - {p}" for p in v["problems"]))
    return "\n".join(lines)


# -- entry point -----------------------------------------------------------------------------------

def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and its leaf parsers by section name."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="diskgraph",
        description="Train graph neural networks on graphs larger than memory. "
                    "Start with `diskgraph generate` or `diskgraph preprocess import`, then `diskgraph inspect`.",
    )
    parser.add_argument("--version", action="version", version=f"diskgraph {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    pre = sub.add_parser("preprocess", help="import raw inputs into a dataset directory",
                         description="Preprocessing stages. Each writes a versioned directory atomically.")
    pre_sub = pre.add_subparsers(dest="subcommand", metavar="STAGE")
    leaves = {"import": _add_import(pre_sub), "generate": _add_generate(sub), "inspect": _add_inspect(sub)}
    pre.set_defaults(func=lambda a: _usage(pre))
    return parser, leaves


def _usage(p: argparse.ArgumentParser) -> int:
    p.print_help(sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 verify failed, 2 refused input)."""
    parser, leaves = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help(sys.stderr)
        return 2
    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else
                        logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
                        format="diskgraph: %(message)s", stream=sys.stderr)
    set_quiet(getattr(args, "quiet", False))
    try:
        section = getattr(args, "section", None)
        if section and args.config:
            leaf = leaves[section]
            all_dests = {a.dest for p in leaves.values() for a in p._actions}
            apply_config(args.config, section, leaf, all_dests, set(leaves))
            args = parser.parse_args(argv)
        if section and args.print_config:
            print(render_config(section, args, leaves[section]), end="")
            return 0
        return int(args.func(args) or 0)
    except InputError as e:
        print(f"diskgraph: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("diskgraph: interrupted; nothing was left at the output path", file=sys.stderr)
        return 130
