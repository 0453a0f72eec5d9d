"""``diskgraph plan``: the capacity planner — disk, memory and time of a configuration before anything runs."""

from __future__ import annotations

import argparse
import logging

from .capacity.bounded import DEFAULT_MAX_BLOWUP
from .capacity.hardware import calibration_seconds, duration_text
from .cli_common import EPILOG_SIZES, add_common, fanouts, parse_fanouts, positive_int
from .store.errors import InputError
from .units import parse_bytes

log = logging.getLogger("diskgraph")


class _DefaultBlowup(float):
    """The default --max-blowup (the packer's), told apart from the same number given: --disk-budget may replace it."""


_DEFAULT_BLOWUP = _DefaultBlowup(DEFAULT_MAX_BLOWUP)


def _max_blowup(text: str):
    """``--max-blowup``: preprocess pack's own parser (a number >= 0, or inf/none: None)."""
    from .cli_preprocess import max_blowup

    return max_blowup(text)


def _disk_budget(text: str) -> int:
    try:
        v = parse_bytes(text)
    except (ValueError, argparse.ArgumentTypeError, InputError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; write e.g. 20G or 500M") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be a positive size (e.g. 20G)")
    return int(v)


def _fractions(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in str(text).split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of fractions; write e.g. 0.6,0.2,0.2") from None


def add_plan(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "plan", help="capacity planner: disk footprint, memory and epoch time before anything runs",
        description="Estimate, for a dataset directory (or a graph described by --nodes/--edges/--feature-dim), what "
                    "preprocessing and training will take: the size of every artifact (dataset, plan, pack tiers and "
                    "cold extents) and the disk blow-up; peak host and GPU memory of sampling, packing and training; "
                    "bytes read per epoch; preprocessing time per stage; epoch time per pipeline stage and the "
                    "bottleneck; and epoch time, blow-up and memory of cache splits from none to the whole table, with "
                    "a recommendation. It samples a small number of minibatches of the real graph (the ones `preprocess "
                    "sample` will write; all of them for a small graph, which makes the sizes exact) and times them "
                    "against a hardware profile measured by --calibrate (saved, then reused) or given by flags. With "
                    "--inference predict|embed it also estimates exact inference of the trained model: the output's "
                    "size, the scratch tables, partitions, bytes read and time per layer, and peak memory. The pack is "
                    "planned as `preprocess pack --max-blowup B` makes it (default 10): the rows it leaves in the "
                    "feature table, their page reads and the epoch time with them, next to the unbounded pack's; "
                    "--disk-budget SIZE plans at the largest B whose pack fits SIZE.",
        epilog="Examples:\n"
               "  diskgraph plan --calibrate                              # measure this machine once\n"
               "  diskgraph plan data/cora --fanouts 10,5 --batch-size 512 --host-cache 4M\n"
               "  diskgraph plan data/cora --fanouts 10,5 --batch-size 512 --host-cache 4M --json\n"
               "  diskgraph plan --nodes 100000000 --edges 1600000000 --feature-dim 128 --fanouts 15,10 \\\n"
               "      --batch-size 1024 --host-cache 8G --disk-read-bw 3GB --plot plan.png\n"
               "  diskgraph plan data/cora --fanouts 10,5 --batch-size 512 --max-blowup 2\n"
               "  diskgraph plan data/cora --fanouts 10,5 --batch-size 512 --disk-budget 50M\n"
               "  diskgraph plan data/cora --fanouts 10,5 --batch-size 512 --inference predict \\\n"
               "      --inference-budget 256M\n"
               "\n" + EPILOG_SIZES +
               " Bandwidths are bytes per second in the same notation (3GB = 3e9 bytes/s).",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", nargs="?", metavar="DATASET", help="dataset directory (or describe a graph with --nodes …)")
    g = p.add_argument_group("a graph from a summary (instead of DATASET)")
    g.add_argument("--nodes", type=positive_int, help="nodes of the graph")
    g.add_argument("--edges", type=positive_int, help="edges of the graph (after deduplication)")
    g.add_argument("--feature-dim", type=positive_int, help="features per node")
    g.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                   help="feature type (default: float32)")
    g.add_argument("--classes", type=positive_int, default=16, help="label classes (default: 16)")
    g.add_argument("--split", type=_fractions, default=(0.6, 0.2, 0.2), metavar="TRAIN,VAL,TEST",
                   help="fractions of the nodes in each split (default: 0.6,0.2,0.2)")
    g.add_argument("--rmat", type=_fractions, default=(0.57, 0.19, 0.19, 0.05), metavar="A,B,C,D",
                   help="degree-distribution summary: R-MAT quadrant probabilities of the synthetic graph sampled "
                        "(default: 0.57,0.19,0.19,0.05, Graph500's skew)")
    t = p.add_argument_group("the plan and pack to size")
    t.add_argument("--fanouts", type=fanouts, default="15,10", help="neighbors per hop, nearest first (default: 15,10)")
    t.add_argument("--batch-size", type=positive_int, default=1024, help="seeds per minibatch (default: 1024)")
    t.add_argument("--seed", type=int, default=0, help="sampling seed of the plan (default: 0)")
    t.add_argument("--epochs", type=positive_int, default=1, help="presampled training epochs (default: 1)")
    t.add_argument("--eval-fanouts", type=fanouts, help="fanouts of val/test (default: --fanouts)")
    t.add_argument("--eval-batch-size", type=positive_int, help="seeds per val/test minibatch (default: --batch-size)")
    t.add_argument("--splits", help="comma-separated splits to plan (default: those the dataset has)")
    t.add_argument("--gpu-cache", type=parse_bytes, default=0, metavar="SIZE", help="GPU tier bytes (default: 0)")
    t.add_argument("--host-cache", type=parse_bytes, default=0, metavar="SIZE", help="host tier bytes (default: 0)")
    t.add_argument("--memory-budget", type=parse_bytes, default=1 << 30, metavar="SIZE",
                   help="--memory-budget of import and pack (default: 1G)")
    t.add_argument("--max-blowup", type=_max_blowup, default=_DEFAULT_BLOWUP, metavar="B",
                   help="the pack's --max-blowup: its cold extents take at most B x the feature table's bytes, the "
                        "other cold rows are read from the feature table at training time (a number >= 0, or inf/none; "
                        f"default: {DEFAULT_MAX_BLOWUP:g}, as preprocess pack). The plan predicts the blow-up, the rows "
                        "left in the table, their 4 KiB page reads and the epoch time at B, next to the unbounded pack's")
    t.add_argument("--disk-budget", type=_disk_budget, metavar="SIZE",
                   help="disk the pack may take (extents, hot tiers, index): plan at the largest --max-blowup whose "
                        "predicted pack fits it (the extents are bounded by the packer itself), with the epoch time "
                        "there and unbounded; the cache splits compared are packed the same way. Instead of "
                        "--max-blowup")
    t.add_argument("--threads", type=positive_int, help="sampling threads (default: one per core)")
    m = p.add_argument_group("training")
    m.add_argument("--model", choices=["sage", "gcn", "gat"], default="sage", help="GNN (default: sage)")
    m.add_argument("--hidden", type=positive_int, default=256, help="hidden width (default: 256)")
    m.add_argument("--heads", type=positive_int, default=4, help="GAT heads (default: 4)")
    m.add_argument("--queue-depth", type=positive_int, default=2, help="loader queue depth (default: 2)")
    i = p.add_argument_group("inference after training (diskgraph predict / embed, exact mode)")
    i.add_argument("--inference", choices=["predict", "embed"],
                   help="also estimate exact (layer-wise) inference of the trained model: the output's size, the "
                        "scratch tables, partitions and bytes read per layer, time and memory")
    i.add_argument("--inference-layer", type=positive_int, metavar="K",
                   help="embed: the layer written (default: the last hidden layer, as diskgraph embed)")
    i.add_argument("--inference-dtype", choices=["float32", "float16"], default="float32",
                   help="embed: the embeddings' dtype (default: float32)")
    i.add_argument("--inference-nodes", default="all", metavar="SET",
                   help="the output's nodes: all, train, val, test, unlabelled, FILE.npy (as --nodes of predict) or a "
                        "count (default: all)")
    i.add_argument("--inference-budget", type=parse_bytes, metavar="SIZE",
                   help="--memory-budget of the inference (default: this plan's --memory-budget)")
    h = p.add_argument_group("hardware")
    h.add_argument("--calibrate", action="store_true",
                   help="measure this machine (O_DIRECT disk reads and writes, memory bandwidth, gathers, the loader's "
                        "per-minibatch work, model steps, a short training run; about "
                        f"{duration_text(calibration_seconds('cpu'))} on a quiet 2-core machine, longer while other processes hold the "
                        "cores; with a progress bar) "
                        "and save the profile; alone, just that. A plan calibrates first when there is no profile")
    h.add_argument("--profile", metavar="FILE", help="hardware profile to read or write (default: $DISKGRAPH_PROFILE, "
                                                    "else ~/.cache/diskgraph/hardware.json; calibrated when missing)")
    h.add_argument("--device", default="auto", help="device to calibrate: auto, cpu or cuda[:N] (default: auto)")
    h.add_argument("--probe-dir", metavar="DIR", help="directory on the disk to measure (default: DATASET, else .)")
    h.add_argument("--quick-calibration", action="store_true",
                   help=f"a faster, rougher calibration (about {duration_text(calibration_seconds('cpu', quick=True))})")
    h.add_argument("--disk-read-bw", type=parse_bytes, metavar="BYTES/S", help="sequential read bandwidth (overrides the profile)")
    h.add_argument("--disk-write-bw", type=parse_bytes, metavar="BYTES/S", help="write bandwidth")
    h.add_argument("--disk-iops", type=positive_int, help="4 KiB random reads per second (one at a time)")
    h.add_argument("--disk-queue-iops", type=positive_int,
                   help="4 KiB random reads per second with 8 in flight (a bounded pack's table reads)")
    h.add_argument("--memory-bw", type=parse_bytes, metavar="BYTES/S", help="memory copy bandwidth")
    h.add_argument("--host-memory", type=parse_bytes, metavar="SIZE", help="host memory the job may use (limits the "
                                                                          "recommended cache split)")
    h.add_argument("--gpu-memory", type=parse_bytes, metavar="SIZE", help="GPU memory the job may use")
    h.add_argument("--cores", type=positive_int, help="CPU cores")
    o = p.add_argument_group("estimate and output")
    o.add_argument("--sample-minibatches", type=positive_int, default=64,
                   help="minibatches sampled per split (default: 64; a split with no more is sampled whole: exact)")
    o.add_argument("--no-alternatives", action="store_true", help="skip the cache-split alternatives")
    o.add_argument("--no-time-steps", action="store_true",
                   help="do not time model steps on sampled minibatches here (by default, when the profile was "
                        "calibrated on this host, a few are timed and the profile's compute fit is scaled to them)")
    o.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    o.add_argument("--plot", metavar="FILE.png", help="also draw epoch time and blow-up against cache size (needs matplotlib)")
    add_common(p)
    p.set_defaults(func=run_plan, section="plan")
    return p


def _hardware(args):
    from pathlib import Path

    from .capacity.hardware import (Hardware, apply_overrides, calibrate, default_profile_path, load_profile,
                                    save_profile)

    path = Path(args.profile).expanduser() if args.profile else default_profile_path()
    if args.calibrate or not path.exists():
        note = "" if args.calibrate else (f" first (there is no hardware profile at {path} yet; once: the profile is "
                                          "saved and reused, `diskgraph plan --calibrate` measures again)")
        probe = args.probe_dir or args.dataset or "."
        hw: Hardware = calibrate(probe, device=args.device, quick=args.quick_calibration, note=note)
        save_profile(hw, path)
        log.info("hardware profile saved to %s (%.0f s)", path, hw.profile.get("seconds", 0))
    else:
        hw = load_profile(path)
    return apply_overrides(hw, {k: getattr(args, k) for k in ("disk_read_bw", "disk_write_bw", "disk_iops", "disk_queue_iops", "memory_bw",
                                                                "host_memory", "gpu_memory", "cores")})


def _inference(args, w, hw) -> dict:
    """The exact inference estimate (:mod:`diskgraph.capacity.inference`) of the model the plan trains."""
    from .capacity.inference import estimate_inference, estimate_inference_for_dataset

    kw = dict(model=args.model, hidden=args.hidden, heads=args.heads, layers=w.num_hops, kind=args.inference,
              layer=args.inference_layer, dtype=args.inference_dtype,
              memory_budget=args.inference_budget or args.memory_budget,
              budget_flag="--inference-budget" if args.inference_budget else "--memory-budget")
    spec = str(args.inference_nodes)
    if args.dataset:
        return estimate_inference_for_dataset(args.dataset, hw, nodes=spec, **kw)
    if spec.replace("_", "").isdigit():
        nodes = int(spec.replace("_", ""))
    elif spec == "all":
        nodes = None
    elif spec in ("train", "val", "test"):
        nodes = max(1, int(round(args.split[("train", "val", "test").index(spec)] * args.nodes)))
    else:
        raise InputError(f"--inference-nodes {spec} needs a dataset directory; for a graph given by a summary use all, "
                         "train, val, test (from --split) or a count")
    return estimate_inference(num_nodes=w.num_nodes, num_edges=w.num_edges, feature_dim=w.feature_dim,
                              feature_row_bytes=w.row_bytes, feature_dtype=w.feature_dtype, num_classes=w.num_classes,
                              hw=hw, nodes=nodes, **kw)


def run_plan(args: argparse.Namespace) -> int:
    import json

    from .capacity.estimate import estimate_plan
    from .capacity.report import plot, render_table
    from .capacity.workload import sample_workload, synthetic_workload

    summary = [f"--{k.replace('_', '-')}" for k in ("nodes", "edges", "feature_dim") if getattr(args, k) is not None]
    if args.dataset and summary:
        raise InputError(f"both a dataset directory and a summary ({', '.join(summary)}) were given; pass one or the other")
    if not args.dataset and summary and len(summary) < 3:
        missing = {"--nodes", "--edges", "--feature-dim"} - set(summary)
        raise InputError(f"a summary needs --nodes, --edges and --feature-dim; add {', '.join(sorted(missing))}")
    if not args.dataset and not summary and not args.calibrate:
        raise InputError("nothing to plan; pass a dataset directory, or --nodes/--edges/--feature-dim, or --calibrate")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise InputError("--plot needs matplotlib, which is not installed; install it with "
                             "`pip install 'diskgraph[plot]'` or drop --plot") from None
        if args.no_alternatives:
            raise InputError("--plot draws the cache alternatives; drop --no-alternatives")
    given_blowup = not isinstance(args.max_blowup, _DefaultBlowup)
    if args.disk_budget is not None and given_blowup:
        raise InputError("--disk-budget chooses --max-blowup itself; pass one or the other")
    hw = _hardware(args)
    if not args.dataset and not summary:
        print(json.dumps(hw.profile, indent=2) if args.json else f"hardware profile saved to {hw.path}")
        return 0
    fan = parse_fanouts(args.fanouts)
    eval_fan = parse_fanouts(args.eval_fanouts) if args.eval_fanouts else None
    if args.batch_size < 1:
        raise InputError("--batch-size must be at least 1")
    if args.dataset:
        w = sample_workload(args.dataset, fanouts=fan, batch_size=args.batch_size, seed=args.seed, epochs=args.epochs,
                            eval_fanouts=eval_fan, eval_batch_size=args.eval_batch_size,
                            splits=[s.strip() for s in args.splits.split(",")] if args.splits else None,
                            sample_minibatches=args.sample_minibatches)
    else:
        w = synthetic_workload(nodes=args.nodes, edges=args.edges, feature_dim=args.feature_dim, dtype=args.dtype,
                               classes=args.classes, split=args.split, fanouts=fan, batch_size=args.batch_size,
                               seed=args.seed, epochs=args.epochs, eval_fanouts=eval_fan,
                               eval_batch_size=args.eval_batch_size, sample_minibatches=args.sample_minibatches,
                               rmat=args.rmat)
    est = estimate_plan(w, hw, model=args.model, hidden=args.hidden, heads=args.heads, gpu_cache=args.gpu_cache,
                        host_cache=args.host_cache, queue_depth=args.queue_depth, memory_budget=args.memory_budget,
                        threads=args.threads, alternatives=not args.no_alternatives,
                        time_steps=not args.no_time_steps,
                        max_blowup=float(args.max_blowup) if args.max_blowup is not None else None,
                        disk_budget=args.disk_budget)
    if args.inference:
        est["inference"] = _inference(args, w, hw)
    elif args.inference_layer is not None or args.inference_dtype != "float32" or args.inference_nodes != "all" \
            or args.inference_budget is not None:
        raise InputError("--inference-layer, --inference-dtype, --inference-nodes and --inference-budget describe the "
                         "inference to plan; add --inference predict or --inference embed")
    if args.plot:
        plot(est, args.plot)
        log.info("plot written to %s", args.plot)
    print(json.dumps(est, indent=2, default=float) if args.json else render_table(est), end="" if not args.json else "\n")
    return 0
