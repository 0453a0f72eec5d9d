"""Out-of-core inference (issue 13): ``diskgraph predict`` / ``embed`` against the same computation in RAM and through
``np.memmap``, and for a graph whose features are ≥ 4 × the memory cap.

One command, one table. What it does, in order:

0. checks that cgroup-v1 memory children can be made (root, /sys/fs/cgroup/memory), else says why in one sentence
   and exits 2; checks that this checkout's ``diskgraph predict`` exists; refuses when the disk would keep less than
   ``--min-free``;
1. **inputs** per scenario: ``diskgraph generate --format raw`` (``head_to_head.ensure_raw``) into ``CACHE/raw-…``,
   then ``preprocess import`` (``--split … --dedup --drop-self-loops``, as ``head_to_head`` imports) into
   ``CACHE/syn-…``; both reused when their parameters match (``--regenerate`` makes them again);
2. **a trained run** per scenario: ``diskgraph train DATASET --reference --model sage --hidden H --fanouts F
   --batch-size 1024 --epochs 1 --device cpu`` (in-memory reference training, no pack needed; not capped, not what
   is measured), cached in ``CACHE/runs/…`` and reused while the dataset's checksum and the training flags match
   (``--retrain``);
3. **contestants**, each a separate ``diskgraph`` process in its own cgroup child, the page cache of the dataset and
   the run dropped first (``cgroup.evict``), output and scratch directories removed before and after:

   - scenario ``speed`` (the 2M-node / 30M-edge / 128-d graph of ``head_to_head.py``, 2-layer SAGE, hidden 256):
     ``diskgraph predict DATASET --run RUN --out OUT --nodes all --mode exact --storage S``

     - ``disk`` (the product: tables streamed in sequential slices) under ``--memory-cap`` (1 GiB) with
       ``--memory-budget`` (512M);
     - ``ram`` (the same layer-wise inference with every table in RAM), no cap, no budget;
     - ``mmap`` (the same computation, features gathered through memory maps), under the same cap and budget as
       ``disk``, stopped at ``--time-limit``;

     rounds interleave ``disk`` and ``ram`` (``--repeat``, order rotated per round; medians); ``mmap`` runs
     ``--mmap-repeat`` times (default once);
   - scenario ``oocore`` (a graph whose features alone are ≥ 4 × ``--oocore-cap``): ``predict`` and ``embed --layer
     1`` for all nodes, ``--storage disk``, inside the cap.

   Every contestant's stderr is a pseudo-terminal, so ``diskgraph`` draws its per-layer progress bars; they are
   read with their arrival times. A process stopped at the time limit is reported with the layer it was in and its
   progress there; its time is the limit, a **lower bound** (the targets use only that), with an estimate beside
   it when the current layer has progressed: where that layer alone would end at its rate so far;
4. checks the outputs (``zarr.open_group(OUT)``: ``node_ids`` of every node, the columns and their shapes), compares
   ``disk``'s logits with ``ram``'s (max difference, prediction agreement) and computes the test accuracy of the
   exported predictions against the run's own sampled-evaluation ``test_acc``;
5. prints one table, writes the JSON (``--json``: every run with its summary line, per-layer figures, cgroup peaks
   and timelines, the commands, the machine) and the table (``--txt``).

Times: **wall** = the process from exec to exit as the harness sees it (start-up, opening, every layer, writing
the output) — the targets use it; **infer** = the summary line's ``seconds`` (from opening the dataset to the last
row emitted). Read bytes and amplification are the summary line's (``/proc/self/io`` over the inference), the
process's whole ``read_bytes`` is in the JSON.

Targets (exit 1 when one is missed). speed, at ``--memory-cap``: ``disk`` finishes inside the cap with no OOM kill;
``disk`` wall ≤ ``--ratio-target`` (1.5) × ``ram`` wall; ``mmap`` wall (or its lower bound when stopped) ≥
``--speedup-target`` (5) × ``disk`` wall. oocore: features ≥ 4 × the cap (else exit 2 unless ``--allow-small``);
``predict`` and ``embed`` finish inside the cap with no OOM kill and a valid output; read amplification ≤
``--amp-target`` (1.3) each.

The diskgraph command: ``python -m diskgraph`` when this checkout's package is importable as installed, else this
file's ``--as-diskgraph`` mode, which maps ``diskgraph``, ``diskgraph.store`` … to this checkout's directories (as
the pyproject's ``package-dir`` does) and runs the CLI — e.g. when the editable install points at another checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

PACKAGE_DIRS = {"diskgraph": "diskgraph", "diskgraph.store": "store", "diskgraph.sampler": "sampler",
                "diskgraph.pipeline": "pipeline", "diskgraph.native": "native"}
"""pyproject's ``[tool.setuptools.package-dir]`` (sub-packages of these follow their directories)."""


def _map_packages() -> None:
    """Import ``diskgraph`` and its mapped sub-packages from this checkout, whatever is installed."""
    import importlib.abc
    import importlib.util

    class _Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            sub = PACKAGE_DIRS.get(name)
            if sub is None:
                return None
            d = REPO / sub
            return importlib.util.spec_from_file_location(name, d / "__init__.py", submodule_search_locations=[str(d)])

    sys.meta_path.insert(0, _Finder())


if __name__ == "__main__" and sys.argv[1:2] == ["--as-diskgraph"]:
    _map_packages()
    from diskgraph.cli import main as _cli_main

    sys.argv = ["diskgraph", *sys.argv[2:]]
    sys.exit(_cli_main(sys.argv[1:]))

sys.path.insert(0, str(HERE))

import cgroup  # noqa: E402  (tools/bench is not a package)
import head_to_head  # noqa: E402
from common import git_state, read_json, tail, write_outputs  # noqa: E402
from head_to_head import capped_run, ensure_raw  # noqa: E402
from import_oocore import fmt_bytes, parse_size  # noqa: E402
from train_oocore import run_summary, size_arg  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
UNCAPPED = head_to_head.UNCAPPED

