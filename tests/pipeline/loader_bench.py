"""Measure the PackedLoader on one pack: stage times, loader throughput, and overlap with a fake compute.

    python tests/pipeline/loader_bench.py DATASET --plan NAME --pack NAME [--device cpu] [--compute-ms 50]

Runs, on the train split (one epoch order each, after a warm-up epoch that is not reported):

1. ``serial``: the read and the assemble stage of every minibatch one after the other (queue depth 1,
   consumer waits for each batch) — per-minibatch read and assemble times.
2. ``throughput``: the pipelined loader with no compute — minibatches/s and extent GB/s.
3. ``overlap``: the pipelined loader with ``time.sleep(compute_ms)`` per batch as the compute stage —
   epoch time against the sum and the maximum of the stage times.

Bytes the process read from storage come from ``/proc/self/io`` (``read_bytes``), against the cold rows'
bytes the epoch needs (read amplification). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from diskgraph.pipeline.loader import PackedLoader
from diskgraph.store.dataset import open_dataset
from diskgraph.store.packed import open_pack
from diskgraph.store.plan import open_plan


def read_bytes() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    return 0


def run_epoch(loader: PackedLoader, order, compute_s: float = 0.0) -> tuple[dict, list[dict], int]:
    rb = read_bytes()
    per = []
    for batch in loader.epoch(order):
        if compute_s:
            time.sleep(compute_s)
        if loader.device.type == "cuda":
            torch.cuda.current_stream().synchronize()
        per.append(dict(batch.stats))
    return loader.epoch_stats(), per, read_bytes() - rb


def summary(per: list[dict], key: str) -> dict:
    v = [p[key] * 1e3 for p in per]
    return {"mean_ms": round(statistics.fmean(v), 3), "median_ms": round(statistics.median(v), 3),
            "p90_ms": round(sorted(v)[int(0.9 * (len(v) - 1))], 3)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("--plan", required=True)
    ap.add_argument("--pack", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--queue-depth", type=int, default=2)
    ap.add_argument("--compute-ms", type=float, default=50.0)
    ap.add_argument("--buffered", action="store_true", help="buffered reads instead of O_DIRECT")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    ds = open_dataset(args.dataset)
    plan = open_plan(Path(args.dataset) / "plans" / args.plan)
    pack = open_pack(Path(args.dataset) / "packs" / args.pack)
    t0 = time.perf_counter()
    loader = PackedLoader(ds, pack, plan, "train", device=args.device, queue_depth=args.queue_depth,
                          direct=not args.buffered)
    cache_s = time.perf_counter() - t0
    row = pack.row_bytes
    out = {"dataset": str(args.dataset), "pack": args.pack, "device": str(loader.device),
           "torch_threads": torch.get_num_threads(), "cache": loader.cache.describe(), "cache_load_s": round(cache_s, 2),
           "queue_depth": loader.queue_depth, "ring": loader.ring_size, "direct": loader.direct}

    run_epoch(loader, loader.order(0, args.seed))  # warm-up: numba/arrow/allocations

    serial = PackedLoader(ds, pack, plan, "train", device=args.device, queue_depth=1, ring=1,
                          direct=not args.buffered, cache=loader.cache)
    st, per, _ = run_epoch(serial, serial.order(1, args.seed))
    out["serial"] = {"minibatches": st["minibatches"], "epoch_s": round(st["epoch_s"], 3),
                     "read": summary(per, "read_s"), "io": summary(per, "io_s"), "assemble": summary(per, "assemble_s"),
                     "read_busy_s": round(st["read_busy_s"], 3), "assemble_busy_s": round(st["assemble_busy_s"], 3),
                     "mean_extent_mb": round(st["bytes_read"] / st["minibatches"] / 2**20, 2),
                     "mean_inputs": round(st["inputs"] / st["minibatches"]),
                     "hit_rate": {k: round(st[k], 4) for k in ("gpu_hit_rate", "host_hit_rate", "cold_rate")}}

    for name, compute in (("throughput", 0.0), ("overlap", args.compute_ms / 1e3)):
        st, per, rb = run_epoch(loader, loader.order(2, args.seed), compute)
        stages = {"read": st["read_busy_s"], "assemble": st["assemble_busy_s"], "compute": st["compute_s"]}
        needed = st["rows_cold"] * row
        out[name] = {
            "epoch_s": round(st["epoch_s"], 3), "minibatches": st["minibatches"],
            "minibatches_per_s": round(st["minibatches_per_s"], 1),
            "extent_gb_per_s": round(st["bytes_read"] / st["epoch_s"] / 1e9, 3),
            "input_gb_per_s": round(st["inputs"] * row / st["epoch_s"] / 1e9, 3),
            "stage_s": {k: round(v, 3) for k, v in stages.items()},
            "sum_of_stages_s": round(sum(stages.values()), 3), "slowest_stage": st["slowest_stage"],
            "epoch_over_slowest": round(st["overlap"], 3) if st["overlap"] else None,
            "epoch_over_sum": round(st["epoch_s"] / sum(stages.values()), 3),
            "waits_s": {k: round(st[k], 3) for k in ("read_buffer_wait_s", "read_put_wait_s", "assemble_input_wait_s",
                                                      "assemble_buffer_wait_s", "assemble_put_wait_s", "consumer_wait_s")},
            "extent_bytes": st["bytes_read"], "proc_read_bytes": rb,
            "read_amplification": round(rb / needed, 4) if needed else None,
        }
    loader.close()
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
