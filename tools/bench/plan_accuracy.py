"""Does `diskgraph plan` predict what preprocessing and training then take? (issue 7)

For each configuration (graph, fanouts, batch, model, caches, memory cap):

1. **plan**: ``diskgraph plan DATASET --fanouts F --batch-size B --gpu-cache G --host-cache H --model M
   --hidden D --profile PROFILE --json --no-alternatives`` — the prediction, made before anything below exists —
   run twice: the first run is the prediction, the second checks that an identical plan agrees with it;
2. **preprocess**: ``diskgraph preprocess all DATASET --fanouts F --batch-size B --seed 0 --gpu-cache G
   --host-cache H --name acc --overwrite`` (sample + pack; wall time recorded);
3. **measure the artifacts**: bytes of ``plans/acc`` and ``packs/acc`` on disk (every file), and the pack
   manifest's ``packed_bytes`` and ``blowup``;
4. **train**: the dataset and the pack are dropped from the page cache, then ``diskgraph train DATASET --pack acc
   --model M --hidden D --epochs E --seed 0 --device cpu --log-json LOG --run-dir RUN --overwrite`` runs in a child
   memory cgroup capped at the configuration's cap (tools/bench/cgroup.py); measured: the epochs' ``epoch_s`` from
   the JSON log (the training pass, as the planner predicts it: the mean of epochs 1..E-1, epoch 0 shown apart)
   and the peak of the cgroup's anonymous + shared memory (``memory.stat`` total_rss + total_shmem, what a cap
   cannot reclaim; the planner's ``peak_host_bytes``).

The hardware profile is measured first (``diskgraph plan --calibrate --profile bench-data/plan-acc/hardware.json``)
unless ``--profile FILE`` names one. Prints predicted vs measured for disk footprint (plan + pack), packed bytes,
blow-up, peak memory and epoch time, with the relative error, and checks the aims: footprint and memory within
10 %, epoch time within 15 %, and the two identical plans' epoch times within 10 % of each other. Writes ``--json``
(everything: predictions, measurements, commands, the profile, the machine) and ``--txt`` (the table).

Exit status: 0 when every aim holds in every configuration, 1 when one is missed (named on stderr), 2 when it
cannot run (no cgroup v1, a shared dataset missing).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import cgroup  # noqa: E402  (tools/bench is not a package)
from common import diskgraph_cmd, git_state, read_json, read_log, tail  # noqa: E402
from train_oocore import dir_bytes, run_summary  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
AIMS = {"footprint": 0.10, "memory": 0.10, "epoch": 0.15, "stability": 0.10}

# name, dataset, fanouts, batch, model, hidden, gpu cache, host cache, memory cap, sampled minibatches per split
CONFIGS = [
    {"name": "cora-sage", "dataset": "npz:cora", "fanouts": "10,5", "batch": 32, "model": "sage", "hidden": 256,
     "gpu": 0, "host": 1 * MiB, "cap": 1 * GiB, "sample": 64},
    {"name": "photo-gcn", "dataset": "npz:amazon-photo", "fanouts": "15,10", "batch": 256, "model": "gcn",
     "hidden": 128, "gpu": 0, "host": 4 * MiB, "cap": 1 * GiB, "sample": 64},
    {"name": "syn200k-sage", "dataset": "gen:200000,2000000,128", "fanouts": "10,5", "batch": 512, "model": "sage",
     "hidden": 256, "gpu": 0, "host": 16 * MiB, "cap": 1 * GiB, "sample": 64},
    {"name": "syn200k-gat-nocache", "dataset": "gen:200000,2000000,128", "fanouts": "15,10", "batch": 1024,
     "model": "gat", "hidden": 64, "gpu": 0, "host": 0, "cap": 768 * MiB, "sample": 64},
    {"name": "syn500k-sage-3hop", "dataset": "gen:500000,5000000,64", "fanouts": "10,5,3", "batch": 1024,
     "model": "sage", "hidden": 128, "gpu": 8 * MiB, "host": 24 * MiB, "cap": 1 * GiB, "sample": 24},
]


def size_text(n: int) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / MiB:.1f} MiB"


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=REPO, **kw)


def ensure_dataset(spec: str, root: Path) -> Path:
    """The dataset directory of a config (imported from ../shared/datasets or generated), reused when present."""
    kind, arg = spec.split(":", 1)
    if kind == "npz":
        out = root / arg
        src = REPO / ".." / "shared" / "datasets" / arg / "data.npz"
        if not src.exists():
            raise FileNotFoundError(f"{src} is missing")
        if not (out / "manifest.json").exists():
            r = run(diskgraph_cmd() + ["preprocess", "import", "--npz", src, "--out", out, "--overwrite", "-q"])
            if r.returncode:
                raise RuntimeError(f"import of {arg} failed: {tail(r.stderr)}")
        return out
    nodes, edges, dim = (int(v) for v in arg.split(","))
    out = root / f"syn-n{nodes}-e{edges}-f{dim}"
    m = read_json(out / "manifest.json").get("generator", {})
    if m.get("nodes") != nodes or m.get("edges") != edges or m.get("feature_dim") != dim:
        r = run(diskgraph_cmd() + ["generate", "--nodes", nodes, "--edges", edges, "--feature-dim", dim, "--classes", 16,
                                   "--seed", 0, "--split", "random:0.2,0.05,0.05", "--out", out, "--overwrite", "-q"])
        if r.returncode:
            raise RuntimeError(f"generate failed: {tail(r.stderr)}")
    return out


def rel(pred: float, meas: float) -> float | None:
    return (pred - meas) / meas if meas else None


def one_config(c: dict, ds: Path, profile: Path, epochs: int, work: Path) -> dict:
    dg = diskgraph_cmd()
    common = ["--fanouts", c["fanouts"], "--batch-size", c["batch"], "--gpu-cache", c["gpu"], "--host-cache", c["host"]]
    plan_cmd = dg + ["plan", ds, *common, "--model", c["model"], "--hidden", c["hidden"], "--profile", profile,
                     "--sample-minibatches", c["sample"], "--json", "--no-alternatives"]
    plans, plan_times = [], []
    for _ in range(2):  # the prediction, then the same plan again: how far an identical run moves
        t0 = time.perf_counter()
        r = run(plan_cmd)
        plan_times.append(time.perf_counter() - t0)
        if r.returncode:
            raise RuntimeError(f"plan failed: {tail(r.stderr)}")
        plans.append(json.loads(r.stdout))
    pred, plan_s = plans[0], plan_times[0]
    again = [p["epoch_s"] for p in plans]
    name = "acc"
    for d in (ds / "plans" / name, ds / "packs" / name):
        shutil.rmtree(d, ignore_errors=True)
    pre_cmd = dg + ["preprocess", "all", ds, *common, "--seed", 0, "--name", name, "--overwrite", "-q"]
    t0 = time.perf_counter()
    r = run(pre_cmd)
    pre_s = time.perf_counter() - t0
    if r.returncode:
        raise RuntimeError(f"preprocess failed: {tail(r.stderr)}")
    man = read_json(ds / "packs" / name / "manifest.json")
    plan_man = read_json(ds / "plans" / name / "manifest.json")
    plan_b, pack_b = dir_bytes(ds / "plans" / name), dir_bytes(ds / "packs" / name)
    run_dir, log = work / f"{c['name']}-run", work / f"{c['name']}.jsonl"
    shutil.rmtree(run_dir, ignore_errors=True)
    cgroup.evict([ds])
    train_cmd = dg + ["train", ds, "--pack", name, "--model", c["model"], "--hidden", c["hidden"], "--epochs", epochs,
                      "--seed", 0, "--device", "cpu", "--log-json", log, "--run-dir", run_dir, "--overwrite", "-q"]
    res = cgroup.run_in_cgroup(train_cmd, c["cap"], capture=True, cwd=str(REPO))
    if not res.ok:
        raise RuntimeError(f"training failed (rc {res.returncode}, OOM kills {res.oom_kills}): {tail(res.stderr)}")
    ep, summary = read_log(log)
    later = [e["epoch_s"] for e in ep[1:]] or [ep[0]["epoch_s"]]
    meas_epoch = sum(later) / len(later)
    peak = res.peak_stat.get("total_rss", 0) + res.peak_stat.get("total_shmem", 0)
    fp = pred["footprint"]
    predicted = {"footprint_bytes": fp["plan_bytes"] + fp["pack_bytes"], "packed_bytes": pred["packed_bytes"],
                 "blowup": pred["blowup"], "peak_host_bytes": pred["peak_host_bytes"], "epoch_s": pred["epoch_s"],
                 "bottleneck": pred["bottleneck"], "stage_s": pred["epoch"]["stage_s"],
                 "sample_s": pred["preprocess"]["sample"]["seconds"], "pack_s": pred["preprocess"]["pack"]["seconds"]}
    stage = {k: sum(e["stage_s"][f"{k}_s"] for e in ep[1:] or ep[:1]) / len(later) for k in ("read", "assemble", "compute")}
    measured = {"footprint_bytes": plan_b + pack_b, "packed_bytes": man.get("packed_bytes"), "blowup": man.get("blowup"),
                "peak_host_bytes": peak, "epoch_s": meas_epoch, "epoch0_s": ep[0]["epoch_s"], "epochs_s": [e["epoch_s"] for e in ep],
                "stage_s": stage, "slowest_stage": max(stage, key=stage.get),
                "sample_s": plan_man.get("seconds"), "pack_s": man.get("seconds"), "preprocess_wall_s": pre_s}
    errors = {"footprint": rel(predicted["footprint_bytes"], measured["footprint_bytes"]),
              "packed": rel(predicted["packed_bytes"], measured["packed_bytes"]),
              "blowup": rel(predicted["blowup"], measured["blowup"]),
              "memory": rel(predicted["peak_host_bytes"], measured["peak_host_bytes"]),
              "epoch": rel(predicted["epoch_s"], measured["epoch_s"]),
              "stability": abs(again[1] - again[0]) / min(again)}
    return {"config": c, "dataset": str(ds), "predicted": predicted, "measured": measured, "errors": errors,
            "plan_seconds": plan_s, "plan_seconds_again": plan_times[1], "plan_epochs_s": again,
            "compute_scales": [p["compute_scale"] for p in plans], "sampled": pred["sample"]["splits"], "exact": pred["exact"],
            "hit_rate_method": pred["sample"]["hit_rate_method"], "plan_json": pred,
            "train": run_summary(res), "summary": summary,
            "commands": {"plan": " ".join(map(str, plan_cmd)), "preprocess": " ".join(map(str, pre_cmd)),
                         "train": " ".join(map(str, train_cmd))}}


def render(rep: dict) -> str:
    load = rep.get("loadavg")
    lines = [f"plan_accuracy ({rep['date']}, {rep['machine'].get('cpu_model', '')}, {rep['machine'].get('nproc')} CPUs"
             + (f", load average {load[0]:.2f} / {load[1]:.2f} at the start / end" if load else "")
             + f"; profile {rep['profile_path']})", ""]
    hdr = (f"{'config':<22} {'footprint pred/meas':>24} {'err':>6} {'blow-up pred/meas':>18} {'err':>6} "
           f"{'peak mem pred/meas':>22} {'err':>6} {'epoch s pred/meas':>18} {'err':>6} {'again':>6}  "
           "bottleneck (pred / slowest)")
    lines += [hdr, "-" * len(hdr)]
    for r in rep["results"]:
        if "error" in r:
            lines.append(f"{r['config']['name']:<22} failed: {r['error']}")
            continue
        p, m, e = r["predicted"], r["measured"], r["errors"]

        def pct(x):
            return f"{100 * x:+.1f}%" if x is not None else "-"

        lines.append(f"{r['config']['name']:<22} {size_text(p['footprint_bytes']):>11} / {size_text(m['footprint_bytes']):<10} "
                     f"{pct(e['footprint']):>6} {p['blowup']:>8.3f} / {m['blowup']:<7.3f} {pct(e['blowup']):>6} "
                     f"{size_text(p['peak_host_bytes']):>10} / {size_text(m['peak_host_bytes']):<9} {pct(e['memory']):>6} "
                     f"{p['epoch_s']:>8.2f} / {m['epoch_s']:<7.2f} {pct(e['epoch']):>6} {pct(e['stability']):>6}  "
                     f"{p['bottleneck']} / {m['slowest_stage']}")
    lines.append("")
    for r in rep["results"]:
        if "error" in r:
            continue
        c, m, p = r["config"], r["measured"], r["predicted"]
        sampled = ", ".join(f"{k} {v['sampled']}/{v['minibatches']}" for k, v in r["sampled"].items())
        lines.append(f"{c['name']}: {r['dataset']}, fanouts {c['fanouts']}, batch {c['batch']}, {c['model']} hidden "
                     f"{c['hidden']}, gpu/host cache {size_text(c['gpu'])}/{size_text(c['host'])}, cap {size_text(c['cap'])}; "
                     f"sampled {sampled}; "
                     f"epochs {', '.join(f'{x:.2f}' for x in m['epochs_s'])} s; stages pred "
                     + ", ".join(f"{k} {v:.2f}" for k, v in p["stage_s"].items()) + " / meas "
                     + ", ".join(f"{k} {v:.2f}" for k, v in m["stage_s"].items())
                     + f"; sample {p['sample_s']:.2f}/{m['sample_s']:.2f} s, pack {p['pack_s']:.2f}/{m['pack_s']:.2f} s")
    lines.append("")
    lines.append("again: how far a second, identical plan's epoch moved from the first")
    lines.append(f"aims: footprint and memory within {AIMS['footprint']:.0%}, epoch time within {AIMS['epoch']:.0%}, "
                 f"an identical plan within {AIMS['stability']:.0%}: "
                 + ("all met" if not rep["missed"] else "missed: " + "; ".join(rep["missed"])))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", help="a hardware profile to use instead of calibrating first")
    ap.add_argument("--configs", help="comma-separated config names to run (default: all)")
    ap.add_argument("--epochs", type=int, default=3, help="training epochs per config (default: 3)")
    ap.add_argument("--data-dir", default=str(REPO / "bench-data" / "plan-acc"), help="where datasets and runs go")
    ap.add_argument("--json", default=str(HERE / "results" / "plan_accuracy-cpu2.json"))
    ap.add_argument("--txt", default=str(HERE / "results" / "plan_accuracy-cpu2.txt"))
    a = ap.parse_args(argv)
    try:
        cgroup.check_memory_cgroup()
    except cgroup.CgroupUnavailable as e:
        print(f"plan_accuracy: {e}", file=sys.stderr)
        return 2
    root = Path(a.data_dir)
    root.mkdir(parents=True, exist_ok=True)
    configs = [c for c in CONFIGS if not a.configs or c["name"] in a.configs.split(",")]
    t_all = time.perf_counter()
    load0 = os.getloadavg()[0]
    try:
        datasets = {c["dataset"]: ensure_dataset(c["dataset"], root) for c in configs}
    except FileNotFoundError as e:
        print(f"plan_accuracy: {e}; this benchmark needs ../shared/datasets", file=sys.stderr)
        return 2
    profile = Path(a.profile) if a.profile else root / "hardware.json"
    cal_s = None
    if not a.profile:
        t0 = time.perf_counter()
        r = run(diskgraph_cmd() + ["plan", "--calibrate", "--profile", profile, "--probe-dir", root])
        cal_s = time.perf_counter() - t0
        if r.returncode:
            print(f"plan_accuracy: calibration failed: {tail(r.stderr)}", file=sys.stderr)
            return 1
    results, missed = [], []
    for c in configs:
        print(f"plan_accuracy: {c['name']} …", file=sys.stderr, flush=True)
        try:
            res = one_config(c, datasets[c["dataset"]], profile, a.epochs, root)
        except RuntimeError as e:
            results.append({"config": c, "error": str(e)})
            missed.append(f"{c['name']} failed")
            continue
        results.append(res)
        for key, aim in AIMS.items():
            err = res["errors"][key]
            if err is None or abs(err) > aim:
                missed.append(f"{c['name']} {key} {100 * err:+.1f}%" if err is not None else f"{c['name']} {key}")
        print(f"plan_accuracy: {c['name']}: " + ", ".join(f"{k} {100 * v:+.1f}%" for k, v in res["errors"].items()
                                                           if v is not None), file=sys.stderr, flush=True)
    rep = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": cgroup.machine_facts([root]),
           "git": git_state(), "profile_path": str(profile), "profile": read_json(profile), "calibration_s": cal_s,
           "epochs": a.epochs, "aims": AIMS, "results": results, "missed": missed,
           "seconds": time.perf_counter() - t_all, "loadavg": [load0, os.getloadavg()[0]]}
    text = render(rep)
    print(text, end="")
    for path, body in ((a.json, json.dumps(rep, indent=2, default=str)), (a.txt, text)):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(body + ("\n" if not body.endswith("\n") else ""))
    for m in missed:
        print(f"plan_accuracy: aim missed: {m}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
