"""The out-of-core head-to-head: diskgraph vs training in RAM vs np.memmap features, under one memory cap.

One command, one table (issue 5). What it does, in order:

0. checks that cgroup-v1 memory children can be made (root, /sys/fs/cgroup/memory), else says why in one
   sentence and exits 2; refuses when the disk would keep less than ``--min-free``;
1. **inputs**: ``diskgraph generate --format raw`` (R-MAT with planted classes: edges.npy, features.npy,
   labels.npy) into ``CACHE/raw-…``, reused when its parameters match;
2. **diskgraph preprocess**, each stage timed separately inside the cap, the page cache of its inputs
   dropped first: ``preprocess import`` (``--split``, ``--dedup --drop-self-loops``), ``preprocess sample``
   (``--splits train,val``: the test split is not used), ``preprocess pack`` (``--host-cache``);
   ``--reuse-preprocess`` keeps an existing dataset/plan/pack (then not timed);
3. **contestants**, each a ``diskgraph train`` process for ``--epochs`` epochs with the same model (GraphSAGE,
   ``--hidden``), the same sampler (fanouts, batch size, seed: the online contestants draw exactly the plan's
   minibatches), inside its own cgroup child with the same cap (``memory`` has none), the page cache of the
   dataset and pack dropped before each:

   - ``diskgraph``: the packed, pipelined, out-of-core trainer;
   - ``memory``: ``--reference``: online sampling, features loaded into RAM — the speed of light for this CPU;
   - ``mmap``: ``--reference --reference-features mmap``: online sampling, features as memory maps with the
     kernel's default readahead — what ``np.memmap`` features give a PyG user today;
   - ``mmap-random``: the same with ``MADV_RANDOM``;
   - ``pyg``: PyG's ``NeighborLoader`` — only when ``torch_geometric`` with ``pyg-lib`` or ``torch-sparse`` is
     importable; otherwise it is skipped with a line saying so.

   Rounds interleave the contestants (the order rotates every round) so machine drift hits them alike;
   ``--repeat N`` gives medians. A process still running after ``--time-limit`` seconds is killed and
   reported with its progress (from ``--step-log``: minibatches done, seconds) and an extrapolated epoch time.
   ``--sweep-caps`` runs the capped contestants once more at other caps (the plot's x axis);
4. prints one table, writes the JSON (``--json``: every run, the commands, the machine) and the plot
   (``--plot``: epoch time vs memory cap, matplotlib).

Targets checked at ``--memory-cap`` (exit 1 when one is missed): diskgraph's epoch ≤ 1.3 × ``memory``'s and
≤ ``--target-epoch-s`` (15.5 s, the C++ peer in memory on this machine); ≥ 5 × faster than ``mmap-random``;
finishing (the others may not); read amplification ≤ 1.1 (OS-counted bytes of the training pass ÷ cold-row bytes
needed); validation accuracy within 0.5 point of ``memory``'s; no OOM kill.

``--task link`` runs the same for link prediction (issue 16): the import splits the edges (``--edge-split
random:TRAIN,VAL,TEST --undirected``; fractions may sum to less than 1, the rest stay in the graph without being
supervision edges, which keeps the epoch short on a big graph), ``preprocess sample --task link --negatives K
--eval-negatives M --eval-batch-size B --epochs E`` (as many presampled epochs as are trained, so the packed run and
the reference draw the same minibatches), and every contestant trains ``--task link --decoder dot``; the validation
metric is ``val_mrr``. The default contestants are diskgraph and memory; the targets are the issue's: features ≥ 4 ×
the cap, diskgraph finishes inside the cap without an OOM kill, its epoch ≤ 1.3 × ``memory``'s, read amplification
≤ 1.1, and its validation MRR within ``--mrr-points`` of ``memory``'s.
"""

from __future__ import annotations

import argparse
import json
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

import cgroup  # noqa: E402  (tools/bench is not a package)
from common import diskgraph_cmd, git_state, read_json, read_log, tail, write_outputs  # noqa: E402
from import_oocore import fmt_bytes, parse_size  # noqa: E402
from train_oocore import run_summary, size_arg  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
UNCAPPED = 1 << 62

CONTESTANTS = {
    "diskgraph": "diskgraph: packed extents (O_DIRECT), pipelined",
    "diskgraph-unchecked": "the same, reads not checked against checksums",
    "memory": "in RAM, no cap: same model + sampler, online",
    "mmap": "np.memmap features, default readahead",
    "mmap-random": "np.memmap features, MADV_RANDOM",
    "pyg": "PyG NeighborLoader on the memmap",
}
CAPPED = {"diskgraph", "diskgraph-unchecked", "mmap", "mmap-random", "pyg"}
UNCHECKED_ENV = {"DISKGRAPH_READ_CHECKS": "0"}
"""diskgraph-unchecked's environment: what the integrity checks on the read path cost is the difference (issue 12)."""


def capped_run(cmd: list, cap: int, name: str, timeout: float, stop_when=None, env: dict | None = None) -> cgroup.RunResult:
    cmd = [str(c) for c in cmd]
    return cgroup.run_in_cgroup(cmd, cap, name=f"h2h-{name}-{os.getpid()}", capture=True, timeout=timeout,
                                stop_when=stop_when, env={**os.environ, **env} if env else None)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# -- inputs and preprocessing ----------------------------------------------------------------------

def ensure_raw(a, raw: Path) -> dict | None:
    """Generate the raw inputs (edges/features/labels .npy) unless a copy with the same parameters is there."""
    params = {"nodes": a.nodes, "edges": a.edges, "feature_dim": a.feature_dim, "classes": a.classes, "seed": a.seed}
    marker = raw / "bench-params.json"
    if not a.regenerate and read_json(marker).get("params") == params and all(
            (raw / f"{k}.npy").exists() for k in ("edges", "features", "labels")):
        print(f"reusing raw inputs in {raw}", flush=True)
        return None
    cmd = [*diskgraph_cmd(), "generate", "--format", "raw", "--nodes", a.nodes, "--edges", a.edges, "--feature-dim",
           a.feature_dim, "--classes", a.classes, "--seed", a.seed, "--out", raw, "--overwrite", "-q"]
    print(f"generating raw inputs: {shlex.join(map(str, cmd))}", flush=True)
    raw.parent.mkdir(parents=True, exist_ok=True)
    r = capped_run(cmd, UNCAPPED, "generate", a.stage_timeout)
    if not r.ok:
        raise SystemExit(f"head_to_head: generating the inputs failed (exit {r.returncode})\n{tail(r.stderr)}")
    marker.write_text(json.dumps({"params": params, "command": shlex.join(map(str, cmd))}, indent=2))
    print(f"  {r.wall_s:.1f} s", flush=True)
    return {**run_summary(r), "command": shlex.join(map(str, cmd))}


def preprocess(a, raw: Path, ds: Path) -> dict:
    """import → sample → pack, each timed inside the cap with its inputs evicted from the page cache."""
    dg = diskgraph_cmd()
    budget = size_arg(a.memory_budget)
    if a.task == "link":
        stages = link_stages(a, raw, ds)
    else:
        stages = {
            "import": [*dg, "preprocess", "import", "--edges", raw / "edges.npy", "--features", raw / "features.npy",
                       "--labels", raw / "labels.npy", "--split", a.split, "--dedup", "--drop-self-loops",
                       "--memory-budget", budget, "--out", ds, "--overwrite"],
            "sample": [*dg, "preprocess", "sample", ds, "--fanouts", a.fanouts, "--batch-size", a.batch_size, "--seed",
                       0, "--splits", "train,val", "--name", a.name, "--overwrite"],
            "pack": [*dg, "preprocess", "pack", ds, "--plan", a.name, "--host-cache", size_arg(a.host_cache),
                     "--memory-budget", budget, "--overwrite"],
        }
        if a.blowups:  # issue 17: the reference pack is the unbounded one (the CLI's default, 10, is a bound)
            stages["pack"][-1:-1] = ["--max-blowup", "inf"]
    out = {}
    for stage, cmd in stages.items():
        cgroup.evict([raw] if stage == "import" else [ds])
        print(f"preprocess {stage} under {fmt_bytes(a.memory_cap)}: {shlex.join(map(str, cmd))}", flush=True)
        r = capped_run(cmd, a.memory_cap, f"pre-{stage}", a.stage_timeout)
        out[stage] = {**run_summary(r), "command": shlex.join(map(str, cmd)), "log_tail": tail(r.stderr, 3000)}
        print(f"  exit {r.returncode}, {r.wall_s:.1f} s, max usage {fmt_bytes(r.max_usage_bytes)}, peak anon "
              f"{fmt_bytes(r.peak_stat.get('total_rss'))}, oom kills {r.oom_kills}", flush=True)
        if not r.ok:
            raise SystemExit(f"head_to_head: preprocess {stage} failed inside the {fmt_bytes(a.memory_cap)} cap "
                             f"(exit {r.returncode}, oom kills {r.oom_kills})\n{tail(r.stderr)}")
    return out


def link_stages(a, raw: Path, ds: Path) -> dict:
    """The link-prediction import (edge split, no labels), sample (``--task link``) and pack commands."""
    dg = diskgraph_cmd()
    budget = size_arg(a.memory_budget)
    return {
        "import": [*dg, "preprocess", "import", "--edges", raw / "edges.npy", "--features", raw / "features.npy",
                   "--edge-split", a.edge_split, "--seed", a.seed, "--undirected", "--dedup", "--drop-self-loops",
                   "--memory-budget", budget, "--out", ds, "--overwrite"],
        "sample": [*dg, "preprocess", "sample", ds, "--task", "link", "--fanouts", a.fanouts, "--batch-size",
                   a.batch_size, "--seed", 0, "--epochs", a.epochs, "--negatives", a.negatives, "--eval-negatives",
                   a.eval_negatives, "--eval-batch-size", a.eval_batch_size, "--splits", "train,val", "--name", a.name,
                   "--overwrite"],
        "pack": [*dg, "preprocess", "pack", ds, "--plan", a.name, "--host-cache", size_arg(a.host_cache),
                 "--memory-budget", budget, "--overwrite"],
    }


