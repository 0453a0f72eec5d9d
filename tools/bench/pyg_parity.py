"""Stock PyG GraphSAGE trained through ``to_pyg()`` batches vs the built-in SAGE, same pack, over seeds (issue 14).

It preprocesses the dataset once (one plan, one pack)::

    diskgraph preprocess all --npz DATASET --out WORK/ds --fanouts F --batch-size B --seed PLAN_SEED
        --host-cache H --max-blowup 100 --overwrite

(``H`` = ``--host-cache-fraction`` of the feature table, so part of every minibatch comes from the packed
extents on disk), then per seed ``S`` trains both models with identical hyper-parameters::

    diskgraph train WORK/ds --model sage                         --hidden H --dropout D --epochs E --lr LR --seed S ...
    diskgraph train WORK/ds --model torch_geometric.nn:GraphSAGE --hidden H --dropout D --epochs E --lr LR --seed S ...

The second is built as ``GraphSAGE(in_channels=F, hidden_channels=H, out_channels=C, num_layers=L, dropout=D)``
and called on ``batch.to_pyg()`` with the per-hop sizes (``trim_to_layer``). It prints a table (test accuracy of
the best-validation model per seed, the means, their difference in points, seconds per run) and writes a JSON
report with the machine, the commands and every figure. The target: |mean PyG - mean built-in| <= 1 point.

The two models compute the same function family: per layer ``W_self x_v + W_neigh mean_{u in N(v)} x_u + b``,
ReLU then dropout between layers, none on the input or after the last layer. They differ in initialisation
(built-in: Xavier-uniform with the ReLU gain, zero bias; PyG: ``torch.nn.Linear``'s Kaiming-uniform) and in
the order of mean and projection in layer 1 (built-in projects first when that shrinks the messages; PyG's
``SAGEConv`` averages the raw input features over the edges, then projects), which costs PyG time, not accuracy.

Exit status: 0 when within ``--tolerance`` points, 1 when not or a run failed, 2 when it cannot run
(the dataset or torch_geometric is missing). ``run_parity()`` is what ``tests/diskgraph/test_pyg_parity.py``
calls.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

from common import git_state, read_log  # noqa: E402  (tools/bench is not a package)

DEFAULT_DATASET = REPO / ".." / "shared" / "datasets" / "coauthor-cs" / "data.npz"
DEFAULT_OUT = HERE / "results" / "pyg-parity-coauthor-cs.json"
DEFAULT_WORK = Path(tempfile.gettempdir()) / "diskgraph-pyg-parity"
BUILTIN, PYG = "sage", "torch_geometric.nn:GraphSAGE"
MODELS = {"builtin": BUILTIN, "pyg": PYG}


def diskgraph_cmd() -> list[str]:
    """``python -m diskgraph`` with this interpreter (the one whose torch_geometric is checked)."""
    return [sys.executable, "-m", "diskgraph"]


def feature_table_bytes(npz: Path) -> int:
    """Bytes of the npz's ``features`` array, read from its .npy header (the array itself is not loaded)."""
    import numpy as np

    with zipfile.ZipFile(npz) as z, z.open("features.npy") as f:
        major, _ = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(f)
    n = 1
    for d in shape:
        n *= int(d)
    return n * dtype.itemsize


