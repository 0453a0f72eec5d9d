"""Accuracy parity: packed out-of-core training vs the in-memory reference trainer, over seeds, on real graphs.

For each dataset (default: ``amazon-computers``, ``coauthor-cs`` and ``cora`` from
``REPO/../shared/datasets/NAME/data.npz``) it:

1. imports, samples and packs it once with
   ``diskgraph preprocess all --npz … --out WORK/NAME --fanouts F --batch-size B --seed PLAN_SEED
   --epochs K --host-cache H`` (``H`` = ``--host-cache-fraction`` of the feature table, so part of
   every minibatch really comes from the packed extents on disk; ``K`` presampled epochs, default 1:
   the packed run replays them in a fresh order each epoch, as DiskGNN does);
2. per seed ``S``, trains 2-layer GraphSAGE both ways with the same fanouts, batch size, epochs,
   hidden width, dropout and learning rate:

   * packed:    ``diskgraph train WORK/NAME --model sage --hidden 256 --epochs E --lr LR --seed S
     --log-json …`` (pipelined O_DIRECT reader, host tier, replayed plan);
   * reference: ``diskgraph train WORK/NAME --reference --fanouts F --batch-size B …`` (the
     project's in-memory loader: features in RAM, a fresh online sample every epoch, no disk);

3. prints, per dataset, the mean ± sample std of the test accuracy (of the best-validation model)
   of both modes over the seeds and their difference; the target is |difference| ≤ 1 point.

The packed runs of all seeds share the one plan (sampled with ``--plan-seed``); the seed changes the
model's initialisation, dropout and the replay order. The reference samples with the training seed.

Exit status: 0 when every dataset is within ``--tolerance`` points, 1 when one is not or a run
failed, 2 when it cannot run (a dataset is missing). Run ``python tools/bench/train_parity.py --help``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import cgroup  # noqa: E402  (machine facts only; nothing here needs a cgroup)
from common import diskgraph_cmd, git_state, read_log  # noqa: E402

DEFAULT_DATASETS = ("amazon-computers", "coauthor-cs", "cora")

PRESETS = {
    # cora: 140 training nodes, so a small batch gives several minibatches (5) per epoch.
    "cora": {"fanouts": "10,5", "batch_size": 32, "epochs": 20, "lr": 0.005},
    # amazon-computers: raw bag-of-words counts; converges in ~15-20 epochs at lr 0.005 (≈ 3 s/epoch on 2 CPUs).
    "amazon-computers": {"fanouts": "10,5", "batch_size": 512, "epochs": 20, "lr": 0.005},
    # coauthor-cs: 6,805-d features make layer 1 the cost (≈ 20 s/epoch on 2 CPUs at batch 1024); val accuracy
    # is within ~0.5 point of its plateau after 4-5 epochs.
    "coauthor-cs": {"fanouts": "10,5", "batch_size": 1024, "epochs": 5, "lr": 0.005},
}
FALLBACK = {"fanouts": "10,5", "batch_size": 512, "epochs": 10, "lr": 0.005}


def fmt_bytes(n) -> str:
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def run(cmd: list[str], log_path: Path, timeout: float | None) -> dict:
    """Run ``cmd`` (stdout+stderr to ``log_path``); returns exit code, wall time and the log's tail on failure."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log_path, "w") as f:
        try:
            p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, cwd=REPO)
            rc, timed_out = p.returncode, False
        except subprocess.TimeoutExpired:
            rc, timed_out = None, True
    out = {"command": shlex.join(cmd), "returncode": rc, "timed_out": timed_out, "wall_s": time.perf_counter() - t0,
           "log": str(log_path)}
    if rc != 0:
        out["log_tail"] = log_path.read_text()[-3000:]
    return out


