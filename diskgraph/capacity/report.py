"""How ``diskgraph plan`` shows its estimates: a table, one JSON object, a plot (matplotlib, optional)."""

from __future__ import annotations

import json
import os

from ..store.errors import InputError
from ..store.progress import format_bytes


def _s(x) -> str:
    if x is None:
        return "-"
    return f"{x:.3g} s" if x < 100 else f"{x / 60:.1f} min" if x < 7200 else f"{x / 3600:.1f} h"


def to_json(est: dict) -> str:
    return json.dumps(est, indent=2, default=float)


def render_table(est: dict) -> str:
    """The readable form: what it will take, then how each figure was derived."""
    g, c, fp = est["graph"], est["config"], est["footprint"]
    mem, ep, pre = est["memory"]["train"], est["epoch"], est["preprocess"]
    lines = []

    def row(k, v, how=""):
        lines.append(f"  {k:<30} {v:<22} {how}".rstrip())

    lines.append(f"plan for {est['source']}")
    lines.append(f"  {g['num_nodes']:,} nodes, {g['num_edges']:,} edges, {g['feature_dim']}-d {g['feature_dtype']} "
                 f"({format_bytes(g['row_bytes'])} per row); fanouts {c['fanouts']}, batch {c['batch_size']}, "
                 f"{c['model']} hidden {c['hidden']}; gpu cache {format_bytes(c['gpu_cache_bytes'])}, host cache "
                 f"{format_bytes(c['host_cache_bytes'])}")
    hw = est["hardware"]
    lines.append(f"  hardware: {hw['device']}, {hw['cores']} cores, profile {hw['profile'] or '-'}"
                 + (f" (flags: {', '.join(hw['flags'])})" if hw["flags"] else ""))
    samp = est["sample"]["splits"]
    lines.append("  sampled: " + ", ".join(f"{n} {v['sampled']}/{v['minibatches']}" for n, v in samp.items())
                 + (" (every minibatch: exact)" if est["exact"] else ""))
    lines.append("")
    lines.append("disk")
    row("dataset", format_bytes(fp["dataset_bytes"]))
    row("plan", format_bytes(fp["plan_bytes"]), ", ".join(f"{k} {format_bytes(v)}" for k, v in fp["plan_files"].items()))
    row("pack: cold extents", format_bytes(fp["packed_bytes"]),
        ", ".join(f"{k} {format_bytes(v)}" for k, v in fp["cold_bytes"].items()))
    row("pack: index", format_bytes(sum(fp["index_bytes"].values())))
    row("pack: tiers", format_bytes(sum(fp["tier_bytes"].values())),
        f"gpu {fp['tier_rows']['gpu']:,} rows, host {fp['tier_rows']['host']:,} rows")
    row("blow-up", f"{fp['blowup']:.2f}x", f"cold extents / feature table ({format_bytes(fp['feature_bytes'])})")
    bd = est.get("bounded")
    if bd:
        unb = bd["unbounded"]
        if bd["binding"]:
            row("--max-blowup", f"{bd['max_blowup']:g}",
                f"binds: unbounded the extents would take {format_bytes(unb['packed_bytes'])} ({unb['blowup']:.2f}x)")
            row("table rows", f"{bd['table_rows']:,}", f"{bd['table_page_reads']:,} page reads of 4 KiB over the packed "
                                                         "epochs (read from the feature table at training time)")
        else:
            row("--max-blowup", "inf" if bd["max_blowup"] is None else f"{bd['max_blowup']:g}",
                "unbounded" if bd["max_blowup"] is None else "does not bind: every cold row is packed")
    disk = est.get("disk_budget")
    if disk:
        row("disk budget", format_bytes(disk["disk_budget_bytes"]),
            "-> --max-blowup " + ("inf" if disk["fits"] and disk["max_blowup"] is None else
                                  f"{disk['max_blowup']:g}" if disk["fits"] else "none fits"))
        lines.append(f"  {disk['message']}")
    row("total", format_bytes(fp["total_bytes"]))
    lines.append("")
    lines.append("memory (peak)")
    for stage in ("sample", "pack"):
        row(stage, format_bytes(est["memory"][stage]["peak_host_bytes"]))
    row("train, host", format_bytes(mem["host_bytes"]),
        ", ".join(f"{k} {format_bytes(v)}" for k, v in mem["host_parts"].items() if v))
    if mem.get("gpu_bytes") is not None:
        row("train, GPU", format_bytes(mem["gpu_bytes"]),
            ", ".join(f"{k} {format_bytes(v)}" for k, v in mem["gpu_parts"].items() if v))
    row("page cache wanted", format_bytes(mem["file_cache_bytes"]), "train plan + index (reclaimable)")
    lines.append("")
    lines.append("time")
    for stage in ("import", "sample", "pack"):
        if stage in pre:
            row(f"preprocess: {stage}", _s(pre[stage]["seconds"]))
    hr = est["hit_rate"]
    row("hit rate (train)", f"gpu {hr['gpu']:.1%} host {hr['host']:.1%}", f"cold {hr['cold']:.1%}")
    row("read per epoch", format_bytes(est["bytes_read_per_epoch"]),
        f"incl. table rows: {ep['table_requests']:,} requests, {ep['table_page_reads']:,} pages, "
        f"{_s(ep['table_io_s'])}" if ep.get("table_requests") else "")
    for k, v in ep["stage_s"].items():
        row(f"epoch stage: {k}", _s(v))
    row("epoch (training pass)", _s(est["epoch_s"]), f"bottleneck: {est['bottleneck']}")
    if est.get("eval_s") is not None:
        row("validation pass", _s(est["eval_s"]))
    if bd and bd["binding"]:
        row("epoch, unbounded pack", _s(bd["unbounded"]["epoch_s"]),
            f"read {_s(bd['unbounded']['read_s'])} against {_s(bd['read_s'])} at --max-blowup {bd['max_blowup']:g}")
    if est["alternatives"]:
        lines.append("")
        lines.append("cache splits (gpu / host → epoch, blow-up, host memory)"
                     + (" at the --max-blowup that fits the disk budget" if est.get("disk_budget") else ""))
        rec = est["recommended"]
        for a in est["alternatives"]:
            mark = "*" if rec is not None and a is rec or (rec and a["gpu_cache_bytes"] == rec["gpu_cache_bytes"]
                                                          and a["host_cache_bytes"] == rec["host_cache_bytes"]) else " "
            lines.append(f" {mark} {format_bytes(a['gpu_cache_bytes']):>10} / {format_bytes(a['host_cache_bytes']):>10}"
                         f"  {_s(a['epoch_s']):>9}  {a['blowup']:7.2f}x  {format_bytes(a['peak_host_bytes']):>10}"
                         f"  {a['bottleneck']}"
                         + (f"  B {'inf' if a.get('max_blowup') is None else format(a['max_blowup'], 'g')}"
                            if est.get("disk_budget") else "")
                         + ("" if a["fits"] else "  (does not fit)"))
        if rec is None:
            lines.append("  no split fits the memory" + (" and disk" if est.get("disk_budget") else "") + " given")
        else:
            lines.append("  * recommended: the shortest epoch that fits (the smallest memory within 2 % of it), compared "
                         "with the profile's compute fit so identical runs recommend the same split")
    if est.get("inference"):
        lines.append("")
        lines += render_inference(est["inference"])
    lines.append("")
    lines.append("how")
    for k, v in est["how"].items():
        lines.append(f"  {k}: {v}")
    for k, v in (est.get("inference") or {}).get("how", {}).items():
        lines.append(f"  inference {k}: {v}")
    return "\n".join(lines) + "\n"