CONTESTANTS = {
    "disk": "disk: out of core, sequential slices",
    "ram": "ram: every table in RAM, no cap",
    "mmap": "mmap: features through np.memmap",
}

BAR = re.compile(r"^(?P<desc>layer \d+(?: inputs)?): \[[#-]*\]\s+(?P<pct>[\d.]+)%")


# -- the diskgraph command -------------------------------------------------------------------------

def pick_diskgraph() -> tuple[list[str], str]:
    """(command prefix, how it was chosen) that runs this checkout's ``diskgraph``."""
    probe = ("import diskgraph, diskgraph.store, pathlib, sys; "
             f"sys.exit(0 if pathlib.Path(diskgraph.__file__).resolve().is_relative_to({str(REPO)!r}) else 3)")
    rc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True).returncode
    if rc == 0:
        return [sys.executable, "-m", "diskgraph"], "python -m diskgraph (this checkout is importable)"
    return ([sys.executable, str(Path(__file__).resolve()), "--as-diskgraph"],
            "inference.py --as-diskgraph (the installed diskgraph is not this checkout's: packages mapped to it)")


DG: list[str] = []


def dg() -> list[str]:
    return list(DG)


# -- inputs, dataset, trained run ------------------------------------------------------------------

class Scenario:
    """One graph + model: where its files live and the parameters that make them."""

    def __init__(self, key: str, cache: Path, nodes: int, edges: int, feature_dim: int, classes: int, seed: int,
                 split: str, hidden: int, fanouts: str, batch_size: int, epochs: int, import_budget: int):
        self.key, self.nodes, self.edges, self.feature_dim, self.classes, self.seed = key, nodes, edges, feature_dim, \
            classes, seed
        self.split, self.hidden, self.fanouts, self.batch_size, self.epochs = split, hidden, fanouts, batch_size, epochs
        self.import_budget = import_budget
        tag = f"n{nodes}-e{edges}-f{feature_dim}-c{classes}-s{seed}"
        self.raw, self.ds = cache / f"raw-{tag}", cache / f"syn-{tag}"
        self.run = cache / "runs" / f"{tag}-sage-h{hidden}-f{fanouts.replace(',', '_')}-b{batch_size}-e{epochs}"
        self.work = cache / "work" / key
        self.feature_bytes = nodes * feature_dim * 4

    def gen_args(self, regenerate: bool, stage_timeout: float) -> argparse.Namespace:
        return argparse.Namespace(nodes=self.nodes, edges=self.edges, feature_dim=self.feature_dim,
                                  classes=self.classes, seed=self.seed, regenerate=regenerate,
                                  stage_timeout=stage_timeout)


def ensure_dataset(sc: Scenario, regenerate: bool, stage_timeout: float) -> dict:
    """Raw inputs (head_to_head.ensure_raw) and the imported dataset, each reused when its parameters match."""
    out = {"generate": ensure_raw(sc.gen_args(regenerate, stage_timeout), sc.raw)}
    marker = sc.ds.parent / f"{sc.ds.name}.bench.json"
    cmd = [*dg(), "preprocess", "import", "--edges", sc.raw / "edges.npy", "--features", sc.raw / "features.npy",
           "--labels", sc.raw / "labels.npy", "--split", sc.split, "--dedup", "--drop-self-loops", "--memory-budget",
           size_arg(sc.import_budget), "--out", sc.ds, "--overwrite", "-q"]
    want = {"raw": read_json(sc.raw / "bench-params.json").get("params"), "split": sc.split}
    m = read_json(sc.ds / "manifest.json")
    if not regenerate and out["generate"] is None and m.get("checksum") and read_json(marker).get("params") == want \
            and read_json(marker).get("checksum") == m["checksum"]:
        print(f"reusing dataset {sc.ds}", flush=True)
        out["import"] = None
        return out
    print(f"importing: {shlex.join(map(str, cmd))}", flush=True)
    r = capped_run(cmd, UNCAPPED, f"inf-import-{sc.key}", stage_timeout)
    if not r.ok:
        raise SystemExit(f"inference: importing {sc.raw} failed (exit {r.returncode})\n{tail(r.stderr)}")
    m = read_json(sc.ds / "manifest.json")
    marker.write_text(json.dumps({"params": want, "checksum": m.get("checksum"), "command": shlex.join(map(str, cmd))},
                                 indent=2))
    print(f"  {r.wall_s:.1f} s", flush=True)
    out["import"] = {**run_summary(r), "command": shlex.join(map(str, cmd))}
    return out


def ensure_run(sc: Scenario, retrain: bool, stage_timeout: float) -> dict:
    """The trained run (reference training, 1 epoch by default), reused while dataset and flags match."""
    args = ["--reference", "--model", "sage", "--hidden", sc.hidden, "--fanouts", sc.fanouts, "--batch-size",
            sc.batch_size, "--epochs", sc.epochs, "--seed", 0, "--device", "cpu"]
    marker = sc.run.parent / f"{sc.run.name}.bench.json"
    log = sc.run.parent / f"{sc.run.name}.train.jsonl"
    want = {"dataset_checksum": read_json(sc.ds / "manifest.json").get("checksum"), "args": [str(x) for x in args]}
    mk = read_json(marker)
    if not retrain and (sc.run / "best_model.pt").exists() and {k: mk.get(k) for k in want} == want:
        print(f"reusing trained run {sc.run}", flush=True)
        return {"reused": True, "command": mk.get("command"), "summary": mk.get("summary")}
    cmd = [*dg(), "train", sc.ds, *args, "--run-dir", sc.run, "--log-json", log, "--overwrite", "-q"]
    sc.run.parent.mkdir(parents=True, exist_ok=True)
    log.unlink(missing_ok=True)
    print(f"training (not measured, no cap): {shlex.join(map(str, cmd))}", flush=True)
    r = capped_run(cmd, UNCAPPED, f"inf-train-{sc.key}", stage_timeout)
    if not r.ok:
        raise SystemExit(f"inference: training on {sc.ds} failed (exit {r.returncode})\n{tail(r.stderr)}")
    summary = next((json.loads(x) for x in log.read_text().splitlines() if '"summary"' in x), None)
    marker.write_text(json.dumps({**want, "command": shlex.join(map(str, cmd)), "summary": summary}, indent=2))
    print(f"  {r.wall_s:.1f} s, test_acc {summary and summary.get('test_acc')}", flush=True)
    return {"reused": False, "command": shlex.join(map(str, cmd)), "summary": summary, "run": run_summary(r)}