def preprocess(args, name: str, npz: Path, out: Path, cfg: dict) -> dict:
    """``preprocess all`` of one dataset (reused when the pack there was made with the same settings)."""
    import numpy as np

    with np.load(npz) as z:
        feat = z["features"]
        table_bytes = int(feat.shape[0]) * int(feat.shape[1]) * feat.dtype.itemsize
    host = int(table_bytes * args.host_cache_fraction)
    params = {"npz": str(npz), "fanouts": cfg["fanouts"], "batch_size": cfg["batch_size"], "seed": args.plan_seed,
              "presample_epochs": args.presample_epochs, "host_cache": host}
    marker = out / "bench-train-parity.json"
    cmd = [*diskgraph_cmd(), "preprocess", "all", "--npz", str(npz), "--out", str(out), "--fanouts", cfg["fanouts"],
           "--batch-size", str(cfg["batch_size"]), "--seed", str(args.plan_seed), "--epochs", str(args.presample_epochs),
           "--host-cache", str(host), "--max-blowup", "100", "--overwrite"]
    if not args.repack and marker.exists() and (out / "packs" / "default" / "manifest.json").exists():
        try:
            if json.loads(marker.read_text()).get("params") == params:
                print(f"[{name}] reusing the pack in {out}", flush=True)
                res = {"command": shlex.join(cmd), "returncode": 0, "reused": True, "wall_s": None}
                return {**res, **pack_facts(out), "table_bytes": table_bytes, "host_cache_bytes": host}
        except ValueError:
            pass
    print(f"[{name}] {shlex.join(cmd)}", flush=True)
    res = run(cmd, args.work_dir / "logs" / f"{name}-preprocess.log", args.timeout)
    if res["returncode"] != 0:
        return {**res, "table_bytes": table_bytes, "host_cache_bytes": host}
    marker.write_text(json.dumps({"params": params}, indent=2))
    facts = pack_facts(out)
    print(f"[{name}]   {res['wall_s']:.1f} s; pack blow-up {facts['blowup']:.2f}x, cold extents "
          f"{fmt_bytes(facts['cold_bytes'])}, host tier {facts['host_rows']} rows", flush=True)
    return {**res, **facts, "table_bytes": table_bytes, "host_cache_bytes": host}


def pack_facts(out: Path) -> dict:
    pm = json.loads((out / "packs" / "default" / "manifest.json").read_text())
    plan = json.loads((out / "plans" / "default" / "manifest.json").read_text())
    ds = json.loads((out / "manifest.json").read_text())
    return {"blowup": pm.get("blowup"), "cold_bytes": pm.get("cold_bytes"),
            "host_rows": pm.get("tiers", {}).get("host", {}).get("rows"),
            "train_minibatches_per_epoch": plan["splits"]["train"]["minibatches_per_epoch"],
            "presampled_epochs": plan["splits"]["train"]["epochs"],
            "splits": {k: v.get("minibatches") for k, v in plan["splits"].items()},
            "num_nodes": ds.get("num_nodes"), "num_edges": ds.get("num_edges"),
            "feature_dim": (ds.get("features") or {}).get("dim")}


def train(args, name: str, out: Path, cfg: dict, mode: str, seed: int) -> dict:
    tag = f"{name}-{mode}-seed{seed}"
    log_json = args.work_dir / "logs" / f"{tag}.jsonl"
    if log_json.exists():
        log_json.unlink()
    cmd = [*diskgraph_cmd(), "train", str(out), "--model", "sage", "--hidden", str(args.hidden), "--dropout",
           str(args.dropout), "--epochs", str(cfg["epochs"]), "--lr", str(cfg["lr"]), "--seed", str(seed),
           "--device", "cpu", "--run-dir", str(args.work_dir / "runs" / tag), "--overwrite", "--log-json", str(log_json)]
    if mode == "reference":
        cmd += ["--reference", "--fanouts", cfg["fanouts"], "--batch-size", str(cfg["batch_size"])]
    res = run(cmd, args.work_dir / "logs" / f"{tag}.log", args.timeout)
    epochs, summary = read_log(log_json)
    res.update({"mode": mode, "seed": seed, "epochs": epochs, "summary": summary,
                "test_acc": (summary or {}).get("test_acc"), "best_val_acc": (summary or {}).get("best_val_acc"),
                "best_epoch": (summary or {}).get("best_epoch")})
    if res["returncode"] == 0 and res["test_acc"] is not None:
        ep = [e["epoch_s"] for e in epochs]
        print(f"[{name}]   {mode:9s} seed {seed}: test {100 * res['test_acc']:.2f}  best val "
              f"{100 * res['best_val_acc']:.2f} (epoch {res['best_epoch']})  {res['wall_s']:.0f} s "
              f"({statistics.fmean(ep):.2f} s/epoch train)", flush=True)
    else:
        print(f"[{name}]   {mode} seed {seed} FAILED (exit {res['returncode']}); log {res['log']}", flush=True)
        print(res.get("log_tail", ""), file=sys.stderr)
    return res


