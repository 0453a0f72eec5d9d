"""An honest out-of-core training run: `diskgraph train` inside a cgroup whose memory cap is ≤ ¼ of the features.

What it does, in order (issue 4, "What must be shown"):

0. checks that a cgroup-v1 memory child can be made (root, /sys/fs/cgroup/memory), else says why in
   one sentence and exits 2; refuses (exit 2) when the feature table is below 4 × ``--memory-cap``
   (unless ``--allow-small``) or the disk would keep less than ``--min-free`` free;
1. **dataset**: ``diskgraph generate --nodes N --edges E --feature-dim F --classes C --seed S
   --split random:0.05,0.02,0.02 --memory-budget B --out DATASET`` (R-MAT, planted class signal),
   run inside the same cap (``--generate-uncapped`` lifts it), or reused when the dataset's
   manifest ``generator`` block matches;
2. **baseline**: the fixed memory of a training process — a tiny graph of the same width
   (100K nodes) is generated, preprocessed and trained for 1 epoch inside the cap; the peak of
   ``memory.stat`` ``total_rss`` (anonymous memory) and ``total_shmem`` (the loader's staging
   ring and the host tier live in shared anonymous mappings, which cgroup v1 counts as cache but
   cannot reclaim without swap) say what the process itself needs;
3. **preprocess**: ``diskgraph preprocess all DATASET --fanouts 10,5 --batch-size 512 --seed 0
   --host-cache 64M --memory-budget B --name NAME --overwrite`` (sample + pack) inside the cap
   (``--preprocess-uncapped`` lifts it), the dataset's page cache dropped first;
4. **train**: the page cache of the dataset and the pack is dropped (``posix_fadvise
   DONTNEED``, checked with ``mincore``), then ``diskgraph train DATASET --pack NAME --model sage
   --hidden 256 --epochs 2 --seed 0 --log-json FILE --run-dir RUN --overwrite`` runs inside a
   fresh child cgroup capped at ``--memory-cap``;
5. prints, per epoch from the JSON log: epoch time, the three stage times, the overlap (epoch ÷
   slowest stage; target ≤ 1.25), the queue waits, bytes read from disk (``/proc/self/io`` of the
   trainer) and the read amplification (target ≤ 1.1) — as logged (all block reads during the
   training pass: extents + the plan and pack-index rows it reads through memory maps) and for the
   extents alone — hit rates, peak RSS, val accuracy; and for the run: the cgroup's max usage,
   peak anon/shmem/cache, failcnt, OOM kills (target none), test accuracy and wall time. Writes
   the JSON (``--json``, with every measurement, the memory timeline and the commands) and the
   table (``--txt``).

Exit status: 0 when the run finished inside the cap with no OOM kill and every epoch met both
targets, 1 otherwise, 2 when it cannot run here. Run ``python tools/bench/train_oocore.py --help``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import cgroup  # noqa: E402  (tools/bench is not a package)
from common import gen_params, read_json, read_log, tail, write_outputs  # noqa: E402
from import_oocore import diskgraph_cmd, fmt_bytes, git_state, parse_size  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
UNCAPPED = 1 << 62
OVERLAP_TARGET = 1.25
AMPLIFICATION_TARGET = 1.1


def size_arg(n: int) -> str:
    """A byte count as a command-line size (``256M``, ``1G``) when it is a whole number of MiB/GiB."""
    for unit, mult in (("G", GiB), ("M", MiB)):
        if n % mult == 0:
            return f"{n // mult}{unit}"
    return str(n)


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def run_summary(r: cgroup.RunResult) -> dict:
    """The memory/IO figures of one capped run that the table quotes."""
    return {"returncode": r.returncode, "ok": r.ok, "timed_out": r.timed_out, "wall_s": r.wall_s,
            "limit_bytes": r.limit_bytes, "max_usage_bytes": r.max_usage_bytes,
            "failcnt": r.failcnt, "oom_kills": r.oom_kills, "peak_anon_bytes": r.peak_stat.get("total_rss", 0),
            "peak_shmem_bytes": r.peak_stat.get("total_shmem", 0), "peak_cache_bytes": r.peak_stat.get("total_cache", 0),
            "peak_rss_bytes": r.peak_rss_bytes, "read_bytes": r.read_bytes, "write_bytes": r.write_bytes,
            "user_s": r.user_s, "sys_s": r.sys_s}


# -- steps -----------------------------------------------------------------------------------------

def ensure_dataset(a, ds: Path) -> tuple[dict | None, str | None]:
    """Generate ``ds`` (inside the cap unless --generate-uncapped) unless a matching one is there."""
    want = gen_params(a)
    m = read_json(ds / "manifest.json")
    if m and not a.regenerate:
        g = m.get("generator") or {}
        if all(g.get(k) == v for k, v in want.items()):
            print(f"reusing dataset {ds} ({m.get('num_nodes'):,} nodes, {m.get('num_edges'):,} edges)", flush=True)
            return None, None
        raise SystemExit(f"train_oocore: {ds} exists but was generated with other parameters "
                         f"({ {k: g.get(k) for k in want} }); pass --regenerate or another --cache-dir")
    cmd = [str(c) for c in [*diskgraph_cmd(), "generate", "--nodes", a.nodes, "--edges", a.edges, "--feature-dim",
                            a.feature_dim, "--classes", a.classes, "--seed", a.seed, "--split", a.split,
                            "--memory-budget", size_arg(a.memory_budget), "--out", ds, "--overwrite", "-q"]]
    cap = UNCAPPED if a.generate_uncapped else a.memory_cap
    print(f"generating {ds} {'without a cap' if a.generate_uncapped else 'under the cap'}: {shlex.join(cmd)}", flush=True)
    ds.parent.mkdir(parents=True, exist_ok=True)
    r = cgroup.run_in_cgroup(cmd, cap, name=f"trainoo-generate-{os.getpid()}", capture=True, timeout=a.timeout)
    if not r.ok:
        raise SystemExit(f"train_oocore: generating the dataset failed (exit {r.returncode}, oom kills {r.oom_kills}); "
                         f"pass --generate-uncapped to generate without the cap\n{tail(r.stderr)}")
    print(f"  {r.wall_s:.1f} s, max usage {fmt_bytes(r.max_usage_bytes)}, peak anon "
          f"{fmt_bytes(r.peak_stat.get('total_rss'))}, oom kills {r.oom_kills}", flush=True)
    return {**run_summary(r), "capped": not a.generate_uncapped, "command": shlex.join(cmd)}, shlex.join(cmd)


def preprocess_cmd(a, ds: Path) -> list[str]:
    return [str(c) for c in [*diskgraph_cmd(), "preprocess", "all", ds, "--fanouts", a.fanouts, "--batch-size",
                             a.batch_size, "--seed", "0", "--host-cache", a.host_cache, "--memory-budget",
                             size_arg(a.memory_budget), "--name", a.name, "--overwrite"]]


def train_cmd(a, ds: Path, log_json: Path, run_dir: Path, epochs: int | None = None, pack: str | None = None) -> list[str]:
    return [str(c) for c in [*diskgraph_cmd(), "train", ds, "--pack", pack or a.name, "--model", "sage", "--hidden",
                             a.hidden, "--epochs", epochs or a.epochs, "--seed", a.train_seed, "--queue-depth",
                             a.queue_depth, "--device", "cpu", "--log-json", log_json, "--run-dir", run_dir,
                             "--overwrite"]]


def baseline(a, work: Path) -> dict:
    """Peak memory of a training process on a tiny graph of the same width, inside the same cap."""
    tiny = work / "baseline-tiny"
    gen = [str(c) for c in [*diskgraph_cmd(), "generate", "--nodes", 100_000, "--edges", 1_000_000, "--feature-dim",
                            a.feature_dim, "--classes", a.classes, "--seed", 0, "--split", a.split, "--out", tiny,
                            "--overwrite", "-q"]]
    pre = [str(c) for c in [*diskgraph_cmd(), "preprocess", "all", tiny, "--fanouts", a.fanouts, "--batch-size",
                            a.batch_size, "--seed", "0", "--host-cache", "1M", "--name", "tiny", "--overwrite", "-q"]]
    for cmd in (gen, pre):
        r = cgroup.run_in_cgroup(cmd, UNCAPPED, name=f"trainoo-baseprep-{os.getpid()}", capture=True, timeout=a.timeout)
        if not r.ok:
            return {"error": f"{shlex.join(cmd)} failed: exit {r.returncode}: {tail(r.stderr, 500)}"}
    cmd = train_cmd(a, tiny, work / "baseline.jsonl", work / "baseline-run", epochs=1, pack="tiny")
    r = cgroup.run_in_cgroup(cmd, a.memory_cap, name=f"trainoo-baseline-{os.getpid()}", capture=True, timeout=a.timeout)
    out = {**run_summary(r), "command": shlex.join(cmd)}
    if not r.ok:
        out["stderr_tail"] = tail(r.stderr, 1500)
    shutil.rmtree(tiny, ignore_errors=True)
    shutil.rmtree(work / "baseline-run", ignore_errors=True)
    (work / "baseline.jsonl").unlink(missing_ok=True)
    return out


def metadata_bytes(ds: Path, name: str, split: str = "train") -> dict:
    """Sizes of the files a training epoch reads besides the extents: the split's plan and pack index."""
    plan = ds / "plans" / name / f"{split}.arrow"
    index = ds / "packs" / name / "index" / f"{split}.arrow"
    return {"plan_bytes": plan.stat().st_size if plan.exists() else None,
            "index_bytes": index.stat().st_size if index.exists() else None}