def dataset_facts(sc: Scenario) -> dict:
    m = read_json(sc.ds / "manifest.json")
    f = m.get("features", {})
    return {"path": str(sc.ds), "num_nodes": m.get("num_nodes"), "num_edges": m.get("num_edges"),
            "feature_dim": f.get("dim"), "feature_bytes": f.get("bytes"), "num_classes": m.get("num_classes"),
            "splits": m.get("splits"), "checksum": m.get("checksum"), "run": str(sc.run),
            "model": {"name": "sage", "hidden": sc.hidden, "layers": len(sc.fanouts.split(",")),
                      "trained_with": {"fanouts": sc.fanouts, "batch_size": sc.batch_size, "epochs": sc.epochs,
                                       "mode": "reference"}}}


# -- one contestant --------------------------------------------------------------------------------

def run_on_pty(cmd: list, cap: int, name: str, timeout: float) -> tuple[cgroup.RunResult, list]:
    """``run_in_cgroup`` with stdout and stderr on a pseudo-terminal (so progress bars are drawn); returns the result
    and the output as ``[(seconds since start, line), …]`` (bar redraws split at ``\\r``)."""
    master, slave = os.openpty()
    chunks: list[tuple[float, bytes]] = []
    t0 = time.perf_counter()

    def reader() -> None:
        while True:
            try:
                data = os.read(master, 1 << 16)
            except OSError:  # EIO: every writer closed
                break
            if not data:
                break
            chunks.append((time.perf_counter() - t0, data))

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    try:
        r = cgroup.run_in_cgroup([str(c) for c in cmd], cap, name=f"inf-{name}-{os.getpid()}", timeout=timeout,
                                 stdout=slave, stderr=slave)
    finally:
        os.close(slave)
    th.join(10)
    os.close(master)
    lines, part, part_t = [], "", 0.0
    for t, data in chunks:
        for piece in re.split(r"(\r\n|\r|\n)", data.decode("utf-8", "replace")):
            if piece in ("\r\n", "\r", "\n"):
                if part.strip():
                    lines.append((round(part_t, 3), part.strip()))
                part = ""
            else:
                if not part:
                    part_t = t
                part += piece
    if part.strip():
        lines.append((round(part_t, 3), part.strip()))
    return r, lines


def progress_of(lines: list) -> list[dict]:
    """The stages seen in the bars, in order: desc, start (the previous line's time), last time and percent."""
    stages: list[dict] = []
    prev_t = 0.0
    for t, text in lines:
        m = BAR.match(text)
        if not m:
            prev_t = t
            continue
        desc, pct = m["desc"], float(m["pct"])
        if not stages or stages[-1]["desc"] != desc:
            stages.append({"desc": desc, "start_s": prev_t, "last_s": t, "pct": pct})
        else:
            stages[-1].update(last_s=t, pct=pct)
        prev_t = t
    return stages


def extrapolate(wall: float, stages: list[dict]) -> tuple[float | None, str]:
    """(estimate, description) of a run stopped at ``wall`` s: where its current layer alone would end at its rate
    so far (later layers not counted), or None when that layer has not progressed. Only an estimate: a layer's bar
    moves when a partition's destinations are finished, so its rate is uneven."""
    cur = stages[-1] if stages else None
    if not cur or cur["pct"] >= 100.0:
        where = f"after {cur['desc']} (100 %)" if cur else "before any layer progressed"
        return None, f"stopped at {wall:.0f} s {where}"
    if cur["pct"] <= 0 or cur["last_s"] <= cur["start_s"]:
        return None, f"stopped at {wall:.0f} s in {cur['desc']} at {cur['pct']:.1f} %"
    end = cur["start_s"] + (cur["last_s"] - cur["start_s"]) * 100.0 / cur["pct"]
    return max(wall, end), (f"stopped at {wall:.0f} s in {cur['desc']} at {cur['pct']:.1f} % "
                            f"({cur['last_s'] - cur['start_s']:.0f} s into it); at that rate the layer alone would "
                            f"end at ~{end:.0f} s (an estimate; later layers not counted)")


def out_dirs(out: Path) -> list[Path]:
    """An output and its scratch sibling (``.OUT.diskgraph-inference``)."""
    return [out, out.parent / f".{out.name}.diskgraph-inference"]


def check_output(out: Path, kind: str, n: int, width: int) -> dict:
    """Does OUT open with zarr alone and hold every node with the right columns? Reads node_ids only."""
    try:
        import numpy as np
        import zarr

        g = zarr.open_group(str(out), mode="r")
        col = "logits" if kind == "predict" else "embeddings"
        ids = g["node_ids"][:]
        shapes = {k: list(g[k].shape) for k in ("node_ids", col, "predictions") if k in g}
        ok = (len(ids) == n and bool(np.array_equal(ids, np.arange(n))) and shapes.get(col) == [n, width]
              and (kind != "predict" or shapes.get("predictions") == [n]))
        return {"ok": ok, "shapes": shapes, "dtype": str(g[col].dtype),
                "manifest": (out / "manifest.json").exists()}
    except Exception as e:  # noqa: BLE001  (reported, not raised: the run is judged on it)
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


