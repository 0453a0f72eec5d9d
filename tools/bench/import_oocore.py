"""Out-of-core import benchmark: ``diskgraph preprocess import`` of a graph ≥ 4× larger than a memory cap.

What it does, in order:

1. checks that a cgroup-v1 memory child can be made (root, /sys/fs/cgroup/memory),
   else says why in one sentence and exits 2;
2. generates the raw inputs with ``diskgraph generate --format raw`` (itself run
   under the cap and reported separately), or reuses them from ``--cache-dir``;
   refuses to run when edges.npy + features.npy < 4 × ``--memory-cap`` (unless
   ``--allow-small``);
3. measures the fixed memory of an import process (interpreter, numpy, numba,
   zarr …) by importing a tiny graph under the same cap (``--no-baseline`` skips);
4. per repeat: drops the page cache of the inputs, runs
   ``diskgraph preprocess import … --memory-budget B`` inside a fresh child
   cgroup capped at ``--memory-cap`` and then ``diskgraph inspect OUT --verify
   --json`` inside another one with the same cap;
5. prints one table (medians over ``--repeat``) and writes everything as JSON
   (``--json``) and the table as text (``--txt``), with the machine's facts and
   the exact command lines.

Run ``python tools/bench/import_oocore.py --help``. Exit status: 0 when every
import and verify succeeded inside the cap without an OOM kill, 1 otherwise,
2 when the benchmark cannot run here.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import cgroup  # noqa: E402  (tools/bench is not a package)
from common import diskgraph_cmd, git_state  # noqa: E402

MiB = 1 << 20
NPY_HEADER = 128


def parse_size(text: str) -> int:
    try:
        from diskgraph.units import parse_bytes
    except ImportError:  # diskgraph not installed: plain numbers and K/M/G suffixes
        m = re.fullmatch(r"\s*([0-9.]+)\s*([kKmMgGtT]?)(i?[bB])?\s*", text)
        if not m:
            raise argparse.ArgumentTypeError(f"{text!r} is not a size; write e.g. 512M") from None
        return int(float(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()])
    return parse_bytes(text)


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def input_sizes(nodes: int, edges: int, dim: int, itemsize: int) -> dict:
    """Bytes of the raw .npy inputs ``diskgraph generate --format raw`` writes (data + header)."""
    return {"edges": 16 * edges + NPY_HEADER, "features": nodes * dim * itemsize + NPY_HEADER,
            "labels": 8 * nodes + NPY_HEADER}


# -- parsing what the import logs ------------------------------------------------------------------

_TOPO = re.compile(r"topology: wrote CSC with .* in ([0-9.]+) s")
_FEAT = re.compile(r"features: wrote .* in ([0-9.]+) s")
_COUNT = re.compile(r"topology: .* input edges, .* after options, in ([0-9.]+) s")


def stage_seconds(log_text: str) -> dict:
    """Per-stage seconds from the import's INFO log lines (topology total, its count pass, features)."""
    out = {}
    for key, rx in (("topology_s", _TOPO), ("features_s", _FEAT), ("topology_count_s", _COUNT)):
        m = rx.search(log_text or "")
        if m:
            out[key] = float(m.group(1))
    return out


# -- steps -----------------------------------------------------------------------------------------

