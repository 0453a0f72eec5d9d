"""Offline sampling and packing throughput, and the read amplification of one packed epoch vs a memmap gather.

What it does, in order (issue 3, "What must be shown"):

0. checks that a cgroup-v1 memory child can be made (root, /sys/fs/cgroup/memory), else
   says why in one sentence and exits 2; generates the synthetic dataset with
   ``diskgraph generate`` (2M nodes, 31M edges drawn = 30.1M stored, 128-d float32) or
   reuses it when its manifest's ``generator`` block matches;
1. **sampling**: ``diskgraph preprocess sample DATASET --fanouts 15,10 --batch-size 1024
   --seed 0 --name bench-io --overwrite`` with ``--threads 1`` and with the default
   thread count (topology evicted first), each in its own child cgroup; minibatches/s
   and sampled (input) nodes/s = the plan manifest's counts ÷ wall time (which includes
   process start and loading numba's cache), plus the sampler's own rate from its log line;
2. **packing**: the disk's sequential write bandwidth, measured here with the packer's own
   method (preallocate, 16 MiB ``pwrite`` + ``sync_file_range`` start of writeback,
   ``fdatasync`` + ``POSIX_FADV_DONTNEED`` every 64 MiB) and with O_DIRECT writes, into the
   filesystem of the dataset, before and after the packs; then ``diskgraph preprocess pack
   DATASET --plan bench-io --name bench-io --memory-budget 512M --overwrite`` with a
   host cache (``--host-cache 128M``, deleted after) and without any cache (kept for
   steps 3–4); MB/s written = (cold + tier bytes) ÷ wall time and ÷ the packer's own
   stage time (manifest ``timing``), and their ratio to the disk's bandwidth;
3. **packed read**: evicts the pack's files from the page cache and reads every extent of
   epoch 0 of the train split, in plan order, with O_DIRECT into one aligned buffer, in a
   child process (``--worker packed-read``) inside a 1 GiB cgroup; read amplification =
   the child's block-layer ``read_bytes`` (``/proc/self/io``, as cgroup.py measures it:
   interpreter start and index reads included) ÷ Σ n_cold × row_bytes;
4. **memmap baseline**: evicts the feature table from the page cache and gathers exactly
   the same rows (each minibatch's ``cold_nodes``) through ``mmap`` of the feature chunk
   files (``--worker memmap-read``) inside a cgroup capped below the table (512 MiB), with
   the default advice and with ``MADV_RANDOM``, for at most ``--memmap-seconds``; when
   stopped early it reports the minibatches done, the bytes read so far, the ratio so far
   and an extrapolated epoch time. A few minibatches are then gathered both ways and
   compared byte for byte;
5. prints one table and writes the JSON (``--json``) and the table (``--txt``).

Exit status: 0 when every target is met (packed read ≤ 1.1× the cold bytes; memmap ≥ 4×
with the default advice — what a user of np.memmap gets; the MADV_RANDOM run is reported for
comparison without a target; packing MB/s over the wall time ≥ 0.5 × the disk's buffered write
bandwidth; the rows agree), 1 when one is missed (printed), 2 when it cannot run here.
``--worker MODE`` is the internal child mode.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import re
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
from common import gen_params, read_json, tail  # noqa: E402
from import_oocore import diskgraph_cmd, fmt_bytes, git_state, parse_size  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
UNCAPPED = 1 << 62
PLAN_NAME = "bench-io"


# -- small helpers ---------------------------------------------------------------------------------

def self_io() -> dict[str, int]:
    with open("/proc/self/io") as f:
        return cgroup.parse_kv(f.read())


def vm_hwm() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


_SI = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


def si(text: str) -> float:
    m = re.fullmatch(r"([0-9.]+)([KMGT]?)", text.strip())
    return float(m.group(1)) * _SI[m.group(2)] if m else float("nan")


_SAMPLE_LOG = re.compile(r"sampled ([\d,]+) minibatches \((.*?)\) in ([0-9.]+) s with (\d+) threads.*?"
                         r"read with (\w+) access: ([0-9.]+) minibatches/s, ([0-9.]+[KMGT]?) sampled nodes/s, "
                         r"([0-9.]+[KMGT]?) sampled edges/s")


def parse_sample_log(text: str) -> dict:
    m = _SAMPLE_LOG.search(text or "")
    if not m:
        return {}
    return {"line": m.group(0), "minibatches": int(m.group(1).replace(",", "")), "seconds": float(m.group(3)),
            "threads": int(m.group(4)), "advice": m.group(5), "minibatches_per_s": float(m.group(6)),
            "nodes_per_s": si(m.group(7)), "edges_per_s": si(m.group(8))}


def block_device_facts(path: Path) -> dict:
    """read_ahead_kb / rotational / scheduler of the block device holding ``path`` (best effort)."""
    try:
        import subprocess

        dev = subprocess.run(["df", "-P", str(path)], capture_output=True, text=True, check=True).stdout.splitlines()[-1].split()[0]
    except Exception:
        return {}
    name = os.path.basename(os.path.realpath(dev))
    d = Path(os.path.realpath(f"/sys/class/block/{name}"))
    out = {"device": dev}
    for cand in (d, d.parent):
        q = cand / "queue"
        if q.is_dir():
            for key in ("read_ahead_kb", "rotational", "scheduler", "logical_block_size"):
                try:
                    out[key] = (q / key).read_text().strip()
                except OSError:
                    pass
            break
    return out


# -- workers (run as children inside a capped cgroup) ---------------------------------------------

def epoch_entries(pack, split: str, epoch: int) -> list:
    """Index rows of one epoch of ``split``, in plan order."""
    out = []
    for i in range(pack.num_minibatches(split)):
        e = pack.entry(split, i)
        if e.epoch == epoch:
            out.append((i, e))
    return out


def worker_packed_read(a) -> dict:
    """Read every extent of one epoch, in plan order, with O_DIRECT into one aligned buffer."""
    io0 = self_io()
    from diskgraph.store.packed import open_pack

    pack = open_pack(a.pack)
    io1 = self_io()
    entries = epoch_entries(pack, a.split, a.epoch)
    io2 = self_io()
    buf = pack.extent_buffer(a.split)
    rb = pack.row_bytes
    need = sum(e.n_cold for _, e in entries) * rb
    padded = sum(e.padded_nbytes for _, e in entries)
    reader = pack.reader(a.split, direct=True)
    checksum = 0
    t0 = time.perf_counter()
    for i, e in entries:
        rows = pack.read_extent(a.split, i, out=buf, direct=True, entry=e)
        if e.n_cold:
            checksum ^= int(rows.view("u4")[-1, -1])  # touch the data (the last row of the extent)
    seconds = time.perf_counter() - t0
    io3 = self_io()
    return {"mode": "packed-read", "split": a.split, "epoch": a.epoch, "minibatches": len(entries),
            "cold_rows": need // rb, "needed_bytes": need, "padded_bytes": padded,
            "buffer_bytes": int(buf.nbytes), "direct": bool(reader.direct), "seconds": seconds,
            "read_bytes_startup": io1["read_bytes"] - io0["read_bytes"],
            "read_bytes_index": io2["read_bytes"] - io1["read_bytes"],
            "read_bytes_extents": io3["read_bytes"] - io2["read_bytes"],
            "rchar_extents": io3["rchar"] - io2["rchar"],
            "checksum": checksum, "vm_hwm_bytes": vm_hwm()}


def worker_memmap_read(a) -> dict:
    """Gather the same rows as the packed read through mmap of the feature chunk files."""
    import numpy as np

    from diskgraph.store.packed import open_pack
    from diskgraph.store.zarr_arrays import RawArray

    pack = open_pack(a.pack)
    entries = epoch_entries(pack, a.split, a.epoch)
    if a.max_minibatches:
        entries_run = entries[: a.max_minibatches]
    else:
        entries_run = entries
    # the lists of rows, copied out of the index before the clock starts (int32 ids: 4 B per row)
    counts = np.array([e.n_cold for _, e in entries_run], dtype=np.int64)
    ptr = np.zeros(len(entries_run) + 1, dtype=np.int64)
    np.cumsum(counts, out=ptr[1:])
    cold = np.empty(int(ptr[-1]), dtype=np.int32)
    for k, (_, e) in enumerate(entries_run):
        cold[ptr[k]:ptr[k + 1]] = e.cold_nodes
    total_needed = sum(e.n_cold for _, e in entries) * pack.row_bytes
    del entries
    pack.close()

    feats = RawArray(Path(a.dataset) / "features")
    cr = feats.chunk_shape[0]
    dim = feats.shape[1]
    maps, arrays = [], []
    for c in range(feats.num_chunks):
        fd = os.open(feats.chunk_path(c), os.O_RDONLY)
        try:
            m = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        if a.advice == "random":
            m.madvise(mmap.MADV_RANDOM)
        maps.append(m)
        arrays.append(np.frombuffer(m, dtype=feats.storage_dtype).reshape(cr, dim))
    rb = feats.row_bytes
    # 4 KiB pages each minibatch touches: what a page-granular gather reads with no reuse across minibatches
    page = mmap.PAGESIZE
    touched = np.zeros(len(entries_run), dtype=np.int64)
    for k in range(len(entries_run)):
        nodes = cold[ptr[k]:ptr[k + 1]].astype(np.int64)
        if nodes.size:
            c = nodes // cr
            base = c * (-(-cr * rb // page))
            first = base + (nodes - c * cr) * rb // page
            last = base + ((nodes - c * cr) * rb + rb - 1) // page
            prev = np.concatenate(([-1], np.maximum.accumulate(last)[:-1]))
            touched[k] = int(np.maximum(0, last - np.maximum(first, prev + 1) + 1).sum()) * page
    io0 = self_io()
    t0 = time.perf_counter()
    deadline = t0 + a.seconds if a.seconds else None
    done = needed = 0
    per_mb = []
    checksum = 0
    for k in range(len(entries_run)):
        nodes = cold[ptr[k]:ptr[k + 1]]
        out = np.empty((nodes.shape[0], dim), dtype=feats.storage_dtype)
        if nodes.size:
            chunk = nodes // cr
            cuts = np.flatnonzero(np.diff(chunk)) + 1  # nodes are ascending, so each chunk is one run
            starts = np.concatenate(([0], cuts))
            stops = np.concatenate((cuts, [nodes.shape[0]]))
            for s, t in zip(starts.tolist(), stops.tolist()):
                c = int(chunk[s])
                out[s:t] = arrays[c][nodes[s:t] - c * cr]
            checksum ^= int(out.view("u4")[-1, -1])
        done += 1
        needed += nodes.shape[0] * rb
        now = time.perf_counter()
        per_mb.append({"t": round(now - t0, 3), "read_bytes": self_io()["read_bytes"] - io0["read_bytes"],
                       "needed_bytes": needed})
        if deadline is not None and now > deadline:
            break
    seconds = time.perf_counter() - t0
    io1 = self_io()
    read = io1["read_bytes"] - io0["read_bytes"]
    n_all = len(entries_run)
    stopped = done < n_all
    return {"mode": "memmap-read", "advice": a.advice, "split": a.split, "epoch": a.epoch,
            "minibatches_planned": n_all, "minibatches_done": done, "stopped_early": stopped,
            "needed_bytes": needed, "needed_bytes_epoch": total_needed, "read_bytes": read,
            "pages_touched_bytes": int(touched[:done].sum()), "page_bytes": page,
            "rchar": io1["rchar"] - io0["rchar"], "seconds": seconds,
            "ratio": read / needed if needed else None,
            "extrapolated_epoch_seconds": seconds * total_needed / needed if needed else None,
            "extrapolated_epoch_read_bytes": read * total_needed / needed if needed else None,
            "chunk_files": len(maps), "chunk_rows": cr, "checksum": checksum, "vm_hwm_bytes": vm_hwm(),
            "per_minibatch": per_mb}


def worker_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="pack_io.py --worker", description="internal child mode of pack_io.py")
    p.add_argument("--worker", choices=["packed-read", "memmap-read"], required=True)
    p.add_argument("--pack", required=True)
    p.add_argument("--dataset")
    p.add_argument("--split", default="train")
    p.add_argument("--epoch", type=int, default=0)
    p.add_argument("--advice", choices=["default", "random"], default="default")
    p.add_argument("--seconds", type=float, default=0)
    p.add_argument("--max-minibatches", type=int, default=0)
    a = p.parse_args(argv)
    res = worker_packed_read(a) if a.worker == "packed-read" else worker_memmap_read(a)
    print(json.dumps(res))
    return 0


# -- the disk's write bandwidth -------------------------------------------------------------------

def probe_write(directory: Path, total: int, direct: bool, block: int = 16 * MiB) -> dict:
    """Write ``total`` bytes sequentially into a new file in ``directory`` the way the packer writes; delete it.

    Buffered (``direct=False``): preallocate, ``pwrite`` of ``block`` bytes, start writeback
    (``sync_file_range``) after each, ``fdatasync`` + ``POSIX_FADV_DONTNEED`` every
    ``FLUSH_BYTES`` (64 MiB) — the packer's buffered fallback; by default it writes whole pages with O_DIRECT.
    O_DIRECT: the same blocks from a 4 KiB-aligned buffer with O_DIRECT, ``fdatasync``
    every 64 MiB. The clock covers the writes and the final ``fdatasync``.
    """
    import numpy as np

    from diskgraph.store.direct_io import O_DIRECT, aligned_empty
    from diskgraph.store.files import FLUSH_BYTES, drop_cache, preallocate, start_writeback

    path = directory / f".pack_io-probe-{os.getpid()}-{'direct' if direct else 'buffered'}"
    buf = aligned_empty(block)
    buf[:] = np.random.default_rng(0).integers(0, 256, block, dtype=np.uint8)  # incompressible
    flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | (O_DIRECT if direct else 0)
    io0 = self_io()
    fd = os.open(path, flags, 0o644)
    try:
        preallocate(fd, total)
        os.fdatasync(fd)
        t0 = time.perf_counter()
        off = dirty = 0
        view = memoryview(buf)
        while off < total:
            n = min(block, total - off)
            done = 0
            while done < n:
                done += os.pwrite(fd, view[done:n], off + done)
            off += n
            dirty += n
            if not direct:
                start_writeback(fd)
            if dirty >= FLUSH_BYTES:
                os.fdatasync(fd)
                if not direct:
                    drop_cache(fd)
                dirty = 0
        os.fdatasync(fd)
        seconds = time.perf_counter() - t0
        drop_cache(fd)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    io1 = self_io()
    return {"direct": direct, "bytes": total, "block_bytes": block, "flush_bytes": FLUSH_BYTES, "seconds": seconds,
            "MB_per_s": total / 1e6 / seconds, "write_bytes": io1["write_bytes"] - io0["write_bytes"],
            "path": str(path)}


# -- steps -----------------------------------------------------------------------------------------

def ensure_dataset(a, ds: Path) -> tuple[dict | None, str | None, str | None]:
    """(generate run, generate command, refusal) — generates ``ds`` unless a matching one is there."""
    want = gen_params(a)
    m = read_json(ds / "manifest.json")
    if m and not a.regenerate:
        g = m.get("generator") or {}
        same = all(g.get(k) == v for k, v in want.items())
        if same or a.dataset_given:
            print(f"reusing dataset {ds} ({m.get('num_nodes'):,} nodes, {m.get('num_edges'):,} edges)", flush=True)
            return None, None, None
        return None, None, (f"{ds} exists but was generated with other parameters ({ {k: g.get(k) for k in want} }); "
                            "pass --regenerate or another --dataset")
    cmd = [*diskgraph_cmd(), "generate", "--nodes", a.nodes, "--edges", a.edges, "--feature-dim", a.feature_dim,
           "--classes", a.classes, "--seed", a.seed, "--split", a.split, "--out", ds, "--overwrite"]
    cmd = [str(c) for c in cmd]
    print(f"generating {ds}: {shlex.join(cmd)}", flush=True)
    ds.parent.mkdir(parents=True, exist_ok=True)
    r = cgroup.run_in_cgroup(cmd, UNCAPPED, name=f"packio-generate-{os.getpid()}", capture=True)
    if not r.ok:
        return None, shlex.join(cmd), f"generating the dataset failed (exit {r.returncode}): {tail(r.stderr, 500)}"
    return r.to_dict(timeline=False), shlex.join(cmd), None


def sample_cmd(a, ds: Path, threads: int | None) -> list[str]:
    cmd = [*diskgraph_cmd(), "preprocess", "sample", str(ds), "--fanouts", a.fanouts, "--batch-size",
           str(a.batch_size), "--seed", str(a.sample_seed), "--name", PLAN_NAME, "--overwrite"]
    if threads:
        cmd += ["--threads", str(threads)]
    return [str(c) for c in cmd]


def run_sampling(a, ds: Path, threads: int | None) -> dict:
    cgroup.evict([ds / "topology"])
    cmd = sample_cmd(a, ds, threads)
    label = f"{threads} thread(s)" if threads else "default threads"
    print(f"[sample, {label}] {shlex.join(cmd)}", flush=True)
    la = os.getloadavg()
    r = cgroup.run_in_cgroup(cmd, a.sample_cap or UNCAPPED, name=f"packio-sample-{os.getpid()}", capture=True,
                             timeout=a.timeout)
    man = read_json(ds / "plans" / PLAN_NAME / "manifest.json") if r.ok else {}
    splits = man.get("splits", {})
    mbs = sum(int(s.get("minibatches", 0)) for s in splits.values())
    nodes = sum(int(s.get("input_nodes", 0)) for s in splits.values())
    edges = sum(int(s.get("sampled_edges", 0)) for s in splits.values())
    log = parse_sample_log(r.stderr or "")
    rec = {"command": shlex.join(cmd), "threads_option": threads, "run": r.to_dict(timeline=False),
           "loadavg_before": la, "manifest_seconds": man.get("seconds"), "minibatches": mbs, "input_nodes": nodes,
           "sampled_edges": edges, "splits": {k: {kk: v.get(kk) for kk in ("minibatches", "input_nodes", "sampled_edges",
                                                                          "distinct_nodes_read", "counts_sha256",
                                                                          "file_bytes", "mean_layer_sizes")}
                                              for k, v in splits.items()},
           "log": log, "ok": r.ok and bool(man)}
    if r.wall_s and mbs:
        rec["minibatches_per_s"] = mbs / r.wall_s
        rec["nodes_per_s"] = nodes / r.wall_s
        rec["edges_per_s"] = edges / r.wall_s
    print(f"  exit {r.returncode}, {r.wall_s:.1f} s wall: {rec.get('minibatches_per_s', 0):.1f} minibatches/s, "
          f"{rec.get('nodes_per_s', 0) / 1e6:.2f} M input nodes/s; sampler log: {log.get('line', '-')}", flush=True)
    if not r.ok:
        print(tail(r.stderr, 3000), file=sys.stderr)
    return rec


def pack_cmd(a, ds: Path, name: str, host_cache: int | None) -> list[str]:
    cmd = [*diskgraph_cmd(), "preprocess", "pack", str(ds), "--plan", PLAN_NAME, "--name", name,
           "--memory-budget", a.memory_budget_text, "--overwrite"]
    if host_cache:
        cmd += ["--host-cache", a.host_cache_text]
    return [str(c) for c in cmd]


def run_packing(a, ds: Path, name: str, host_cache: int | None) -> dict:
    cgroup.evict([ds / "features"])
    cmd = pack_cmd(a, ds, name, host_cache)
    print(f"[pack{' with a host cache' if host_cache else ', no cache'}] {shlex.join(cmd)}", flush=True)
    la = os.getloadavg()
    r = cgroup.run_in_cgroup(cmd, a.pack_cap or UNCAPPED, name=f"packio-pack-{os.getpid()}", capture=True,
                             timeout=a.timeout)
    pdir = ds / "packs" / name
    man = read_json(pdir / "manifest.json") if r.ok else {}
    keys = ("gpu_cache_bytes", "host_cache_bytes", "tiers", "splits", "feature_bytes", "cold_bytes", "packed_bytes",
            "tier_bytes", "blowup", "config", "seconds", "timing")
    rec = {"command": shlex.join(cmd), "name": name, "path": str(pdir), "run": r.to_dict(), "loadavg_before": la,
           "manifest": {k: man.get(k) for k in keys} if man else None, "ok": r.ok and bool(man),
           "log_tail": tail(r.stderr, 1500)}
    if man:
        t = man.get("timing", {})
        written = int(t.get("bytes_written") or (man["packed_bytes"] + sum(man["tier_bytes"].values())))
        rec["bytes_written"] = written
        rec["wall_MB_per_s"] = written / 1e6 / r.wall_s
        if t.get("pack_seconds"):
            rec["stage_MB_per_s"] = written / 1e6 / t["pack_seconds"]
        rec["files_bytes"] = sum(f.stat().st_size for f in pdir.rglob("*") if f.is_file())
        print(f"  exit {r.returncode}, {r.wall_s:.1f} s wall, {fmt_bytes(written)} written: "
              f"{rec['wall_MB_per_s']:.0f} MB/s over the wall time, {rec.get('stage_MB_per_s', 0):.0f} MB/s over the "
              f"packing stage ({t.get('pack_seconds')} s); blow-up {man.get('blowup')}x, peak anon "
              f"{fmt_bytes(r.peak_stat.get('total_rss'))}", flush=True)
    else:
        print(f"  exit {r.returncode}: {tail(r.stderr, 3000)}", file=sys.stderr, flush=True)
    return rec


def worker_cmd(*args) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--worker", *[str(x) for x in args]]


def run_worker(cmd: list[str], cap: int, name: str, timeout: float) -> tuple[dict, dict | None]:
    r = cgroup.run_in_cgroup(cmd, cap, name=f"packio-{name}-{os.getpid()}", capture=True, timeout=timeout)
    out = None
    if r.returncode == 0:
        try:
            out = json.loads((r.stdout or "").strip().splitlines()[-1])
        except (ValueError, IndexError):
            out = None
    d = r.to_dict()
    d.pop("stdout", None)
    if out is None:
        print(f"  worker failed: exit {r.returncode}, oom kills {r.oom_kills}, timed out {r.timed_out}: "
              f"{tail(r.stderr, 2000)}", file=sys.stderr, flush=True)
    return d, out


def run_packed_read(a, pdir: Path) -> dict:
    cold_file = pdir / "cold" / "train" / "c" / "0"
    cgroup.evict([pdir])
    resident = cgroup.resident_bytes([cold_file])
    cmd = worker_cmd("packed-read", "--pack", pdir, "--split", "train", "--epoch", 0)
    print(f"[packed read, O_DIRECT, under {fmt_bytes(a.read_cap)}] ({fmt_bytes(resident)} of the extents cached) "
          f"{shlex.join(cmd)}", flush=True)
    run, out = run_worker(cmd, a.read_cap, "packed-read", a.timeout)
    rec = {"command": shlex.join(cmd), "cap_bytes": a.read_cap, "run": run, "result": out,
           "resident_before_bytes": resident, "ok": out is not None and run["ok"]}
    if out:
        need = out["needed_bytes"]
        rec["ratio_child"] = run["read_bytes"] / need if need else None
        rec["ratio_extents"] = out["read_bytes_extents"] / need if need else None
        rec["GB_per_s"] = need / 1e9 / out["seconds"] if out["seconds"] else None
        print(f"  {out['minibatches']} minibatches, {fmt_bytes(need)} of cold rows needed; child read "
              f"{fmt_bytes(run['read_bytes'])} ({rec['ratio_child']:.4f}x), extents loop {fmt_bytes(out['read_bytes_extents'])} "
              f"({rec['ratio_extents']:.4f}x) in {out['seconds']:.2f} s = {rec['GB_per_s']:.2f} GB/s, "
              f"O_DIRECT {out['direct']}", flush=True)
    return rec


def run_memmap(a, ds: Path, pdir: Path, advice: str) -> dict:
    cgroup.evict([ds / "features"])
    resident = cgroup.resident_bytes([ds / "features"])
    cmd = worker_cmd("memmap-read", "--pack", pdir, "--dataset", ds, "--split", "train", "--epoch", 0,
                     "--advice", advice, "--seconds", a.memmap_seconds, "--max-minibatches", a.memmap_minibatches)
    print(f"[memmap gather, {advice} advice, under {fmt_bytes(a.memmap_cap)}] ({fmt_bytes(resident)} of the table "
          f"cached) {shlex.join(cmd)}", flush=True)
    run, out = run_worker(cmd, a.memmap_cap, f"memmap-{advice}", a.memmap_seconds + a.timeout)
    rec = {"command": shlex.join(cmd), "advice": advice, "cap_bytes": a.memmap_cap, "run": run, "result": out,
           "resident_before_bytes": resident, "ok": out is not None and run["ok"]}
    if out:
        need = out["needed_bytes"]
        rec["ratio_loop"] = out["read_bytes"] / need if need else None
        rec["ratio_child"] = run["read_bytes"] / need if need else None
        print(f"  {out['minibatches_done']}/{out['minibatches_planned']} minibatches in {out['seconds']:.1f} s"
              f"{' (stopped at the time limit)' if out['stopped_early'] else ''}: read {fmt_bytes(out['read_bytes'])} "
              f"for {fmt_bytes(need)} of rows = {rec['ratio_loop']:.2f}x (whole child {rec['ratio_child']:.2f}x); "
              f"epoch extrapolated to {out['extrapolated_epoch_seconds']:.0f} s", flush=True)
    return rec


def check_rows(ds: Path, pdir: Path, k: int) -> dict:
    """Gather ``k`` minibatches both ways (memmap of the chunk files, packed extent) and compare byte for byte."""
    import numpy as np

    from diskgraph.store.packed import open_pack
    from diskgraph.store.zarr_arrays import RawArray

    pack = open_pack(pdir)
    entries = epoch_entries(pack, "train", 0)
    feats = RawArray(ds / "features")
    cr = feats.chunk_shape[0]
    mm = [np.memmap(feats.chunk_path(c), dtype=feats.storage_dtype, mode="r", shape=(cr, feats.shape[1]))
          for c in range(feats.num_chunks)]
    picks = sorted(set(np.linspace(0, len(entries) - 1, min(k, len(entries))).astype(int).tolist()))
    checked = []
    ok = True
    for j in picks:
        i, e = entries[j]
        ext = pack.read_extent("train", i, entry=e)
        nodes = np.asarray(e.cold_nodes)
        got = np.empty_like(ext)
        for r, v in enumerate(nodes.tolist()):
            got[r] = mm[v // cr][v % cr]
        same = bool(np.array_equal(got.view(np.uint8), ext.view(np.uint8)))
        ref = feats.read_rows(int(nodes[0]), int(nodes[0]) + 1)[0] if nodes.size else None
        same_first = bool(nodes.size == 0 or np.array_equal(ref.view(np.uint8), ext[0].view(np.uint8)))
        checked.append({"minibatch": i, "rows": int(nodes.size), "equal": same, "first_row_vs_read_rows": same_first})
        ok = ok and same and same_first
        assert same and same_first, f"minibatch {i}: the memmap gather differs from the packed extent"
    pack.close()
    return {"ok": ok, "minibatches": checked}


# -- the table -------------------------------------------------------------------------------------

def render_table(rep: dict) -> str:
    rows: list[tuple[str, str]] = []

    def add(label, value=""):
        rows.append((label, value))

    m, p = rep["machine"], rep["params"]
    disk = next(iter(m.get("disks", {}).values()), {})
    bd = m.get("block_device", {})
    add("machine", f"{m.get('nproc')} CPUs ({m.get('cpu_model', '?')}), {fmt_bytes(m.get('mem_total_bytes'))} RAM, "
        f"{'no swap' if not m.get('swap_total_bytes') else 'swap ' + fmt_bytes(m['swap_total_bytes'])}, "
        f"kernel {m.get('kernel')}")
    add("disk", f"{disk.get('fstype', '?')} on {disk.get('device', '?')} ({fmt_bytes(disk.get('size_bytes'))}, "
        f"{fmt_bytes(disk.get('avail_bytes'))} free at start), read_ahead {bd.get('read_ahead_kb', '?')} KiB, "
        f"rotational {bd.get('rotational', '?')}")
    la0, la1 = m.get("loadavg_start"), m.get("loadavg_end")
    if la0 and la1:
        add("load average", f"{la0[0]:.2f} at start, {la1[0]:.2f} at end (1-min; per step in the JSON; other "
            "sessions' work skews times)")
    d = rep["dataset"]
    drawn = f"{d['edges_drawn']:,}" if d.get("edges_drawn") else "?"
    add("graph", f"{d['num_nodes']:,} nodes, {d['num_edges']:,} edges stored ({drawn} drawn, "
        f"R-MAT), {d['feature_dim']}-d {d['feature_dtype']} = {fmt_bytes(d['feature_bytes'])} feature table in "
        f"{d['chunk_files']} chunk files of {d['chunk_rows']:,} rows; splits "
        + ", ".join(f"{k} {v:,}" for k, v in d["splits"].items()))
    add("dataset", f"{d['path']} ({'generated in this run' if rep.get('generate') else 'reused'})")

    add("1. SAMPLING", f"fanouts {p['fanouts']}, batch {p['batch_size']}, seed {p['sample_seed']}, 1 epoch; all splits")
    s_runs = rep["sampling"]
    last = s_runs[-1] if s_runs else None
    if last and last.get("ok"):
        add("  plan", f"{last['minibatches']:,} minibatches ("
            + ", ".join(f"{k} {v['minibatches']:,}" for k, v in last["splits"].items())
            + f"), {last['input_nodes']:,} input nodes, {last['sampled_edges']:,} sampled edges")
    for s in s_runs:
        label = f"  --threads {s['threads_option']}" if s["threads_option"] else "  default threads"
        if not s.get("ok"):
            add(label, f"FAILED (exit {s['run']['returncode']})")
            continue
        lg = s.get("log") or {}
        add(label, f"{s['run']['wall_s']:.1f} s wall: {s['minibatches_per_s']:.1f} minibatches/s, "
            f"{s['nodes_per_s'] / 1e6:.2f} M input nodes/s, {s['edges_per_s'] / 1e6:.2f} M edges/s")
        if lg:
            add("    sampler's own", f"{lg['seconds']:.1f} s with {lg['threads']} threads ({lg['advice']} access): "
                f"{lg['minibatches_per_s']:.1f} minibatches/s, {lg['nodes_per_s'] / 1e6:.2f} M nodes/s "
                f"(its log line; excludes process start, numba cache load, manifest)")
        add("    memory", f"peak anon {fmt_bytes(s['run']['peak_stat'].get('total_rss'))}, user {s['run']['user_s']:.1f} s, "
            f"sys {s['run']['sys_s']:.1f} s, load avg before {s['loadavg_before'][0]:.2f}")
    if len(s_runs) >= 2 and all(x.get("ok") for x in s_runs):
        shas = [{k: v["counts_sha256"] for k, v in x["splits"].items()} for x in s_runs]
        add("  reproducible", "same plan with every thread count (counts sha256 equal)" if all(x == shas[0] for x in shas)
            else "DIFFERENT plans across thread counts")

    add("2. PACKING", f"--memory-budget {p['memory_budget']}; feature table evicted before each run")
    probes = rep["probes"]
    for key, label in (("buffered_before", "  disk, packer's method"), ("buffered_after", "  disk, again after"),
                       ("direct", "  disk, O_DIRECT")):
        pr = probes.get(key)
        if pr:
            how = ("16 MiB pwrite + sync_file_range, fdatasync + DONTNEED every 64 MiB" if not pr["direct"]
                   else "16 MiB O_DIRECT pwrite, fdatasync every 64 MiB")
            add(label, f"{pr['MB_per_s']:.0f} MB/s ({fmt_bytes(pr['bytes'])} in {pr['seconds']:.1f} s; {how})")
    disk_bw = rep["summary"].get("disk_MB_per_s")
    for pk in rep["packing"]:
        label = "  pack, --host-cache " + p["host_cache"] if pk.get("host_cache") else "  pack, no cache"
        if not pk.get("ok"):
            add(label, f"FAILED (exit {pk['run']['returncode']}): {pk.get('log_tail', '')[-300:]}")
            continue
        man = pk["manifest"]
        t = man.get("timing", {})
        add(label, f"{pk['run']['wall_s']:.1f} s wall, {fmt_bytes(pk['bytes_written'])} written = "
            f"{pk['wall_MB_per_s']:.0f} MB/s" + (f" = {pk['wall_MB_per_s'] / disk_bw:.2f}x the disk" if disk_bw else ""))
        add("    packer's stages", f"index pass {t.get('index_seconds')} s, packing pass {t.get('pack_seconds')} s = "
            f"{pk.get('stage_MB_per_s', 0):.0f} MB/s" + (f" = {pk.get('stage_MB_per_s', 0) / disk_bw:.2f}x the disk"
                                                        if disk_bw else "")
            + f" (writer busy {t.get('write_seconds')} s: pwrite + fdatasync; manifest timing)")
        sp = man.get("splits", {})
        add("    blow-up", f"{man.get('blowup')}x: cold extents {fmt_bytes(man.get('packed_bytes'))} (payload "
            f"{fmt_bytes(man.get('cold_bytes'))}) for a {fmt_bytes(man.get('feature_bytes'))} table; "
            + ", ".join(f"{k} {fmt_bytes(v.get('padded_bytes'))}" for k, v in sp.items()))
        tiers = man.get("tiers", {})
        add("    tiers", ", ".join(f"{k} {tiers.get(k, {}).get('rows', 0):,} rows = {fmt_bytes(man['tier_bytes'].get(k))}"
                                   for k in ("gpu", "host")))
        r = pk["run"]
        add("    OS counters", f"write_bytes {fmt_bytes(r['write_bytes'])}, read_bytes {fmt_bytes(r['read_bytes'])}; "
            f"peak anon {fmt_bytes(r['peak_stat'].get('total_rss'))}, max usage {fmt_bytes(r['max_usage_bytes'])}; "
            f"user {r['user_s']:.1f} s, sys {r['sys_s']:.1f} s; load avg before {pk['loadavg_before'][0]:.2f}")

    pr = rep.get("packed_read") or {}
    add("3. PACKED READ", f"train epoch 0, plan order, O_DIRECT into one aligned buffer, child in a "
        f"{fmt_bytes(p['read_cap'])} cgroup; pack evicted ({fmt_bytes(pr.get('resident_before_bytes'))} cached before)")
    out = pr.get("result")
    if out:
        run = pr["run"]
        add("  rows needed", f"{out['minibatches']} minibatches, {out['cold_rows']:,} cold rows = "
            f"{fmt_bytes(out['needed_bytes'])} (Σ n_cold × row bytes); padded extents {fmt_bytes(out['padded_bytes'])}")
        add("  read from disk", f"{fmt_bytes(run['read_bytes'])} by the child (/proc/self/io read_bytes via cgroup.py: "
            f"start {fmt_bytes(out['read_bytes_startup'])}, index {fmt_bytes(out['read_bytes_index'])}, extents "
            f"{fmt_bytes(out['read_bytes_extents'])})")
        add("  read amplification", f"{pr['ratio_child']:.4f}x whole child, {pr['ratio_extents']:.4f}x the extent reads "
            f"(target ≤ 1.1)")
        add("  time", f"{out['seconds']:.2f} s for the extents = {pr['GB_per_s']:.2f} GB/s of cold rows; "
            f"O_DIRECT {'yes' if out['direct'] else 'NO (fell back to buffered)'}")
        add("  memory", f"peak anon {fmt_bytes(run['peak_stat'].get('total_rss'))}, max usage "
            f"{fmt_bytes(run['max_usage_bytes'])} of {fmt_bytes(run['limit_bytes'])}, oom kills {run['oom_kills']}; "
            f"buffer {fmt_bytes(out['buffer_bytes'])}")
    else:
        add("  result", "FAILED")

    add("4. MEMMAP GATHER", f"the same rows (each minibatch's cold_nodes, ascending) through mmap of the feature "
        f"chunk files, child in a {fmt_bytes(p['memmap_cap'])} cgroup (< the table), limit {p['memmap_seconds']:.0f} s")
    for mm in rep.get("memmap", []):
        out = mm.get("result")
        label = f"  {mm['advice']} advice" if mm["advice"] == "default" else "  MADV_RANDOM"
        if not out:
            add(label, f"FAILED (exit {mm['run']['returncode']}, oom kills {mm['run']['oom_kills']})")
            continue
        run = mm["run"]
        add(label, f"{out['minibatches_done']}/{out['minibatches_planned']} minibatches in {out['seconds']:.1f} s"
            + (" (stopped at the limit)" if out["stopped_early"] else "")
            + f": read {fmt_bytes(out['read_bytes'])} for {fmt_bytes(out['needed_bytes'])} of rows = "
            f"{mm['ratio_loop']:.2f}x (whole child {mm['ratio_child']:.2f}x)")
        pm = out.get("per_minibatch") or []
        if pm and out.get("pages_touched_bytes") is not None:
            add("    pages touched", f"{out['pages_touched_bytes'] / max(1, out['needed_bytes']):.2f}x the rows (4 KiB pages "
                f"the done minibatches touch, each counted once per minibatch: no reuse across minibatches); first "
                f"minibatch (cold cache) read {pm[0]['read_bytes'] / max(1, pm[0]['needed_bytes']):.2f}x")
        add("    epoch", f"{out['needed_bytes_epoch'] / 1e9:.2f} GB of rows; "
            + ("measured" if not out["stopped_early"] else "extrapolated")
            + f" {out['extrapolated_epoch_seconds']:.0f} s, {fmt_bytes(out['extrapolated_epoch_read_bytes'])} read "
            f"({out['needed_bytes'] / 1e9 / out['seconds']:.3f} GB/s of rows); "
            f"vs packed {rep['summary'].get('packed_seconds') or 0:.1f} s")
        add("    memory", f"peak anon {fmt_bytes(run['peak_stat'].get('total_rss'))}, max usage "
            f"{fmt_bytes(run['max_usage_bytes'])}, failcnt {run['failcnt']}, oom kills {run['oom_kills']}; "
            f"table {fmt_bytes(mm['resident_before_bytes'])} cached before")
    ck = rep.get("check") or {}
    if ck:
        add("  same rows", ("yes" if ck.get("ok") else "NO") + ": memmap gather == packed extent, byte for byte, for "
            f"minibatches {', '.join(str(x['minibatch']) for x in ck.get('minibatches', []))}"
            + (f" ({ck['error']})" if ck.get("error") else ""))

    tg = rep["targets"]
    add("TARGETS", "")
    for t in tg:
        add(f"  {t['name']}", f"{t['value_text']} (target {t['target']}): {'met' if t['met'] else 'MISSED'}")
    add("result", "PASS: every target met" if all(t["met"] for t in tg) else
        "FAIL: missed " + "; ".join(t["name"] for t in tg if not t["met"]))
    width = max(len(k) for k, _ in rows)
    title = f"pack_io — offline sampling, packing, and the read amplification of one epoch ({rep['date']})"
    lines = [title, "-" * len(title)]
    for k, v in rows:
        lines.append(f"{k.ljust(width)}  {v}".rstrip())
    lines += ["", "commands:"] + [f"  {c}" for c in rep["commands_list"]]
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pack_io.py",
        description="On a synthetic graph (default 2M nodes, 31M edges drawn, 128-d float32): sampling throughput "
                    "(`diskgraph preprocess sample`), packing throughput against the disk's write bandwidth measured "
                    "in the same run (`diskgraph preprocess pack`), and the read amplification of one training epoch: "
                    "packed extents read with O_DIRECT vs a memmap gather of the same rows, counted by the OS "
                    "(/proc/self/io read_bytes) in capped cgroup-v1 children. Prints one table; needs root and cgroup v1.",
        epilog="Example: python tools/bench/pack_io.py --json tools/bench/results/pack_io-cpu2.json "
               "--txt tools/bench/results/pack_io-cpu2.txt\n"
               "Exit status: 0 all targets met, 1 a target missed, 2 cannot run here.")
    g = p.add_argument_group("graph (generated once into --dataset and reused)")
    g.add_argument("--dataset", type=Path, help="dataset directory (default: bench-data/syn2m-e31m; generated when missing)")
    g.add_argument("--nodes", type=int, default=2_000_000)
    g.add_argument("--edges", type=int, default=31_000_000, help="edges drawn (default 31M: 30.1M stored after dedup)")
    g.add_argument("--feature-dim", type=int, default=128)
    g.add_argument("--classes", type=int, default=16)
    g.add_argument("--seed", type=int, default=0, help="generator seed")
    g.add_argument("--split", default="random:0.1,0.1,0.8", help="random split of the generated graph")
    g.add_argument("--regenerate", action="store_true", help="generate the dataset again")
    g.add_argument("--allow-small", action="store_true", help="run on a graph under 2M nodes / 30M edges / 128-d")
    s = p.add_argument_group("sampling and packing")
    s.add_argument("--fanouts", default="15,10")
    s.add_argument("--batch-size", type=int, default=1024)
    s.add_argument("--sample-seed", type=int, default=0)
    s.add_argument("--no-single-thread", action="store_true", help="skip the --threads 1 sampling run")
    s.add_argument("--memory-budget", default="512M", help="--memory-budget of the pack (default 512M)")
    s.add_argument("--host-cache", default="128M", help="--host-cache of the second pack run ('0' skips it; default 128M)")
    s.add_argument("--probe-bytes", type=parse_size, default=4 * GiB, help="bytes of each disk write probe (default 4G)")
    s.add_argument("--sample-cap", type=parse_size, help="memory cap of the sampling runs (default: none)")
    s.add_argument("--pack-cap", type=parse_size, help="memory cap of the pack runs (default: none)")
    r = p.add_argument_group("reads")
    r.add_argument("--read-cap", type=parse_size, default=GiB, help="memory cap of the packed read (default 1G)")
    r.add_argument("--memmap-cap", type=parse_size, default=512 * MiB,
                   help="memory cap of the memmap gather, below the feature table (default 512M)")
    r.add_argument("--memmap-seconds", type=float, default=120, help="time limit of each memmap gather (default 120)")
    r.add_argument("--memmap-minibatches", type=int, default=0, help="minibatch limit of the memmap gather (0 = epoch)")
    r.add_argument("--check-minibatches", type=int, default=4, help="minibatches compared memmap vs packed (default 4)")
    o = p.add_argument_group("output")
    o.add_argument("--json", type=Path, metavar="FILE", help="write the full report as JSON")
    o.add_argument("--txt", type=Path, metavar="FILE", help="write the printed table to FILE")
    o.add_argument("--keep", action="store_true", help="keep the plan and the packs (default: delete them at the end)")
    o.add_argument("--timeout", type=float, default=3600, help="kill a step after this many seconds (default 3600)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return worker_main(argv)
    a = build_parser().parse_args(argv)
    from diskgraph.units import parse_bytes

    try:
        cg_parent = cgroup.check_memory_cgroup()
    except cgroup.CgroupUnavailable as e:
        print(f"pack_io: {e}", file=sys.stderr)
        return 2
    a.memory_budget_text, a.host_cache_text = a.memory_budget, a.host_cache
    try:
        parse_bytes(a.memory_budget)
        host_cache = parse_bytes(a.host_cache)
    except Exception as e:  # noqa: BLE001
        print(f"pack_io: {e}", file=sys.stderr)
        return 2
    a.dataset_given = a.dataset is not None
    ds = (a.dataset or REPO / "bench-data" / "syn2m-e31m").resolve()
    t_start = time.time()
    machine = cgroup.machine_facts([ds.parent])
    machine["cgroup_parent"] = str(cg_parent)
    machine["block_device"] = block_device_facts(ds.parent if ds.parent.exists() else REPO)
    machine["loadavg_start"] = os.getloadavg()
    commands: list[str] = [shlex.join([sys.executable, *([sys.argv[0]] if sys.argv else []), *argv])]

    gen, gen_cmd, refusal = ensure_dataset(a, ds)
    if refusal:
        print(f"pack_io: {refusal}", file=sys.stderr)
        return 2
    if gen_cmd:
        commands.append(gen_cmd)
    dm = read_json(ds / "manifest.json")
    if not dm or not dm.get("features"):
        print(f"pack_io: {ds} is not a dataset with features", file=sys.stderr)
        return 2
    from diskgraph.store.zarr_arrays import RawArray

    fa = RawArray(ds / "features")
    dataset = {"path": str(ds), "num_nodes": dm["num_nodes"], "num_edges": dm["num_edges"],
               "edges_drawn": (dm.get("generator") or {}).get("edges"), "feature_dim": dm["features"]["dim"],
               "feature_dtype": dm["features"]["dtype"], "feature_bytes": dm["features"]["bytes"],
               "chunk_rows": fa.chunk_shape[0], "chunk_files": fa.num_chunks, "splits": dm.get("splits", {}),
               "generator": dm.get("generator")}
    small = dm["num_nodes"] < 2_000_000 or dm["num_edges"] < 30_000_000 or dm["features"]["dim"] < 128
    if small and not a.allow_small:
        print(f"pack_io: {ds} has {dm['num_nodes']:,} nodes, {dm['num_edges']:,} stored edges, "
              f"{dm['features']['dim']}-d features; the benchmark needs ≥ 2M nodes, ≥ 30M edges and 128-d "
              "(raise --edges, or pass --allow-small)", file=sys.stderr)
        return 2

    # 1. sampling
    sampling = []
    for threads in ([1] if not a.no_single_thread else []) + [None]:
        rec = run_sampling(a, ds, threads)
        commands.append(rec["command"])
        sampling.append(rec)
    if not sampling[-1].get("ok"):
        print("pack_io: sampling failed; nothing to pack", file=sys.stderr)
        return 1
    rb = dm["features"]["row_bytes"]
    est = sampling[-1]["input_nodes"] * rb + 4096 * sampling[-1]["minibatches"]
    free = shutil.disk_usage(ds).free
    if free < est + a.probe_bytes + 2 * GiB:
        print(f"pack_io: {ds} has {fmt_bytes(free)} free but the pack needs about {fmt_bytes(est)} plus the "
              f"{fmt_bytes(a.probe_bytes)} write probe; free disk space", file=sys.stderr)
        if not a.keep:
            shutil.rmtree(ds / "plans" / PLAN_NAME, ignore_errors=True)
        return 2

    # 2. packing
    probes = {}
    print(f"[disk] buffered write probe, {fmt_bytes(a.probe_bytes)} into {ds}", flush=True)
    probes["buffered_before"] = probe_write(ds, a.probe_bytes, direct=False)
    print(f"  {probes['buffered_before']['MB_per_s']:.0f} MB/s", flush=True)
    print(f"[disk] O_DIRECT write probe, {fmt_bytes(a.probe_bytes)}", flush=True)
    probes["direct"] = probe_write(ds, a.probe_bytes, direct=True)
    print(f"  {probes['direct']['MB_per_s']:.0f} MB/s", flush=True)
    packing = []
    if host_cache:
        rec = run_packing(a, ds, PLAN_NAME + "-host", host_cache)
        rec["host_cache"] = host_cache
        commands.append(rec["command"])
        packing.append(rec)
        shutil.rmtree(rec["path"], ignore_errors=True)  # room for the next pack
    rec = run_packing(a, ds, PLAN_NAME, None)
    rec["host_cache"] = 0
    commands.append(rec["command"])
    packing.append(rec)
    main_pack = rec
    print("[disk] buffered write probe again", flush=True)
    probes["buffered_after"] = probe_write(ds, a.probe_bytes, direct=False)
    print(f"  {probes['buffered_after']['MB_per_s']:.0f} MB/s", flush=True)

    pdir = ds / "packs" / PLAN_NAME
    packed_read = memmaps = None
    check: dict = {}
    if main_pack.get("ok"):
        # 3. packed read; 4. memmap baseline
        packed_read = run_packed_read(a, pdir)
        commands.append(packed_read["command"])
        memmaps = []
        for advice in ("default", "random"):
            mm = run_memmap(a, ds, pdir, advice)
            commands.append(mm["command"])
            memmaps.append(mm)
        try:
            check = check_rows(ds, pdir, a.check_minibatches)
        except AssertionError as e:
            check = {"ok": False, "error": str(e), "minibatches": []}
        except Exception as e:  # noqa: BLE001
            check = {"ok": False, "error": f"{type(e).__name__}: {e}", "minibatches": []}

    # summary and targets
    disk_bw = max(probes["buffered_before"]["MB_per_s"], probes["buffered_after"]["MB_per_s"])
    summary = {"disk_MB_per_s": disk_bw, "disk_direct_MB_per_s": probes["direct"]["MB_per_s"]}
    targets = []
    if main_pack.get("ok"):
        summary["pack_wall_MB_per_s"] = main_pack["wall_MB_per_s"]
        summary["pack_stage_MB_per_s"] = main_pack.get("stage_MB_per_s")
        summary["pack_ratio_wall"] = main_pack["wall_MB_per_s"] / disk_bw
        summary["pack_ratio_stage"] = (main_pack.get("stage_MB_per_s") or 0) / disk_bw
        targets.append({"name": "packing MB/s ÷ disk MB/s", "value": summary["pack_ratio_wall"],
                        "value_text": f"{summary['pack_ratio_wall']:.2f} over the wall time ({main_pack['wall_MB_per_s']:.0f} ÷ "
                                      f"{disk_bw:.0f} MB/s, the faster buffered probe); {summary['pack_ratio_stage']:.2f} "
                                      "over the packing stage",
                        "target": "≥ 0.5", "met": summary["pack_ratio_wall"] >= 0.5})
    else:
        targets.append({"name": "packing", "value": None, "value_text": "the pack failed", "target": "runs", "met": False})
    if packed_read and packed_read.get("result"):
        summary["packed_ratio"] = packed_read["ratio_child"]
        summary["packed_seconds"] = packed_read["result"]["seconds"]
        targets.append({"name": "packed read amplification", "value": packed_read["ratio_child"],
                        "value_text": f"{packed_read['ratio_child']:.4f}x (whole child; extents alone "
                                      f"{packed_read['ratio_extents']:.4f}x)",
                        "target": "≤ 1.1", "met": packed_read["ratio_child"] <= 1.1 and packed_read["result"]["direct"]})
    else:
        targets.append({"name": "packed read amplification", "value": None, "value_text": "not measured",
                        "target": "≤ 1.1", "met": False})
    for mm in memmaps or [{"advice": "default"}, {"advice": "random"}]:
        name = f"memmap read amplification ({'MADV_RANDOM' if mm['advice'] == 'random' else 'default advice'})"
        if mm.get("result"):
            summary[f"memmap_{mm['advice']}_ratio"] = mm["ratio_loop"]
            so_far = " so far" if mm["result"]["stopped_early"] else ""
            if mm["advice"] == "random":
                # a tuned memmap: reported for comparison; the issue's ≥ 4× is about the memmap a user gets
                targets.append({"name": name, "value": mm["ratio_loop"],
                                "value_text": f"{mm['ratio_loop']:.2f}x{so_far}",
                                "target": "reported, no target", "met": True})
                continue
            targets.append({"name": name, "value": mm["ratio_loop"],
                            "value_text": f"{mm['ratio_loop']:.2f}x{so_far}",
                            "target": "≥ 4", "met": mm["ratio_loop"] >= 4})
        elif mm["advice"] == "random":
            continue
        else:
            targets.append({"name": name, "value": None, "value_text": "not measured", "target": "≥ 4", "met": False})
    targets.append({"name": "memmap rows == packed rows", "value": check.get("ok"),
                    "value_text": "equal" if check.get("ok") else f"not equal or not checked {check.get('error', '')}",
                    "target": "equal", "met": bool(check.get("ok"))})

    machine["loadavg_end"] = os.getloadavg()
    report = {
        "bench": "pack_io",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "params": {"fanouts": a.fanouts, "batch_size": a.batch_size, "sample_seed": a.sample_seed,
                   "memory_budget": a.memory_budget, "host_cache": a.host_cache, "probe_bytes": a.probe_bytes,
                   "read_cap": a.read_cap, "memmap_cap": a.memmap_cap, "memmap_seconds": a.memmap_seconds,
                   "memmap_minibatches": a.memmap_minibatches, "generator": gen_params(a)},
        "machine": machine, "git": git_state(), "dataset": dataset, "generate": gen,
        "commands_list": commands, "sampling": sampling, "probes": probes, "packing": packing,
        "packed_read": packed_read, "memmap": memmaps or [], "check": check, "summary": summary, "targets": targets,
        "total_seconds": time.time() - t_start,
    }
    table = render_table(report)
    print()
    print(table)
    if a.txt:
        a.txt.parent.mkdir(parents=True, exist_ok=True)
        a.txt.write_text(table + "\n")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    if not a.keep:
        shutil.rmtree(ds / "packs" / PLAN_NAME, ignore_errors=True)
        shutil.rmtree(ds / "packs" / (PLAN_NAME + "-host"), ignore_errors=True)
        shutil.rmtree(ds / "plans" / PLAN_NAME, ignore_errors=True)
    missed = [t["name"] for t in targets if not t["met"]]
    if missed:
        print("pack_io: missed: " + "; ".join(missed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