def run_contestant(a, sc: Scenario, storage: str, kind: str, cap: int, budget: int | None, rnd: int,
                   timeout: float, width: int) -> dict:
    """One ``diskgraph predict|embed`` process under ``cap`` from a cold page cache, measured."""
    label = f"{kind}-{storage}-r{rnd}"
    out = sc.work / label
    log = sc.work / f"{label}.jsonl"
    for d in out_dirs(out):
        shutil.rmtree(d, ignore_errors=True)
    log.unlink(missing_ok=True)
    sc.work.mkdir(parents=True, exist_ok=True)
    cmd = [*dg(), kind, sc.ds, "--run", sc.run, "--out", out, "--nodes", "all", "--mode", "exact", "--storage",
           storage]
    if kind == "embed":
        cmd += ["--layer", a.embed_layer]
    if budget:
        cmd += ["--memory-budget", size_arg(budget)]
    cmd += ["--log-json", log, "--overwrite"]
    cmd = [str(c) for c in cmd]
    files, nbytes = cgroup.evict([sc.ds, sc.run])
    resident = cgroup.resident_bytes([sc.ds, sc.run])
    where = f"under {fmt_bytes(cap)}" if cap < UNCAPPED else "without a cap"
    print(f"[{sc.key} round {rnd}] {kind} --storage {storage} {where} ({fmt_bytes(resident)} cached): "
          f"{shlex.join(cmd)}", flush=True)
    r, lines = run_on_pty(cmd, cap, f"{sc.key}-{label}", timeout)
    summary = next((json.loads(x) for x in (log.read_text().splitlines() if log.exists() else [])
                    if x.strip().startswith("{") and '"summary"' in x), None)
    stages = progress_of(lines)
    finished = r.ok and summary is not None
    rec = {"scenario": sc.key, "contestant": storage, "kind": kind, "round": rnd, "cap_bytes": cap,
           "memory_budget": budget, "command": shlex.join(cmd), "run": run_summary(r),
           "evicted": {"files": files, "bytes": nbytes, "resident_after_bytes": resident},
           "summary": summary, "finished": finished, "wall_s": r.wall_s, "progress": stages,
           "timeline": r.timeline, "output_tail": [f"{t:8.2f}  {x}" for t, x in lines if not BAR.match(x)][-30:]}
    if finished:
        rec["status"] = "finished"
        rec["time_s"], rec["lower_bound"] = r.wall_s, False
        rec["output"] = check_output(out, kind, sc.nodes, width)
    elif r.timed_out:
        rec["estimate_s"], rec["status"] = extrapolate(r.wall_s, stages)
        rec["time_s"], rec["lower_bound"] = r.wall_s, True  # the time limit: a lower bound of its time
    else:
        rec["time_s"], rec["lower_bound"] = None, False
        rec["status"] = "OOM-killed" if r.oom_kills else f"exited with {r.returncode}"
    s = summary or {}
    print(f"  {rec['status']}; wall {r.wall_s:.1f} s, infer {s.get('seconds', '-')} s, read "
          f"{fmt_bytes(s.get('read_bytes', r.read_bytes))}, amp {s.get('read_amplification', '-')}, max usage "
          f"{fmt_bytes(r.max_usage_bytes)}, peak anon {fmt_bytes(r.peak_stat.get('total_rss'))}, oom kills "
          f"{r.oom_kills}" + ("" if finished else "\n" + "\n".join(rec["output_tail"][-8:])), flush=True)
    rec["_out"] = str(out)
    return rec


def compare_outputs(disk_out: Path, ram_out: Path, ds: Path, rows: int = 1 << 18) -> dict:
    """disk's logits vs ram's (same model, same graph): max abs / relative difference, argmax agreement; and the
    test accuracy of each one's exported predictions (the dataset's labels and test split)."""
    import numpy as np
    import zarr

    d, m = zarr.open_group(str(disk_out), mode="r"), zarr.open_group(str(ram_out), mode="r")
    n = d["logits"].shape[0]
    max_abs = max_ref = 0.0
    agree = 0
    for lo in range(0, n, rows):
        hi = min(n, lo + rows)
        x, y = d["logits"][lo:hi].astype(np.float64), m["logits"][lo:hi].astype(np.float64)
        max_abs = max(max_abs, float(np.abs(x - y).max()))
        max_ref = max(max_ref, float(np.abs(y).max()))
        agree += int((d["predictions"][lo:hi] == m["predictions"][lo:hi]).sum())
    g = zarr.open_group(str(ds), mode="r")
    test = g["splits/test"][:]
    labels = g["labels"][:]
    acc = {k: float((o["predictions"][:][test] == labels[test]).mean()) for k, o in (("disk", d), ("ram", m))}
    return {"max_abs_diff": max_abs, "max_abs_ram": max_ref, "max_rel_diff": max_abs / max_ref if max_ref else None,
            "prediction_agreement": agree / n, "test_acc_from_predictions": acc, "test_nodes": int(len(test))}


def cleanup(rec: dict) -> None:
    for d in out_dirs(Path(rec.pop("_out"))):
        shutil.rmtree(d, ignore_errors=True)


# -- scenarios -------------------------------------------------------------------------------------

def scenario_speed(a, sc: Scenario) -> tuple[list[dict], dict | None]:
    wanted = [c.strip() for c in a.contestants.split(",") if c.strip()]
    runs: list[dict] = []
    keep: dict[str, dict] = {}
    classes = read_json(sc.ds / "manifest.json").get("num_classes", sc.classes)
    rotating = [w for w in ("disk", "ram") if w in wanted]
    rounds = [(rnd, rotating[rnd % len(rotating):] + rotating[:rnd % len(rotating)])
              for rnd in range(a.repeat if rotating else 0)]
    if "mmap" in wanted:
        for i in range(a.mmap_repeat):
            pos = min(i, len(rounds) - 1) if rounds else -1
            if pos >= 0:
                rounds[pos][1].append("mmap")
            else:
                rounds.append((i, ["mmap"]))
    for rnd, order in rounds:
        for who in order:
            cap = UNCAPPED if who == "ram" else a.memory_cap
            budget = None if who == "ram" else a.memory_budget
            timeout = a.time_limit if who == "mmap" else a.stage_timeout
            rec = run_contestant(a, sc, who, "predict", cap, budget, rnd, timeout, classes)
            runs.append(rec)
            if rec["finished"] and who in ("disk", "ram") and who not in keep:
                keep[who] = rec
            else:
                cleanup(rec)
    cmp = None
    if "disk" in keep and "ram" in keep:
        cmp = compare_outputs(Path(keep["disk"]["_out"]), Path(keep["ram"]["_out"]), sc.ds)
        print(f"disk vs ram logits: max abs diff {cmp['max_abs_diff']:.3g} (max |logit| {cmp['max_abs_ram']:.3g}), "
              f"predictions agree on {100 * cmp['prediction_agreement']:.4f} %", flush=True)
    for rec in keep.values():
        if a.keep_outputs:
            rec["output_path"] = rec.pop("_out")
        else:
            cleanup(rec)
    return runs, cmp