def ensure_inputs(args, raw_dir: Path) -> tuple[dict | None, list[str] | None]:
    """Generate the raw inputs into ``raw_dir`` unless a complete copy is there; returns (result, cmd)."""
    params = {"nodes": args.nodes, "edges": args.edges, "feature_dim": args.feature_dim, "classes": args.classes,
              "seed": args.seed, "feature_dtype": args.feature_dtype}
    marker = raw_dir / "bench-params.json"
    expect = input_sizes(args.nodes, args.edges, args.feature_dim, 2 if args.feature_dtype == "float16" else 4)
    if not args.regenerate and marker.exists():
        try:
            same = json.loads(marker.read_text()).get("params") == params
        except ValueError:
            same = False
        sizes_ok = all((raw_dir / f"{k}.npy").exists() and (raw_dir / f"{k}.npy").stat().st_size >= expect[k] - NPY_HEADER
                       for k in expect)
        if same and sizes_ok:
            print(f"reusing raw inputs in {raw_dir}", flush=True)
            return None, None
    cmd = [*diskgraph_cmd(), "generate", "--format", "raw", "--nodes", args.nodes, "--edges", args.edges,
           "--feature-dim", args.feature_dim, "--classes", args.classes, "--seed", args.seed,
           "--feature-dtype", args.feature_dtype, "--out", raw_dir, "--overwrite", "-q"]
    cmd = [str(c) for c in cmd]
    print(f"generating raw inputs under the {fmt_bytes(args.memory_cap)} cap: {shlex.join(cmd)}", flush=True)
    raw_dir.parent.mkdir(parents=True, exist_ok=True)
    if args.generate_uncapped:
        r = cgroup.run_in_cgroup(cmd, 1 << 62, name=f"bench-generate-{os.getpid()}", capture=True)
    else:
        r = cgroup.run_in_cgroup(cmd, args.memory_cap, name=f"bench-generate-{os.getpid()}", capture=True,
                                 timeout=args.timeout)
    res = r.to_dict()
    res["capped"] = not args.generate_uncapped
    if not r.ok:
        tail = (r.stderr or "")[-2000:]
        raise SystemExit(f"import_oocore: generating the inputs failed (exit {r.returncode}, oom kills {r.oom_kills}); "
                         f"pass --generate-uncapped to generate without the cap.\n{tail}")
    marker.write_text(json.dumps({"params": params, "generated": datetime.now(timezone.utc).isoformat(),
                                  "command": shlex.join(cmd)}, indent=2))
    return res, cmd


def import_cmd(raw_dir: Path, out: Path, budget: int, quiet: bool = False) -> list[str]:
    cmd = [*diskgraph_cmd(), "preprocess", "import", "--edges", raw_dir / "edges.npy",
           "--features", raw_dir / "features.npy", "--labels", raw_dir / "labels.npy",
           "--split", "random:0.1,0.1,0.8", "--dedup", "--drop-self-loops", "--memory-budget", str(budget),
           "--out", out, "--overwrite"]
    if quiet:
        cmd.append("-q")
    return [str(c) for c in cmd]


def run_baseline(args, work: Path, budget: int) -> dict:
    """Peak memory of an import process on a tiny graph under the same cap: the fixed cost of the process.

    Two runs: with numba's on-disk cache as it is (warm), and with an empty
    ``NUMBA_CACHE_DIR`` so every kernel compiles inside the cap (cold).
    """
    tiny = work / "baseline-raw"
    gen = [*diskgraph_cmd(), "generate", "--format", "raw", "--nodes", "2000", "--edges", "20000",
           "--feature-dim", str(args.feature_dim), "--classes", str(args.classes), "--seed", "0",
           "--out", str(tiny), "--overwrite", "-q"]
    r = cgroup.run_in_cgroup(gen, args.memory_cap, name=f"bench-baseline-gen-{os.getpid()}", capture=True)
    if not r.ok:
        return {"error": f"tiny generate failed: exit {r.returncode}: {(r.stderr or '')[-500:]}"}
    out = {}
    for label, env_extra in (("warm_numba_cache", {}), ("cold_numba_cache", {"NUMBA_CACHE_DIR": str(work / "numba-cold")})):
        shutil.rmtree(work / "numba-cold", ignore_errors=True)
        cmd = import_cmd(tiny, work / "baseline-out", budget)
        env = {**os.environ, **env_extra}
        r = cgroup.run_in_cgroup(cmd, args.memory_cap, name=f"bench-baseline-{os.getpid()}", env=env, capture=True)
        out[label] = {"ok": r.ok, "returncode": r.returncode, "wall_s": r.wall_s, "max_usage_bytes": r.max_usage_bytes,
                      "peak_rss_bytes": r.peak_rss_bytes, "peak_rss_anon_bytes": r.peak_rss_anon_bytes,
                      "peak_cgroup_rss_bytes": r.peak_stat.get("total_rss", 0), "env": env_extra,
                      "command": shlex.join(cmd)}
    shutil.rmtree(work / "numba-cold", ignore_errors=True)
    shutil.rmtree(work / "baseline-out", ignore_errors=True)
    shutil.rmtree(tiny, ignore_errors=True)
    return out


