"""``diskgraph inspect``: summarize a dataset directory with its plans and packs; ``--verify`` re-checks it."""

from __future__ import annotations

import argparse
import json

from .cli_common import add_common
from .store.errors import InputError
from .store.progress import format_bytes


def add_inspect(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "inspect", help="summarize a dataset directory; --verify re-checks it",
        description="Print a dataset's nodes, edges, in-degree statistics, features, labels, splits and sizes on disk. "
                    "--verify re-reads every array and checks checksums and invariants (exit status 1 on a problem).")
    p.add_argument("dataset", nargs="?", metavar="DATASET", help="dataset directory")
    p.add_argument("--verify", action="store_true", help="re-check checksums and invariants (reads everything)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    add_common(p)
    p.set_defaults(func=_run_inspect, section="inspect")
    return p


def _run_inspect(args: argparse.Namespace) -> int:
    from .store.dataset import open_dataset

    if not args.dataset:
        raise InputError("no dataset given; pass the dataset directory: diskgraph inspect DIR")
    ds = open_dataset(args.dataset)
    info = ds.stats()
    info.update(_artifacts(args.dataset))
    problems = None
    if args.verify:
        problems = ds.verify() + _verify_artifacts(info, ds)
        info["verify"] = {"ok": not problems, "problems": problems}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(_render_stats(info))
    return 1 if problems else 0


def _artifacts(dataset: str) -> dict:
    """Plans and packs of the dataset by name, plus ``plan``/``pack``: the name of the main one (named default, else
    the newest; its entry is under ``plans``/``packs``, not repeated)."""
    from .preprocess import DEFAULT_NAME, describe_artifacts

    found = describe_artifacts(dataset)
    for kind, key in (("plans", "plan"), ("packs", "pack")):
        entries = {k: v for k, v in found[kind].items() if "error" not in v}
        if entries:
            found[key] = DEFAULT_NAME if DEFAULT_NAME in entries else max(
                entries, key=lambda k: entries[k].get("created_at") or "")
    return found


def _verify_artifacts(info: dict, ds) -> list[str]:
    """Problems found by re-checking every plan and pack of the dataset: every row, extent and tier against its
    checksum, the invariants, and what each was made from."""
    from .store.errors import FormatError
    from .store.packed import open_pack
    from .store.plan import open_plan

    problems = [f"{kind}/{name}: {v['error']}" for kind in ("plans", "packs") for name, v in info[kind].items()
                if "error" in v]
    for kind, opener in (("plans", open_plan), ("packs", open_pack)):
        for name, v in info[kind].items():
            if "error" in v:
                continue
            try:
                found = opener(v["path"]).verify(dataset=ds)
            except FormatError as e:
                found = [str(e)]
            problems += [f"{kind}/{name}: {p}" for p in found]
    return problems


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
    for name, p in info.get("plans", {}).items():
        if "error" in p:
            lines.append(f"plan {name:<8} unreadable: {p['error']}")
            continue
        c = p["config"]
        mbs = "  ".join(f"{k} {v:,}" for k, v in p["minibatches"].items())
        lines.append(f"plan {name:<8} fanouts {','.join(map(str, c.get('fanouts', [])))}  batch {c.get('batch_size')}  "
                     f"seed {c.get('seed')}  epochs {c.get('epochs')}  minibatches: {mbs}  ({format_bytes(p['bytes'])})")
    for name, p in info.get("packs", {}).items():
        if "error" in p:
            lines.append(f"pack {name:<8} unreadable: {p['error']}")
            continue
        lines.append(f"pack {name:<8} gpu cache {format_bytes(p.get('gpu_cache_bytes', 0))}  host cache "
                     f"{format_bytes(p.get('host_cache_bytes', 0))}  packed {format_bytes(p.get('packed_bytes', 0))}  "
                     f"blow-up {float(p.get('blowup', 0)):.2f}x")
    if "verify" in info:
        v = info["verify"]
        lines.append("verify        ok: checksums and invariants hold" if v["ok"] else
                     "verify        FAILED:\n" + "\n".join(f"  - {p}" for p in v["problems"]))
    return "\n".join(lines)