# -- the table -------------------------------------------------------------------------------------

def render(rep: dict) -> str:
    p, m = rep["params"], rep["machine"]
    rows: list[tuple[str, str]] = []

    def add(k, v):
        rows.append((k, v))

    disk = next(iter(m.get("disks", {}).values()), {})
    add("machine", f"{m.get('nproc')} CPUs ({m.get('cpu_model', '?')}), {fmt_bytes(m.get('mem_total_bytes'))} RAM, no swap"
        if not m.get("swap_total_bytes") else f"{m.get('nproc')} CPUs, {fmt_bytes(m.get('mem_total_bytes'))} RAM")
    add("disk", f"{disk.get('fstype', '?')} on {disk.get('device', '?')}, kernel {m.get('kernel')}; load average "
        f"{m['loadavg_start'][0]:.2f} at start, {m['loadavg_end'][0]:.2f} at end (1-min)")
    d = rep["dataset"]
    add("graph", f"{d['num_nodes']:,} nodes, {d['num_edges']:,} edges (R-MAT, {p['edges']:,} drawn), "
        f"{p['feature_dim']}-d float32, {p['classes']} classes, split {p['split']}")
    add("feature table", f"{fmt_bytes(d['feature_bytes'])} = {rep['ratio']:.2f}x the cap")
    add("memory cap", f"{fmt_bytes(p['memory_cap'])} (cgroup v1 memory.limit_in_bytes; "
        f"--memory-budget {fmt_bytes(p['memory_budget'])} for generate/preprocess)")
    g = rep.get("generate")
    add("generate", "reused" if not g else
        f"{g['wall_s']:.1f} s {'under the cap' if g['capped'] else 'without a cap'}, max usage "
        f"{fmt_bytes(g['max_usage_bytes'])}, peak anon {fmt_bytes(g['peak_anon_bytes'])}, oom kills {g['oom_kills']}")
    b = rep.get("baseline") or {}
    if "peak_anon_bytes" in b:
        add("baseline", f"training process on a 100K-node graph (same width, 1 epoch) under the cap: peak anon "
            f"{fmt_bytes(b['peak_anon_bytes'])} + shmem {fmt_bytes(b['peak_shmem_bytes'])}, max usage "
            f"{fmt_bytes(b['max_usage_bytes'])}, oom kills {b['oom_kills']}")
    elif b:
        add("baseline", f"failed: {b.get('error') or b.get('stderr_tail', '')[-200:]}")
    pr = rep["preprocess"]
    pk = rep["pack"]
    add("preprocess", f"{pr['wall_s']:.1f} s {'under the cap' if pr['capped'] else 'without a cap'} (sample + pack), "
        f"max usage {fmt_bytes(pr['max_usage_bytes'])}, peak anon {fmt_bytes(pr['peak_anon_bytes'])}, "
        f"failcnt {pr['failcnt']}, oom kills {pr['oom_kills']}")
    add("plan / pack", f"fanouts {p['fanouts']}, batch {p['batch_size']}: train {pk['train_minibatches']} minibatches "
        f"({pk['train_inputs'] / max(pk['train_minibatches'], 1):,.0f} inputs each on average), host tier "
        f"{fmt_bytes(pk['host_tier_bytes'])} ({pk['host_rows']:,} rows), cold extents {fmt_bytes(pk['cold_bytes'])} "
        f"(train {fmt_bytes(pk['train_cold_bytes'])}; blow-up {pk['blowup']:.2f}x)")
    add("train metadata", f"train plan {fmt_bytes(rep['metadata']['plan_bytes'])} + pack index "
        f"{fmt_bytes(rep['metadata']['index_bytes'])} (memory-mapped, read in the training pass)")
    ev = rep["evicted"]
    add("page cache before", f"{fmt_bytes(ev['resident_after_bytes'])} of the dataset + pack resident after eviction "
        f"(mincore; {fmt_bytes(ev['bytes'])} in {ev['files']} files)")
    t = rep["train"]
    add("train run", f"exit {t['returncode']}, {t['wall_s']:.1f} s wall (user {t['user_s']:.1f} s, sys {t['sys_s']:.1f} s)")
    add("  cgroup max usage", f"{fmt_bytes(t['max_usage_bytes'])} (anon + page cache charged; = cap means the kernel "
        "reclaimed cache)")
    add("  peak anon / shmem", f"{fmt_bytes(t['peak_anon_bytes'])} / {fmt_bytes(t['peak_shmem_bytes'])} (memory.stat "
        f"total_rss / total_shmem, sampled every 50 ms; peak cache {fmt_bytes(t['peak_cache_bytes'])})")
    add("  peak RSS (VmHWM)", f"{fmt_bytes(t['peak_rss_bytes'])} (counts mapped file pages too)")
    add("  failcnt / OOM kills", f"{t['failcnt']} / {t['oom_kills']}")
    add("  read from disk", f"{fmt_bytes(t['read_bytes'])} by the whole process (training, 2 val passes, the final "
        "val + test pass, host tier, start-up)")
    s = rep.get("summary_line") or {}
    if s:
        add("  accuracy", f"test {s.get('test_acc', float('nan')):.4f}, val {s.get('val_acc', float('nan')):.4f} of the "
            f"best-val model (epoch {s.get('best_epoch')})")
    width = max(len(k) for k, _ in rows)
    title = (f"train_oocore — diskgraph train inside a {fmt_bytes(p['memory_cap'])} cgroup, features "
             f"{rep['ratio']:.2f}x the cap ({rep['date']})")
    lines = [title, "-" * len(title)] + [f"{k.ljust(width)}  {v}" for k, v in rows] + [""]
    hdr = (f"{'epoch':>5} {'epoch_s':>7} {'read_s':>7} {'asm_s':>6} {'comp_s':>7} {'overlap':>7}  "
           f"{'read':>9} {'cold need':>9} {'amp':>6} {'amp ext':>7}  {'host':>5} {'cold':>5}  {'peak RSS':>9} "
           f"{'val acc':>7} {'eval_s':>6}")
    lines += [hdr, "-" * len(hdr)]
    for e in rep["epochs"]:
        st = e["stage_s"]
        lines.append(f"{e['epoch']:>5} {e['epoch_s']:>7.2f} {st['read_s']:>7.2f} "
                     f"{st['assemble_s']:>6.2f} {st['compute_s']:>7.2f} {e['overlap']:>7.3f}  "
                     f"{fmt_bytes(e['read_bytes']):>9} {fmt_bytes(e['cold_bytes_needed']):>9} "
                     f"{e['read_amplification']:>6.3f} {e['extent_amplification']:>7.4f}  "
                     f"{100 * e['hit_rate'].get('host', 0):>4.1f}% {100 * e['hit_rate'].get('cold', 0):>4.1f}%  "
                     f"{fmt_bytes(e['peak_rss_bytes']):>9} {e.get('val_acc', float('nan')):>7.4f} {e['eval_s']:>6.2f}")
    lines.append("")
    lines.append("queue waits per epoch (s): " + "; ".join(
        f"epoch {e['epoch']}: " + ", ".join(f"{k} {v:.2f}" for k, v in e["queue_wait_s"].items()) for e in rep["epochs"]))
    lines.append("amp = logged read_amplification (/proc/self/io read_bytes of the training pass ÷ cold bytes needed); "
                 "amp ext = extent bytes read ÷ cold bytes needed; read − extents = plan/index pages: " + "; ".join(
                     f"epoch {e['epoch']} {fmt_bytes(e['read_bytes'] - e['extent_bytes'])}" for e in rep["epochs"]))
    lines.append("")
    chk = rep["checks"]
    lines.append("targets: " + ", ".join(f"{k} {'ok' if v else 'MISSED'}" for k, v in chk.items()))
    lines.append(f"result: {'PASS' if all(chk.values()) else 'FAIL'}")
    lines.append("")
    lines.append("command: " + rep["commands"]["train"])
    lines.append("preprocess: " + rep["commands"]["preprocess"])
    if rep["commands"].get("generate"):
        lines.append("generate: " + rep["commands"]["generate"])
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train_oocore.py",
        description="Train GraphSAGE for 2 epochs with `diskgraph train` inside a cgroup-v1 memory cap at most a "
                    "quarter of the feature table (a synthetic R-MAT graph); report per epoch the stage times, the "
                    "overlap (target <= 1.25), bytes read and read amplification (target <= 1.1), hit rates and peak "
                    "memory, and the cgroup's max usage, failcnt and OOM kills. Needs root and cgroup v1.",
        epilog="Example: python tools/bench/train_oocore.py --json tools/bench/results/train_oocore-cpu2.json "
               "--txt tools/bench/results/train_oocore-cpu2.txt")
    g = p.add_argument_group("graph (default: 4.3M nodes x 256-d float32 = 4.1 GiB of features)")
    g.add_argument("--nodes", type=int, default=4_300_000)
    g.add_argument("--edges", type=int, default=43_000_000, help="edges drawn (default: 10 per node)")
    g.add_argument("--feature-dim", type=int, default=256)
    g.add_argument("--classes", type=int, default=16)
    g.add_argument("--seed", type=int, default=0, help="generator seed")
    g.add_argument("--split", default="random:0.05,0.02,0.02", help="train/val/test fractions (default: 5/2/2 %%)")
    t = p.add_argument_group("plan, pack and training")
    t.add_argument("--fanouts", default="10,5", help="fanouts (default: 10,5)")
    t.add_argument("--batch-size", type=int, default=512, help="seed nodes per minibatch (default: 512)")
    t.add_argument("--host-cache", default="64M", help="host tier size (default: 64M; counts inside the cap)")
    t.add_argument("--name", default="oocore", help="plan and pack name (default: oocore)")
    t.add_argument("--hidden", type=int, default=256)
    t.add_argument("--epochs", type=int, default=2)
    t.add_argument("--train-seed", type=int, default=0)
    t.add_argument("--queue-depth", type=int, default=2, help="pipeline queue depth (default: 2)")
    r = p.add_argument_group("resources")
    r.add_argument("--memory-cap", type=parse_size, default=1 * GiB,
                   help="cgroup memory cap of every step (default: 1G; the trainer alone needs ~0.6-0.7 GiB of anon + "
                        "shmem with these settings, see the baseline line)")
    r.add_argument("--memory-budget", type=parse_size, default=256 * MiB,
                   help="--memory-budget of generate and preprocess (default: 256M)")
    r.add_argument("--allow-small", action="store_true", help="run even when the features are less than 4x the cap")
    r.add_argument("--generate-uncapped", action="store_true", help="generate the graph without the cap")
    r.add_argument("--preprocess-uncapped", action="store_true", help="sample and pack without the cap")
    r.add_argument("--no-baseline", action="store_true", help="skip measuring the fixed memory of a training process")
    r.add_argument("--min-free", type=parse_size, default=15 * GiB, help="refuse when the disk would keep less free "
                   "(default: 15G)")
    r.add_argument("--timeout", type=float, default=3600, help="kill a step after this many seconds (default: 3600)")
    o = p.add_argument_group("files")
    o.add_argument("--cache-dir", type=Path, default=REPO / "bench-data" / "train-oocore",
                   help="where the dataset is generated and reused (default: bench-data/train-oocore, gitignored)")
    o.add_argument("--regenerate", action="store_true", help="generate the dataset again")
    o.add_argument("--keep-pack", action="store_true", help="keep the plan and pack afterwards (default: delete them)")
    o.add_argument("--json", type=Path, metavar="FILE", help="write the full report as JSON")
    o.add_argument("--txt", type=Path, metavar="FILE", help="write the printed table to FILE")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        parent = cgroup.check_memory_cgroup()
    except cgroup.CgroupUnavailable as e:
        print(f"train_oocore: {e}", file=sys.stderr)
        return 2
    feature_bytes = a.nodes * a.feature_dim * 4
    ratio = feature_bytes / a.memory_cap
    if ratio < 4 and not a.allow_small:
        print(f"train_oocore: the feature table ({fmt_bytes(feature_bytes)}) is only {ratio:.2f}x the "
              f"{fmt_bytes(a.memory_cap)} cap; raise --nodes/--feature-dim or lower --memory-cap (or --allow-small)",
              file=sys.stderr)
        return 2
    cache = a.cache_dir.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    ds = cache / f"syn-n{a.nodes}-e{a.edges}-f{a.feature_dim}-c{a.classes}-s{a.seed}"
    # Space: the dataset (features + ~10 B/edge) unless reused, and the packs (≈ the features again, at most).
    need = (0 if (ds / "manifest.json").exists() and not a.regenerate else feature_bytes + 10 * a.edges) + feature_bytes
    free = shutil.disk_usage(cache).free
    if free - need < a.min_free:
        print(f"train_oocore: {cache} has {fmt_bytes(free)} free; the run needs about {fmt_bytes(need)} and would leave "
              f"less than --min-free {fmt_bytes(a.min_free)}", file=sys.stderr)
        return 2
    machine = cgroup.machine_facts([cache])
    machine["cgroup_parent"] = str(parent)
    machine["loadavg_start"] = os.getloadavg()
    t_start = time.time()

    gen, gen_cmd = ensure_dataset(a, ds)
    dm = read_json(ds / "manifest.json") or {}
    feature_bytes = int(dm["features"]["bytes"]) if "bytes" in dm.get("features", {}) else feature_bytes
    ratio = feature_bytes / a.memory_cap

    base = None
    if not a.no_baseline:
        print("measuring the fixed memory of a training process (100K-node graph, same cap) ...", flush=True)
        base = baseline(a, cache)
        if "peak_anon_bytes" in base:
            print(f"  peak anon {fmt_bytes(base['peak_anon_bytes'])}, shmem {fmt_bytes(base['peak_shmem_bytes'])}, "
                  f"max usage {fmt_bytes(base['max_usage_bytes'])}, oom kills {base['oom_kills']}", flush=True)
        else:
            print(f"  failed: {base}", flush=True)

    # preprocess (sample + pack), inside the cap unless told otherwise
    cgroup.evict([ds])
    pcmd = preprocess_cmd(a, ds)
    where = "without a cap" if a.preprocess_uncapped else f"under {fmt_bytes(a.memory_cap)}"
    print(f"preprocess {where}: {shlex.join(pcmd)}", flush=True)
    r = cgroup.run_in_cgroup(pcmd, UNCAPPED if a.preprocess_uncapped else a.memory_cap,
                             name=f"trainoo-preprocess-{os.getpid()}", capture=True, timeout=a.timeout)
    pre = {**run_summary(r), "capped": not a.preprocess_uncapped, "command": shlex.join(pcmd),
           "log_tail": tail(r.stderr, 3000)}
    print(f"  exit {r.returncode}, {r.wall_s:.1f} s, max usage {fmt_bytes(r.max_usage_bytes)}, peak anon "
          f"{fmt_bytes(r.peak_stat.get('total_rss'))}, oom kills {r.oom_kills}", flush=True)
    if not r.ok:
        print(tail(r.stderr), file=sys.stderr)
        print("train_oocore: preprocess failed; pass --preprocess-uncapped to sample and pack without the cap",
              file=sys.stderr)
        return 1
    pm = read_json(ds / "packs" / a.name / "manifest.json")
    plm = read_json(ds / "plans" / a.name / "manifest.json")
    tr = pm["splits"]["train"]
    pack = {"blowup": pm["blowup"], "cold_bytes": pm["cold_bytes"], "host_rows": pm["tiers"]["host"]["rows"],
            "host_tier_bytes": pm["tier_bytes"]["host"], "train_minibatches": tr["minibatches"],
            "train_inputs": tr["input_rows"], "train_cold_bytes": tr["cold_bytes"],
            "splits": pm["splits"], "plan_splits": plm["splits"], "pack_bytes": dir_bytes(ds / "packs" / a.name),
            "timing": pm.get("timing")}
    meta = metadata_bytes(ds, a.name)

    # train inside the cap, from a cold page cache
    work = cache / "runs"
    work.mkdir(exist_ok=True)
    log_json = work / f"{a.name}.jsonl"
    log_json.unlink(missing_ok=True)
    run_dir = work / f"{a.name}-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    files, nbytes = cgroup.evict([ds])
    resident = cgroup.resident_bytes([ds])
    tcmd = train_cmd(a, ds, log_json, run_dir)
    print(f"train under {fmt_bytes(a.memory_cap)} ({fmt_bytes(resident)} of {fmt_bytes(nbytes)} cached): "
          f"{shlex.join(tcmd)}", flush=True)
    r = cgroup.run_in_cgroup(tcmd, a.memory_cap, name=f"trainoo-train-{os.getpid()}", capture=True, timeout=a.timeout)
    train = {**run_summary(r), "stderr_tail": tail(r.stderr, 6000), "stdout": r.stdout, "timeline": r.timeline,
             "peak_stat": r.peak_stat, "final_stat": r.final_stat, "timed_out": r.timed_out}
    print(f"  exit {r.returncode}, {r.wall_s:.1f} s, max usage {fmt_bytes(r.max_usage_bytes)}, peak anon "
          f"{fmt_bytes(r.peak_stat.get('total_rss'))}, shmem {fmt_bytes(r.peak_stat.get('total_shmem'))}, failcnt "
          f"{r.failcnt}, oom kills {r.oom_kills}", flush=True)
    if not r.ok:
        print(tail(r.stderr, 4000), file=sys.stderr)
    epochs, summary = read_log(log_json)
    for e in epochs:
        e["extent_amplification"] = e["extent_bytes"] / e["cold_bytes_needed"] if e["cold_bytes_needed"] else None
        e["metadata_read_bytes"] = e["read_bytes"] - e["extent_bytes"]
    machine["loadavg_end"] = os.getloadavg()
    checks = {
        "finished inside the cap": bool(r.ok and summary is not None),
        "no OOM kill": r.oom_kills == 0,
        f"{a.epochs} epochs logged": len(epochs) == a.epochs,
        f"overlap <= {OVERLAP_TARGET}": bool(epochs) and all((e["overlap"] or 99) <= OVERLAP_TARGET for e in epochs),
        f"read amplification <= {AMPLIFICATION_TARGET}": bool(epochs) and all(
            (e["read_amplification"] or 99) <= AMPLIFICATION_TARGET for e in epochs),
        "features >= 4x cap": ratio >= 4,
    }
    rep = {
        "bench": "train_oocore",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "params": {**gen_params(a), "fanouts": a.fanouts, "batch_size": a.batch_size, "host_cache": a.host_cache,
                   "hidden": a.hidden, "epochs": a.epochs, "train_seed": a.train_seed, "queue_depth": a.queue_depth,
                   "memory_cap": a.memory_cap, "memory_budget": a.memory_budget, "name": a.name},
        "dataset": {"path": str(ds), "num_nodes": dm.get("num_nodes"), "num_edges": dm.get("num_edges"),
                    "feature_bytes": feature_bytes, "bytes": dir_bytes(ds) - pack["pack_bytes"]},
        "ratio": ratio,
        "machine": machine,
        "git": git_state(),
        "commands": {"bench": shlex.join([sys.executable, *sys.argv]), "generate": gen_cmd,
                     "preprocess": shlex.join(pcmd), "train": shlex.join(tcmd)},
        "generate": gen,
        "baseline": base,
        "preprocess": pre,
        "pack": pack,
        "metadata": meta,
        "evicted": {"files": files, "bytes": nbytes, "resident_after_bytes": resident},
        "train": train,
        "epochs": epochs,
        "summary_line": summary,
        "checks": checks,
        "total_seconds": time.time() - t_start,
    }
    if not a.keep_pack:
        shutil.rmtree(ds / "packs" / a.name, ignore_errors=True)
        shutil.rmtree(ds / "plans" / a.name, ignore_errors=True)
    write_outputs(render(rep), rep, a.txt, a.json)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
