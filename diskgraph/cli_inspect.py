"""``diskgraph inspect``: summarize a dataset directory with its plans and packs, or an inference output
(``diskgraph predict`` / ``embed``); ``--verify`` re-checks it."""

from __future__ import annotations

import argparse
import json

from .cli_common import add_common
from .store.errors import InputError
from .store.progress import format_bytes


def add_inspect(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "inspect", help="summarize a dataset directory or an inference output; --verify re-checks it",
        description="Print a dataset's nodes, edges, in-degree statistics, features, labels, splits and sizes on disk, "
                    "or an inference output's kind, rows, arrays, run, model and dataset. "
                    "--verify re-reads every array and checks checksums and invariants (exit status 1 on a problem).")
    p.add_argument("dataset", nargs="?", metavar="DATASET",
                   help="dataset directory, or the output directory of diskgraph predict / embed")
    p.add_argument("--verify", action="store_true", help="re-check checksums and invariants (reads everything)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    add_common(p)
    p.set_defaults(func=_run_inspect, section="inspect")
    return p


def _run_inspect(args: argparse.Namespace) -> int:
    from .store.atomic import artifact_format
    from .store.dataset import open_dataset
    from .store.inference_output import INFERENCE_FORMAT

    if not args.dataset:
        raise InputError("no dataset given; pass the dataset directory: diskgraph inspect DIR")
    if artifact_format(args.dataset) == INFERENCE_FORMAT:
        return _inspect_inference(args)
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


def _render_labels(info: dict) -> str:
    """The labels line of ``inspect``: per class counts, per label positives, or per target mean and std."""
    if "label_counts" in info:
        counts = ", ".join(f"{c}: {n:,}" for c, n in info["label_counts"].items())
        return f"classes       {info['num_classes']}  ({counts}; unlabelled {info['unlabelled_nodes']:,})"
    if "label_positives" in info:
        pos = ", ".join(f"{c}: {n:,}" for c, n in info["label_positives"].items())
        return f"labels        multilabel, {info['num_classes']} labels  (nodes with each label: {pos})"
    if "targets" in info:
        t = info["targets"]
        if t["mean"] is None:
            spread = "no labelled node"
        else:
            spread = ", ".join(f"{m:.4g} ± {sd:.4g}" for m, sd in zip(t["mean"], t["std"]))
        return (f"targets       regression, {t['count']} per node  (mean ± std {spread}; "
                f"unlabelled {info['unlabelled_nodes']:,})")
    return "labels        none"


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
    lines.append(_render_labels(info))
    if info["splits"]:
        lines.append("splits        " + "  ".join(f"{k} {v:,}" for k, v in info["splits"].items()))
    if info.get("edge_split"):
        es = info["edge_split"]
        how = ("random " + ",".join(f"{f:g}" for f in es["fractions"]) + f", seed {es['seed']}"
               if es.get("fractions") else "from files")
        lines.append("edge split    " + "  ".join(f"{k} {v:,}" for k, v in es["counts"].items())
                     + f"  ({how}, {'undirected pairs' if es.get('undirected') else 'directed edges'}; "
                     "val/test edges left out of the topology)")
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
                     f"blow-up {float(p.get('blowup', 0)):.2f}x"
                     + (f" (max {p['max_blowup']:g}x)" if p.get("max_blowup") is not None else "")
                     + (f"  table rows {p['table_rows']:,}" if p.get("table_rows") else ""))
    if "verify" in info:
        v = info["verify"]
        lines.append("verify        ok: checksums and invariants hold" if v["ok"] else
                     "verify        FAILED:\n" + "\n".join(f"  - {p}" for p in v["problems"]))
    return "\n".join(lines)


# -- inference outputs ----------------------------------------------------------------------------------------------

def _inspect_inference(args: argparse.Namespace) -> int:
    """``inspect OUT`` of a ``diskgraph predict`` / ``embed`` output: its manifest and arrays; ``--verify`` re-reads
    every array against the manifest's sha256 (exit status 1 on a problem)."""
    from .store.inference_output import open_output

    out = open_output(args.dataset)
    m = out.manifest
    info = {
        "path": str(out.path),
        "format": m["format"],
        "format_version": m["format_version"],
        "created_at": m.get("created_at"),
        "kind": out.kind,
        "task": out.task,
        "mode": m.get("mode"),
        "num_rows": out.num_rows,
        "nodes": m.get("nodes"),
        "arrays": {name: {"shape": list(a.shape), "dtype": a.dtype, "bytes": a.nbytes}
                   for name, a in ((n, out.array(n)) for n in out.array_names)},
        "run": m.get("run"),
        "model": m.get("model"),
        "dataset": m.get("dataset"),
        "summary": m.get("summary"),
        "disk_bytes": out.disk_bytes(),
    }
    if m.get("link"):  # the output of a link-prediction run: embeddings a decoder scores, not class logits
        info["link"] = m["link"]
    if out.kind == "predict":
        info["prediction_summary"] = out.prediction_summary()
    for key in ("layer", "dtype"):
        if key in m:
            info[key] = m[key]
    problems = None
    if args.verify:
        problems = out.verify()
        info["verify"] = {"ok": not problems, "problems": problems}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(_render_inference(info))
    return 1 if problems else 0


