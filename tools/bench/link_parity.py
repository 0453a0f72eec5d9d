"""Link prediction, packed (out of core) against the in-memory reference, and both against structure-only baselines.

For each dataset (a shared ``data.npz``): one ``diskgraph preprocess all --task link --undirected --edge-split …``
(one plan presampling ``--plan-epochs`` epochs — by default as many as are trained, so the packed run and the
reference see the same minibatches — and one pack), then per seed ``diskgraph train --task link`` from the pack and
the same with ``--reference`` (online sampling in memory, the same sampler and hyper-parameters), 2-layer SAGE
encoder + dot decoder. The test MRR of each is compared (target: mean packed within 1 point of mean reference) and
with two structure-only scores of the same test positives against the same fixed negatives, computed here from the
message-passing graph (val and test edges removed): common neighbours and Adamic–Adar
(:func:`diskgraph.link_baselines.plan_baselines`, ties ranked as the trainer ranks them; target: the packed mean above
both).

    python tools/bench/link_parity.py [--datasets cora,citeseer] [--seeds 0,1,2] [--epochs 20] [--plan-epochs N]

Prints a table and writes ``tools/bench/results/link-parity.json`` (machine, commands, per-run figures).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

from common import git_state, read_log  # noqa: E402  (tools/bench is not a package)

from diskgraph.link_baselines import plan_baselines  # noqa: E402

SHARED = REPO.parent / "shared" / "datasets"
DEFAULT_OUT = HERE / "results" / "link-parity.json"


def diskgraph(*args: str, timeout: float = 3600) -> float:
    """Run ``diskgraph ARGS`` (this interpreter); returns its wall seconds; raises with the output on failure."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "diskgraph", *args], capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"diskgraph {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return time.perf_counter() - t0


def run_dataset(name: str, work: Path, a) -> dict:
    npz = SHARED / name / "data.npz"
    if not npz.is_file():
        raise FileNotFoundError(f"shared dataset {name} not found at {npz}")
    ds = work / name
    shutil.rmtree(ds, ignore_errors=True)
    with np.load(npz) as z:
        feature_bytes = int(z["features"].nbytes)
    host = int(a.host_fraction * feature_bytes)  # the rest of the rows are read from the packed extents
    prep = ["preprocess", "all", "--npz", str(npz), "--out", str(ds), "--task", "link", "--undirected", "--dedup",
            "--edge-split", a.edge_split, "--seed", "0", "--fanouts", a.fanouts, "--batch-size", str(a.batch_size),
            "--epochs", str(a.plan_epochs or a.epochs), "--negatives", str(a.negatives),
            "--eval-negatives", str(a.eval_negatives), "--host-cache", str(host),
            "--max-blowup", "1000", "-q"]
    prep_s = diskgraph(*prep)
    runs = []
    for seed in a.seeds:
        for mode in ("packed", "reference"):
            log = work / f"{name}-{mode}-{seed}.jsonl"
            log.unlink(missing_ok=True)  # (the log is appended to; the run directory is replaced)
            cmd = ["train", str(ds), "--task", "link", "--model", "sage", "--decoder", "dot",
                   "--link-loss", a.link_loss, "--hidden", str(a.hidden), "--epochs", str(a.epochs), "--lr", str(a.lr), "--dropout", str(a.dropout),
                   "--seed", str(seed), "--run-dir", str(work / f"run-{name}-{mode}-{seed}"), "--log-json", str(log),
                   "--device", "cpu", "--overwrite", "-q"] + (["--reference"] if mode == "reference" else [])
            wall = diskgraph(*cmd)
            epochs, summary = read_log(log)
            runs.append({"seed": seed, "mode": mode, "test_mrr": summary["test_mrr"],
                         "test_hits@10": summary["test_hits@10"], "best_epoch": summary["best_epoch"],
                         "eval_negatives": summary.get("eval_negatives"), "wall_s": round(wall, 1),
                         "epoch_s": [e["epoch_s"] for e in epochs], "command": "diskgraph " + " ".join(cmd)})
            print(f"  {name} seed {seed} {mode:9s} test MRR {100 * summary['test_mrr']:.2f}  "
                  f"hits@10 {100 * summary['test_hits@10']:.2f}  ({wall:.0f} s)", flush=True)
    base = {k: {"test_mrr": v["mrr"], "test_hits@10": v["hits@10"]} for k, v in plan_baselines(ds).items()}
    mean = {m: float(np.mean([r["test_mrr"] for r in runs if r["mode"] == m])) for m in ("packed", "reference")}
    return {"dataset": name, "preprocess": "diskgraph " + " ".join(prep), "preprocess_s": round(prep_s, 1),
            "runs": runs, "mean_test_mrr": mean, "diff_points": 100 * (mean["packed"] - mean["reference"]),
            "baselines": base}


def table(results: list[dict]) -> str:
    lines = ["| dataset | packed test MRR % (mean) | reference test MRR % (mean) | diff (points) | common neighbours | "
             "Adamic–Adar |", "|---|---|---|---|---|---|"]
    for r in results:
        per = {m: " / ".join(f"{100 * x['test_mrr']:.2f}" for x in r["runs"] if x["mode"] == m)
               for m in ("packed", "reference")}
        lines.append(f"| {r['dataset']} | {per['packed']} ({100 * r['mean_test_mrr']['packed']:.2f}) | "
                     f"{per['reference']} ({100 * r['mean_test_mrr']['reference']:.2f}) | {r['diff_points']:+.2f} | "
                     f"{100 * r['baselines']['common_neighbours']['test_mrr']:.2f} | "
                     f"{100 * r['baselines']['adamic_adar']['test_mrr']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="cora,citeseer", help="shared datasets (default: %(default)s)")
    p.add_argument("--seeds", default="0,1,2", help="training seeds (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--plan-epochs", type=int, default=None,
                   help="epochs the plan presamples (default: --epochs; fewer are replayed in a fresh order, and the "
                        "reference then samples minibatches the packed run does not see)")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.003)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--fanouts", default="10,5")
    p.add_argument("--batch-size", type=int, default=256, help="positive edges per minibatch (default: %(default)s)")
    p.add_argument("--negatives", type=int, default=5, help="training negatives per positive (default: %(default)s)")
    p.add_argument("--link-loss", default="softmax", help="bce, softmax or margin (default: %(default)s)")
    p.add_argument("--eval-negatives", type=int, default=100, help="fixed negatives per val/test positive")
    p.add_argument("--edge-split", default="random:0.85,0.05,0.1")
    p.add_argument("--host-fraction", type=float, default=0.2,
                   help="host tier as a fraction of the feature table; the rest is read from disk (default: 0.2)")
    p.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "diskgraph-link-parity")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON (default: %(default)s)")
    a = p.parse_args(argv)
    a.seeds = [int(s) for s in a.seeds.split(",")]
    a.work_dir.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    results = [run_dataset(name, a.work_dir, a) for name in a.datasets.split(",")]
    text = table(results)
    print(text)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), None)
    report = {"benchmark": "link_parity", "issue": 16, "started": started,
              "command": " ".join([Path(sys.executable).name, "tools/bench/link_parity.py", *(argv or sys.argv[1:])]),
              "machine": {"cpu_model": cpu, "cpus": os.cpu_count(), "python": platform.python_version()},
              "git": git_state(), "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
              "results": results, "table": text}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2) + "\n")
    ok = all(abs(r["diff_points"]) <= 1.0 and r["mean_test_mrr"]["packed"] > r["baselines"]["adamic_adar"]["test_mrr"]
             for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