def pack_facts(ds: Path, name: str) -> dict:
    pm = read_json(ds / "packs" / name / "manifest.json")
    tr = pm["splits"]["train"]
    return {"blowup": pm["blowup"], "cold_bytes": pm["cold_bytes"], "host_rows": pm["tiers"]["host"]["rows"],
            "host_tier_bytes": pm["tier_bytes"]["host"], "train_minibatches": tr["minibatches"],
            "train_inputs": tr["input_rows"], "train_cold_bytes": tr["cold_bytes"], "splits": pm["splits"]}


# -- contestants -----------------------------------------------------------------------------------

def pyg_available() -> str | None:
    """None when PyG's NeighborLoader can run here, else why not (one sentence)."""
    probe = ("import importlib.util as u, sys; ok = u.find_spec('torch_geometric') is not None; "
             "lib = [m for m in ('pyg_lib', 'torch_sparse') if u.find_spec(m)]; "
             "sys.exit(0 if ok and lib else 3 if ok else 4)")
    rc = subprocess.run([sys.executable, "-c", probe]).returncode
    if rc == 0:
        return None
    if rc == 3:
        return "torch_geometric is importable but neither pyg-lib nor torch-sparse is, and NeighborLoader needs one"
    return "torch_geometric is not installed here (pip install torch_geometric plus pyg-lib or torch-sparse)"


def train_cmd(a, ds: Path, who: str, work: Path) -> list:
    cmd = [*diskgraph_cmd(), "train", ds, "--pack", a.name, "--model", "sage", "--hidden", a.hidden, "--epochs",
           a.epochs, "--seed", a.train_seed, "--device", "cpu", "--log-json", work / "log.jsonl", "--step-log",
           work / "steps.jsonl", "--run-dir", work / "run", "--overwrite"]
    if a.task == "link":
        cmd += ["--task", "link", "--decoder", a.decoder]
    if who in ("diskgraph", "diskgraph-unchecked"):
        return cmd + ["--queue-depth", a.queue_depth]
    features = {"memory": "ram", "mmap": "mmap", "mmap-random": "mmap-random"}[who]
    return cmd + ["--reference", "--reference-features", features, "--fanouts", a.fanouts, "--batch-size", a.batch_size]