def scenario_oocore(a, sc: Scenario) -> list[dict]:
    runs = []
    m = read_json(sc.run / "best_model.json").get("model", {})
    widths = {"predict": read_json(sc.ds / "manifest.json").get("num_classes", sc.classes),
              "embed": m.get("hidden", sc.hidden)}
    for kind in ("predict", "embed"):
        rec = run_contestant(a, sc, "disk", kind, a.oocore_cap, a.oocore_budget, 0, a.stage_timeout, widths[kind])
        runs.append(rec)
        if a.keep_outputs:
            rec["output_path"] = rec.pop("_out")
        else:
            cleanup(rec)
    return runs


# -- summary, checks, table ------------------------------------------------------------------------

def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(runs: list[dict]) -> dict:
    groups: dict[str, list[dict]] = {}
    for r in runs:
        groups.setdefault(f"{r['scenario']}/{r['kind']}/{r['contestant']}", []).append(r)
    out = {}
    for key, rs in groups.items():
        sums = [r["summary"] or {} for r in rs]
        layers = {}
        for s in sums:
            for L in s.get("layers") or []:
                layers.setdefault(L.get("layer"), []).append(L)
        out[key] = {
            "scenario": rs[0]["scenario"], "kind": rs[0]["kind"], "contestant": rs[0]["contestant"],
            "cap_bytes": rs[0]["cap_bytes"], "memory_budget": rs[0]["memory_budget"], "rounds": len(rs),
            "time_s": median([r["time_s"] for r in rs]), "time_s_all": [r["time_s"] for r in rs],
            "lower_bound": any(r["lower_bound"] for r in rs),
            "estimate_s": median([r.get("estimate_s") for r in rs]),
            "finished": all(r["finished"] for r in rs),
            "output_ok": all((r.get("output") or {}).get("ok") for r in rs) if all(r["finished"] for r in rs) else False,
            "status": "; ".join(sorted({r["status"] for r in rs})),
            "infer_s": median([s.get("seconds") for s in sums]),
            "read_bytes": median([s.get("read_bytes") for s in sums]),
            "needed_bytes": median([s.get("needed_bytes") for s in sums]),
            "read_amplification": median([s.get("read_amplification") for s in sums]),
            "table_passes": median([s.get("table_passes") for s in sums]),
            "summary_peak_rss_bytes": max([s.get("peak_rss_bytes") or 0 for s in sums]),
            "process_read_bytes": median([r["run"]["read_bytes"] for r in rs]),
            "max_usage_bytes": max(r["run"]["max_usage_bytes"] for r in rs),
            "peak_anon_bytes": max(r["run"]["peak_anon_bytes"] for r in rs),
            "peak_rss_bytes": max(r["run"]["peak_rss_bytes"] for r in rs),
            "failcnt": median([r["run"]["failcnt"] for r in rs]),
            "oom_kills": sum(r["run"]["oom_kills"] for r in rs),
            "layers": {str(k): {f: median([L.get(f) for L in v]) for f in
                                ("seconds", "read_bytes", "needed_bytes", "read_amplification", "partitions",
                                 "slices_read", "table_bytes", "edges")} for k, v in sorted(layers.items())},
        }
    return out


def checks(a, rep: dict) -> dict:
    summ, out = rep["summary"], {}
    if "speed" in rep["scenarios"]:
        dk, rm, mm = (summ.get(f"speed/predict/{w}") for w in ("disk", "ram", "mmap"))
        cap = fmt_bytes(rep["params"]["speed"]["memory_cap"])
        if not dk:
            out["speed: disk ran"] = False
        else:
            out[f"speed: disk finished inside the {cap} cap, no OOM kill, valid output"] = \
                dk["finished"] and dk["oom_kills"] == 0 and dk["output_ok"]
            t = dk["time_s"]
            if t and rm and rm["time_s"]:
                out[f"speed: disk <= {a.ratio_target} x ram ({t / rm['time_s']:.2f}x)"] = t <= a.ratio_target * rm["time_s"]
            elif "ram" in a.contestants:
                out["speed: ram finished (the reference)"] = False
            if t and mm and mm["time_s"]:
                x = mm["time_s"] / t
                shown = f"{'>= ' if mm['lower_bound'] else ''}{x:.1f}x"
                out[f"speed: disk >= {a.speedup_target}x faster than mmap ({shown})"] = x >= a.speedup_target
            elif "mmap" in a.contestants:
                out["speed: mmap's time known or bounded"] = False
    if "oocore" in rep["scenarios"]:
        d = rep["datasets"]["oocore"]
        cap = rep["params"]["oocore"]["memory_cap"]
        out[f"oocore: features >= 4 x cap ({d['feature_bytes'] / cap:.2f}x)"] = d["feature_bytes"] >= 4 * cap
        for kind in ("predict", "embed"):
            s = summ.get(f"oocore/{kind}/disk")
            if not s:
                out[f"oocore: {kind} ran"] = False
                continue
            out[f"oocore: {kind} finished inside {fmt_bytes(cap)}, no OOM kill, valid output"] = \
                s["finished"] and s["oom_kills"] == 0 and s["output_ok"]
            amp = s["read_amplification"]
            out[f"oocore: {kind} read amplification <= {a.amp_target} ({amp if amp is None else f'{amp:.3f}'})"] = \
                amp is not None and amp <= a.amp_target
    return out