def machine() -> dict:
    """CPU model, cores, memory, load, and the library versions the figures depend on."""
    import torch

    facts: dict = {"cpu_model": None, "nproc": os.cpu_count(), "affinity_cpus": len(os.sched_getaffinity(0)),
                   "torch_threads": torch.get_num_threads(), "kernel": platform.release(),
                   "python": platform.python_version(), "torch": torch.__version__}
    try:
        with open("/proc/cpuinfo") as f:
            facts["cpu_model"] = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                                      None)
        with open("/proc/meminfo") as f:
            mem = dict(line.split(":", 1) for line in f)
        facts["mem_total_bytes"] = int(mem["MemTotal"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        pass
    try:
        import torch_geometric

        facts["torch_geometric"] = torch_geometric.__version__
    except ImportError:
        facts["torch_geometric"] = None
    return facts


def _run(cmd: list[str], log: Path, timeout: float) -> dict:
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        with open(log, "w") as f:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    return {"command": shlex.join(cmd), "returncode": rc, "wall_s": round(time.perf_counter() - t0, 2),
            "log": str(log), "output_tail": log.read_text()[-1500:] if rc != 0 else ""}


def preprocess(dataset: Path, work: Path, *, fanouts: str, batch_size: int, plan_seed: int,
               host_cache_fraction: float, timeout: float = 1800, say=print) -> dict:
    """``preprocess all`` into ``work/ds`` (one plan, one pack for every run)."""
    table = feature_table_bytes(dataset)
    host = int(table * host_cache_fraction)
    cmd = [*diskgraph_cmd(), "preprocess", "all", "--npz", str(dataset), "--out", str(work / "ds"),
           "--fanouts", fanouts, "--batch-size", str(batch_size), "--seed", str(plan_seed),
           "--host-cache", str(host), "--max-blowup", "100", "--overwrite", "-q"]
    say(f"$ {shlex.join(cmd)}")
    res = _run(cmd, work / "logs" / "preprocess.log", timeout)
    res.update(table_bytes=table, host_cache_bytes=host)
    if res["returncode"] == 0:
        plan = json.loads((work / "ds" / "plans" / "default" / "manifest.json").read_text())
        res["minibatches_per_epoch"] = {k: v.get("minibatches_per_epoch") for k, v in plan["splits"].items()}
        say(f"  {res['wall_s']:.1f} s; minibatches per epoch {res['minibatches_per_epoch']}")
    return res


def train(work: Path, label: str, seed: int, *, hidden: int, dropout: float, epochs: int, lr: float, device: str,
          timeout: float = 3600, say=print) -> dict:
    """One ``diskgraph train`` run of ``MODELS[label]``; its test accuracy (best-validation model) and times."""
    run_dir = work / "runs" / f"{label}-seed{seed}"
    log = work / "logs" / f"{label}-seed{seed}.jsonl"
    log.unlink(missing_ok=True)
    cmd = [*diskgraph_cmd(), "train", str(work / "ds"), "--model", MODELS[label], "--hidden", str(hidden),
           "--dropout", str(dropout), "--epochs", str(epochs), "--lr", str(lr), "--seed", str(seed),
           "--device", device, "--run-dir", str(run_dir), "--overwrite", "--log-json", str(log), "-q"]
    res = _run(cmd, work / "logs" / f"{label}-seed{seed}.out", timeout)
    per_epoch, summary = read_log(log)
    res.update(model=MODELS[label], label=label, seed=seed)
    if res["returncode"] == 0 and summary:
        res.update(test_acc=summary.get("test_acc"), val_acc=summary.get("val_acc"),
                   best_epoch=summary.get("best_epoch"),
                   epoch_s=[round(r["epoch_s"], 2) for r in per_epoch if "epoch_s" in r],
                   train_loss=[round(r["loss"], 4) for r in per_epoch if "loss" in r])
        say(f"  {label:<7} seed {seed}: test {100 * res['test_acc']:.2f} % (val {100 * res['val_acc']:.2f} @"
            f"{res['best_epoch']}), {res['wall_s']:.0f} s")
    else:
        say(f"  {label:<7} seed {seed}: FAILED (exit {res['returncode']}); log {res['log']}\n{res['output_tail']}")
    return res


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarize(runs: list[dict], seeds: list[int], tolerance: float) -> dict:
    acc = {lab: [r.get("test_acc") for s in seeds for r in runs if r["label"] == lab and r["seed"] == s]
           for lab in MODELS}
    ok = all(a is not None for xs in acc.values() for a in xs) and all(len(xs) == len(seeds) for xs in acc.values())
    out: dict = {"ok": ok, "tolerance_points": tolerance}
    if ok:
        (mb, sb), (mp, sp) = _mean_std(acc["builtin"]), _mean_std(acc["pyg"])
        diff = 100 * (mp - mb)
        out.update(mean_builtin=mb, std_builtin=sb, mean_pyg=mp, std_pyg=sp, diff_points=round(diff, 3),
                   passed=abs(diff) <= tolerance)
    return out


def table(report: dict) -> str:
    c, s, m = report["config"], report["summary"], report["machine"]
    runs = {(r["label"], r["seed"]): r for r in report["runs"]}

    def acc(r):
        return f"{100 * r['test_acc']:6.2f}" if r.get("test_acc") is not None else "  FAIL"

    lines = [f"pyg_parity — stock torch_geometric.nn.GraphSAGE on to_pyg() batches vs built-in sage "
             f"({report['finished']})",
             f"machine: {m['cpu_model']}, {m['affinity_cpus']} CPUs, torch {m['torch']} "
             f"({m['torch_threads']} threads), "
             f"torch_geometric {m['torch_geometric']}, load average {report['load_average_start']} at start / "
             f"{report['load_average_end']} at end",
             f"dataset {c['dataset']}; fanouts {c['fanouts']}, batch {c['batch_size']}, hidden {c['hidden']}, "
             f"dropout {c['dropout']}, Adam lr {c['lr']}, {c['epochs']} epochs, device {c['device']}; "
             f"test acc of the best-val model",
             "",
             "seed   built-in sage %   s/run   PyG GraphSAGE %   s/run   diff (pts)",
             "----   ---------------   -----   ---------------   -----   ----------"]
    for seed in c["seeds"]:
        b, p = runs[("builtin", seed)], runs[("pyg", seed)]
        d = (f"{100 * (p['test_acc'] - b['test_acc']):+6.2f}"
             if p.get("test_acc") is not None and b.get("test_acc") is not None else "     -")
        lines.append(f"{seed:>4}   {acc(b):>15}   {b['wall_s']:5.0f}   {acc(p):>15}   {p['wall_s']:5.0f}   {d:>10}")
    if s["ok"]:
        wb = statistics.fmean(runs[("builtin", x)]["wall_s"] for x in c["seeds"])
        wp = statistics.fmean(runs[("pyg", x)]["wall_s"] for x in c["seeds"])
        lines.append(f"mean   {100 * s['mean_builtin']:6.2f} ± {100 * s['std_builtin']:4.2f}   {wb:5.0f}   "
                     f"{100 * s['mean_pyg']:6.2f} ± {100 * s['std_pyg']:4.2f}   {wp:5.0f}   {s['diff_points']:+10.2f}")
        lines += ["", f"result: {'PASS' if s['passed'] else 'FAIL'}: |mean PyG - mean built-in| = "
                      f"{abs(s['diff_points']):.2f} points (tolerance {s['tolerance_points']})"]
    else:
        lines += ["", "result: FAIL: a run failed (see the logs named in the JSON)"]
    pre = report["preprocess"]
    lines.append(f"preprocess {pre['wall_s']:.1f} s (one pack for all runs; host tier {pre['host_cache_bytes']} B of a "
                 f"{pre['table_bytes']} B feature table); total {report['total_s'] / 60:.1f} min")
    lines.append(f"command: {report['command']}")
    return "\n".join(lines)


def run_parity(dataset: Path = DEFAULT_DATASET, work: Path = DEFAULT_WORK, *, seeds=(0, 1, 2), epochs: int = 3,
               fanouts: str = "10,5", batch_size: int = 1024, hidden: int = 256, dropout: float = 0.5,
               lr: float = 0.005, device: str = "cpu", plan_seed: int = 0, host_cache_fraction: float = 0.2,
               tolerance: float = 1.0, command: str | None = None, say=print) -> dict:
    """Preprocess once, train both models per seed, and return the report (``report["summary"]`` has the means)."""
    dataset, work, seeds = Path(dataset).resolve(), Path(work), [int(s) for s in seeds]
    t0 = time.perf_counter()
    report: dict = {
        "benchmark": "pyg_parity", "issue": 14,
        "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command or shlex.join([sys.executable, *sys.argv]),
        "machine": machine(), "git": git_state(), "load_average_start": round(os.getloadavg()[0], 2),
        "config": {"dataset": str(dataset), "seeds": seeds, "epochs": epochs, "fanouts": fanouts,
                   "batch_size": batch_size, "hidden": hidden, "dropout": dropout, "lr": lr, "optimizer": "adam",
                   "device": device, "plan_seed": plan_seed, "host_cache_fraction": host_cache_fraction,
                   "models": MODELS},
    }
    work.mkdir(parents=True, exist_ok=True)
    pre = report["preprocess"] = preprocess(dataset, work, fanouts=fanouts, batch_size=batch_size,
                                            plan_seed=plan_seed, host_cache_fraction=host_cache_fraction, say=say)
    runs = report["runs"] = []
    if pre["returncode"] == 0:
        for seed in seeds:
            for label in MODELS:
                runs.append(train(work, label, seed, hidden=hidden, dropout=dropout, epochs=epochs, lr=lr,
                                  device=device, say=say))
    else:
        say(f"preprocess failed (exit {pre['returncode']}); log {pre['log']}\n{pre['output_tail']}")
        runs += [{"label": lab, "seed": s, "wall_s": 0.0} for s in seeds for lab in MODELS]
    report["summary"] = summarize(runs, seeds, tolerance)
    report["load_average_end"] = round(os.getloadavg()[0], 2)
    report["finished"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    report["total_s"] = round(time.perf_counter() - t0, 1)
    report["table"] = table(report)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="pyg_parity.py",
        description="Test accuracy of a stock torch_geometric.nn.GraphSAGE trained through to_pyg() batches vs the "
        "built-in sage, on one pack, identical hyper-parameters, over seeds (issue 14: within 1 point).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", type=Path, default=DEFAULT_DATASET, help="a data.npz (shared datasets' layout)")
    p.add_argument("--seeds", default="0,1,2", help="training seeds, comma-separated")
    p.add_argument("--epochs", type=int, default=3, help="training epochs of every run")
    p.add_argument("--fanouts", default="10,5", help="sampling fanouts (the number of layers is their count)")
    p.add_argument("--batch-size", type=int, default=1024, help="seed nodes per minibatch")
    p.add_argument("--hidden", type=int, default=256, help="hidden width")
    p.add_argument("--dropout", type=float, default=0.5, help="dropout between layers")
    p.add_argument("--lr", type=float, default=0.005, help="Adam learning rate")
    p.add_argument("--device", default="cpu", help="train on this device (cpu, cuda, auto)")
    p.add_argument("--plan-seed", type=int, default=0, help="seed of the one sampled plan")
    p.add_argument("--host-cache-fraction", type=float, default=0.2,
                   help="host tier as a fraction of the feature table (the rest is read from the packed extents)")
    p.add_argument("--tolerance", type=float, default=1.0, help="allowed |mean difference| in accuracy points")
    p.add_argument("--work-dir", type=Path, default=DEFAULT_WORK, help="dataset, pack, runs and logs go here")
    p.add_argument("--keep", action="store_true",
                   help="keep the dataset and pack in --work-dir (default: delete them at the end; runs and logs stay)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON report")
    a = p.parse_args(argv)
    if not a.dataset.is_file():
        print(f"pyg_parity.py: the dataset {a.dataset} does not exist; pass --dataset PATH/data.npz", file=sys.stderr)
        return 2
    if importlib.util.find_spec("torch_geometric") is None:
        print('pyg_parity.py: torch_geometric is not installed; pip install "diskgraph[pyg]"', file=sys.stderr)
        return 2
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    try:
        report = run_parity(a.dataset, a.work_dir, seeds=seeds, epochs=a.epochs, fanouts=a.fanouts,
                            batch_size=a.batch_size, hidden=a.hidden, dropout=a.dropout, lr=a.lr, device=a.device,
                            plan_seed=a.plan_seed, host_cache_fraction=a.host_cache_fraction, tolerance=a.tolerance,
                            say=lambda s: print(s, flush=True))
    finally:
        if not a.keep:
            shutil.rmtree(a.work_dir / "ds", ignore_errors=True)
    print()
    print(report["table"])
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\nwrote {a.out}")
    s = report["summary"]
    return 0 if s["ok"] and s["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