def _scalars(d) -> str:
    """``key value`` pairs of the scalar (and short list) entries of a dict, for one line of text."""
    if not isinstance(d, dict):
        return "" if d is None else str(d)
    parts = []
    for k, v in d.items():
        if isinstance(v, list) and all(not isinstance(x, (dict, list)) for x in v):
            v = ",".join(map(str, v))
        elif isinstance(v, float):
            v = f"{v:.4g}"
        elif isinstance(v, (dict, list)):
            continue
        parts.append(f"{k} {v}")
    return "  ".join(parts)


def _with_path(d) -> str:
    """A dict that names a ``path`` as ``PATH  (other scalars)``; anything else as text."""
    if isinstance(d, dict) and "path" in d:
        rest = _scalars({k: v for k, v in d.items() if k != "path"})
        return f"{d['path']}  ({rest})" if rest else str(d["path"])
    return _scalars(d)


def _render_task(task: dict, summary: dict | None) -> str:
    """The task line of an inference output: the run's task and, for predict, what the predictions say (rows per
    predicted class, rows predicted positive per label, or mean ± std per target)."""
    kind, c = task["kind"], task["num_outputs"]
    if kind == "regression":
        shape = task.get("target_shape") or []
        what = f"regression, {c} target{'s' if c != 1 else ''}" + (f" per node [M, {c}]" if shape else "")
    else:
        what = f"{kind}, {c} {'classes' if kind == 'classification' else 'labels'}"
    line = f"task          {what}"
    if not summary:
        return line + ("  (of the run)" if summary is None else "")
    if "predicted_counts" in summary:
        counts = ", ".join(f"{k}: {n:,}" for k, n in summary["predicted_counts"].items())
        return f"{line}  (rows predicted per class: {counts})"
    if "predicted_positives" in summary:
        pos = ", ".join(f"{k}: {n:,}" for k, n in summary["predicted_positives"].items())
        per_row = summary.get("mean_positives")
        return (f"{line}  (rows predicted positive per label: {pos}"
                + (f"; {per_row:.3g} labels per row" if per_row is not None else "") + ")")
    if summary.get("mean") is None:
        return f"{line}  (no rows)"
    spread = ", ".join(f"{m:.4g} ± {sd:.4g}" for m, sd in zip(summary["mean"], summary["std"]))
    return f"{line}  (predictions mean ± std {spread})"


def _render_inference(info: dict) -> str:
    lines = [
        f"output        {info['path']}  (diskgraph {info['kind']} output, format version {info['format_version']})",
        f"kind          {info['kind']}" + (f"  mode {info['mode']}" if info.get("mode") else "")
        + (f"  layer {info['layer']}" if info.get("layer") is not None else "")
        + (f"  dtype {info['dtype']}" if info.get("dtype") else ""),
        f"rows          {info['num_rows']:,}" + (f"  (nodes {_scalars(info['nodes'])})" if info.get("nodes") else ""),
    ]
    if info.get("task"):
        lines.append(_render_task(info["task"], info.get("prediction_summary")))
    for name, a in info["arrays"].items():
        shape = " x ".join(f"{s:,}" for s in a["shape"])
        lines.append(f"array {name:<12} {shape} {a['dtype']}  ({format_bytes(a['bytes'])})")
    for key in ("run", "model", "dataset"):
        value = info.get(key)
        if key == "model" and isinstance(value, dict) and value.get("encoder") is not None:
            value = value["encoder"]  # a link model: its encoder (the decoder is on the link line)
        if value is not None:
            lines.append(f"{key:<13} {_with_path(value)}")
    if info.get("link"):
        lines.append(f"link          {_scalars(info['link'])}")
    if info.get("summary"):
        lines.append(f"summary       {_scalars(info['summary'])}")
    lines.append(f"on disk       {format_bytes(info['disk_bytes'])}")
    if "verify" in info:
        v = info["verify"]
        lines.append("verify        ok: every array matches the manifest's sha256" if v["ok"] else
                     "verify        FAILED:\n" + "\n".join(f"  - {p}" for p in v["problems"]))
    return "\n".join(lines)
