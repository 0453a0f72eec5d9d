"""Link prediction, packed (out of core) against the in-memory reference, and both against structure-only baselines.

For each dataset (a shared ``data.npz``): one ``diskgraph preprocess all --task link --undirected --edge-split …``
(one plan, one pack), then per seed ``diskgraph train --task link`` from the pack and the same with ``--reference``
(online sampling in memory, the same sampler and hyper-parameters), 2-layer SAGE encoder + dot decoder. The test MRR
of each is compared (target: mean packed within 1 point of mean reference) and with two structure-only scores of the
same test positives against the same fixed negatives, computed here from the message-passing graph (val and test
edges removed): common neighbours and Adamic–Adar (ties ranked as the trainer ranks them).

    python tools/bench/link_parity.py [--datasets amazon-photo,amazon-computers] [--seeds 0,1,2] [--epochs 10]

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

SHARED = REPO.parent / "shared" / "datasets"
DEFAULT_OUT = HERE / "results" / "link-parity.json"


def diskgraph(*args: str, timeout: float = 3600) -> float:
    """Run ``diskgraph ARGS`` (this interpreter); returns its wall seconds; raises with the output on failure."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "diskgraph", *args], capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"diskgraph {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return time.perf_counter() - t0


def structure_baselines(ds_dir: Path, plan_name: str = "default") -> dict:
    """Test MRR and Hits@10 of common neighbours and Adamic–Adar on the plan's test positives and fixed negatives."""
    import scipy.sparse as sp
    import torch

    from diskgraph.pipeline.link_task import ranks
    from diskgraph.store.dataset import open_dataset
    from diskgraph.store.plan import open_plan

    ds = open_dataset(ds_dir)
    n = ds.num_nodes
    indptr, indices = np.asarray(ds.indptr), np.asarray(ds.indices)
    a = sp.csr_matrix((np.ones(indices.size, dtype=np.float64), indices, indptr), shape=(n, n))
    a = ((a + a.T) > 0).astype(np.float64).tocsr()  # neighbours in either direction
    deg = np.asarray(a.sum(1)).ravel()
    inv_log = sp.diags(np.where(deg > 1, 1.0 / np.log(np.maximum(deg, 2)), 0.0))
    plan = open_plan(ds_dir / "plans" / plan_name)
    out = {}
    for name, weight in (("common_neighbours", None), ("adamic_adar", inv_log)):
        all_scores = []
        for i in range(plan.num_minibatches("test")):
            mb = plan.minibatch("test", i)
            seeds = mb.seeds
            u = seeds[mb.link.src]
            cand = np.concatenate([seeds[mb.link.dst][:, None], seeds[mb.link.neg]], axis=1)  # [P, 1 + K]
            rows_u = a[np.repeat(u, cand.shape[1])]
            rows_v = a[cand.ravel()]
            if weight is not None:
                rows_v = rows_v @ weight
            score = np.asarray(rows_u.multiply(rows_v).sum(1)).reshape(cand.shape)
            all_scores.append(score)
        s = torch.from_numpy(np.concatenate(all_scores))
        r = ranks(s).numpy()
        out[name] = {"test_mrr": float(np.mean(1.0 / r)), "test_hits@10": float(np.mean(r <= 10))}
    return out


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
            "--negatives", str(a.negatives), "--eval-negatives", str(a.eval_negatives), "--host-cache", str(host),
            "--max-blowup", "1000", "-q"]
    prep_s = diskgraph(*prep)
    runs = []
    for seed in a.seeds:
        for mode in ("packed", "reference"):
            log = work / f"{name}-{mode}-{seed}.jsonl"
            cmd = ["train", str(ds), "--task", "link", "--model", "sage", "--decoder", "dot", "--hidden",
                   str(a.hidden), "--epochs", str(a.epochs), "--lr", str(a.lr), "--dropout", str(a.dropout),
                   "--seed", str(seed), "--run-dir", str(work / f"run-{name}-{mode}-{seed}"), "--log-json", str(log),
                   "--device", "cpu", "-q"] + (["--reference"] if mode == "reference" else [])
            wall = diskgraph(*cmd)
            epochs, summary = read_log(log)
            runs.append({"seed": seed, "mode": mode, "test_mrr": summary["test_mrr"],
                         "test_hits@10": summary["test_hits@10"], "best_epoch": summary["best_epoch"],
                         "eval_negatives": summary.get("eval_negatives"), "wall_s": round(wall, 1),
                         "epoch_s": [e["epoch_s"] for e in epochs], "command": "diskgraph " + " ".join(cmd)})
            print(f"  {name} seed {seed} {mode:9s} test MRR {100 * summary['test_mrr']:.2f}  "
                  f"hits@10 {100 * summary['test_hits@10']:.2f}  ({wall:.0f} s)", flush=True)
    base = structure_baselines(ds)
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
    p.add_argument("--datasets", default="amazon-photo,amazon-computers", help="shared datasets (default: %(default)s)")
    p.add_argument("--seeds", default="0,1,2", help="training seeds (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.001)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--fanouts", default="10,5")
    p.add_argument("--batch-size", type=int, default=1024, help="positive edges per minibatch (default: 1024)")
    p.add_argument("--negatives", type=int, default=1, help="training negatives per positive (default: 1)")
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