def fmt_s(v, lb=False) -> str:
    if v is None:
        return "-"
    return f"{'>=' if lb else ''}{v:.1f}" if v >= 100 else f"{'>=' if lb else ''}{v:.2f}"


def fmt_amp(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def render(rep: dict) -> str:
    m, lines = rep["machine"], []
    title = f"inference (issue 13): diskgraph predict / embed, exact layer-wise, out of core ({rep['date']})"
    lines += [title, "-" * len(title)]
    disk = next(iter(m.get("disks", {}).values()), {})
    lines.append(f"machine: {m.get('nproc')} CPUs ({m.get('cpu_model', '?')}), {fmt_bytes(m.get('mem_total_bytes'))} "
                 f"RAM, swap {fmt_bytes(m.get('swap_total_bytes'))}, {disk.get('fstype', '?')} on "
                 f"{disk.get('device', '?')}, kernel {m.get('kernel')}; load average {m['loadavg_start'][0]:.2f} at "
                 f"start, {m['loadavg_end'][0]:.2f} at end")
    lines.append(f"diskgraph command: {rep['diskgraph_command']}")
    summ = rep["summary"]
    hdr = (f"{'contestant':<38} {'cap':>8} {'budget':>7} {'wall s':>8} {'x disk':>7} {'infer s':>8} {'read':>9} "
           f"{'amp':>6} {'passes':>6} {'max usage':>9} {'anon':>9} {'VmHWM':>9} {'oom':>3}  status")
    for key in ("speed", "oocore"):
        if key not in rep["scenarios"]:
            continue
        d, p = rep["datasets"][key], rep["params"][key]
        lines.append("")
        tr = (rep["train"].get(key) or {}).get("summary") or {}
        lines.append(f"[{key}] {d['num_nodes']:,} nodes, {d['num_edges']:,} edges, {d['feature_dim']}-d float32 = "
                     f"{fmt_bytes(d['feature_bytes'])} of features"
                     + (f" = {d['feature_bytes'] / p['memory_cap']:.2f}x the {fmt_bytes(p['memory_cap'])} cap"
                        if key == "oocore" else "")
                     + f"; GraphSAGE (mean), {d['model']['layers']} layers, hidden {d['model']['hidden']}, trained "
                     f"{d['model']['trained_with']['epochs']} epoch in reference mode (fanouts "
                     f"{d['model']['trained_with']['fanouts']}, batch {d['model']['trained_with']['batch_size']}; "
                     f"test_acc {tr.get('test_acc', '-')})")
        if key == "speed":
            lines.append(f"rounds: {p['repeat']} of disk and ram (interleaved, order rotated; medians), mmap "
                         f"{p['mmap_repeat']}x with a time limit of {p['time_limit']:.0f} s")
        lines += [hdr, "-" * len(hdr)]
        rows = [s for s in summ.values() if s["scenario"] == key]
        rows.sort(key=lambda s: (s["kind"], list(CONTESTANTS).index(s["contestant"])))
        dk = summ.get(f"{key}/predict/disk")
        for s in rows:
            name = CONTESTANTS[s["contestant"]] if key == "speed" else f"{s['kind']}" + (
                f" --layer {rep['params']['embed_layer']}" if s["kind"] == "embed" else "") + " (disk)"
            cap = "none" if s["cap_bytes"] >= UNCAPPED else fmt_bytes(s["cap_bytes"])
            rel = s["time_s"] / dk["time_s"] if key == "speed" and dk and dk["time_s"] and s["time_s"] else None
            status = "finished" if s["finished"] else ("stopped" if s["lower_bound"] else "FAILED")
            if s["finished"] and not s["output_ok"]:
                status = "bad output"
            lines.append(
                f"{name:<38} {cap:>8} {(fmt_bytes(s['memory_budget']) if s['memory_budget'] else '-'):>7} "
                f"{fmt_s(s['time_s'], s['lower_bound']):>8} {(f'{rel:.2f}x' if rel else '-'):>7} "
                f"{fmt_s(s['infer_s']):>8} {fmt_bytes(s['read_bytes'] if s['read_bytes'] is not None else s['process_read_bytes']):>9} "
                f"{fmt_amp(s['read_amplification']):>6} {fmt_amp(s['table_passes']):>6} "
                f"{fmt_bytes(s['max_usage_bytes']):>9} {fmt_bytes(s['peak_anon_bytes']):>9} "
                f"{fmt_bytes(s['peak_rss_bytes']):>9} {s['oom_kills']:>3}  {status}")
        for s in rows:
            who = f"{s['kind']}/{s['contestant']}"
            if s["layers"]:
                lines.append(f"  layers of {who}: " + "; ".join(
                    f"L{k} {fmt_s(v['seconds'])} s, {v['partitions'] or '-'} partition(s), read "
                    f"{fmt_bytes(v['read_bytes'])}, amp {fmt_amp(v['read_amplification'])}"
                    for k, v in s["layers"].items()))
            if len(s["time_s_all"]) > 1:
                lines.append(f"  {who} per round: " + ", ".join(fmt_s(v) for v in s["time_s_all"]))
            if not s["finished"]:
                lines.append(f"  {who}: {s['status']}")
        cmp = rep.get("comparison") if key == "speed" else None
        if cmp:
            acc = cmp["test_acc_from_predictions"]
            lines.append(f"  disk vs ram: max |logit difference| {cmp['max_abs_diff']:.3g} (relative to max |logit| "
                         f"{cmp['max_rel_diff']:.3g}), predictions agree on {100 * cmp['prediction_agreement']:.4f} % "
                         f"of nodes; test acc from the exported predictions: disk {acc['disk']:.4f}, ram {acc['ram']:.4f} "
                         f"(run's sampled-evaluation test_acc {tr.get('test_acc', '-')})")
    lines.append("")
    lines.append("wall s: the process, exec to exit (start-up, open, every layer, output written): the targets use it; "
                 ">= = stopped at the time limit, a lower bound. infer s: the summary line's seconds. read, amp, "
                 "passes: the summary line's read_bytes (/proc/self/io), read_amplification (÷ bytes of the rows the "
                 "partitions needed), table_passes (÷ bytes of each table once); for a stopped run, the process's "
                 "read_bytes until then. max usage: cgroup peak incl. page cache; anon: peak memory.stat total_rss; "
                 "VmHWM: peak RSS incl. mapped file pages")
    lines.append("")
    chk = rep["checks"]
    lines.append("targets: " + "; ".join(f"{k}: {'ok' if v else 'MISSED'}" for k, v in chk.items()))
    lines.append(f"result: {'PASS' if chk and all(chk.values()) else 'FAIL'}")
    lines.append("")
    lines.append("command: " + rep["commands"]["bench"])
    for k, v in rep["commands"]["contestants"].items():
        lines.append(f"  {k}: {v}")
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="inference.py",
        description="Out-of-core inference (issue 13): diskgraph predict --storage disk under a memory cap vs the same "
                    "layer-wise inference in RAM and through np.memmap (speed), and predict/embed of a graph whose "
                    "features are >= 4x the cap (oocore). Each contestant a separate process in its own cgroup-v1 "
                    "memory child, page cache dropped first. Needs root and cgroup v1.",
        epilog="Example (both scenarios, 3 rounds):\n"
               "  python tools/bench/inference.py --json tools/bench/results/inference-cpu2.json "
               "--txt tools/bench/results/inference-cpu2.txt",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenarios", default="speed,oocore", help="speed, oocore or both (default)")
    s = p.add_argument_group("speed: the head_to_head graph (2M nodes, 31M edges drawn, 128-d) and contestants")
    s.add_argument("--nodes", type=int, default=2_000_000)
    s.add_argument("--edges", type=int, default=31_000_000)
    s.add_argument("--feature-dim", type=int, default=128)
    s.add_argument("--classes", type=int, default=16)
    s.add_argument("--seed", type=int, default=0, help="generator seed")
    s.add_argument("--split", default="random:0.1,0.1,0.8")
    s.add_argument("--hidden", type=int, default=256)
    s.add_argument("--fanouts", default="15,10", help="training fanouts (layers = their count)")
    s.add_argument("--batch-size", type=int, default=1024)
    s.add_argument("--epochs", type=int, default=1, help="training epochs of the run (default: 1)")
    s.add_argument("--memory-cap", type=parse_size, default=1 * GiB, help="disk's and mmap's cap (default: 1G)")
    s.add_argument("--memory-budget", type=parse_size, default=512 * MiB,
                   help="--memory-budget of disk and mmap (default: 512M)")
    s.add_argument("--contestants", default="disk,ram,mmap")
    s.add_argument("--repeat", type=int, default=3, help="rounds of disk and ram (medians; default: 3)")
    s.add_argument("--mmap-repeat", type=int, default=1, help="runs of mmap (default: 1)")
    s.add_argument("--time-limit", type=float, default=600, help="seconds before mmap is stopped (default: 600)")
    o = p.add_argument_group("oocore: features >= 4x the cap (default 1.1M nodes x 512-d = 2.1 GiB vs 512 MiB)")
    o.add_argument("--oocore-nodes", type=int, default=1_100_000)
    o.add_argument("--oocore-edges", type=int, default=11_000_000)
    o.add_argument("--oocore-feature-dim", type=int, default=512)
    o.add_argument("--oocore-hidden", type=int, default=64)
    o.add_argument("--oocore-fanouts", default="10,5")
    o.add_argument("--oocore-cap", type=parse_size, default=512 * MiB)
    o.add_argument("--oocore-budget", type=parse_size, default=192 * MiB)
    o.add_argument("--embed-layer", type=int, default=1)
    o.add_argument("--allow-small", action="store_true", help="run even when the features are < 4x the cap")
    k = p.add_argument_group("targets")
    k.add_argument("--ratio-target", type=float, default=1.5, help="disk wall / ram wall (default: 1.5)")
    k.add_argument("--speedup-target", type=float, default=5.0, help="mmap wall / disk wall (default: 5)")
    k.add_argument("--amp-target", type=float, default=1.3, help="oocore read amplification (default: 1.3)")
    f = p.add_argument_group("files")
    f.add_argument("--cache-dir", type=Path, default=REPO / "bench-data" / "inference")
    f.add_argument("--regenerate", action="store_true", help="generate and import the graphs again")
    f.add_argument("--retrain", action="store_true", help="train the runs again")
    f.add_argument("--prepare-only", action="store_true", help="make the data and the trained runs, run nothing")
    f.add_argument("--keep-outputs", action="store_true", help="keep the outputs (default: deleted after checks)")
    f.add_argument("--stage-timeout", type=float, default=3600, help="limit of any other process (s)")
    f.add_argument("--min-free", type=parse_size, default=10 * GiB)
    f.add_argument("--render", type=Path, metavar="REPORT", help="re-make the table of an earlier --json report")
    f.add_argument("--json", type=Path, metavar="FILE")
    f.add_argument("--txt", type=Path, metavar="FILE")
    return p


def finish(a, rep: dict) -> int:
    rep["summary"] = summarize(rep["runs"])
    rep["checks"] = checks(a, rep)
    write_outputs(render(rep), rep, a.txt, a.json)
    return 0 if rep["checks"] and all(rep["checks"].values()) else 1


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if a.render:
        rep = read_json(a.render)
        if rep.get("bench") != "inference":
            print(f"inference: {a.render} is not an inference report", file=sys.stderr)
            return 2
        for key, v in (("ratio_target", "ratio_target"), ("speedup_target", "speedup_target"),
                       ("amp_target", "amp_target")):
            setattr(a, key, rep["params"]["targets"][v])
        a.contestants = rep["params"].get("speed", {}).get("contestants", a.contestants)
        return finish(a, rep)
    try:
        parent = cgroup.check_memory_cgroup()
    except cgroup.CgroupUnavailable as e:
        print(f"inference: {e}", file=sys.stderr)
        return 2
    scenarios = [s.strip() for s in a.scenarios.split(",") if s.strip()]
    if not scenarios or any(s not in ("speed", "oocore") for s in scenarios):
        print(f"inference: --scenarios {a.scenarios!r}: choose speed, oocore or both", file=sys.stderr)
        return 2
    bad = [c for c in a.contestants.split(",") if c.strip() and c.strip() not in CONTESTANTS]
    if bad:
        print(f"inference: unknown contestant {bad[0]!r}; pick from {', '.join(CONTESTANTS)}", file=sys.stderr)
        return 2
    DG[:] = pick_diskgraph()[0]
    how = pick_diskgraph()[1]
    head_to_head.diskgraph_cmd = dg  # ensure_raw's generate uses the same command
    cache = a.cache_dir.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    sc = {
        "speed": Scenario("speed", cache, a.nodes, a.edges, a.feature_dim, a.classes, a.seed, a.split, a.hidden,
                          a.fanouts, a.batch_size, a.epochs, 256 * MiB),
        "oocore": Scenario("oocore", cache, a.oocore_nodes, a.oocore_edges, a.oocore_feature_dim, a.classes, a.seed,
                           a.split, a.oocore_hidden, a.oocore_fanouts, a.batch_size, a.epochs, 256 * MiB),
    }
    if "oocore" in scenarios and sc["oocore"].feature_bytes < 4 * a.oocore_cap and not a.allow_small:
        print(f"inference: the oocore graph's features ({fmt_bytes(sc['oocore'].feature_bytes)}) are less than 4x "
              f"--oocore-cap {fmt_bytes(a.oocore_cap)}; raise --oocore-nodes/--oocore-feature-dim or lower the cap",
              file=sys.stderr)
        return 2
    need = sum(0 if (sc[k].ds / "manifest.json").exists() else 3 * sc[k].feature_bytes + 40 * sc[k].edges
               for k in scenarios) + max(2 * sc[k].nodes * max(sc[k].hidden, sc[k].feature_dim) * 4 for k in scenarios)
    if shutil.disk_usage(cache).free - need < a.min_free:
        print(f"inference: {cache} has {fmt_bytes(shutil.disk_usage(cache).free)} free; the run needs about "
              f"{fmt_bytes(need)} and would leave less than --min-free", file=sys.stderr)
        return 2
    if not a.prepare_only:
        r = subprocess.run([*dg(), "predict", "--help"], cwd=REPO, capture_output=True, text=True)
        if r.returncode != 0:
            print(f"inference: this checkout's `diskgraph predict` does not run ({tail(r.stderr, 300).strip()})",
                  file=sys.stderr)
            return 2
    machine = cgroup.machine_facts([cache])
    machine["cgroup_parent"] = str(parent)
    machine["loadavg_start"] = os.getloadavg()
    t0 = time.time()
    prep, train = {}, {}
    for key in scenarios:
        prep[key] = ensure_dataset(sc[key], a.regenerate, a.stage_timeout)
        train[key] = ensure_run(sc[key], a.retrain or a.regenerate, a.stage_timeout)
    if a.prepare_only:
        print("prepared: " + ", ".join(f"{k}: {sc[k].ds} + {sc[k].run}" for k in scenarios))
        return 0
    runs, cmp = [], None
    if "speed" in scenarios:
        r, cmp = scenario_speed(a, sc["speed"])
        runs += r
    if "oocore" in scenarios:
        runs += scenario_oocore(a, sc["oocore"])
    if not a.keep_outputs:
        for key in scenarios:
            shutil.rmtree(sc[key].work, ignore_errors=True)
        try:
            (cache / "work").rmdir()
        except OSError:  # not empty (another run's kept outputs) or gone
            pass
    machine["loadavg_end"] = os.getloadavg()
    commands = {}
    for r in runs:
        commands.setdefault(f"{r['scenario']} {r['kind']} {r['contestant']}", r["command"])
    rep = {
        "bench": "inference",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "scenarios": scenarios,
        "params": {
            "speed": {"nodes": a.nodes, "edges": a.edges, "feature_dim": a.feature_dim, "classes": a.classes,
                      "seed": a.seed, "split": a.split, "hidden": a.hidden, "fanouts": a.fanouts,
                      "batch_size": a.batch_size, "epochs": a.epochs, "memory_cap": a.memory_cap,
                      "memory_budget": a.memory_budget, "contestants": a.contestants, "repeat": a.repeat,
                      "mmap_repeat": a.mmap_repeat, "time_limit": a.time_limit},
            "oocore": {"nodes": a.oocore_nodes, "edges": a.oocore_edges, "feature_dim": a.oocore_feature_dim,
                       "hidden": a.oocore_hidden, "fanouts": a.oocore_fanouts, "memory_cap": a.oocore_cap,
                       "memory_budget": a.oocore_budget},
            "embed_layer": a.embed_layer,
            "targets": {"ratio_target": a.ratio_target, "speedup_target": a.speedup_target,
                        "amp_target": a.amp_target},
        },
        "datasets": {k: dataset_facts(sc[k]) for k in scenarios},
        "machine": machine,
        "git": git_state(),
        "diskgraph_command": how,
        "commands": {"bench": shlex.join([sys.executable, *sys.argv]), "contestants": commands},
        "prepare": prep,
        "train": train,
        "runs": runs,
        "comparison": cmp,
        "total_seconds": time.time() - t0,
    }
    return finish(a, rep)


if __name__ == "__main__":
    sys.exit(main())