def summarize(name: str, cfg: dict, pre: dict, runs: list[dict], tolerance: float) -> dict:
    out = {"dataset": name, "config": cfg}
    for mode in ("packed", "reference"):
        accs = [r["test_acc"] for r in runs if r["mode"] == mode]
        m, s = mean_std([100 * a for a in accs if a is not None])
        vals = [r["best_val_acc"] for r in runs if r["mode"] == mode]
        vm, vs = mean_std([100 * a for a in vals if a is not None])
        ep = [e["epoch_s"] for r in runs if r["mode"] == mode for e in r["epochs"]]
        out[mode] = {"test_acc": accs, "test_mean": m, "test_std": s, "val_mean": vm, "val_std": vs,
                     "ok_runs": sum(1 for a in accs if a is not None), "runs": len(accs),
                     "mean_epoch_s": statistics.fmean(ep) if ep else None,
                     "wall_s": sum(r["wall_s"] for r in runs if r["mode"] == mode)}
    p, r = out["packed"], out["reference"]
    complete = p["ok_runs"] == p["runs"] and r["ok_runs"] == r["runs"] and p["runs"] > 0
    out["diff"] = (p["test_mean"] - r["test_mean"]) if complete else None
    # standard error of the difference of two means: how much of the difference noise alone explains
    out["diff_se"] = (math.sqrt(p["test_std"] ** 2 / p["runs"] + r["test_std"] ** 2 / r["runs"]) if complete else None)
    out["pass"] = bool(complete and abs(out["diff"]) <= tolerance)
    return out


