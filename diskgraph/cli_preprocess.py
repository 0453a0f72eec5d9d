"""``diskgraph preprocess``: import, sample, pack, and all three in one go.

``preprocess all`` continues from the stages a previous run finished: a stage whose output exists and was
made from the same inputs and options is kept (with a log line), one made differently is refused with
the option that differs (or replaced with ``--overwrite``). The import records the options and input
files it was given under ``import_command`` in the dataset's manifest for that comparison.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from .cli_common import EPILOG_SIZES, add_common, fanouts, parse_fanouts, positive_int, shard
from .store.atomic import check_replaceable
from .store.errors import InputError
from .store.label_kinds import TASKS
from .units import parse_bytes


# -- import ----------------------------------------------------------------------------------------

def add_import_options(p: argparse.ArgumentParser) -> None:
    """The options of `preprocess import` (also part of `preprocess all`)."""
    i = p.add_argument_group("inputs")
    i.add_argument("--npz", metavar="PATH", help="a data.npz with edges[/edges_upper], features, labels, train_idx/val_idx/test_idx "
                   "(the shared datasets' layout); other input flags override its parts")
    i.add_argument("--ogb", metavar="DIR", help="an OGB node-property-prediction directory as ogb downloads it (raw/edge.csv.gz, "
                   "node-feat, node-label, split/SCHEME/train|valid|test); ogbn-products/proteins get --undirected "
                   "(ogb's add_inverse_edge); other input flags override its parts")
    i.add_argument("--ogb-split", metavar="SCHEME", help="split scheme of --ogb (a folder under split/; needed when there are several)")
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
    i.add_argument("--dim", type=positive_int, help="features per node of raw binary features")
    i.add_argument("--labels", metavar="PATH", help="labels per node (.npy or Parquet): class ids [N], -1 = unlabelled; "
                   "0/1 rows [N, C] (multilabel); float targets [N] or [N, T], NaN = unlabelled (regression)")
    i.add_argument("--task", choices=TASKS,
                   help="the kind of --labels (default: told from them: 1-D whole numbers = classification, 2-D 0/1 = "
                        "multilabel, other floats = regression); labels that contradict it are refused")
    i.add_argument("--label-column", help="column of Parquet labels (default: the only column)")
    s = p.add_argument_group("splits")
    s.add_argument("--train", metavar="PATH", help="training nodes: index array or boolean mask (.npy/.parquet)")
    s.add_argument("--val", metavar="PATH", help="validation nodes: index array or boolean mask")
    s.add_argument("--test", metavar="PATH", help="test nodes: index array or boolean mask")
    s.add_argument("--split", metavar="SPEC", help="random split of the labelled nodes, e.g. random:0.6,0.2,0.2 "
                   "(default when labels come without splits: random:0.6,0.2,0.2)")
    s.add_argument("--seed", type=int, default=0, help="seed of the random split and of --edge-split (default: 0)")
    e = p.add_argument_group("edge split (link prediction)")
    e.add_argument("--edge-split", metavar="SPEC", help="split the edges into train/val/test supervision edges, e.g. "
                   "random:0.85,0.05,0.1 (drawn per edge from --seed; with --undirected over unordered pairs); val/test "
                   "edges are left out of the stored graph, train edges stay in it")
    e.add_argument("--val-edges", metavar="PATH", help="validation edges instead of --edge-split: .npy [2,E] or [E,2] of "
                   "edges of the input graph (with --test-edges)")
    e.add_argument("--test-edges", metavar="PATH", help="test edges instead of --edge-split: .npy [2,E] or [E,2]")
    o = p.add_argument_group("graph options")
    o.add_argument("--undirected", action="store_true", help="add the reverse of every edge")
    o.add_argument("--dedup", action="store_true", help="keep one copy of repeated edges")
    o.add_argument("--drop-self-loops", action="store_true", help="remove edges from a node to itself")
    o.add_argument("--num-nodes", type=positive_int, help="node count (default: feature rows, else labels, else largest id + 1)")
    o.add_argument("--num-classes", type=positive_int, help="class count (default: largest label + 1; multilabel: the label "
                   "columns; not for regression)")
    o.add_argument("--feature-dtype", choices=["float32", "float16", "bfloat16"], help="store features as this type "
                   "(default: as given; float64 becomes float32)")
    o.add_argument("--allow-nonfinite", action="store_true", help="accept NaN/inf features")
    r = p.add_argument_group("output and resources")
    r.add_argument("--out", metavar="DIR", help="dataset directory to create (required)")
    r.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    r.add_argument("--memory-budget", type=parse_bytes, metavar="SIZE",
                   help="bytes the import may hold (default: half the available memory, at most 4 GiB)")


def add_import(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "import", help="raw edges/features/labels/splits → a dataset directory",
        description="Import a raw graph into a validated, versioned dataset directory (Zarr v3 arrays + manifest). "
                    "The topology is built as CSC over in-edges by an out-of-core counting sort that holds at most "
                    "--memory-budget bytes; features are copied in row slices. The output appears only when complete.",
        epilog="Examples:\n"
               "  diskgraph preprocess import --npz ../shared/datasets/cora/data.npz --out data/cora\n"
               "  diskgraph preprocess import --edges edges.parquet --features feats.npy --labels y.npy \\\n"
               "      --split random:0.8,0.1,0.1 --undirected --dedup --out data/mygraph\n"
               "  diskgraph preprocess import --edges edges.npy --features feats.npy --labels y.npy --task multilabel \\\n"
               "      --out data/ppi            # y.npy: [N, C] of 0/1 (float [N] or [N, T] targets: --task regression)\n\n"
               + EPILOG_SIZES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_import_options(p)
    add_common(p)
    p.set_defaults(func=run_import, section="import", output=lambda a: (a.out, "--out"), atomic_output=True)
    return p


IMPORT_RECORD = "import_command"
"""The dataset manifest's entry recording the import's options and input files (see :func:`import_record`)."""

_IMPORT_OPTIONS = ("npz", "ogb", "ogb_split", "edges", "edges_format", "src_column", "dst_column", "features", "features_format",
                   "feature_column", "dtype", "dim", "labels", "label_column", "train", "val", "test", "split", "seed",
                   "undirected", "dedup", "drop_self_loops", "num_nodes", "num_classes", "task", "feature_dtype",
                   "allow_nonfinite", "edge_split", "val_edges", "test_edges")
_INPUT_PATHS = ("npz", "ogb", "edges", "features", "labels", "train", "val", "test", "val_edges", "test_edges")


def _fingerprint(path: str) -> dict:
    """Size and modification time of an input file (a directory: its files' count, total size, newest time)."""
    try:
        if os.path.isdir(path):
            files = size = newest = 0
            for root, _dirs, names in os.walk(path):
                for name in names:
                    st = os.stat(os.path.join(root, name))
                    files, size, newest = files + 1, size + st.st_size, max(newest, st.st_mtime_ns)
            return {"files": files, "bytes": size, "mtime_ns": newest}
        st = os.stat(path)
        return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
    except OSError:
        return {}


def import_record(args: argparse.Namespace, random_split: bool) -> dict:
    """What an import was made from: every option that shapes the dataset (input paths made absolute; the
    seed only when a random split is drawn) and the size and modification time of every input."""
    random_split = random_split or bool(getattr(args, "edge_split", None))
    options = {k: getattr(args, k, None) for k in _IMPORT_OPTIONS if k != "seed" or random_split}
    for k in _INPUT_PATHS:
        if options[k]:
            options[k] = os.path.abspath(options[k])
    return {"options": options, "inputs": {k: _fingerprint(options[k]) for k in _INPUT_PATHS if options[k]}}


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _value(value) -> str:
    return "not given" if value is None else "on" if value is True else "off" if value is False else str(value)


def import_difference(recorded: dict | None, wanted: dict) -> str | None:
    """The first option or input in which two :func:`import_record` results differ (a phrase), or None."""
    if not isinstance(recorded, dict):
        return "it does not record its options"
    have, want = recorded.get("options") or {}, wanted["options"]
    for k in _IMPORT_OPTIONS:
        if have.get(k) != want.get(k):
            return f"{_flag(k)} {_value(have.get(k))} there, {_value(want.get(k))} in this run"
    inputs = recorded.get("inputs") or {}
    for k, fingerprint in wanted["inputs"].items():
        if inputs.get(k) != fingerprint:
            return f"{_flag(k)} {want[k]} changed since the import (its size or modification time differ)"
    return None


def import_from_args(args: argparse.Namespace) -> Path:
    """Run the import the parsed options describe; returns the dataset directory."""
    from .store.edge_splits import EdgeSplitSpec
    from .store.importer import ImportOptions, import_dataset
    from .store.sources.edges import open_edges
    from .store.sources.features import open_features
    from .store.sources.labels import load_labels, parse_random_split
    from .store.sources.npz_layout import open_npz_dataset
    from .store.sources.labels import read_node_array

    if not args.out:
        raise InputError("no output directory given; pass --out DIR")
    if not args.npz and not args.edges and not getattr(args, "ogb", None):
        raise InputError("no edges given; pass --edges PATH (or --npz PATH for a data.npz, --ogb DIR for an OGB directory)")
    if args.npz and getattr(args, "ogb", None):
        raise InputError("--npz and --ogb both give a whole dataset; pass one of them")
    if args.overwrite and os.path.lexists(args.out):
        check_replaceable(args.out, "diskgraph.dataset", "--out")
    edge_split = EdgeSplitSpec.from_options(getattr(args, "edge_split", None), getattr(args, "val_edges", None),
                                            getattr(args, "test_edges", None), args.seed)
    edges = features = labels = None
    labels_label = "labels"
    splits: dict = {}
    if args.npz:
        npz = open_npz_dataset(args.npz)
        edges, features, labels, labels_label, splits = npz.edges, npz.features, npz.labels, npz.labels_label, npz.splits
    ogb_nodes, ogb_undirected = None, False
    if getattr(args, "ogb", None):
        from .store.sources.ogb import ADD_INVERSE_EDGE, dataset_name, open_ogb

        ogb, ogb_nodes = open_ogb(args.ogb, args.ogb_split, getattr(args, "task", None))
        edges, features, labels, labels_label, splits = ogb.edges, ogb.features, ogb.labels, ogb.labels_label, ogb.splits
        ogb_undirected = ADD_INVERSE_EDGE.get(dataset_name(args.ogb), False)
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
    opts = ImportOptions(undirected=args.undirected or ogb_undirected, dedup=args.dedup, drop_self_loops=args.drop_self_loops,
                         allow_nonfinite=args.allow_nonfinite, memory_budget=args.memory_budget,
                         num_nodes=args.num_nodes, num_classes=args.num_classes, task=getattr(args, "task", None),
                         feature_dtype=args.feature_dtype, overwrite=args.overwrite)
    if ogb_nodes is not None and opts.num_nodes is None and features is None:
        opts.num_nodes = ogb_nodes
    record = import_record(args, random_split is not None)
    return import_dataset(args.out, edges, features=features, labels=labels, labels_label=labels_label,
                          splits=splits or None, random_split=random_split, options=opts,
                          extra_manifest={IMPORT_RECORD: record}, edge_split=edge_split)


def run_import(args: argparse.Namespace) -> int:
    import_from_args(args)
    return 0


# -- sample ----------------------------------------------------------------------------------------

SAMPLE_TASKS = ("node", "link")
"""What ``--task`` of ``preprocess sample`` chooses (``preprocess all``'s ``--task`` takes these and the label kinds)."""
_SAMPLE_TASK_HELP = ("node: minibatches of seed nodes; link: minibatches of positive edges of the dataset's edge split "
                     "with negatives (link prediction)")


def add_sample_options(p: argparse.ArgumentParser, with_seed: bool = True, with_task: bool = True) -> None:
    """The options of `preprocess sample` (also part of `preprocess all`, whose import ``--task`` also takes
    node/link: ``with_task=False`` there)."""
    g = p.add_argument_group("sampling")
    if with_task:
        g.add_argument("--task", choices=SAMPLE_TASKS, default="node",
                       help=f"{_SAMPLE_TASK_HELP} (default: node)")
    g.add_argument("--fanouts", type=fanouts, default="15,10",
                   help="neighbors drawn per node at each hop, nearest hop first (PyG's num_neighbors order; DGL lists "
                        "them the other way round); -1 = all neighbors; the count is the number of GNN layers (default: 15,10)")
    g.add_argument("--batch-size", type=positive_int, default=1024, help="seed nodes per minibatch (default: 1024)")
    if with_seed:
        g.add_argument("--seed", type=int, default=0, help="sampling seed; the same seed gives the same plan, bit for bit (default: 0)")
    g.add_argument("--epochs", type=positive_int, default=1,
                   help="distinct training epochs to presample; training replays them in a fresh order (default: 1)")
    g.add_argument("--eval-fanouts", type=fanouts, help="fanouts of the val/test plans (default: --fanouts)")
    g.add_argument("--eval-batch-size", type=positive_int, help="seed nodes per val/test minibatch (default: --batch-size)")
    g.add_argument("--splits", help="comma-separated splits to sample, e.g. train,val to skip a large test split "
                                    "(default: every one of train, val, test the dataset has)")
    g.add_argument("--threads", type=positive_int, help="sampling threads (default: one per CPU)")
    g.add_argument("--shard", type=shard, metavar="R/W",
                   help="sample (and pack) only share R of W of every epoch's minibatches, into NAME.rankR-of-W, for "
                        "data-parallel training with W ranks (docs/distributed.md)")
    k = p.add_argument_group("link prediction (--task link)")
    k.add_argument("--negatives", type=int, default=1, metavar="K",
                   help="negative destinations per positive training edge (default: 1)")
    k.add_argument("--negative-sampler", choices=["uniform", "degree"], default="uniform",
                   help="how training negatives are drawn: uniform over nodes, or degree (∝ degree^0.75) (default: uniform)")
    k.add_argument("--shared-negatives", action="store_true",
                   help="draw K negatives once per training minibatch and share them between its positives (as MariusGNN)")
    k.add_argument("--eval-negatives", type=int, default=100, metavar="M",
                   help="fixed, filtered negative destinations per val/test edge (none forms a true edge) (default: 100)")
    k.add_argument("--keep-seed-edges", action="store_true",
                   help="keep each training minibatch's positive edges in its message-passing blocks (default: they "
                        "are removed after sampling, as GraphBolt's exclude_seed_edges, so training never reads the "
                        "edge it predicts; evaluation edges are not in the graph at all)")


def add_sample(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "sample", help="presample every minibatch's neighborhood into a plan",
        description="Sample every minibatch's L-hop neighborhood before training (uniform, without replacement, over "
                    "in-edges) for the train split (--epochs distinct epochs) and the val/test splits. Writes "
                    "DATASET/plans/NAME: Arrow IPC files (one row per minibatch: seeds, per-hop blocks, input nodes) and "
                    "per-node read counts. Reproducible bit for bit from --seed.",
        epilog="Example:\n  diskgraph preprocess sample data/cora --fanouts 10,5 --batch-size 512 --seed 0",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", nargs="?", metavar="DATASET", help="dataset directory")
    add_sample_options(p)
    p.add_argument("--name", default="default", help="plan name: written to DATASET/plans/NAME (default: default)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing plan of that name")
    add_common(p)
    p.set_defaults(func=run_sample, section="sample", output=_sample_output, atomic_output=True)
    return p


def sample_from_args(args: argparse.Namespace, dataset: str | os.PathLike) -> Path:
    """Run the sampling the parsed options describe on ``dataset``; returns the plan directory."""
    from .preprocess import run_sample as _sample

    return _sample(dataset, name=args.name, fanouts=parse_fanouts(args.fanouts), batch_size=args.batch_size,
                   seed=args.seed, epochs=args.epochs,
                   eval_fanouts=parse_fanouts(args.eval_fanouts) if args.eval_fanouts else None,
                   eval_batch_size=args.eval_batch_size, threads=args.threads, overwrite=args.overwrite,
                   splits=_splits(args), shard=args.shard, **_link_options(args))


def _link_options(args: argparse.Namespace) -> dict:
    """The sampling task and link options the parsed arguments give (``run_sample``/``plan_difference`` keywords)."""
    from .sampler.link_sampler import LinkOptions

    task = getattr(args, "sample_task", None) or getattr(args, "task", None)  # (`all`: moved to sample_task)
    return {"task": task if task in SAMPLE_TASKS else "node", "link_options": LinkOptions.from_args(args)}


def _splits(args: argparse.Namespace) -> list[str] | None:
    return [x.strip() for x in args.splits.split(",")] if args.splits else None


def _sample_output(args: argparse.Namespace) -> tuple[Path | None, str | None]:
    from .preprocess import NAME_AS_PATH, plan_path

    return (plan_path(args.dataset, args.name, args.shard), NAME_AS_PATH) if args.dataset else (None, None)


def _dataset_arg(args: argparse.Namespace, command: str) -> str:
    if not args.dataset:
        raise InputError(f"no dataset given; pass the dataset directory: diskgraph preprocess {command} DIR")
    return args.dataset


def run_sample(args: argparse.Namespace) -> int:
    sample_from_args(args, _dataset_arg(args, "sample"))
    return 0


# -- pack ------------------------------------------------------------------------------------------

def max_blowup(text: str) -> float | None:
    """``--max-blowup``: a number >= 0, or ``inf``/``none`` (no bound: None)."""
    if text.strip().lower() in ("inf", "none", "infinity", "unbounded"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; pass a number >= 0, or inf for no bound") from None
    if value != value or value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not a number >= 0; pass a number >= 0, or inf for no bound")
    return None if value == float("inf") else value


def add_pack_options(p: argparse.ArgumentParser, with_budget: bool = True) -> None:
    """The options of `preprocess pack` (also part of `preprocess all`)."""
    g = p.add_argument_group("packing")
    g.add_argument("--gpu-cache", type=parse_bytes, default=0, metavar="SIZE",
                   help="bytes of the most-read feature rows to keep in GPU memory (default: 0)")
    g.add_argument("--host-cache", type=parse_bytes, default=0, metavar="SIZE",
                   help="bytes of the next most-read rows to keep in pinned host memory (default: 0)")
    g.add_argument("--max-blowup", type=max_blowup, default=10.0, metavar="B",
                   help="bound the packed cold extents to B x the feature table's bytes (a number >= 0, or inf/none "
                        "for no bound; default: 10). Cold rows over the budget are not packed: training reads them "
                        "from the dataset's feature table (rows sharing a 4 KiB page of it with other rows of their "
                        "minibatch first); 0 packs none")
    if with_budget:
        g.add_argument("--memory-budget", type=parse_bytes, metavar="SIZE",
                       help="bytes packing may hold; sizes the slices of the feature table read at a time "
                            "(default: half the available memory, at most 4 GiB)")


def add_pack(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "pack", help="lay out each minibatch's features contiguously on disk",
        description="Choose the hot sets (most-read rows by the plan's counts) for the GPU and pinned-host tiers, then "
                    "write, for every minibatch, the rows of its other input nodes as one 4 KiB-aligned extent, reading "
                    "the feature table sequentially in slices. Writes DATASET/packs/NAME and reports the disk blow-up.",
        epilog="Example:\n  diskgraph preprocess pack data/cora --plan default --host-cache 4M\n\n" + EPILOG_SIZES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", nargs="?", metavar="DATASET", help="dataset directory")
    p.add_argument("--plan", default="default", help="plan name under DATASET/plans, or a plan directory (default: default)")
    p.add_argument("--name", help="pack name: written to DATASET/packs/NAME (default: the plan's name)")
    p.add_argument("--shard", type=shard, metavar="R/W",
                   help="pack share R of W: plan PLAN.rankR-of-W into NAME.rankR-of-W (made by sample --shard R/W)")
    add_pack_options(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing pack of that name")
    add_common(p)
    p.set_defaults(func=run_pack, section="pack", output=_pack_output, atomic_output=True)
    return p


def pack_from_args(args: argparse.Namespace, dataset: str | os.PathLike, plan: str, *, sampled: bool = False) -> Path:
    """Run the packing the parsed options describe; returns the pack directory (``sampled``: ``plan`` is the plan
    `preprocess all` just sampled, already the share's with ``--shard``, and names the pack)."""
    from .preprocess import run_pack as _pack

    name, shard_ = (Path(plan).name, None) if sampled and args.shard else (args.name, args.shard)
    return _pack(dataset, plan=plan, name=name, gpu_cache=args.gpu_cache, host_cache=args.host_cache,
                 memory_budget=args.memory_budget, max_blowup=args.max_blowup, overwrite=args.overwrite,
                 shard=shard_)


def _pack_output(args: argparse.Namespace) -> tuple[Path | None, str | None]:
    from .preprocess import NAME_AS_PATH, pack_path, plan_path

    if not args.dataset:
        return None, None
    plan = plan_path(args.dataset, args.plan, args.shard)
    return pack_path(args.dataset, args.name or plan.name, args.shard if args.name else None), NAME_AS_PATH


def run_pack(args: argparse.Namespace) -> int:
    pack_from_args(args, _dataset_arg(args, "pack"), args.plan)
    return 0


# -- all -------------------------------------------------------------------------------------------

def add_all(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "all", help="import (when given raw inputs), sample and pack in one go",
        description="Run import (when raw inputs are given; the dataset goes to --out), then sample and pack into the "
                    "dataset directory. Given an existing dataset directory instead, add a plan and a pack to it.",
        epilog="Examples:\n"
               "  diskgraph preprocess all --npz ../shared/datasets/cora/data.npz --out data/cora --fanouts 10,5 \\\n"
               "      --batch-size 512 --seed 0 --host-cache 4M\n"
               "  diskgraph preprocess all data/cora --fanouts 10,5 --batch-size 512 --name small --overwrite\n\n"
               + EPILOG_SIZES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", nargs="?", metavar="DATASET", help="an existing dataset directory (instead of raw inputs)")
    add_import_options(p)
    add_sample_options(p, with_seed=False, with_task=False)
    for action in p._actions:  # one --task: the import's label kinds, or the sampling task
        if action.dest == "task":
            action.choices = list(action.choices) + list(SAMPLE_TASKS)
            action.help = (f"{action.help}; or the sampling task: {_SAMPLE_TASK_HELP} (default: node, with the labels' "
                           "kind told from them)")
    add_pack_options(p, with_budget=False)
    p.add_argument("--name", default="default", help="name of the plan and the pack (default: default)")
    add_common(p)
    p.set_defaults(func=run_all, section="all", output=_all_output, interrupted=_all_interrupted)
    return p


_RAW_INPUTS = ("npz", "ogb", "edges", "features", "labels", "train", "val", "test", "val_edges", "test_edges")
_log = logging.getLogger("diskgraph")


def _all_output(args: argparse.Namespace) -> tuple[Path | None, str | None]:
    from .preprocess import NAME_AS_PATH

    return (args.dataset, NAME_AS_PATH) if args.dataset else (args.out, "--out")


def _all_interrupted(args: argparse.Namespace, out: Path | None) -> str:
    if out is None or not out.exists():
        return f"interrupted during the import; nothing was left at {out or 'the output'}"
    return (f"interrupted; the stages that finished are kept in {out} (an unfinished one leaves nothing) and running "
            "the same command again continues from them")


def _import_stage(args: argparse.Namespace) -> Path:
    """The dataset at --out: imported, or kept when an earlier run imported it from the same inputs and options."""
    from .store.dataset import open_dataset

    out = args.out
    if not out or not os.path.lexists(out):
        return import_from_args(args)
    try:
        recorded = open_dataset(out).manifest.get(IMPORT_RECORD)
    except InputError:
        if args.overwrite:
            return import_from_args(args)  # refuses to replace what is not a diskgraph dataset
        raise InputError(f"{out} already exists and does not open as a dataset; choose another --out, or pass "
                         "--overwrite to replace it") from None
    if recorded is None:
        if args.overwrite:
            return import_from_args(args)
        raise InputError(f"dataset {out} already exists and does not record the options it was imported with; pass "
                         f"--overwrite to import it again, or add a plan and a pack to it with `diskgraph preprocess "
                         f"all {out}`")
    seeded = "seed" in (recorded.get("options") or {})
    diff = import_difference(recorded, import_record(args, seeded))
    if diff is None:
        _log.info("preprocess all: import skipped: %s was imported from the same inputs and options", out)
        return Path(out)
    if not args.overwrite:
        raise InputError(f"dataset {out} differs from what this run would import ({diff}); rerun with the options it "
                         "was imported with to continue from it, or pass --overwrite to import it again")
    _log.info("preprocess all: importing %s again (%s)", out, diff)
    return import_from_args(args)


def _stage_kept(what: str, path: Path, diff: str | None, args: argparse.Namespace, verb: str) -> bool:
    """Whether the existing ``path`` is kept (it matches), after refusing a mismatch without --overwrite."""
    if diff is None:
        _log.info("preprocess all: %s skipped: %s %s was made with the same options", verb, what, path)
        return True
    if not args.overwrite:
        raise InputError(f"{what} {path} differs from what this run would make ({diff}); rerun with the options it was "
                         f"made with to continue from it, or pass --overwrite to {verb} again")
    _log.info("preprocess all: %s %s again (%s)", verb, path, diff)
    return False


def _sample_stage(args: argparse.Namespace, dataset: Path) -> Path:
    from .preprocess import plan_difference, plan_path
    from .store.dataset import open_dataset

    out = plan_path(dataset, args.name, args.shard)
    if os.path.lexists(out):
        diff = plan_difference(out, open_dataset(dataset), fanouts=parse_fanouts(args.fanouts),
                               batch_size=args.batch_size, seed=args.seed, epochs=args.epochs,
                               eval_fanouts=parse_fanouts(args.eval_fanouts) if args.eval_fanouts else None,
                               eval_batch_size=args.eval_batch_size, splits=_splits(args), shard=args.shard,
                               **_link_options(args))
        if _stage_kept("plan", out, diff, args, "sample"):
            return out
    return sample_from_args(args, dataset)


def _pack_stage(args: argparse.Namespace, dataset: Path, plan: Path) -> Path:
    from .preprocess import pack_difference, pack_path
    from .store.dataset import open_dataset

    out = pack_path(dataset, plan.name)
    if os.path.lexists(out):
        diff = pack_difference(out, open_dataset(dataset), plan, gpu_cache=args.gpu_cache, host_cache=args.host_cache,
                               max_blowup=args.max_blowup)
        if _stage_kept("pack", out, diff, args, "pack"):
            return out
    return pack_from_args(args, dataset, str(plan), sampled=True)


def run_all(args: argparse.Namespace) -> int:
    """Import (unless given a dataset), sample and pack, continuing from the stages an earlier run finished."""
    raw = [f"--{k}" for k in _RAW_INPUTS if getattr(args, k, None)]
    if getattr(args, "task", None) in SAMPLE_TASKS:  # --task node|link is the sampling task, not a label kind
        args.sample_task, args.task = args.task, None
    if os.sep in args.name or (os.altsep and os.altsep in args.name):
        raise InputError(f"--name {args.name!r} names both the plan and the pack of `preprocess all`; give a bare name "
                         "(they go to DATASET/plans/NAME and DATASET/packs/NAME)")
    if args.dataset:
        if raw:
            raise InputError(f"both a dataset directory and raw inputs ({', '.join(raw)}) were given; pass one or the other")
        dataset = Path(args.dataset)
    else:
        if not raw:
            raise InputError("nothing to preprocess; pass raw inputs (--npz or --edges …) with --out, or an existing dataset directory")
        dataset = _import_stage(args)
    try:
        plan = _sample_stage(args, dataset)
        _pack_stage(args, dataset, plan)
    except BaseException:
        if not args.dataset:
            _log.info("preprocess all: the dataset %s is complete and kept; run the same command again to continue "
                      "from it", dataset)
        raise
    _log.info("preprocess all: dataset, plan and pack ready in %s", dataset)
    return 0
