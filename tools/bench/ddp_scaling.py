"""Epoch time of data-parallel training: 1 process vs N processes (torchrun, gloo on the CPU) on this machine.

What it does:

1. **dataset**: ``diskgraph generate --nodes N --edges E --feature-dim F --classes C --seed S --split SPLIT
   --out DATASET`` into ``--cache-dir`` (default ``bench-data/ddp``), reused when its manifest's
   ``generator`` block matches;
2. **preprocess**: ``diskgraph preprocess all DATASET --fanouts 10,5 --batch-size B --seed 0 --host-cache H
   --name ddp`` unless that pack is there (``--regenerate`` makes both again);
3. **train**, for each process count P in ``--procs`` (default ``1,2``), ``--repeats`` times, alternating:
   P = 1 runs ``python -m diskgraph train DATASET --pack ddp --model sage --hidden 256 --epochs K --seed 0
   --device cpu --log-json FILE --run-dir RUN --overwrite -q`` (torch's default threads: one per CPU);
   P > 1 runs the same under ``python -m torch.distributed.run --standalone --nproc-per-node P -m diskgraph``
   (torchrun gives each process ``OMP_NUM_THREADS=1``); the page cache is left warm (the pack fits in memory),
   so this measures compute and communication, not the disk;
4. prints, per P: epoch time (the slowest rank's, from the JSON log) of the first epoch and the mean of the
   later ones, minibatches per epoch (summed over ranks: P > 1 cuts the ``M mod P`` left over), minibatches/s,
   the speed-up over P = 1, bytes of extents read (summed over ranks), and the run's wall time; writes the
   table (``--txt``) and everything (``--json``).

Run it as the README says: ``flock /tmp/diskgraph-bench.lock nice -n 0 python tools/bench/ddp_scaling.py
--json tools/bench/results/ddp_scaling-cpu2.json --txt tools/bench/results/ddp_scaling-cpu2.txt``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

from common import diskgraph_cmd, gen_params, git_state, read_json, read_log, tail, write_outputs  # noqa: E402

PACK = "ddp"


def run(cmd: list, env: dict | None = None, timeout: float = 1800) -> tuple[subprocess.CompletedProcess, float]:
    cmd = [str(c) for c in cmd]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    wall = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"ddp_scaling: command failed ({r.returncode}): {' '.join(cmd)}\n{tail(r.stderr)}")
    return r, wall


def ensure_data(a, ds: Path) -> None:
    want = gen_params(a)
    m = read_json(ds / "manifest.json")
    g = (m or {}).get("generator") or {}
    if a.regenerate or not m or any(g.get(k) != v for k, v in want.items()):
        run([*diskgraph_cmd(), "generate", "--nodes", a.nodes, "--edges", a.edges, "--feature-dim", a.feature_dim,
             "--classes", a.classes, "--seed", a.seed, "--split", a.split, "--out", ds, "--overwrite", "-q"])
    if a.regenerate or not (ds / "packs" / PACK / "manifest.json").exists():
        run([*diskgraph_cmd(), "preprocess", "all", ds, "--fanouts", a.fanouts, "--batch-size", a.batch_size,
             "--seed", 0, "--host-cache", a.host_cache, "--name", PACK, "--overwrite", "-q"])


def train(a, ds: Path, procs: int, out: Path, repeat: int) -> dict:
    log = out / f"p{procs}-r{repeat}.jsonl"
    args = ["train", ds, "--pack", PACK, "--model", "sage", "--hidden", a.hidden, "--epochs", a.epochs, "--seed", 0,
            "--device", "cpu", "--log-json", log, "--run-dir", out / f"run-p{procs}", "--overwrite", "-q"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "OMP_NUM_THREADS")}
    if procs == 1:
        cmd = [sys.executable, "-m", "diskgraph", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}",
               "-m", "diskgraph", *args]
    _, wall = run(cmd, env=env)
    epochs, summary = read_log(log)
    return {"procs": procs, "repeat": repeat, "command": " ".join(map(str, cmd)), "wall_s": wall,
            "epoch_s": [e["epoch_s"] for e in epochs], "minibatches": [e["minibatches"] for e in epochs],
            "extent_bytes": [e["extent_bytes"] for e in epochs], "read_bytes": [e["read_bytes"] for e in epochs],
            "stage_s": [e["stage_s"] for e in epochs], "ranks": [e.get("ranks") for e in epochs],
            "val_acc": [e.get("val_acc") for e in epochs], "test_acc": (summary or {}).get("test_acc")}


def table(a, runs: list[dict], when: str) -> tuple[str, dict]:
    per = {}
    for p in a.procs:
        mine = [r for r in runs if r["procs"] == p]
        first = statistics.median(r["epoch_s"][0] for r in mine)
        later = statistics.median(statistics.mean(r["epoch_s"][1:]) for r in mine) if a.epochs > 1 else first
        mb = mine[0]["minibatches"][-1]
        per[p] = {"first_epoch_s": first, "later_epoch_s": later, "minibatches": mb, "minibatches_per_s": mb / later,
                  "extent_bytes": mine[0]["extent_bytes"][-1], "wall_s": statistics.median(r["wall_s"] for r in mine),
                  "test_acc": [r["test_acc"] for r in mine]}
    base = per[a.procs[0]]["minibatches_per_s"]
    head = (f"ddp_scaling — {when}, {platform.node()}, {os.cpu_count()} CPUs, torch gloo; synthetic "
            f"{a.nodes:,} nodes / {a.edges:,} edges / dim {a.feature_dim}, fanouts {a.fanouts}, batch {a.batch_size}, "
            f"sage hidden {a.hidden}, {a.epochs} epochs x {a.repeats} repeats (medians); warm page cache")
    lines = [head, "",
             f"{'procs':>5} {'epoch 0 s':>10} {'later epochs s':>15} {'minibatches':>11} {'mb/s':>7} "
             f"{'speed-up':>8} {'extents read':>13} {'wall s':>7}"]
    for p, v in per.items():
        v["speedup"] = v["minibatches_per_s"] / base
        lines.append(f"{p:>5} {v['first_epoch_s']:>10.2f} {v['later_epoch_s']:>15.2f} {v['minibatches']:>11} "
                     f"{v['minibatches_per_s']:>7.1f} {v['speedup']:>7.2f}x {v['extent_bytes'] / 2**20:>9.1f} MiB "
                     f"{v['wall_s']:>7.1f}")
    lines += ["", "epoch time = the slowest rank's (log field epoch_s); speed-up = minibatches/s over that of "
                  f"{a.procs[0]} process(es); extents read = summed over ranks"]
    return "\n".join(lines), per


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=300_000)
    p.add_argument("--edges", type=int, default=3_000_000)
    p.add_argument("--feature-dim", type=int, default=128)
    p.add_argument("--classes", type=int, default=16)
    p.add_argument("--seed", type=int, default=0, help="generator seed")
    p.add_argument("--split", default="random:0.3,0.05,0.05")
    p.add_argument("--fanouts", default="10,5")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--host-cache", default="16M")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--procs", default="1,2", help="comma-separated process counts (default: 1,2)")
    p.add_argument("--cache-dir", type=Path, default=REPO / "bench-data" / "ddp")
    p.add_argument("--regenerate", action="store_true")
    p.add_argument("--json", type=Path)
    p.add_argument("--txt", type=Path)
    a = p.parse_args(argv)
    a.procs = [int(x) for x in a.procs.split(",")]
    ds = a.cache_dir / "dataset"
    ds.parent.mkdir(parents=True, exist_ok=True)
    ensure_data(a, ds)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    runs = []
    for repeat in range(a.repeats):
        for procs in a.procs:
            runs.append(train(a, ds, procs, a.cache_dir, repeat))
    text, per = table(a, runs, when)
    report = {"date": when, "machine": {"host": platform.node(), "cpus": os.cpu_count(), "platform": platform.platform()},
              "git": git_state(), "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
              "summary": per, "runs": runs}
    write_outputs(text, report, a.txt, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