def render_inference(inf: dict) -> list[str]:
    """The section "inference (exact, layer-wise)": footprint, scratch, per-layer partitions, bytes and time."""
    lines = []

    def row(k, v, how=""):
        lines.append(f"  {k:<30} {v:<22} {how}".rstrip())

    what = f"layer {inf['layer']} of {inf['num_layers']}" + (f", {inf['dtype']}" if inf["kind"] == "embed" else "")
    lines.append(f"inference (exact, layer-wise): {inf['kind']} {inf['nodes']:,} nodes, {what}, width {inf['width']}, "
                 f"--memory-budget {format_bytes(inf['memory_budget'])}")
    out = inf["output"]
    row("output", format_bytes(inf["output_bytes"]),
        ", ".join(f"{k} {format_bytes(v['bytes'])}" for k, v in out["arrays"].items()) + " + manifest")
    sc = inf["scratch"]
    row("scratch (peak)", format_bytes(inf["scratch_bytes"]),
        (", ".join(f"{k.replace('layer', 'layer ')} tables {format_bytes(sum(t['bytes'] for t in v.values()))}"
                   for k, v in sc["tables"].items())
         + "; removed when the output is written") if sc["tables"] else "none (no intermediate layer)")
    row("disk at peak", format_bytes(inf["disk_peak_bytes"]), "output + scratch")
    for p in inf["passes"]:
        if p["pass"] == "inputs":
            how = (f"features -> layer 1 tables: read {format_bytes(p['read_bytes'])}, write "
                   f"{format_bytes(p['written_bytes'])}")
        else:
            how = (f"{p['partitions']} partition(s), {p['slices_read']} slice reads ({p['slices']} slices, "
                   f"{p['resident_slices']} resident), read {format_bytes(p['read_bytes'])}, write "
                   f"{format_bytes(p['written_bytes'])}")
        row(p["pass"], _s(p["seconds"]), how)
    row("inference total", _s(inf["seconds"]), f"read {format_bytes(inf['read_bytes'])}")
    mem = inf["memory"]
    row("peak memory", format_bytes(inf["peak_host_bytes"]),
        f"process {format_bytes(mem['process'])} + engine {format_bytes(mem['engine'])} + parameters "
        f"{format_bytes(mem['parameters'])}")
    return lines