def read_steps(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:  # a line cut by the kill
            pass
    return out


def run_contestant(a, ds: Path, who: str, cap: int, rnd: int, work_root: Path, row_bytes: int) -> dict:
    """One training process of ``who`` under ``cap``, from a cold page cache; epoch time measured or extrapolated."""
    work = work_root / f"{who}-{size_arg(cap) if cap < UNCAPPED else 'nocap'}-r{rnd}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    files, nbytes = cgroup.evict([ds])
    resident = cgroup.resident_bytes([ds])
    cmd = [str(c) for c in train_cmd(a, ds, who, work)]
    where = f"under {fmt_bytes(cap)}" if cap < UNCAPPED else "without a cap"
    print(f"[round {rnd}] {who} {where} ({fmt_bytes(resident)} cached): {shlex.join(cmd)}", flush=True)
    steps_file = work / "steps.jsonl"
    total_steps: list[int] = []

    def trained_all() -> bool:
        """The last training minibatch is logged (memmap contestants need no evaluation: stop them there)."""
        if not total_steps:
            first_line = read_steps(steps_file)[:1]
            if not first_line:
                return False
            total_steps.append(first_line[0]["of"] * a.epochs)
        try:
            with open(steps_file, "rb") as f:
                return sum(1 for _ in f) >= total_steps[0]
        except OSError:
            return False

    stop = None if (who in ("diskgraph", "diskgraph-unchecked", "memory") or a.eval_all) else trained_all
    load_before = {"loadavg": os.getloadavg(), "other_diskgraph_jobs": other_diskgraph_jobs()}
    r = capped_run(cmd, cap, who, a.time_limit, stop_when=stop, env=UNCHECKED_ENV if who == "diskgraph-unchecked" else None)
    epochs, summary = read_log(work / "log.jsonl")
    steps = read_steps(steps_file)
    per_epoch = steps[0]["of"] if steps else None
    first = [s for s in steps if s["epoch"] == 0]
    done_epochs = [e for e in range(a.epochs) if per_epoch and sum(s["epoch"] == e for s in steps) == per_epoch]
    finished = len(done_epochs) == a.epochs and r.oom_kills == 0 and (r.ok or r.stopped_early)
    rec = {"contestant": who, "round": rnd, "cap_bytes": cap, "command": shlex.join(cmd), "run": run_summary(r),
           "evicted": {"files": files, "bytes": nbytes, "resident_after_bytes": resident},
           "epochs": epochs, "summary": summary, "stderr_tail": tail(r.stderr, 2500), "finished": finished,
           "stopped_after_training": r.stopped_early, "minibatches_per_epoch": per_epoch,
           "minibatches_done": len(steps),
           "machine_load": {"start": load_before,
                            "end": {"loadavg": os.getloadavg(), "other_diskgraph_jobs": other_diskgraph_jobs()}}}
    if epochs:
        rec["epoch_s"] = statistics.mean(e["epoch_s"] for e in epochs)
        rec["epoch0_s"] = epochs[0]["epoch_s"]
    elif done_epochs:
        secs = [max(s["seconds"] for s in steps if s["epoch"] == e) for e in done_epochs]
        rec["epoch_s"], rec["epoch0_s"] = statistics.mean(secs), secs[0]
    elif first and per_epoch:
        done, secs = len(first), first[-1]["seconds"]
        rec["epoch_s"] = rec["epoch0_s"] = secs * per_epoch / done
        rec["extrapolated"] = True
    else:
        rec["epoch_s"] = None
    if finished:
        rec["status"] = ("trained every epoch; stopped before evaluation (not needed)" if r.stopped_early
                         else "finished")
    elif rec.get("extrapolated"):
        rec["status"] = f"{describe_end(r)} at {len(first)}/{per_epoch} minibatches after {first[-1]['seconds']:.1f} s"
    elif done_epochs:
        rec["status"] = f"trained every epoch, then {describe_end(r)}"
    else:
        rec["status"] = f"{describe_end(r)} before its first minibatch"
    if first:
        rec["progress"] = {"minibatches": len(first), "seconds": first[-1]["seconds"],
                           "epoch_read_bytes": first[-1].get("epoch_read_bytes"),
                           "input_row_bytes": sum(s["inputs"] for s in first) * row_bytes}
    if epochs:
        e0 = epochs[0]
        rec["val_acc"] = e0.get("val_acc")
        rec["val_mrr"] = e0.get("val_mrr")
        rec["stage_s"] = {**(e0.get("stage_s") or {}), "verify_s": e0.get("verify_s")}
    read_figures(rec)
    if summary:
        rec["val_acc"] = summary.get("val_acc", rec.get("val_acc"))
        rec["val_mrr"] = summary.get("val_mrr", rec.get("val_mrr"))
        rec["best_val_mrr"] = summary.get("best_val_mrr")
    shown = f"{rec['epoch_s']:.1f} s" if rec["epoch_s"] else "-"
    print(f"  {rec['status']}; epoch {shown}{' (extrapolated)' if rec.get('extrapolated') else ''}, max usage "
          f"{fmt_bytes(r.max_usage_bytes)}, peak anon {fmt_bytes(r.peak_stat.get('total_rss'))}, read "
          f"{fmt_bytes(r.read_bytes)}, oom kills {r.oom_kills}", flush=True)
    if not a.keep_runs:
        shutil.rmtree(work / "run", ignore_errors=True)
    return rec


def read_figures(rec: dict) -> None:
    """Set ``read_bytes``, ``read_amplification`` and ``read_basis`` of one run record.

    With a per-epoch log (diskgraph, in RAM): the training pass's bytes as logged; diskgraph's amplification is
    the logged one (÷ cold-row bytes), the others' ÷ every input row's bytes. Without one (memmap contestants
    stopped after training or at the time limit): the epoch's bytes from the step log when it has them, else
    the whole process's (start-up included, a little more than the epoch), ÷ the input-row bytes of the
    minibatches done (estimated from the mean of the later ones for reports whose step log did not record the
    first minibatch's).
    """
    p = rec.get("progress") or {}
    need = p.get("input_row_bytes")
    if p and "epoch_read_bytes" not in p and p.get("minibatches", 0) > 1:  # a report of the first version
        need = need * p["minibatches"] / (p["minibatches"] - 1)
    if rec.get("epochs"):
        e0 = rec["epochs"][0]
        rec["read_bytes"], rec["read_basis"] = e0.get("read_bytes"), "training pass (log)"
        rec["read_amplification"] = (e0.get("read_amplification") if rec["contestant"].startswith("diskgraph")
                                     else (e0["read_bytes"] / need if need else None))
    elif p:
        if p.get("epoch_read_bytes") is not None:
            rec["read_bytes"], rec["read_basis"] = p["epoch_read_bytes"], "training pass (step log)"
        else:
            rec["read_bytes"], rec["read_basis"] = rec["run"]["read_bytes"], "whole process"
        rec["read_amplification"] = rec["read_bytes"] / need if need else None
    else:
        rec["read_bytes"] = rec["read_amplification"] = rec["read_basis"] = None


def describe_end(r: cgroup.RunResult) -> str:
    if r.timed_out:
        return "stopped at the time limit"
    if r.oom_kills:
        return "OOM-killed"
    return f"exited with {r.returncode}"


# -- summary, table, plot --------------------------------------------------------------------------

def summarize(runs: list[dict]) -> dict:
    """Medians per (contestant, cap) over rounds."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["contestant"], r["cap_bytes"]), []).append(r)
    out = {}
    for (who, cap), rs in groups.items():
        out[f"{who}@{cap}"] = {
            "contestant": who, "cap_bytes": cap, "rounds": len(rs),
            "epoch_s": median([r.get("epoch_s") for r in rs]),
            "epoch_s_all": [r.get("epoch_s") for r in rs],
            "extrapolated": any(r.get("extrapolated") for r in rs),
            "finished": all(r["finished"] for r in rs),
            "status": "; ".join(sorted({r["status"] for r in rs})),
            "val_acc": median([r.get("val_acc") for r in rs]),
            "val_mrr": median([r.get("val_mrr") for r in rs]),
            "read_bytes": median([r.get("read_bytes") for r in rs]),
            "read_amplification": median([r.get("read_amplification") for r in rs]),
            "max_usage_bytes": max(r["run"]["max_usage_bytes"] for r in rs),
            "peak_anon_bytes": max(r["run"]["peak_anon_bytes"] for r in rs),
            "peak_shmem_bytes": max(r["run"]["peak_shmem_bytes"] for r in rs),
            "peak_rss_bytes": max(r["run"]["peak_rss_bytes"] for r in rs),
            "failcnt": median([r["run"]["failcnt"] for r in rs]),
            "oom_kills": sum(r["run"]["oom_kills"] for r in rs),
            "process_read_bytes": median([r["run"]["read_bytes"] for r in rs]),
            "stage_s": {k: median([(r.get("stage_s") or {}).get(k) for r in rs])
                        for k in ("sample_s", "read_s", "verify_s", "assemble_s", "compute_s")},
        }
    return out


def epoch_amplifications(runs: list[dict], who: str, cap: int) -> list[float]:
    """The logged read amplification of every epoch of every run of ``who`` at ``cap``."""
    return [e["read_amplification"] for r in runs if r["contestant"] == who and r["cap_bytes"] == cap
            for e in r.get("epochs") or [] if e.get("read_amplification") is not None]


def link_checks(a, summ: dict, feature_bytes: int, runs: list[dict]) -> dict:
    """The issue-16 targets of a ``--task link`` run at the main cap (read amplification: the worst epoch)."""
    cap = a.memory_cap
    dg = summ.get(f"diskgraph@{cap}")
    mem = summ.get(f"memory@{UNCAPPED}")
    out = {f"features >= 4 x the cap ({feature_bytes / cap:.2f}x)": feature_bytes >= 4 * cap}
    if not dg:
        out["diskgraph ran"] = False
        return out
    e = dg["epoch_s"]
    out["diskgraph finished inside the cap, no OOM kill"] = dg["finished"] and dg["oom_kills"] == 0
    if not e:
        return out
    if mem and mem["epoch_s"]:
        out[f"epoch <= {a.ratio_target} x in RAM ({e / mem['epoch_s']:.2f}x)"] = e <= a.ratio_target * mem["epoch_s"]
        if dg["val_mrr"] is not None and mem["val_mrr"] is not None:
            d = 100 * (dg["val_mrr"] - mem["val_mrr"])
            out[f"val MRR within {a.mrr_points} pt of in RAM ({d:+.2f} pt)"] = abs(d) <= a.mrr_points
    if a.target_epoch_s:
        out[f"epoch <= {a.target_epoch_s} s ({e:.2f} s)"] = e <= a.target_epoch_s
    amps = epoch_amplifications(runs, "diskgraph", cap)
    amp = max(amps) if amps else None
    out[f"read amplification <= 1.1 in every epoch (worst {amp:.3f})" if amp else "read amplification logged"] = \
        bool(amp) and amp <= 1.1
    return out


def checks(a, summ: dict) -> dict:
    cap = a.memory_cap
    dg = summ.get(f"diskgraph@{cap}")
    mem = summ.get(f"memory@{UNCAPPED}")
    rnd = summ.get(f"mmap-random@{cap}")
    mm = summ.get(f"mmap@{cap}")
    out = {}
    if not dg:
        return {"diskgraph ran": False}
    e = dg["epoch_s"]
    out["diskgraph finished inside the cap, no OOM kill"] = dg["finished"] and dg["oom_kills"] == 0
    if not e:
        return out
    if mem and mem["epoch_s"]:
        out[f"epoch <= {a.ratio_target} x in RAM ({e / mem['epoch_s']:.2f}x)"] = e <= a.ratio_target * mem["epoch_s"]
        if dg["val_acc"] is not None and mem["val_acc"] is not None:
            d = 100 * (dg["val_acc"] - mem["val_acc"])
            out[f"val accuracy within {a.acc_points} pt of in RAM ({d:+.2f} pt)"] = abs(d) <= a.acc_points
    out[f"epoch <= {a.target_epoch_s} s ({e:.2f} s)"] = e <= a.target_epoch_s
    if rnd and rnd["epoch_s"]:
        out[f">= {a.speedup_target}x faster than mmap MADV_RANDOM ({rnd['epoch_s'] / e:.1f}x)"] = \
            rnd["epoch_s"] >= a.speedup_target * e
    if mm:
        out["finishes where mmap (default readahead) " + ("does not" if not mm["finished"] else "also finishes")] = \
            dg["finished"]
    amp = dg["read_amplification"]
    out[f"read amplification <= 1.1 ({amp:.3f})" if amp else "read amplification logged"] = bool(amp) and amp <= 1.1
    un = summ.get(f"diskgraph-unchecked@{cap}")
    if un and un["epoch_s"]:
        cost = e / un["epoch_s"] - 1
        out[f"checking reads against checksums costs <= 3 % of the epoch ({100 * cost:+.1f} %)"] = cost <= 0.03
    return out


def fmt_s(v, extrapolated=False) -> str:
    if v is None:
        return "-"
    return f"{'~' if extrapolated else ''}{v:.1f}" if v >= 100 else f"{'~' if extrapolated else ''}{v:.2f}"


def header(rep: dict, what: str = "head_to_head") -> list[str]:
    """A report's title, its underline and the machine line."""
    p, m, d = rep["params"], rep["machine"], rep["dataset"]
    title = (f"{what} — {d['num_nodes']:,} nodes, {d['num_edges']:,} edges, {p['feature_dim']}-d float32 "
             f"({fmt_bytes(d['feature_bytes'])} of features), cap {fmt_bytes(p['memory_cap'])} ({rep['date']})")
    disk = next(iter(m.get("disks", {}).values()), {})
    return [title, "-" * len(title),
            f"machine: {m.get('nproc')} CPUs ({m.get('cpu_model', '?')}), {fmt_bytes(m.get('mem_total_bytes'))} "
            f"RAM, {disk.get('fstype', '?')} on {disk.get('device', '?')}, kernel {m.get('kernel')}; load average "
            f"{m['loadavg_start'][0]:.2f} at start, {m['loadavg_end'][0]:.2f} at end"]


def render(rep: dict) -> str:
    p, m, d = rep["params"], rep["machine"], rep["dataset"]
    lines = header(rep)
    link = p.get("task") == "link"
    if link:
        es = d.get("edge_split") or {}
        per_epoch = rep['pack']['train_minibatches'] // max(1, p['epochs'])
        lines.append(f"link prediction: edge split {p['edge_split']} over unordered pairs = "
                     + ", ".join(f"{k} {v:,}" for k, v in (es.get("counts") or {}).items())
                     + f" supervision edges (the rest stay in the graph only); GraphSAGE (mean) encoder + "
                     f"{p['decoder']} decoder, hidden {p['hidden']}, fanouts {p['fanouts']}, batch {p['batch_size']} "
                     f"positive edges, {p['negatives']} negative(s) each; val: {p['eval_negatives']} filtered negatives "
                     f"per edge, batches of {p['eval_batch_size']}; {p['epochs']} epoch(s) presampled and trained = "
                     f"{per_epoch} train minibatches per epoch, "
                     f"{rep['pack']['train_inputs'] / rep['pack']['train_minibatches']:,.0f} input rows each on average")
    else:
        lines.append(f"model: GraphSAGE (mean), hidden {p['hidden']}, {len(p['fanouts'].split(','))} layers, fanouts "
                     f"{p['fanouts']}, batch {p['batch_size']}, {p['epochs']} epoch(s), train split "
                     f"{d['train_nodes']:,} nodes = {rep['pack']['train_minibatches']} minibatches, "
                     f"{rep['pack']['train_inputs'] / rep['pack']['train_minibatches']:,.0f} input rows each on average")
    pk = rep["pack"]
    lines.append(f"pack: host tier {fmt_bytes(pk['host_tier_bytes'])} ({pk['host_rows']:,} rows), cold extents "
                 f"{fmt_bytes(pk['cold_bytes'])} (train {fmt_bytes(pk['train_cold_bytes'])}), blow-up {pk['blowup']:.2f}x")
    pre = rep.get("preprocess")
    if pre:
        lines.append("preprocess under the cap: " + ", ".join(
            f"{k} {v['wall_s']:.1f} s (peak anon {fmt_bytes(v['peak_anon_bytes'])}, oom {v['oom_kills']})"
            for k, v in pre.items()) + f"; total {sum(v['wall_s'] for v in pre.values()):.1f} s")
    else:
        lines.append("preprocess: reused (not timed in this run)")
    q = m.get("wait_quiet")
    if q:
        lines.append(f"quiet machine: {'yes' if q['quiet'] else 'NO'} after waiting {q['waited_s']:.0f} s (load "
                     f"{q['loadavg_1m']:.2f}; other diskgraph jobs: {len(q['other_jobs'])})")
    lines.append(f"rounds: {p['repeat']} (contestants interleaved, order rotated per round); time limit "
                 f"{p['time_limit']:.0f} s per process; medians")
    lines.append("")
    hdr = (f"{'contestant':<44} {'cap':>8} {'epoch s':>8} {'x diskgraph':>11} {'status':<12} {'read':>9} {'amp':>7} "
           f"{'max usage':>9} {'anon':>9} {'oom':>3} {'val mrr' if link else 'val acc':>7}")
    lines += [hdr, "-" * len(hdr)]
    summ = rep["summary"]
    dg = summ.get(f"diskgraph@{p['memory_cap']}")
    order = sorted(summ.values(), key=lambda s: (list(CONTESTANTS).index(s["contestant"]),
                                                  s["cap_bytes"] != p["memory_cap"], s["cap_bytes"]))
    for s in order:
        cap = "none" if s["cap_bytes"] >= UNCAPPED else fmt_bytes(s["cap_bytes"])
        rel = (s["epoch_s"] / dg["epoch_s"]) if dg and dg["epoch_s"] and s["epoch_s"] else None
        status = "finished" if s["finished"] else ("killed, est." if s["extrapolated"] else "failed")
        amp = f"{s['read_amplification']:.2f}" if s["read_amplification"] is not None else "-"
        metric = s.get("val_mrr") if link else s["val_acc"]
        acc = f"{metric:.4f}" if metric is not None else "-"
        lines.append(f"{CONTESTANTS[s['contestant']]:<44} {cap:>8} {fmt_s(s['epoch_s'], s['extrapolated']):>8} "
                     f"{(f'{rel:.2f}x' if rel else '-'):>11} {status:<12} {fmt_bytes(s['read_bytes']):>9} {amp:>7} "
                     f"{fmt_bytes(s['max_usage_bytes']):>9} {fmt_bytes(s['peak_anon_bytes']):>9} {s['oom_kills']:>3} "
                     f"{acc:>7}")
    for why in rep.get("skipped", {}).values():
        lines.append(f"{CONTESTANTS['pyg']:<44} skipped: {why}")
    lines.append("")
    lines.append("epoch s: the training pass of epoch 0 (mean over epochs when more ran), from the run's JSON log; "
                 "~ = stopped at the time limit, extrapolated from its step log (seconds x minibatches per epoch / done)")
    bases = sorted({r["read_basis"] for r in rep["runs"] if r.get("read_basis") and not r.get("epochs")})
    lines.append("read: bytes read from disk (/proc/self/io) in the training pass (diskgraph, in RAM: the epoch log)"
                 + (f"; memmap contestants (no epoch log: stopped after training or at the limit): {', '.join(bases)}"
                    if bases else "") + "; for runs stopped at the limit, until then. amp: read ÷ feature bytes "
                 "needed (diskgraph: cold rows not in a cache tier; the others: every input row of the minibatches "
                 "done); max usage: cgroup peak incl. page cache; anon: peak memory.stat total_rss")
    for s in order:
        st = {k: v for k, v in s["stage_s"].items() if v is not None}
        if st:
            lines.append(f"stages {s['contestant']}@{'none' if s['cap_bytes'] >= UNCAPPED else fmt_bytes(s['cap_bytes'])}: "
                         + ", ".join(f"{k[:-2]} {v:.2f} s" for k, v in st.items())
                         + f"; per round: {', '.join(fmt_s(v) for v in s['epoch_s_all'])}; {s['status']}"
                         + (f"; peak shmem {fmt_bytes(s['peak_shmem_bytes'])}, peak RSS {fmt_bytes(s['peak_rss_bytes'])}"
                            if link else ""))
    if link:  # every epoch of every run: the figures the README quotes
        for r in sorted(rep["runs"], key=lambda r: (r["round"], r["contestant"])):
            eps = r.get("epochs") or []
            lines.append(f"round {r['round']} {r['contestant']}: " + "; ".join(
                f"epoch {e['epoch']} {e['epoch_s']:.2f} s"
                + (f", read {fmt_bytes(e.get('read_bytes'))} / cold needed {fmt_bytes(e.get('cold_bytes_needed'))} = "
                   f"{e['read_amplification']:.3f}" if e.get("read_amplification") is not None else "")
                + f", val mrr {e.get('val_mrr', float('nan')):.4f}" for e in eps)
                + f"; best val mrr {r.get('val_mrr') or float('nan'):.4f}; process wall {r['run']['wall_s']:.1f} s, "
                  f"read {fmt_bytes(r['run']['read_bytes'])}"
                + "".join(f"; at {k}: load {v['loadavg'][0]:.2f}, {len(v['other_diskgraph_jobs'])} other diskgraph jobs"
                          for k, v in (r.get("machine_load") or {}).items()))
    lines.append("")
    chk = rep["checks"]
    lines.append("targets at the main cap: " + "; ".join(f"{k}: {'ok' if v else 'MISSED'}" for k, v in chk.items()))
    lines.append(f"result: {'PASS' if chk and all(chk.values()) else 'FAIL'}")
    lines.append("")
    lines.append("command: " + rep["commands"]["bench"])
    for who, cmd in rep["commands"]["contestants"].items():
        lines.append(f"  {who}: {cmd}")
    return "\n".join(lines)


def plot(rep: dict, path: Path) -> None:
    """Epoch time against the memory cap, one line per contestant (log scale; hollow markers = extrapolated)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("head_to_head: --plot needs matplotlib (pip install matplotlib); no plot written", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(7, 4.2))
    summ = list(rep["summary"].values())
    feature_bytes = rep["dataset"]["feature_bytes"]
    for who in ("diskgraph", "mmap-random", "mmap", "pyg"):
        pts = sorted((s["cap_bytes"] / GiB, s["epoch_s"], s["extrapolated"]) for s in summ
                     if s["contestant"] == who and s["epoch_s"])
        if not pts:
            continue
        line, = ax.plot([x for x, _, _ in pts], [y for _, y, _ in pts], marker="o", label=CONTESTANTS[who])
        for x, y, ex in pts:
            if ex:
                ax.plot([x], [y], marker="o", markerfacecolor="white", color=line.get_color())
    failed = [s["cap_bytes"] / GiB for s in summ if s["contestant"] != "memory" and not s["epoch_s"]]
    if failed:  # no minibatch trained (OOM-killed at start-up): marked along the top
        top = max([s["epoch_s"] for s in summ if s["epoch_s"]] + [1.0]) * 1.5
        ax.plot(failed, [top] * len(failed), "rx", linestyle="none", label="failed before its first minibatch")
    mem = next((s for s in summ if s["contestant"] == "memory" and s["epoch_s"]), None)
    if mem:
        ax.axhline(mem["epoch_s"], color="grey", linestyle="--", label="in RAM, no cap")
    ax.axvline(feature_bytes / GiB, color="black", linestyle=":", linewidth=1, label="feature table size")
    ax.set_yscale("log")
    ax.set_xlabel("memory cap (GiB, cgroup v1, page cache included)")
    ax.set_ylabel("epoch time (s, log scale)")
    d = rep["dataset"]
    ax.set_title(f"{d['num_nodes']:,} nodes, {d['num_edges']:,} edges, {rep['params']['feature_dim']}-d float32; "
                 f"hollow = stopped at the time limit, extrapolated", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"plot written to {path}", flush=True)


# -- bounded packs: --max-blowup B (issue 17) ------------------------------------------------------

BOUNDED = "head_to_head/bounded-packs"
"""``bench`` of a ``--blowups`` report."""


def parse_blowups(text: str) -> list[float | None]:
    """``--blowups inf,4,2,1`` → [None, 4.0, 2.0, 1.0] (None: unbounded); the unbounded pack is always measured."""
    out: list[float | None] = [None]
    for w in (w.strip().lower() for w in text.split(",")):
        if not w or w in ("inf", "none", "infinity", "unbounded"):
            continue
        v = float(w)
        if v != v or v < 0:
            raise argparse.ArgumentTypeError(f"--blowups: {w} is not a number >= 0 (or inf)")
        if v != float("inf") and v not in out:
            out.append(v)
    return out


def blowup_label(b: float | None) -> str:
    return "inf" if b is None else f"{b:g}"


def bounded_name(a, b: float | None) -> str:
    """The pack of bound ``b``: the usual one (``--name``) when unbounded, else ``NAME-bB``."""
    return a.name if b is None else f"{a.name}-b{blowup_label(b)}"


def disk_usage(path: Path) -> tuple[int, int]:
    """(bytes allocated on disk, apparent bytes) of every file under ``path``."""
    alloc = size = 0
    for f in path.rglob("*"):
        if f.is_file() and not f.is_symlink():
            st = f.stat()
            alloc += st.st_blocks * 512
            size += st.st_size
    return alloc, size


def bounded_pack(a, ds: Path, b: float) -> dict:
    """``preprocess pack --max-blowup b`` of the plan into its own pack, timed inside the cap, page cache evicted."""
    cmd = [*diskgraph_cmd(), "preprocess", "pack", ds, "--plan", a.name, "--name", bounded_name(a, b), "--max-blowup",
           blowup_label(b), "--host-cache", size_arg(a.host_cache), "--memory-budget", size_arg(a.memory_budget),
           "--overwrite"]
    cgroup.evict([ds])
    print(f"preprocess pack --max-blowup {blowup_label(b)} under {fmt_bytes(a.memory_cap)}: "
          f"{shlex.join(map(str, cmd))}", flush=True)
    r = capped_run(cmd, a.memory_cap, f"pack-b{blowup_label(b)}", a.stage_timeout)
    rec = {**run_summary(r), "command": shlex.join(map(str, cmd)), "log_tail": tail(r.stderr, 3000)}
    print(f"  exit {r.returncode}, {r.wall_s:.1f} s, max usage {fmt_bytes(r.max_usage_bytes)}, peak anon "
          f"{fmt_bytes(r.peak_stat.get('total_rss'))}, oom kills {r.oom_kills}", flush=True)
    if not r.ok:
        raise SystemExit(f"head_to_head: preprocess pack --max-blowup {blowup_label(b)} failed inside the "
                         f"{fmt_bytes(a.memory_cap)} cap (exit {r.returncode}, oom kills {r.oom_kills})\n{tail(r.stderr)}")
    return rec


def bounded_pack_facts(ds: Path, name: str, inspected: dict) -> dict:
    """What the manifest and ``diskgraph inspect --json`` say of one pack, and its bytes on disk."""
    pm = read_json(ds / "packs" / name / "manifest.json")
    ins = inspected.get(name) or {}
    alloc, apparent = disk_usage(ds / "packs" / name)
    split = {k: {f: v.get(f) for f in ("minibatches", "minibatches_per_epoch", "epochs", "input_rows", "cold_rows", "cold_bytes", "padded_bytes",
                                       "table_rows", "max_table_rows", "table_page_reads", "cold_bytes_per_epoch",
                                       "index_bytes")}
             for k, v in pm["splits"].items()}
    return {"name": name, "disk_bytes": alloc, "apparent_bytes": apparent,
            "inspect": {k: ins.get(k) for k in ("blowup", "max_blowup", "table_rows", "table_page_reads",
                                                "packed_bytes")},
            "packed_bytes": pm.get("packed_bytes"), "cold_bytes": pm.get("cold_bytes"), "blowup": pm.get("blowup"),
            "max_blowup": pm.get("max_blowup"), "table_rows": pm.get("table_rows"),
            "table_page_reads": pm.get("table_page_reads"), "feature_bytes": pm.get("feature_bytes"),
            "host_rows": pm["tiers"]["host"]["rows"], "splits": split}


def run_identity(work: Path) -> dict:
    """Everything of a run that bit-exact inputs must reproduce: every step's loss, every epoch's metrics."""
    steps = read_steps(work / "steps.jsonl")
    epochs, summary = read_log(work / "log.jsonl")
    return {"step_losses": [s.get("loss") for s in steps],
            "epochs": [{k: e.get(k) for k in ("loss", "train_acc", "val_loss", "val_acc")} for e in epochs or []],
            "val_acc": (summary or {}).get("val_acc")}


def bounded_run(a, ds: Path, who: str, b: float | None, cap: int, rnd: int, work: Path, row_bytes: int) -> dict:
    """One contestant run (``run_contestant``) on the pack of bound ``b``, with its bit-exactness fingerprint."""
    ab = argparse.Namespace(**vars(a))
    ab.name = bounded_name(a, b)
    root = work / (f"b{blowup_label(b)}" if who == "diskgraph" else "baseline")
    rec = run_contestant(ab, ds, who, cap, rnd, root, row_bytes)
    rec["max_blowup"] = blowup_label(b) if who == "diskgraph" else None
    rec["pack"] = ab.name
    run_dir = root / f"{who}-{size_arg(cap) if cap < UNCAPPED else 'nocap'}-r{rnd}"
    rec["identity"] = run_identity(run_dir)
    e0 = (rec.get("epochs") or [{}])[0]
    rec["hit_rate"] = e0.get("hit_rate")
    rec["extent_bytes"] = e0.get("extent_bytes")
    rec["cold_bytes_needed"] = e0.get("cold_bytes_needed")
    if not a.keep_runs:
        shutil.rmtree(run_dir, ignore_errors=True)
    return rec


def bounded_summary(runs: list[dict]) -> dict:
    """Medians per pack bound (diskgraph) and of the baseline."""
    out = {}
    keys = [r["max_blowup"] or r["contestant"] for r in runs]
    for key in sorted(set(keys), key=lambda k: (k != "inf", k in CONTESTANTS, -float(k) if k not in CONTESTANTS and
                                                k != "inf" else 0, k)):
        rs = [r for r in runs if (r["max_blowup"] or r["contestant"]) == key]
        s = summarize(rs)[next(iter(summarize(rs)))]
        eps = [e for r in rs for e in r.get("epochs") or []]
        s["read_amplification_all"] = [e.get("read_amplification") for e in eps]
        s["table_share"] = median([(e.get("hit_rate") or {}).get("table", 0.0) for e in eps])
        s["extent_bytes"] = median([e.get("extent_bytes") for e in eps])
        s["cold_bytes_needed"] = median([e.get("cold_bytes_needed") for e in eps])
        s["stage_s_all"] = [r.get("stage_s") for r in rs]
        s["eval_s"] = median([e.get("eval_s") for e in eps])
        s["eval_read_bytes"] = median([e.get("eval_read_bytes") for e in eps])
        s["process_wall_s"] = median([r["run"]["wall_s"] for r in rs])
        out[key] = s
    return out


def identical(x: dict, y: dict) -> bool:
    return bool(x["step_losses"]) and x == y


def bounded_checks(a, rep: dict) -> dict:
    summ, runs, packs = rep["summary"], rep["runs"], rep["packs"]
    out = {}
    for lab, pk in packs.items():
        if lab != "inf":
            out[f"pack B={lab}: blow-up {pk['blowup']:.3f} <= {lab}"] = pk["blowup"] <= float(lab) + 1e-9
    dg = [r for r in runs if r["contestant"] == "diskgraph"]
    out["no OOM kill in any diskgraph run inside the cap"] = bool(dg) and all(r["run"]["oom_kills"] == 0 for r in dg)
    late = sorted({f"B={r['max_blowup']}" for r in dg if not r["finished"]})
    out["every diskgraph run (training, evaluation after the epoch, final best-model evaluation) within the time limit"
        + (f" (not: {', '.join(late)})" if late else "")] = bool(dg) and not late
    ref = [r for r in dg if r["max_blowup"] == "inf" and r["identity"]["epochs"]]
    if ref:
        want = ref[0]["identity"]
        bad = [f"B={r['max_blowup']} round {r['round']}" for r in dg
               if not r["identity"]["step_losses"] or r["identity"]["step_losses"] != want["step_losses"]]
        out[f"the loss of every training step ({len(want['step_losses'])}) identical to the unbounded run's in every B "
            f"and round" + (f" (DIFFER: {', '.join(bad)})" if bad else "")] = not bad
        evald = [r for r in dg if r["identity"]["epochs"]]
        bad = [f"B={r['max_blowup']} round {r['round']}" for r in evald if r["identity"]["epochs"] != want["epochs"]
               or r["identity"]["val_acc"] not in (None, want["val_acc"])]
        missing = sorted({f"B={r['max_blowup']}" for r in dg if not r["identity"]["epochs"]})
        nofinal = sorted({f"B={r['max_blowup']}" for r in evald if r["identity"]["val_acc"] is None})
        out["epoch loss, train acc, val loss, val acc (after the epoch; and of the best model at the end where it got "
            "there) identical to the unbounded run's"
            + (f" (DIFFER: {', '.join(bad)})" if bad else "")
            + (f" (no evaluation, stopped at the time limit: {', '.join(missing)})" if missing else "")
            + (f" (final best-model evaluation stopped at the time limit: {', '.join(nofinal)})" if nofinal else "")
            ] = not bad
    inf, two, one = summ.get("inf"), summ.get("2"), summ.get("1")
    if inf and two and inf["epoch_s"] and two["epoch_s"]:
        ratio = two["epoch_s"] / inf["epoch_s"]
        out[f"epoch(B=2) <= {a.ratio_target} x epoch(unbounded) ({ratio:.2f}x)"] = ratio <= a.ratio_target
    rnd = summ.get("mmap-random")
    if one and rnd and one["epoch_s"] and rnd["epoch_s"]:
        sp = rnd["epoch_s"] / one["epoch_s"]
        out[f"epoch(mmap MADV_RANDOM) >= {a.speedup_target} x epoch(B=1) ({sp:.1f}x"
            + (", mmap-random extrapolated" if rnd["extrapolated"] else "") + ")"] = sp >= a.speedup_target
    return out


def render_bounded(rep: dict) -> str:
    p, m = rep["params"], rep["machine"]
    lines = header(rep, "head_to_head --blowups")
    q = m.get("wait_quiet")
    if q:
        lines.append(f"quiet machine: {'yes' if q['quiet'] else 'NO'} after waiting {q['waited_s']:.0f} s (load "
                     f"{q['loadavg_1m']:.2f}; other diskgraph jobs: {len(q['other_jobs'])})")
    pk0 = rep["packs"]["inf"]
    tr = pk0["splits"]["train"]
    lines.append(f"model: GraphSAGE (mean), hidden {p['hidden']}, fanouts {p['fanouts']}, batch {p['batch_size']}, "
                 f"{p['epochs']} epoch(s), {tr['minibatches']} train minibatches, "
                 f"{tr['input_rows'] / max(1, tr['minibatches']):,.0f} input rows each on average; host cache "
                 f"{fmt_bytes(p['host_cache'])}")
    pre = rep.get("preprocess")
    if pre:
        lines.append("preprocess under the cap: " + ", ".join(
            f"{k} {v['wall_s']:.1f} s (peak anon {fmt_bytes(v['peak_anon_bytes'])}, oom {v['oom_kills']})"
            for k, v in pre.items()))
    else:
        lines.append("preprocess: import/sample/unbounded pack reused (not timed in this run)")
    lines.append(f"rounds: {p['repeat']} (order rotated per round; mmap-random "
                 f"{'in round 0 only' if p.get('baseline_once') else 'every round'}); time limit "
                 f"{p['time_limit']:.0f} s per process; medians")
    lines.append("")
    hdr = (f"{'pack':<8} {'on disk':>9} {'blowup':>7} {'table rows':>11} {'pred pages':>10} {'pack s':>7} "
           f"{'epoch s':>8} {'x inf':>6} {'read':>6} {'assem':>6} {'comp':>6} {'read B':>9} {'amp':>6} "
           f"{'table %':>7} {'val acc':>7}")
    lines += [hdr, "-" * len(hdr)]
    summ = rep["summary"]
    base = summ.get("inf", {}).get("epoch_s")
    for lab, pk in rep["packs"].items():
        s = summ.get(lab)
        if not s:
            continue
        st = s["stage_s"]
        pt = rep["pack_stages"].get(lab) or {}
        rel = f"{s['epoch_s'] / base:.2f}" if base and s["epoch_s"] else "-"
        amp = f"{s['read_amplification']:.3f}" if s["read_amplification"] else "-"
        acc = f"{s['val_acc']:.4f}" if s["val_acc"] is not None else "-"
        lines.append(
            f"{'B=' + lab:<8} {fmt_bytes(pk['disk_bytes']):>9} {pk['blowup']:>6.2f}x {pk['table_rows']:>11,} "
            f"{pk['table_page_reads']:>10,} {fmt_s(pt.get('wall_s')):>7} {fmt_s(s['epoch_s'], s['extrapolated']):>8} "
            f"{rel:>6} {fmt_s(st.get('read_s')):>6} {fmt_s(st.get('assemble_s')):>6} {fmt_s(st.get('compute_s')):>6} "
            f"{fmt_bytes(s['read_bytes']):>9} {amp:>6} {100 * (s['table_share'] or 0):>6.1f}% {acc:>7}")
    rnd = summ.get("mmap-random")
    if rnd:
        rel = f"{rnd['epoch_s'] / base:.2f}" if base and rnd["epoch_s"] else "-"
        amp = f"{rnd['read_amplification']:.3f}" if rnd["read_amplification"] else "-"
        lines.append(f"{'mmap-random (np.memmap, MADV_RANDOM)':<55} {fmt_s(rnd['epoch_s'], rnd['extrapolated']):>8} "
                     f"{rel:>6} {'':>20} {fmt_bytes(rnd['read_bytes']):>9} {amp:>6}   ({rnd['status']})")
    lines.append("")
    lines.append("on disk: the pack directory's allocated bytes (extents, index, plan copy); blowup: packed cold extents "
                 "÷ feature table (manifest); table rows / pred pages: cold rows left in the feature table and the 4 KiB "
                 "page reads the packer predicts for them (train + val); pack s: `preprocess pack` wall time inside the "
                 "cap (B=inf: the usual pack stage); epoch s: training pass of epoch 0 (mean over epochs), median over "
                 "rounds; read/assem/comp: stage busy seconds; read B: OS-counted bytes (/proc/self/io) of the training "
                 "pass; amp: read B ÷ bytes of the cold + table rows needed (logged); table %: input rows served from "
                 "the feature table")
    for lab, pk in rep["packs"].items():
        tr = pk["splits"]["train"]
        eps = max(1, tr.get("epochs") or 1) if "epochs" in tr else max(1, p["epochs"])
        pred = (tr["padded_bytes"] + 4096 * (tr["table_page_reads"] or 0)) / eps
        s = summ.get(lab) or {}
        got = s.get("extent_bytes")
        va = pk["splits"].get("val") or {}
        lines.append(f"B={lab} train pass: extents {fmt_bytes(tr['padded_bytes'] / eps)} + {tr['table_rows'] / eps:,.0f} "
                     f"table rows on {(tr['table_page_reads'] or 0) / eps:,.0f} predicted 4 KiB pages = "
                     f"{fmt_bytes(pred)} predicted; logged extent+table bytes {fmt_bytes(got)}"
                     + (f" ({got / pred:.2f}x the prediction)" if got and pred else "")
                     + (f"; val: extents {fmt_bytes(va.get('padded_bytes'))} + {va.get('table_rows') or 0:,} of "
                        f"{va.get('input_rows') or 0:,} input rows in the table; evaluation {fmt_s(s.get('eval_s'))} s, "
                        f"read {fmt_bytes(s.get('eval_read_bytes'))}" if va else "")
                     + (f"; process wall {fmt_s(s.get('process_wall_s'))} s" if s else ""))
    for lab, s in summ.items():
        lines.append(f"per round {lab}: epoch " + ", ".join(fmt_s(v) for v in s["epoch_s_all"])
                     + (f"; amp {', '.join(f'{v:.3f}' for v in s['read_amplification_all'] if v)}"
                        if s.get("read_amplification_all") else "")
                     + (f"; extent+table bytes {fmt_bytes(s['extent_bytes'])} for {fmt_bytes(s['cold_bytes_needed'])} "
                        f"of rows" if s.get("extent_bytes") else "") + f"; {s['status']}")
    lines.append("")
    chk = rep["checks"]
    lines.append("targets: " + "; ".join(f"{k}: {'ok' if v else 'MISSED'}" for k, v in chk.items()))
    if not all(v for k, v in chk.items() if "identical" in k):
        lines.append("!!! THE BOUNDED PACKS DID NOT REPRODUCE THE UNBOUNDED RUN BIT FOR BIT — see runs[].identity !!!")
    lines.append(f"result: {'PASS' if chk and all(chk.values()) else 'FAIL'}")
    lines.append("")
    lines.append("command: " + rep["commands"]["bench"])
    for k, c in rep["commands"]["packs"].items():
        lines.append(f"  pack B={k}: {c}")
    for who, cmd in rep["commands"]["contestants"].items():
        lines.append(f"  {who}: {cmd}")
    return "\n".join(lines)


def finish_bounded(a, rep: dict) -> int:
    rep["summary"] = bounded_summary(rep["runs"])
    rep["checks"] = bounded_checks(a, rep)
    write_outputs(render_bounded(rep), rep, a.txt, a.json)
    return 0 if rep["checks"] and all(rep["checks"].values()) else 1


def main_bounded(a, parent, wanted: list[str], skipped: dict) -> int:
    """``--blowups``: the unbounded pack and one pack per finite bound of the same plan, then rounds of diskgraph on
    each pack and the memmap baseline(s), every one inside the cap from a cold page cache."""
    bounds = parse_blowups(a.blowups)
    baselines = [w for w in wanted if w not in ("diskgraph", "diskgraph-unchecked")]
    if a.task != "node" or a.sweep_caps or a.merge:
        print("head_to_head: --blowups runs node classification at one cap; drop --task link, --sweep-caps, --merge",
              file=sys.stderr)
        return 2
    cache = a.cache_dir.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    tag = f"n{a.nodes}-e{a.edges}-f{a.feature_dim}-c{a.classes}-s{a.seed}"
    raw, ds = cache / f"raw-{tag}", cache / f"syn-{tag}"
    feature_bytes = a.nodes * a.feature_dim * 4
    need = (0 if a.reuse_preprocess else 2 * feature_bytes + 40 * a.edges) + int(
        feature_bytes * (10 + sum(b for b in bounds if b is not None)))
    if shutil.disk_usage(cache).free - need < a.min_free:
        print(f"head_to_head: {cache} has {fmt_bytes(shutil.disk_usage(cache).free)} free; the run needs about "
              f"{fmt_bytes(need)} (dataset, unbounded pack up to 10x the table, the bounded packs) and would leave "
              f"less than --min-free", file=sys.stderr)
        return 2
    machine = start_machine(a, cache, parent)
    t0 = time.time()
    gen = pre = None
    main_manifest = ds / "packs" / a.name / "manifest.json"
    if a.reuse_preprocess and main_manifest.exists() and read_json(main_manifest).get("max_blowup", 0) is None:
        print(f"reusing {ds} with plan and unbounded pack {a.name!r} (preprocessing not timed)", flush=True)
    else:
        gen = ensure_raw(a, raw)
        pre = preprocess(a, raw, ds)
    pack_stages = {"inf": (pre or {}).get("pack")}
    for b in bounds[1:]:
        pack_stages[blowup_label(b)] = bounded_pack(a, ds, b)
    ins = subprocess.run([*map(str, diskgraph_cmd()), "inspect", str(ds), "--json"], capture_output=True, text=True)
    inspected = json.loads(ins.stdout).get("packs", {}) if ins.returncode == 0 else {}
    if ins.returncode:
        print(f"head_to_head: diskgraph inspect --json failed (exit {ins.returncode}); pack facts from the manifests "
              f"only\n{tail(ins.stderr)}", file=sys.stderr)
    packs = {blowup_label(b): bounded_pack_facts(ds, bounded_name(a, b), inspected) for b in bounds}
    for lab, pk in packs.items():
        print(f"pack B={lab}: {fmt_bytes(pk['disk_bytes'])} on disk, packed {fmt_bytes(pk['packed_bytes'])}, blow-up "
              f"{pk['blowup']:.3f}x, {pk['table_rows']:,} table rows, {pk['table_page_reads']:,} predicted table page "
              f"reads", flush=True)
    dm = read_json(ds / "manifest.json")
    from diskgraph.store.dataset import open_dataset

    dso = open_dataset(ds)
    row_bytes = dso.features.row_bytes
    work = cache / "runs-bounded"
    runs, commands = [], {}
    cap = a.memory_cap
    for rnd in range(a.repeat):
        order = [("diskgraph", b) for b in bounds] + [(w, None) for w in baselines if rnd == 0 or not a.baseline_once]
        k = rnd % len(order)
        for who, b in order[k:] + order[:k]:
            rec = bounded_run(a, ds, who, b, UNCAPPED if who == "memory" else cap, rnd, work, row_bytes)
            commands.setdefault(who if who != "diskgraph" else f"diskgraph B={blowup_label(b)}", rec["command"])
            runs.append(rec)
    machine["loadavg_end"] = os.getloadavg()
    rep = {
        "bench": BOUNDED,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "params": {"nodes": a.nodes, "edges": a.edges, "feature_dim": a.feature_dim, "classes": a.classes,
                   "seed": a.seed, "split": a.split, "fanouts": a.fanouts, "batch_size": a.batch_size,
                   "hidden": a.hidden, "epochs": a.epochs, "train_seed": a.train_seed, "host_cache": a.host_cache,
                   "queue_depth": a.queue_depth, "memory_cap": a.memory_cap, "repeat": a.repeat,
                   "time_limit": a.time_limit, "memory_budget": a.memory_budget, "blowups": list(packs),
                   "baseline_once": a.baseline_once, "ratio_target": a.ratio_target,
                   "speedup_target": a.speedup_target},
        "dataset": {"path": str(ds), "num_nodes": dm.get("num_nodes"), "num_edges": dm.get("num_edges"),
                    "feature_bytes": dso.features.nbytes, "train_nodes": len(dso.splits["train"]),
                    "val_nodes": len(dso.splits["val"]) if "val" in dso.splits else 0},
        "machine": machine,
        "git": git_state(),
        "commands": {"bench": shlex.join([sys.executable, *sys.argv]), "contestants": commands,
                     "preprocess": {k: v["command"] for k, v in (pre or {}).items()},
                     "packs": {k: v["command"] for k, v in pack_stages.items() if v}},
        "generate": gen,
        "preprocess": pre,
        "pack_stages": pack_stages,
        "packs": packs,
        "skipped": skipped,
        "runs": runs,
        "total_seconds": time.time() - t0,
    }
    if not a.keep_pack:
        for b in bounds:
            shutil.rmtree(ds / "packs" / bounded_name(a, b), ignore_errors=True)
        shutil.rmtree(ds / "plans" / a.name, ignore_errors=True)
    return finish_bounded(a, rep)


# -- main ------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="head_to_head.py",
        description="diskgraph vs the same model trained in RAM, and vs np.memmap features (default readahead and "
                    "MADV_RANDOM), each in its own cgroup-v1 memory child with the same cap, from a cold page cache: "
                    "epoch time, bytes read, memory, validation accuracy. Needs root and cgroup v1.",
        epilog="Example (the issue's graph, 3 rounds, the cap sweep for the plot):\n"
               "  python tools/bench/head_to_head.py --repeat 3 --sweep-caps 768M,1536M,2G,3G \\\n"
               "      --json tools/bench/results/head_to_head-cpu2.json --txt tools/bench/results/head_to_head-cpu2.txt \\\n"
               "      --plot docs/img/head_to_head-cpu2.png",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("graph (default: 2M nodes, 31M edges drawn, 128-d float32 = 977 MiB of features)")
    g.add_argument("--nodes", type=int, default=2_000_000)
    g.add_argument("--edges", type=int, default=31_000_000, help="edges drawn (≥ 30M are kept after dedup)")
    g.add_argument("--feature-dim", type=int, default=128)
    g.add_argument("--classes", type=int, default=16)
    g.add_argument("--seed", type=int, default=0, help="generator seed")
    g.add_argument("--split", default="random:0.1,0.1,0.8", help="train/val/test fractions (default: 10/10/80 %%)")
    t = p.add_argument_group("model, sampler, pack")
    t.add_argument("--fanouts", default="15,10")
    t.add_argument("--batch-size", type=int, default=1024)
    t.add_argument("--hidden", type=int, default=256)
    t.add_argument("--epochs", type=int, default=1)
    t.add_argument("--train-seed", type=int, default=0, help="training seed = the plan's seed, so online contestants "
                                                           "draw the plan's minibatches (default 0)")
    t.add_argument("--host-cache", type=parse_size, default=0, help="diskgraph's host tier (default: 0)")
    t.add_argument("--queue-depth", type=int, default=2)
    t.add_argument("--name", default="h2h", help="plan and pack name (default: h2h)")
    lk = p.add_argument_group("link prediction (--task link, issue 16)")
    lk.add_argument("--task", choices=("node", "link"), default="node",
                    help="node classification (default) or link prediction: import with --edge-split --undirected, "
                         "sample --task link, train --task link --decoder")
    lk.add_argument("--edge-split", default="random:0.0025,0.0001,0.00001",
                    help="--edge-split of the import (train, val, test supervision fractions of the unordered pairs; "
                         "they may sum to less than 1: the rest stay in the graph only) "
                         "(default: random:0.0025,0.0001,0.00001)")
    lk.add_argument("--negatives", type=int, default=1, help="negatives per positive training edge (default: 1)")
    lk.add_argument("--eval-negatives", type=int, default=20,
                    help="filtered negatives per val edge (default: 20)")
    lk.add_argument("--eval-batch-size", type=int, default=64,
                    help="positive val edges per evaluation minibatch (default: 64: each has up to "
                         "B x (2 + eval negatives) seeds)")
    lk.add_argument("--decoder", default="dot", choices=("dot", "distmult", "mlp"), help="(default: dot)")
    r = p.add_argument_group("runs")
    r.add_argument("--contestants", default=None,
                   help="comma-separated subset of " + ", ".join(CONTESTANTS) + " (default: diskgraph,memory,mmap,"
                        "mmap-random,pyg; with --task link: diskgraph,memory)")
    r.add_argument("--memory-cap", type=parse_size, default=1 * GiB, help="the cap (default: 1G)")
    r.add_argument("--sweep-caps", default="", help="more caps for the capped contestants, one round each (the plot)")
    r.add_argument("--repeat", type=int, default=1, help="rounds at the main cap (medians)")
    r.add_argument("--time-limit", type=float, default=300, help="seconds before a training process is stopped "
                                                                 "(default: 300)")
    r.add_argument("--eval-all", action="store_true", help="let the memmap contestants evaluate too (default: they are "
                                                           "stopped once their training epochs are done)")
    r.add_argument("--stage-timeout", type=float, default=3600, help="limit of a preprocessing stage (s)")
    r.add_argument("--memory-budget", type=parse_size, default=256 * MiB, help="--memory-budget of import and pack")
    r.add_argument("--reuse-preprocess", action="store_true", help="keep an existing dataset, plan and pack")
    r.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                   help="before anything runs, wait up to SECONDS (polling every 30 s) until no other `diskgraph "
                        "train|preprocess` process runs and the 1-minute load average is below 1.0; the report records "
                        "whether it got quiet (default: 0, do not wait)")
    r.add_argument("--min-free", type=parse_size, default=10 * GiB, help="refuse when the disk would keep less free")
    k = p.add_argument_group("targets")
    k.add_argument("--ratio-target", type=float, default=1.3, help="diskgraph epoch ÷ in-RAM epoch (default: 1.3)")
    k.add_argument("--target-epoch-s", type=float, default=None,
                   help="diskgraph epoch seconds (default: 15.5 for --task node; none for --task link)")
    k.add_argument("--speedup-target", type=float, default=5.0, help="mmap-random epoch ÷ diskgraph epoch (default: 5)")
    k.add_argument("--acc-points", type=float, default=0.5, help="val accuracy difference to in RAM, points")
    k.add_argument("--mrr-points", type=float, default=1.0,
                   help="--task link: val MRR difference to in RAM, points (default: 1.0)")
    bb = p.add_argument_group("bounded packs (--max-blowup, issue 17)")
    bb.add_argument("--blowups", default="", metavar="LIST",
                    help="e.g. inf,4,2,1: after the usual import/sample/pack (packed with --max-blowup inf), pack the "
                         "same plan once per finite B (`preprocess pack --name NAME-bB --max-blowup B`, timed inside the "
                         "cap), then rounds of diskgraph on every pack plus the other --contestants (default then: "
                         "diskgraph,mmap-random); reports per B the pack's disk bytes and blow-up, epoch, stages, read "
                         "amplification, table share, val accuracy, checks that every B trains bit-identically, and the "
                         "targets epoch(B=2) <= --ratio-target x epoch(inf), epoch(mmap-random) >= --speedup-target x "
                         "epoch(B=1)")
    bb.add_argument("--baseline-once", action="store_true",
                    help="with --blowups: run the baseline contestants (mmap-random) in round 0 only")
    o = p.add_argument_group("files")
    o.add_argument("--cache-dir", type=Path, default=REPO / "bench-data" / "h2h", help="data directory (gitignored)")
    o.add_argument("--regenerate", action="store_true")
    o.add_argument("--render", type=Path, metavar="REPORT",
                   help="run nothing: re-make the table (--txt), the report (--json) and the plot of an earlier --json "
                        "report with this version's read figures and targets")
    o.add_argument("--merge", type=Path, metavar="REPORT",
                   help="add the runs of an earlier --json report of the same setup (e.g. a cap sweep run later); with "
                        "--repeat, the contestants run now replace the report's runs of them at the main cap")
    o.add_argument("--keep-runs", action="store_true", help="keep the run directories (checkpoints)")
    o.add_argument("--keep-pack", action="store_true", help="keep the plan and pack afterwards")
    o.add_argument("--json", type=Path, metavar="FILE")
    o.add_argument("--txt", type=Path, metavar="FILE")
    o.add_argument("--plot", type=Path, metavar="PNG", help="epoch time vs memory cap (matplotlib)")
    return p


def other_diskgraph_jobs() -> list[str]:
    """Command lines of `diskgraph train|preprocess` processes that are not ours (not our descendants)."""
    ours = {os.getpid()}
    procs = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, IndexError, ValueError):
            continue
        procs[int(d.name)] = (ppid, cmd)
    out = []
    for pid, (ppid, cmd) in procs.items():
        words = cmd.split()
        is_job = any(w.endswith("diskgraph") or w == "diskgraph" for w in words) and \
            any(w in ("train", "preprocess") for w in words)
        if not is_job:
            continue
        anc, seen = ppid, 0
        while anc and anc not in ours and anc in procs and seen < 64:
            anc, seen = procs[anc][0], seen + 1
        if anc not in ours:
            out.append(f"{pid} {cmd[:160]}")
    return out


def wait_quiet(limit_s: float, load_max: float = 1.0, poll_s: float = 30.0) -> dict:
    """Poll until no other diskgraph train/preprocess runs and the load average is below ``load_max``."""
    t0 = time.time()
    polls = 0
    while True:
        others, load = other_diskgraph_jobs(), os.getloadavg()[0]
        polls += 1
        quiet = not others and load < load_max
        if quiet or time.time() - t0 >= limit_s:
            rec = {"quiet": quiet, "waited_s": round(time.time() - t0, 1), "polls": polls, "loadavg_1m": load,
                   "other_jobs": others}
            print(f"machine {'quiet' if quiet else 'NOT quiet'} after {rec['waited_s']:.0f} s (load {load:.2f}, "
                  f"{len(others)} other diskgraph jobs)", flush=True)
            return rec
        print(f"waiting for a quiet machine: load {load:.2f}, {len(others)} other diskgraph jobs", flush=True)
        time.sleep(poll_s)


def start_machine(a, cache: Path, parent) -> dict:
    """Wait for a quiet machine (``--wait-quiet``) and record its facts, the cgroup parent and the load at the start."""
    quiet = wait_quiet(a.wait_quiet) if a.wait_quiet > 0 else None
    machine = cgroup.machine_facts([cache])
    if quiet is not None:
        machine["wait_quiet"] = quiet
    machine["cgroup_parent"] = str(parent)
    machine["loadavg_start"] = os.getloadavg()
    return machine


def task_defaults(a) -> None:
    """Fill the options whose default depends on --task (the node defaults are those of issue 5)."""
    if a.contestants is None and getattr(a, "blowups", ""):
        a.contestants = "diskgraph,mmap-random"
    if a.contestants is None:
        a.contestants = "diskgraph,memory" if a.task == "link" else "diskgraph,memory,mmap,mmap-random,pyg"
    if a.target_epoch_s is None and a.task == "node":
        a.target_epoch_s = 15.5


def finish_report(a, rep: dict) -> int:
    """Summaries, targets, table, JSON and plot of a report whose runs are complete."""
    for r in rep["runs"]:
        read_figures(r)
    rep["summary"] = summarize(rep["runs"])
    rep["checks"] = (link_checks(a, rep["summary"], rep["dataset"]["feature_bytes"], rep["runs"])
                     if rep["params"].get("task") == "link" else checks(a, rep["summary"]))
    write_outputs(render(rep), rep, a.txt, a.json)
    if a.plot:
        plot(rep, a.plot)
    return 0 if rep["checks"] and all(rep["checks"].values()) else 1


def render_report(a) -> int:
    rep = read_json(a.render)
    if rep.get("bench") == BOUNDED:
        a.ratio_target = rep["params"].get("ratio_target", a.ratio_target)
        a.speedup_target = rep["params"].get("speedup_target", a.speedup_target)
        return finish_bounded(a, rep)
    if rep.get("bench") != "head_to_head":
        print(f"head_to_head: {a.render} is not a head_to_head report", file=sys.stderr)
        return 2
    a.memory_cap = rep["params"]["memory_cap"]
    a.task = rep["params"].get("task", "node")
    task_defaults(a)
    return finish_report(a, rep)


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        parent = cgroup.check_memory_cgroup()
    except cgroup.CgroupUnavailable as e:
        print(f"head_to_head: {e}", file=sys.stderr)
        return 2
    if a.render:
        return render_report(a)
    task_defaults(a)
    wanted = [c.strip() for c in a.contestants.split(",") if c.strip()]
    bad = [c for c in wanted if c not in CONTESTANTS]
    if bad:
        print(f"head_to_head: unknown contestant {bad[0]!r}; pick from {', '.join(CONTESTANTS)}", file=sys.stderr)
        return 2
    skipped = {}
    if "pyg" in wanted:
        why = pyg_available()
        if why:
            skipped["pyg"] = why
            print(f"PyG NeighborLoader: skipped — {why}", flush=True)
        else:
            print("head_to_head: PyG is importable, but this benchmark has no PyG contestant yet; drop pyg from "
                  "--contestants", file=sys.stderr)
            return 2
        wanted.remove("pyg")
    if a.blowups:
        return main_bounded(a, parent, wanted, skipped)
    cache = a.cache_dir.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    tag = f"n{a.nodes}-e{a.edges}-f{a.feature_dim}-c{a.classes}-s{a.seed}"
    raw, ds = cache / f"raw-{tag}", cache / f"syn-{tag}"
    if a.task == "link":  # its own dataset: the edge split changes the stored topology
        ds = cache / f"link-{tag}-{a.edge_split.replace(':', '-').replace(',', '_')}"
    feature_bytes = a.nodes * a.feature_dim * 4
    need = 0 if a.reuse_preprocess else (2 * feature_bytes + 40 * a.edges)
    if shutil.disk_usage(cache).free - need < a.min_free:
        print(f"head_to_head: {cache} has {fmt_bytes(shutil.disk_usage(cache).free)} free; the run needs about "
              f"{fmt_bytes(need)} plus the pack and would leave less than --min-free", file=sys.stderr)
        return 2
    machine = start_machine(a, cache, parent)
    t0 = time.time()

    gen = pre = None
    if a.reuse_preprocess and (ds / "packs" / a.name / "manifest.json").exists():
        print(f"reusing {ds} with plan and pack {a.name!r} (preprocessing not timed)", flush=True)
    else:
        gen = ensure_raw(a, raw)
        pre = preprocess(a, raw, ds)
    dm = read_json(ds / "manifest.json")
    from diskgraph.store.dataset import open_dataset

    dso = open_dataset(ds)
    row_bytes = dso.features.row_bytes
    pack = pack_facts(ds, a.name)

    work = cache / "runs"
    sweep = [parse_size(c) for c in a.sweep_caps.split(",") if c.strip()]
    runs, commands, merged = [], {}, None
    first_round = 0
    if a.merge:
        merged = read_json(a.merge)
        same = ("nodes", "edges", "feature_dim", "classes", "seed", "split", "fanouts", "batch_size", "hidden", "epochs",
                "train_seed", "host_cache", "queue_depth", "memory_cap")
        if a.task == "link":
            same += ("task", "edge_split", "negatives", "eval_negatives", "eval_batch_size", "decoder")
        diff = [k for k in same if merged.get("params", {}).get(k, "node" if k == "task" else None) != getattr(a, k)]
        if merged.get("bench") != "head_to_head" or diff:
            print(f"head_to_head: --merge {a.merge} is not a head_to_head report of the same setup "
                  f"({', '.join(diff) or 'not a report'} differ)", file=sys.stderr)
            return 2
        runs = list(merged["runs"])
        commands = dict(merged["commands"]["contestants"])
        first_round = 1 + max(r["round"] for r in runs)
        if a.repeat:  # this invocation's contestants at the main cap replace the report's runs of them there
            redo = {(w, UNCAPPED if w == "memory" else a.memory_cap) for w in wanted}
            runs = [r for r in runs if (r["contestant"], r["cap_bytes"]) not in redo]
        pre = pre or merged.get("preprocess")
        print(f"merging {len(runs)} runs from {a.merge}", flush=True)
    plan_rounds = ([(first_round + rnd, a.memory_cap) for rnd in range(a.repeat)]
                   + [(first_round + a.repeat + i, c) for i, c in enumerate(sweep)])
    for rnd, cap in plan_rounds:
        order = [w for w in wanted if cap == a.memory_cap or w in CAPPED]
        k = rnd % len(order)
        for who in order[k:] + order[:k]:
            run_cap = UNCAPPED if who == "memory" else cap
            rec = run_contestant(a, ds, who, run_cap, rnd, work, row_bytes)
            commands.setdefault(who, rec["command"])
            runs.append(rec)
    machine["loadavg_end"] = os.getloadavg()
    rep = {
        "bench": "head_to_head",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "params": {"nodes": a.nodes, "edges": a.edges, "feature_dim": a.feature_dim, "classes": a.classes,
                   "seed": a.seed, "split": a.split, "fanouts": a.fanouts, "batch_size": a.batch_size,
                   "hidden": a.hidden, "epochs": a.epochs, "train_seed": a.train_seed, "host_cache": a.host_cache,
                   "queue_depth": a.queue_depth, "memory_cap": a.memory_cap,
                   "sweep_caps": sorted(set(sweep) | set((merged or {}).get("params", {}).get("sweep_caps", []))),
                   "repeat": a.repeat + ((merged or {}).get("params", {}).get("repeat", 0)),
                   "time_limit": a.time_limit, "memory_budget": a.memory_budget,
                   **({"task": "link", "edge_split": a.edge_split, "negatives": a.negatives,
                       "eval_negatives": a.eval_negatives, "eval_batch_size": a.eval_batch_size, "decoder": a.decoder}
                      if a.task == "link" else {})},
        "dataset": {"path": str(ds), "num_nodes": dm.get("num_nodes"), "num_edges": dm.get("num_edges"),
                    "feature_bytes": dso.features.nbytes,
                    **({"edge_split": dm.get("edge_split")} if a.task == "link" else
                       {"train_nodes": len(dso.splits["train"]),
                        "val_nodes": len(dso.splits["val"]) if "val" in dso.splits else 0})},
        "machine": machine,
        "git": git_state(),
        "commands": {"bench": shlex.join([sys.executable, *sys.argv]), "contestants": commands,
                     "preprocess": {k: v["command"] for k, v in (pre or {}).items()}},
        "generate": gen,
        "preprocess": pre,
        "pack": pack,
        "skipped": skipped,
        "runs": runs,
        "total_seconds": time.time() - t0,
    }
    if not a.keep_pack:
        shutil.rmtree(ds / "packs" / a.name, ignore_errors=True)
        shutil.rmtree(ds / "plans" / a.name, ignore_errors=True)
    return finish_report(a, rep)


if __name__ == "__main__":
    sys.exit(main())