def read_manifest(out: Path) -> dict:
    try:
        return json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}


def uncapped_reference(args, raw_dir: Path, out: Path, budget: int, i: int) -> dict:
    """The same import with the same --memory-budget but no cap (page cache unbounded): what the cap costs."""
    inputs = [raw_dir / "edges.npy", raw_dir / "features.npy", raw_dir / "labels.npy"]
    if out.exists():
        shutil.rmtree(out)
    cgroup.evict(inputs)
    cmd = import_cmd(raw_dir, out, budget, quiet=args.quiet_import)
    print(f"[run {i + 1}/{args.repeat}] reference import without a cap", flush=True)
    r = cgroup.run_in_cgroup(cmd, 1 << 62, name=f"bench-uncapped-{os.getpid()}-{i}", capture=True, timeout=args.timeout)
    print(f"  exit {r.returncode}, {r.wall_s:.1f} s, max usage {fmt_bytes(r.max_usage_bytes)}, "
          f"peak anon {fmt_bytes(r.peak_stat.get('total_rss'))}", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    d = r.to_dict(timeline=False)
    d["stages"] = stage_seconds(r.stderr or "")
    return d


def one_repeat(args, raw_dir: Path, out: Path, budget: int, i: int) -> dict:
    inputs = [raw_dir / "edges.npy", raw_dir / "features.npy", raw_dir / "labels.npy"]
    ref = uncapped_reference(args, raw_dir, out, budget, i) if args.uncapped_reference else None
    if out.exists():
        shutil.rmtree(out)
    cgroup.evict(inputs)
    resident = cgroup.resident_bytes(inputs)
    cmd = import_cmd(raw_dir, out, budget, quiet=args.quiet_import)
    print(f"[run {i + 1}/{args.repeat}] import under {fmt_bytes(args.memory_cap)} "
          f"({fmt_bytes(resident)} of the inputs cached): {shlex.join(cmd)}", flush=True)
    r = cgroup.run_in_cgroup(cmd, args.memory_cap, name=f"bench-import-{os.getpid()}-{i}", capture=True,
                             timeout=args.timeout)
    rec = {"import": r.to_dict(), "command": shlex.join(cmd), "inputs_resident_before_bytes": resident,
           "stages": stage_seconds(r.stderr or ""), "uncapped_reference": ref}
    print(f"  exit {r.returncode}, {r.wall_s:.1f} s, max usage {fmt_bytes(r.max_usage_bytes)}, "
          f"peak anon {fmt_bytes(r.peak_stat.get('total_rss'))}, failcnt {r.failcnt}, oom kills {r.oom_kills}", flush=True)
    if r.returncode != 0:
        print((r.stderr or "")[-3000:], file=sys.stderr)
    man = read_manifest(out)
    rec["manifest"] = {k: man.get(k) for k in ("num_nodes", "num_edges", "num_classes", "index_dtype", "features",
                                                 "splits", "import", "options")} if man else None
    if r.ok and man:
        cgroup.evict([out])
        vcmd = [*diskgraph_cmd(), "inspect", str(out), "--verify", "--json"]
        where = "outside any cap" if args.verify_uncapped else f"under {fmt_bytes(args.memory_cap)}"
        print(f"[run {i + 1}/{args.repeat}] verify {where}: {shlex.join(vcmd)}", flush=True)
        v = cgroup.run_in_cgroup(vcmd, 1 << 62 if args.verify_uncapped else args.memory_cap,
                                 name=f"bench-verify-{os.getpid()}-{i}", capture=True, timeout=args.timeout)
        try:
            info = json.loads(v.stdout or "")
        except ValueError:
            info = None
        vd = v.to_dict()
        vd.pop("stdout", None)
        rec["verify"] = {"run": vd, "command": shlex.join(vcmd), "capped": not args.verify_uncapped,
                         "ok": bool(v.returncode == 0 and info and info.get("verify", {}).get("ok")),
                         "problems": (info or {}).get("verify", {}).get("problems"), "inspect": info}
        print(f"  verify {'ok' if rec['verify']['ok'] else 'FAILED'} in {v.wall_s:.1f} s, "
              f"max usage {fmt_bytes(v.max_usage_bytes)}, oom kills {v.oom_kills}", flush=True)
        rec["output_bytes"] = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    else:
        rec["verify"] = {"ok": False, "problems": ["import failed"], "command": None}
    if not args.keep_output:
        shutil.rmtree(out, ignore_errors=True)
    return rec


# -- the table -------------------------------------------------------------------------------------

def _median(values):
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def summarize(runs: list[dict], sizes: dict, feature_data_bytes: int) -> dict:
    def col(f):
        return [f(r) for r in runs]

    wall = col(lambda r: r["import"]["wall_s"])
    input_edges = col(lambda r: (r["manifest"] or {}).get("import", {}).get("input_edges") if r["manifest"] else None)
    s = {
        "import_wall_s": _median(wall),
        "max_usage_bytes": _median(col(lambda r: r["import"]["max_usage_bytes"])),
        "peak_cgroup_rss_bytes": _median(col(lambda r: r["import"]["peak_stat"].get("total_rss"))),
        "peak_cgroup_cache_bytes": _median(col(lambda r: r["import"]["peak_stat"].get("total_cache"))),
        "peak_rss_bytes": _median(col(lambda r: r["import"]["peak_rss_bytes"])),
        "peak_rss_anon_bytes": _median(col(lambda r: r["import"]["peak_rss_anon_bytes"])),
        "failcnt": _median(col(lambda r: r["import"]["failcnt"])),
        "oom_kills": max(col(lambda r: r["import"]["oom_kills"])),
        "read_bytes": _median(col(lambda r: r["import"]["read_bytes"])),
        "write_bytes": _median(col(lambda r: r["import"]["write_bytes"])),
        "user_s": _median(col(lambda r: r["import"]["user_s"])),
        "sys_s": _median(col(lambda r: r["import"]["sys_s"])),
        "topology_s": _median(col(lambda r: r["stages"].get("topology_s"))),
        "topology_count_s": _median(col(lambda r: r["stages"].get("topology_count_s"))),
        "features_s": _median(col(lambda r: r["stages"].get("features_s"))),
        "csc_parts": _median(col(lambda r: ((r["manifest"] or {}).get("import") or {}).get("csc_parts"))),
        "stored_edges": _median(col(lambda r: (r["manifest"] or {}).get("num_edges"))),
        "input_edges": _median(input_edges),
        "output_bytes": _median(col(lambda r: r.get("output_bytes"))),
        "all_ok": all(r["import"]["ok"] and r["verify"]["ok"] for r in runs),
        "verify_ok": all(r["verify"]["ok"] for r in runs),
        "verify_wall_s": _median(col(lambda r: (r["verify"].get("run") or {}).get("wall_s"))),
        "verify_max_usage_bytes": _median(col(lambda r: (r["verify"].get("run") or {}).get("max_usage_bytes"))),
        "uncapped_wall_s": _median(col(lambda r: (r.get("uncapped_reference") or {}).get("wall_s"))),
        "uncapped_max_usage_bytes": _median(col(lambda r: (r.get("uncapped_reference") or {}).get("max_usage_bytes"))),
        "uncapped_peak_rss_bytes": _median(col(lambda r: ((r.get("uncapped_reference") or {}).get("peak_stat") or {}).get("total_rss"))),
        "verify_oom_kills": max(col(lambda r: (r["verify"].get("run") or {}).get("oom_kills") or 0)),
    }
    e = s["input_edges"]
    if e is not None:
        # what the import has to read: the edge list twice (count, then spill or place), the features and
        # labels once, and with several CSC ranges the spill files (int32 pairs after the options) once.
        kept = e - _median(col(lambda r: ((r["manifest"] or {}).get("import") or {}).get("self_loops_dropped"))) if runs else e
        s["expected_read_bytes"] = 2 * sizes["edges"] + sizes["features"] + sizes["labels"] + (
            8 * kept if (s["csc_parts"] or 1) > 1 else 0)
    if s["import_wall_s"]:
        w = s["import_wall_s"]
        s["edges_per_s"] = e / w if e else None
        s["feature_MB_per_s"] = feature_data_bytes / 1e6 / w
        s["input_MB_per_s"] = (sizes["edges"] + sizes["features"]) / 1e6 / w
    if s["topology_s"] and e:
        s["topology_edges_per_s"] = e / s["topology_s"]
    if s["features_s"]:
        s["features_stage_MB_per_s"] = feature_data_bytes / 1e6 / s["features_s"]
    return s


def render_table(report: dict) -> str:
    p, m, s, runs = report["params"], report["machine"], report["summary"], report["runs"]
    sizes = report["input_bytes"]
    n = len(runs)
    rows: list[tuple[str, str]] = []

    def add(label, value):
        rows.append((label, value))

    def per_run(f, fmt):
        vals = [f(r) for r in runs]
        text = "  ".join(fmt(v) if v is not None else "-" for v in vals)
        return text if n == 1 else f"{text}   (runs)"

    disk = next(iter(m.get("disks", {}).values()), {})
    add("machine", f"{m.get('nproc')} CPUs ({m.get('cpu_model', '?')}), {fmt_bytes(m.get('mem_total_bytes'))} RAM, "
        f"{disk.get('fstype', '?')} on {disk.get('device', '?')}, kernel {m.get('kernel')}")
    add("graph", f"{p['nodes']:,} nodes, {p['edges']:,} edges drawn, {p['feature_dim']}-d {p['feature_dtype']}, "
        f"{p['classes']} classes, seed {p['seed']}")
    add("input bytes", f"edges.npy {fmt_bytes(sizes['edges'])} + features.npy {fmt_bytes(sizes['features'])} = "
        f"{fmt_bytes(sizes['edges'] + sizes['features'])} (labels.npy {fmt_bytes(sizes['labels'])})")
    swap = m.get("swap_total_bytes", 0)
    add("memory cap", f"{fmt_bytes(p['memory_cap'])} (cgroup v1 memory.limit_in_bytes"
        + (", memsw too" if swap else "; the machine has no swap") + ")")
    add("inputs / cap", f"{report['ratio']:.2f}x")
    add("memory budget", f"{fmt_bytes(p['memory_budget'])} (--memory-budget)")
    g = report.get("generate")
    if g:
        add("generate", f"{g['wall_s']:.1f} s {'under the cap' if g.get('capped') else 'without a cap'} "
            f"({(sizes['edges'] + sizes['features'] + sizes['labels']) / 1e6 / g['wall_s']:.0f} MB/s written), "
            f"max usage {fmt_bytes(g['max_usage_bytes'])}, peak anon {fmt_bytes(g['peak_stat'].get('total_rss'))}, "
            f"failcnt {g['failcnt']}, oom kills {g['oom_kills']}")
    else:
        add("generate", "reused cached inputs")
    b = report.get("baseline") or {}
    for label, key in (("baseline (warm)", "warm_numba_cache"), ("baseline (cold)", "cold_numba_cache")):
        if key in b:
            x = b[key]
            add(label, f"tiny import: peak anon {fmt_bytes(x['peak_cgroup_rss_bytes'])}, peak RSS "
                f"{fmt_bytes(x['peak_rss_bytes'])}, {x['wall_s']:.1f} s"
                + ("" if key == "warm_numba_cache" else " (numba compiles every kernel)"))
    la0, la1 = m.get("loadavg_start"), m.get("loadavg_end")
    if la0 and la1:
        add("load average", f"{la0[0]:.2f} at start, {la1[0]:.2f} at end (1-min; other work on the machine skews times)")
    add("repeats", str(n) + (" (medians below)" if n > 1 else ""))
    add("import wall time", f"{s['import_wall_s']:.1f} s" + ("" if n == 1 else f"   [{per_run(lambda r: r['import']['wall_s'], lambda v: f'{v:.1f}')}]"))
    if s.get("uncapped_wall_s") is not None:
        add("  without a cap", f"{s['uncapped_wall_s']:.1f} s (same budget, cold cache; max usage "
            f"{fmt_bytes(s['uncapped_max_usage_bytes'])}, peak anon {fmt_bytes(s['uncapped_peak_rss_bytes'])}) "
            f"; capped / uncapped time = {s['import_wall_s'] / s['uncapped_wall_s']:.2f}")
    if s.get("topology_s") is not None:
        add("  topology", f"{s['topology_s']:.1f} s (count pass {s.get('topology_count_s') or 0:.1f} s), "
            f"{s.get('topology_edges_per_s', 0) / 1e6:.2f} M input edges/s")
    if s.get("features_s") is not None:
        add("  features", f"{s['features_s']:.1f} s, {s.get('features_stage_MB_per_s', 0):.0f} MB/s")
    add("peak cgroup memory", f"{fmt_bytes(s['max_usage_bytes'])} (max_usage_in_bytes: anon + page cache)")
    add("  of it anon", f"{fmt_bytes(s['peak_cgroup_rss_bytes'])} (peak memory.stat total_rss, sampled)")
    add("  of it page cache", f"{fmt_bytes(s['peak_cgroup_cache_bytes'])} (peak total_cache, sampled)")
    add("peak RSS", f"{fmt_bytes(s['peak_rss_bytes'])} (VmHWM, counts mapped input pages)")
    add("failcnt", f"{s['failcnt']:.0f} (times a charge hit the cap and reclaimed)")
    add("oom kills", str(s["oom_kills"]))
    add("read from disk", f"{fmt_bytes(s['read_bytes'])} ({s['read_bytes'] / max(1, sizes['edges'] + sizes['features'] + sizes['labels']):.2f}x "
        f"the inputs; expected {fmt_bytes(s.get('expected_read_bytes'))}: edges "
        + ("twice (count + spill passes) + the spill files once" if (s.get('csc_parts') or 1) > 1 else "twice (count + place passes)")
        + " + features + labels)")
    add("written to disk", f"{fmt_bytes(s['write_bytes'])} (dataset {fmt_bytes(s.get('output_bytes'))})")
    add("CPU", f"user {s['user_s']:.1f} s, sys {s['sys_s']:.1f} s")
    if s.get("edges_per_s"):
        add("throughput", f"{s['edges_per_s'] / 1e6:.2f} M edges/s, {s['feature_MB_per_s']:.0f} MB/s of features, "
            f"{s['input_MB_per_s']:.0f} MB/s of inputs (all over the whole import wall time)")
    add("edges", f"{s['input_edges']:,.0f} read, {s['stored_edges']:,.0f} stored (dedup, no self-loops)"
        if s.get("stored_edges") is not None else "-")
    add("csc ranges", f"{s['csc_parts']:.0f} (manifest import.csc_parts)" if s.get("csc_parts") is not None else "-")
    vwhere = "under the cap" if runs and runs[0]["verify"].get("capped") else "without a cap"
    add("verify", ("ok" if s["verify_ok"] else "FAILED") +
        (f" (inspect --verify {vwhere}: {s['verify_wall_s']:.1f} s, max usage {fmt_bytes(s['verify_max_usage_bytes'])}, "
         f"oom kills {s['verify_oom_kills']})" if s.get("verify_wall_s") is not None else ""))
    add("result", "PASS: imported inside the cap, no OOM kill, verify ok" if s["all_ok"] else "FAIL")
    width = max(len(k) for k, _ in rows)
    title = (f"import_oocore — diskgraph preprocess import inside a {fmt_bytes(p['memory_cap'])} cgroup "
             f"({report['date']})")
    lines = [title, "-" * len(title)] + [f"{k.ljust(width)}  {v}" for k, v in rows]
    lines.append("")
    lines.append("command: " + report["commands"]["import"])
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="import_oocore.py",
        description="Import a synthetic graph whose edges + features are at least 4x a memory cap with "
                    "`diskgraph preprocess import` inside a cgroup-v1 memory child with that cap; print the peak "
                    "memory, time and throughput; verify the result. Needs root and cgroup v1.",
        epilog="Example: python tools/bench/import_oocore.py --memory-cap 512M --json "
               "tools/bench/results/import_oocore-cpu2.json --txt tools/bench/results/import_oocore-cpu2.txt")
    g = p.add_argument_group("graph (defaults: 2M nodes, 80M edges, 128-d float32 = 2.3 GB of edges + features)")
    g.add_argument("--nodes", type=int, default=2_000_000)
    g.add_argument("--edges", type=int, default=80_000_000, help="edges drawn (int64 [2,E] = 16 bytes each)")
    g.add_argument("--feature-dim", type=int, default=128)
    g.add_argument("--feature-dtype", choices=["float32", "float16"], default="float32")
    g.add_argument("--classes", type=int, default=16)
    g.add_argument("--seed", type=int, default=0)
    r = p.add_argument_group("resources")
    r.add_argument("--memory-cap", type=parse_size, default=512 * MiB, help="cgroup memory cap (default 512M)")
    r.add_argument("--memory-budget", type=parse_size, help="--memory-budget given to the import "
                   "(default: half the cap; the rest is headroom for the interpreter, numpy, numba, zarr and the page cache)")
    r.add_argument("--allow-small", action="store_true", help="run even when the inputs are less than 4x the cap")
    r.add_argument("--timeout", type=float, default=3600, help="kill a step after this many seconds (default 3600)")
    o = p.add_argument_group("files")
    o.add_argument("--cache-dir", type=Path, default=REPO / "bench-data",
                   help="where raw inputs are generated and reused (default: bench-data/ in the repository, gitignored)")
    o.add_argument("--out", type=Path, help="dataset directory to write (default: CACHE_DIR/import-oocore-out)")
    o.add_argument("--regenerate", action="store_true", help="generate the inputs again even when cached")
    o.add_argument("--generate-uncapped", action="store_true", help="generate the inputs without the cap")
    o.add_argument("--keep-output", action="store_true", help="keep the imported dataset after the run")
    o.add_argument("--json", type=Path, metavar="FILE", help="write the full report as JSON")
    o.add_argument("--txt", type=Path, metavar="FILE", help="write the printed table to FILE")
    x = p.add_argument_group("runs")
    x.add_argument("--repeat", type=int, default=1, help="imports to run (medians in the table)")
    x.add_argument("--no-baseline", action="store_true", help="skip measuring the fixed memory of an import process")
    x.add_argument("--verify-uncapped", action="store_true", help="run inspect --verify without the cap")
    x.add_argument("--uncapped-reference", action="store_true", help="before each capped import, run the same import "
                   "without a cap (same budget, cold cache) to show what the cap costs in time")
    x.add_argument("--quiet-import", action="store_true", help="pass -q to the import (then no per-stage times)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cg_parent = cgroup.check_memory_cgroup()
    except cgroup.CgroupUnavailable as e:
        print(f"import_oocore: {e}", file=sys.stderr)
        return 2
    if args.repeat < 1:
        print("import_oocore: --repeat must be at least 1", file=sys.stderr)
        return 2
    itemsize = 2 if args.feature_dtype == "float16" else 4
    sizes = input_sizes(args.nodes, args.edges, args.feature_dim, itemsize)
    feature_data = args.nodes * args.feature_dim * itemsize
    ratio = (sizes["edges"] + sizes["features"]) / args.memory_cap
    budget = args.memory_budget or args.memory_cap // 2
    print(f"inputs: edges {fmt_bytes(sizes['edges'])} + features {fmt_bytes(sizes['features'])} = "
          f"{fmt_bytes(sizes['edges'] + sizes['features'])}; cap {fmt_bytes(args.memory_cap)}; ratio {ratio:.2f}x; "
          f"budget {fmt_bytes(budget)}", flush=True)
    if ratio < 4 and not args.allow_small:
        print(f"import_oocore: edges + features are only {ratio:.2f}x the {fmt_bytes(args.memory_cap)} cap; "
              "raise --edges/--nodes/--feature-dim or lower --memory-cap to reach 4x (or pass --allow-small)",
              file=sys.stderr)
        return 2
    if budget >= args.memory_cap:
        print("import_oocore: --memory-budget must be below --memory-cap (the process needs headroom)", file=sys.stderr)
        return 2

    cache = args.cache_dir.resolve()
    raw_dir = cache / f"raw-n{args.nodes}-e{args.edges}-f{args.feature_dim}-{args.feature_dtype}-c{args.classes}-s{args.seed}"
    out = (args.out or cache / "import-oocore-out").resolve()
    cache.mkdir(parents=True, exist_ok=True)
    # Space: inputs, the dataset (~4 B/edge + features + indptr) and the spill files (8 B/edge) at once.
    need = 0 if (raw_dir / "bench-params.json").exists() and not args.regenerate else sum(sizes.values())
    need += 12 * args.edges + feature_data + 8 * args.nodes * 2
    free = shutil.disk_usage(cache).free
    if free < need * 1.1:
        print(f"import_oocore: {cache} has {fmt_bytes(free)} free but the run needs about {fmt_bytes(need)}; "
              "free space or pass a smaller graph", file=sys.stderr)
        return 2

    machine = cgroup.machine_facts([cache, out.parent])
    machine["cgroup_parent"] = str(cg_parent)
    machine["loadavg_start"] = os.getloadavg()
    t_start = time.time()
    gen_res, gen_cmd = ensure_inputs(args, raw_dir)
    sizes = {k: (raw_dir / f"{k}.npy").stat().st_size for k in sizes}
    ratio = (sizes["edges"] + sizes["features"]) / args.memory_cap

    baseline = None
    if not args.no_baseline:
        with tempfile.TemporaryDirectory(dir=cache, prefix="baseline-") as tmp:
            print("measuring the fixed memory of an import process (tiny graph, same cap) ...", flush=True)
            baseline = run_baseline(args, Path(tmp), budget)
            for k, v in baseline.items():
                if isinstance(v, dict):
                    print(f"  {k}: peak anon {fmt_bytes(v.get('peak_cgroup_rss_bytes'))}, "
                          f"peak RSS {fmt_bytes(v.get('peak_rss_bytes'))}, {v.get('wall_s', 0):.1f} s", flush=True)

    runs = [one_repeat(args, raw_dir, out, budget, i) for i in range(args.repeat)]
    summary = summarize(runs, sizes, feature_data)
    machine["loadavg_end"] = os.getloadavg()
    report = {
        "bench": "import_oocore",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "params": {"nodes": args.nodes, "edges": args.edges, "feature_dim": args.feature_dim,
                   "feature_dtype": args.feature_dtype, "classes": args.classes, "seed": args.seed,
                   "memory_cap": args.memory_cap, "memory_budget": budget, "repeat": args.repeat},
        "input_bytes": sizes,
        "ratio": ratio,
        "machine": machine,
        "commands": {"bench": shlex.join([sys.executable, *sys.argv]),
                     "generate": shlex.join(gen_cmd) if gen_cmd else None,
                     "import": runs[0]["command"], "verify": runs[0]["verify"].get("command")},
        "git": git_state(),
        "raw_dir": str(raw_dir),
        "generate": gen_res,
        "baseline": baseline,
        "runs": runs,
        "summary": summary,
        "total_seconds": time.time() - t_start,
    }
    table = render_table(report)
    print()
    print(table)
    if args.txt:
        args.txt.parent.mkdir(parents=True, exist_ok=True)
        args.txt.write_text(table + "\n")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0 if summary["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