def plot(est: dict, path: str | os.PathLike) -> None:
    """Epoch time and disk blow-up against cache size (the alternatives) as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("--plot needs matplotlib, which is not installed; install it with "
                         "`pip install 'diskgraph[plot]'` or drop --plot") from None
    alts = est["alternatives"]
    if not alts:
        raise InputError("--plot needs the cache alternatives; drop --no-alternatives")
    fb = est["footprint"]["feature_bytes"] or 1
    fig, ax1 = plt.subplots(figsize=(7, 4.2))
    ax2 = ax1.twinx()
    tiers = ("host",) if est["hardware"]["device"] == "cpu" else ("host", "gpu")
    for tier, style in (("host", "o-"), ("gpu", "s--")):
        if tier not in tiers:
            continue
        other = "gpu" if tier == "host" else "host"
        pts = sorted((a[f"{tier}_cache_bytes"] / fb, a["epoch_s"], a["blowup"]) for a in alts
                     if a[f"{other}_cache_bytes"] == 0)
        xs = [max(p[0], 1e-3) for p in pts]
        ax1.plot(xs, [p[1] for p in pts], style, color="tab:blue", label=f"epoch time ({tier} cache)")
        ax2.plot(xs, [p[2] for p in pts], style, color="tab:red", label=f"disk blow-up ({tier} cache)")
    ax1.set_xscale("log")
    ax1.set_xlabel("cache size / feature table (0 drawn at 0.001)")
    ax1.set_ylabel("epoch time (s)", color="tab:blue")
    ax2.set_ylabel("disk blow-up (packed / table)", color="tab:red")
    c = est["config"]
    ax1.set_title(f"{est['graph']['num_nodes']:,} nodes, fanouts {c['fanouts']}, batch {c['batch_size']}, {c['model']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