def render(report: dict) -> str:
    m = report["machine"]
    lines = []
    title = f"train_parity — packed out-of-core vs in-memory reference, 2-layer GraphSAGE ({report['date']})"
    lines += [title, "-" * len(title)]
    a = report["params"]
    lines.append(f"machine: {m.get('nproc')} CPUs ({m.get('cpu_model', '?')}), {fmt_bytes(m.get('mem_total_bytes'))} RAM, "
                 f"kernel {m.get('kernel')}, torch threads {report.get('torch_threads')}, load average "
                 f"{m['loadavg_start'][0]:.2f} at start / {m['loadavg_end'][0]:.2f} at end")
    lines.append(f"model: sage, hidden {a['hidden']}, dropout {a['dropout']}, Adam; seeds {a['seeds']}; plan seed "
                 f"{a['plan_seed']}, presampled epochs {a['presample_epochs']}, host cache {a['host_cache_fraction']:.0%} "
                 f"of the feature table; test acc of the best-val model; mean ± sample std over seeds")
    lines.append("")
    hdr = (f"{'dataset':<17} {'fanouts':>7} {'batch':>5} {'ep':>3} {'lr':>6} {'mb/ep':>5} {'blowup':>6}  "
           f"{'packed test %':>14}  {'reference test %':>16}  {'diff':>6} {'±se':>5}  {'|diff|<=' + str(a['tolerance']):>9}")
    lines.append(hdr)
    lines.append("-" * len(hdr))
    for d in report["datasets"]:
        c, p, r, pre = d["config"], d["packed"], d["reference"], d["preprocess"]

        def ms(x):
            return "-" if x["test_mean"] is None else f"{x['test_mean']:6.2f} ± {x['test_std']:4.2f}"
        diff = "-" if d["diff"] is None else f"{d['diff']:+6.2f}"
        se = "-" if d["diff_se"] is None else f"{d['diff_se']:5.2f}"
        lines.append(f"{d['dataset']:<17} {c['fanouts']:>7} {c['batch_size']:>5} {c['epochs']:>3} {c['lr']:>6} "
                     f"{pre.get('train_minibatches_per_epoch', '-'):>5} {pre.get('blowup') or 0:>5.2f}x  {ms(p):>14}  "
                     f"{ms(r):>16}  {diff:>6} {se:>5}  {'PASS' if d['pass'] else 'FAIL':>9}")
    lines.append("")
    lines.append("per seed (test % packed / reference; best val %; s per training epoch; run wall s):")
    for d in report["datasets"]:
        for mode in ("packed", "reference"):
            runs = [r for r in d["runs"] if r["mode"] == mode]
            cells = []
            for r in runs:
                if r["test_acc"] is None:
                    cells.append(f"seed {r['seed']}: FAILED")
                    continue
                ep = statistics.fmean(e["epoch_s"] for e in r["epochs"]) if r["epochs"] else float("nan")
                cells.append(f"seed {r['seed']}: {100 * r['test_acc']:.2f} (val {100 * r['best_val_acc']:.2f} @{r['best_epoch']}, "
                             f"{ep:.2f} s/ep, {r['wall_s']:.0f} s)")
            lines.append(f"  {d['dataset']:<17} {mode:<9} " + "; ".join(cells))
    lines.append("")
    for d in report["datasets"]:
        pre = d["preprocess"]
        when = "reused" if pre.get("reused") else f"{pre.get('wall_s') or 0:.1f} s"
        lines.append(f"  {d['dataset']:<17} preprocess {when}: "
                     f"host tier {pre.get('host_rows')} rows ({fmt_bytes(pre.get('host_cache_bytes'))} of a "
                     f"{fmt_bytes(pre.get('table_bytes'))} table), cold extents {fmt_bytes(pre.get('cold_bytes'))}, "
                     f"minibatches {pre.get('splits')}")
    lines.append("")
    ok = all(d["pass"] for d in report["datasets"])
    lines.append(f"result: {'PASS' if ok else 'FAIL'}: every |mean packed − mean reference| ≤ {a['tolerance']} point"
                 if ok else "result: FAIL (see the rows marked FAIL)")
    lines.append(f"total time {report['total_seconds'] / 60:.1f} min")
    lines.append("")
    lines.append("command: " + report["commands"]["bench"])
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train_parity.py",
        description="Train 2-layer GraphSAGE on real graphs from a packed plan (out of core, one presampled epoch "
                    "replayed) and with the in-memory reference loader (online sampling every epoch, features in "
                    "RAM), with the same fanouts, batch size and epochs, over several seeds; print mean ± std test "
                    "accuracy of both and the difference (target: within 1 point).",
        epilog="Per-dataset defaults (fanouts / batch / epochs / lr): "
               + "; ".join(f"{k}: {v['fanouts']} / {v['batch_size']} / {v['epochs']} / {v['lr']}" for k, v in PRESETS.items())
               + ". Example: python tools/bench/train_parity.py --json tools/bench/results/train_parity-cpu2.json "
                 "--txt tools/bench/results/train_parity-cpu2.txt")
    p.add_argument("--datasets", default=",".join(DEFAULT_DATASETS), help="comma-separated dataset names "
                   f"(default: {','.join(DEFAULT_DATASETS)})")
    p.add_argument("--datasets-dir", type=Path, default=REPO.parent / "shared" / "datasets",
                   help="folder holding NAME/data.npz (default: REPO/../shared/datasets)")
    p.add_argument("--seeds", default="0,1,2", help="training seeds (default: 0,1,2)")
    p.add_argument("--fanouts", help="override every dataset's fanouts (e.g. 10,5)")
    p.add_argument("--batch-size", type=int, help="override every dataset's batch size")
    p.add_argument("--epochs", type=int, help="override every dataset's epochs")
    p.add_argument("--lr", type=float, help="override every dataset's learning rate")
    p.add_argument("--hidden", type=int, default=256, help="hidden width (default: 256)")
    p.add_argument("--dropout", type=float, default=0.5, help="dropout (default: 0.5)")
    p.add_argument("--plan-seed", type=int, default=0, help="sampling seed of the plan (default: 0)")
    p.add_argument("--presample-epochs", type=int, default=1,
                   help="distinct epochs presampled into the plan, replayed by the packed runs (default: 1, DiskGNN's)")
    p.add_argument("--host-cache-fraction", type=float, default=0.2,
                   help="host tier size as a fraction of the feature table; the rest is read from the packed extents "
                        "(default: 0.2)")
    p.add_argument("--tolerance", type=float, default=1.0, help="allowed |mean difference| in points (default: 1)")
    p.add_argument("--work-dir", type=Path, default=REPO / "bench-data" / "train-parity",
                   help="datasets, packs, runs and logs (default: bench-data/train-parity, gitignored)")
    p.add_argument("--repack", action="store_true", help="preprocess again even when a matching pack exists")
    p.add_argument("--keep-packs", action="store_true", help="keep the packs afterwards (default: delete them, "
                   "coauthor-cs's is ~4 GiB; the datasets and plans stay)")
    p.add_argument("--timeout", type=float, default=1800, help="kill one run after this many seconds (default: 1800)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the full report (every epoch of every run) as JSON")
    p.add_argument("--txt", type=Path, metavar="FILE", help="write the printed table to FILE")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    missing = [n for n in names if not (args.datasets_dir / n / "data.npz").exists()]
    if missing:
        print(f"train_parity: no data.npz for {', '.join(missing)} under {args.datasets_dir}; pass --datasets-dir",
              file=sys.stderr)
        return 2
    if not seeds:
        print("train_parity: --seeds names no seed", file=sys.stderr)
        return 2
    args.work_dir = args.work_dir.resolve()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    machine = cgroup.machine_facts([args.work_dir])
    machine["loadavg_start"] = os.getloadavg()
    try:
        import torch
        torch_threads = torch.get_num_threads()
    except ImportError:
        torch_threads = None
    t0 = time.time()
    results = []
    for name in names:
        cfg = dict(PRESETS.get(name, FALLBACK))
        for key in ("fanouts", "batch_size", "epochs", "lr"):
            if getattr(args, key) is not None:
                cfg[key] = getattr(args, key)
        out = args.work_dir / name
        npz = (args.datasets_dir / name / "data.npz").resolve()
        pre = preprocess(args, name, npz, out, cfg)
        runs = []
        if pre["returncode"] == 0:
            for seed in seeds:  # interleave the modes so that load on the machine hits both alike
                runs.append(train(args, name, out, cfg, "packed", seed))
                runs.append(train(args, name, out, cfg, "reference", seed))
        else:
            print(f"[{name}] preprocess failed (exit {pre['returncode']}); log {pre.get('log')}", file=sys.stderr)
            print(pre.get("log_tail", ""), file=sys.stderr)
        d = summarize(name, cfg, pre, runs, args.tolerance)
        d["preprocess"] = pre
        d["runs"] = runs
        results.append(d)
        if d["diff"] is not None:
            print(f"[{name}] packed {d['packed']['test_mean']:.2f} ± {d['packed']['test_std']:.2f}, reference "
                  f"{d['reference']['test_mean']:.2f} ± {d['reference']['test_std']:.2f}, diff {d['diff']:+.2f} "
                  f"→ {'PASS' if d['pass'] else 'FAIL'}", flush=True)
        if not args.keep_packs:
            shutil.rmtree(out / "packs", ignore_errors=True)
            (out / "bench-train-parity.json").unlink(missing_ok=True)
    machine["loadavg_end"] = os.getloadavg()
    report = {
        "bench": "train_parity",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "params": {"datasets": names, "seeds": seeds, "hidden": args.hidden, "dropout": args.dropout,
                   "plan_seed": args.plan_seed, "presample_epochs": args.presample_epochs,
                   "host_cache_fraction": args.host_cache_fraction, "tolerance": args.tolerance,
                   "overrides": {k: getattr(args, k) for k in ("fanouts", "batch_size", "epochs", "lr")}},
        "machine": machine,
        "torch_threads": torch_threads,
        "commands": {"bench": shlex.join([sys.executable, *sys.argv])},
        "git": git_state(),
        "datasets": results,
        "total_seconds": time.time() - t0,
    }
    table = render(report)
    print()
    print(table)
    if args.txt:
        args.txt.parent.mkdir(parents=True, exist_ok=True)
        args.txt.write_text(table + "\n")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0 if all(d["pass"] for d in results) else 1


if __name__ == "__main__":
    sys.exit(main())
