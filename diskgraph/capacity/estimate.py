"""Sizes, memory and times of a plan, from a sampled :class:`~diskgraph.capacity.workload.Workload` and a
:class:`~diskgraph.capacity.profile.Hardware` profile. Every figure carries how it was derived.

Disk: the plan's Arrow files are the sampled rows' serialized bytes (each standing for ``minibatches /
sampled`` rows) plus an empty file's bytes; its counts are 4 bytes per node and split. The pack's cold
files are, per minibatch, ``round_up(cold_rows * row_bytes, 4096)``; its index rows are serialized with
the index schema from the tier and slot arrays the packer's own kernel computes; the tiers are
``rows * (row_bytes + 8)`` (rows and their ids). A ``--max-blowup`` bound (:mod:`~diskgraph.capacity.bounded`) that
binds replaces each extent by the bounded one and adds the rows left in the feature table.

Epoch time (the training pass of one epoch, what ``metrics.jsonl`` logs as ``epoch_s``), per minibatch of
the replayed epoch: read = the read stage's CPU work (calibrated per minibatch, input node and sampled
edge) + the O_DIRECT read (latency + padded bytes ÷ sequential bandwidth) + a bounded pack's table reads
(:func:`~diskgraph.capacity.bounded.table_read_seconds`); assemble = rows × the
calibrated gather cost of their tier; compute = the calibrated model step of its shape. The stages
overlap, so the epoch is the largest of the three stage sums — and, when the compute device is the CPU,
of compute + the read stage's CPU work + assemble: torch's thread pool spans every core, and the other
stages' CPU work stalls its parallel regions rather than overlapping them — times the calibrated pipeline
factor, but never less than the slowest stage (:func:`pipelined_epoch`), plus the first minibatch's read
and assemble (the pipeline filling). The bottleneck is the stage with the largest sum.

Memory of training (anonymous memory, which a memory cap cannot reclaim): the calibrated process
baseline (a real training run of a 2,000-node graph) + the tiers + per loader (train, val, test)
``queue_depth + 2`` float32 ``x`` buffers of the split's largest minibatch and ``queue_depth + 2`` staging
buffers of its largest extent (on CUDA also one device buffer of that extent, the staged rows' copy on the
device) + ``2 * queue_depth + 3`` minibatches in flight (blocks, tier positions,
gathered hot rows) + the largest training step's activations (calibrated bytes per activation element) +
parameters with gradients and Adam moments.
"""

from __future__ import annotations

import math

import numpy as np

from ..models import parameter_estimate, work_terms
from ..store.direct_io import ALIGNMENT
from .bounded import DEFAULT_MAX_BLOWUP, Bounded, largest_fitting_blowup, predict_bounded, table_read_seconds
from .compute import time_model_steps
from .profile import Hardware
from ..store.errors import InputError
from .workload import ColdRows, Workload, cold_rows, empty_ipc_file_bytes

PLAN_METADATA_BYTES = 3 << 10
"""The plan's manifest and each counts array's zarr.json (about a kilobyte each)."""
PACK_METADATA_BYTES = 8 << 10
"""The pack's manifest and the zarr.json of its groups and tier arrays."""
PACK_SPLIT_METADATA_BYTES = 2 << 10
"""Per split, the zarr.json of its extents, extent checksums and table checksums (about 600 bytes each)."""


def _round_up(x: np.ndarray) -> np.ndarray:
    return np.ceil(np.asarray(x, dtype=np.float64) * 1.0 / ALIGNMENT) * ALIGNMENT


def _epoch_weight(s) -> float:
    """Plan rows of ONE epoch of the split each sampled minibatch stands for."""
    return s.minibatches_per_epoch / max(s.k, 1)


def footprint(w: Workload, cr: ColdRows, bd: Bounded | None = None) -> dict:
    """Bytes of the dataset, the plan and the pack (per split), and the blow-up; with ``bd`` (a ``--max-blowup``
    prediction that binds) the extents are the bounded ones and the table rows are counted."""
    from ..store.packed import index_schema
    from ..store.plan import plan_schema

    rb = w.row_bytes
    plan_empty = empty_ipc_file_bytes(plan_schema(w.num_hops))
    index_empty = empty_ipc_file_bytes(index_schema())
    plan_files, cold, index = {}, {}, {}
    for name, s in w.splits.items():
        plan_files[name] = plan_empty + float(s.plan_row_bytes.sum()) * s.weight
        padded = bd.padded[name] if bd is not None and bd.binding else _round_up(cr.cold[name] * rb)
        cold[name] = float(padded.sum()) * s.weight
        index[name] = index_empty + float(cr.index_row_bytes[name].sum()) * s.weight
    n_gpu, n_host = (int(round(r * w.scale)) for r in cr.tier_rows)
    tiers = {"gpu": n_gpu * (rb + 8), "host": n_host * (rb + 8)}
    counts = 4 * w.num_nodes * len(w.splits)
    plan_bytes = sum(plan_files.values()) + counts + PLAN_METADATA_BYTES
    packed = sum(cold.values())
    if bd is not None and bd.binding:
        packed = min(packed, float(bd.budget))  # the packer's guarantee (the weighted sum may round above it)
    minibatches = sum(s.total for s in w.splits.values())
    # the manifest and groups, each split's zarr.json files (extents, checksums, table checksums) and its two checksum
    # arrays of 8 bytes per minibatch (the extents' and the table rows')
    pack_meta = PACK_METADATA_BYTES + PACK_SPLIT_METADATA_BYTES * len(w.splits) + 16 * minibatches
    pack_bytes = packed + sum(index.values()) + sum(tiers.values()) + pack_meta
    feature_bytes = w.num_nodes * rb
    bound = bd if bd is not None and bd.binding else None
    return {
        "dataset_bytes": int(w.dataset_bytes), "dataset_parts": {k: int(v) for k, v in w.dataset_files.items()},
        "feature_bytes": int(feature_bytes),
        "plan_bytes": int(plan_bytes), "plan_files": {k: int(v) for k, v in plan_files.items()}, "counts_bytes": counts,
        "packed_bytes": int(packed), "cold_bytes": {k: int(v) for k, v in cold.items()},
        "index_bytes": {k: int(v) for k, v in index.items()}, "tier_bytes": tiers,
        "tier_rows": {"gpu": n_gpu, "host": n_host},
        "pack_bytes": int(pack_bytes), "blowup": packed / feature_bytes if feature_bytes else 0.0,
        "total_bytes": int(w.dataset_bytes + plan_bytes + pack_bytes),
        "max_blowup": bd.max_blowup if bd is not None else None,
        "table_rows": int(round(bound.table_rows_total)) if bound else 0,
        "table_page_reads": int(round(bound.table_pages_total)) if bound else 0,
        "unbounded_packed_bytes": int(bd.unbounded_bytes) if bound else int(packed),
    }


def _stage_times(w: Workload, hw: Hardware, cr: ColdRows, cfg: dict, name: str, train: bool,
                 bd: Bounded | None = None) -> dict:
    """Sums over one epoch of split ``name``: read (CPU and I/O), assemble, compute; and the first minibatch."""
    s = w.splits[name]
    rb = w.row_bytes
    rs, gt = hw.get("read_stage"), hw.get("gather")
    disk = hw.get("disk")
    coef = np.asarray(hw.compute(cfg["model"])["train" if train else "eval"], dtype=np.float64)
    coef = coef * cfg.get("compute_scale", {}).get("train" if train else "eval", 1.0)
    n_in = s.sizes[:, -1].astype(np.float64)
    e_all = s.edges.sum(axis=1).astype(np.float64)
    read_cpu = rs["per_minibatch_s"] + rs["per_node_s"] * n_in + rs["per_edge_s"] * e_all
    bound = bd is not None and bd.binding
    padded = bd.padded[name] if bound else _round_up(cr.cold[name] * rb)
    io = np.where(padded > 0, disk["read_latency_s"] + padded / disk["seq_read_Bps"], 0.0)
    table_io, table_bytes, table_pages, table_req, rate = np.zeros(s.k), np.zeros(s.k), np.zeros(s.k), np.zeros(s.k), ""
    if bound:
        table_io, rate = table_read_seconds(bd, name, disk, "disk.rand_read_iops_qd" in hw.overrides)
        table_bytes, table_pages, table_req = bd.table_bytes[name], bd.table_pages[name], bd.table_requests[name]
        io = io + table_io
    hot = cr.gpu[name] + cr.host[name]
    assemble = hot * (gt["hot_row_s"] + gt["hot_byte_s"] * rb) + cr.cold[name] * (gt["cold_row_s"] + gt["cold_byte_s"] * rb)
    terms = np.array([work_terms(cfg["model"], s.sizes[i], s.edges[i], w.feature_dim, cfg["hidden"], w.num_classes,
                                 cfg["heads"]) for i in range(s.k)]).reshape(s.k, 5)
    compute = terms[:, :4] @ coef
    wt = _epoch_weight(s)
    return {"read_cpu_s": float(read_cpu.sum() * wt), "io_s": float(io.sum() * wt),
            "read_s": float((read_cpu + io).sum() * wt), "assemble_s": float(assemble.sum() * wt),
            "compute_s": float(compute.sum() * wt),
            "fill_s": float(np.mean(read_cpu + io + assemble)) if s.k else 0.0,
            "bytes_read": int((padded + table_bytes).sum() * wt), "minibatches": s.minibatches_per_epoch,
            "table_io_s": float(table_io.sum() * wt), "table_bytes_read": int(table_bytes.sum() * wt),
            "table_page_reads": int(round(float(table_pages.sum()) * wt)),
            "table_requests": int(round(float(table_req.sum()) * wt)), "table_rate": rate,
            "activation_elements_max": float(terms[:, 4].max()) if s.k else 0.0}


def epoch_time(w: Workload, hw: Hardware, cr: ColdRows, cfg: dict, name: str = "train", train: bool = True,
               bd: Bounded | None = None) -> dict:
    """The pipelined epoch of one split: stage sums, the epoch time, the bottleneck and how it was found (with
    ``bd``, a bounded pack's extents and table reads)."""
    st = _stage_times(w, hw, cr, cfg, name, train, bd)
    stages = {"read": st["read_s"], "assemble": st["assemble_s"], "compute": st["compute_s"]}
    bounds = dict(stages)
    note = ""
    if not hw.device.startswith("cuda"):
        # On a CPU run torch's thread pool spans every core; CPU work of the read and assemble threads takes a
        # core from it, and a parallel region waits for its slowest thread, so that work delays compute as a
        # whole instead of overlapping it: the CPU parts add up (the disk reads still overlap)
        cpu = st["compute_s"] + st["read_cpu_s"] + st["assemble_s"]
        bounds["cpu"] = cpu
        note = f", compute + read CPU + assemble {cpu:.3g} s (one CPU shared by all three stages)"
    bottleneck = max(stages, key=stages.get)
    factor = hw.get("pipeline.epoch_factor") if not hw.device.startswith("cuda") else None
    slowest = stages[bottleneck]
    # the stages overlap at best: a pipelined epoch never takes less than its slowest stage, whatever the factor
    floor = max(bounds.values()) * (factor or 1.0) < slowest
    epoch = pipelined_epoch(bounds.values(), stages.values(), factor or 1.0, st["fill_s"])
    how = (f"max of read {stages['read']:.3g} s, assemble {stages['assemble']:.3g} s, compute {stages['compute']:.3g} s"
           + note + (f"; x {factor:.3g}, the calibrated pipeline factor (a real epoch on this machine ÷ this "
                     "estimate of it)" if factor else "")
           + (f"; at least the slowest stage ({bottleneck} {slowest:.3g} s)" if floor else "")
           + f"; + {st['fill_s']:.3g} s to fill the pipeline"
           + (f"; read includes the table rows' {st['table_requests']:,} requests ({st['table_io_s']:.3g} s at "
              f"{st['table_rate']})" if st["table_requests"] else ""))
    return {**st, "stage_s": stages, "bounds_s": bounds, "epoch_s": epoch, "bottleneck": bottleneck, "how": how}


def pipelined_epoch(bounds, stages, factor: float = 1.0, fill_s: float = 0.0) -> float:
    """Seconds of a pipelined epoch: the largest bound (stage sums, and on the CPU the CPU parts added up) times the
    calibrated pipeline ``factor``, never less than the slowest stage (``stages``: seconds per stage), plus
    ``fill_s`` seconds to fill the pipeline."""
    return max(max(bounds, default=0.0) * factor, max(stages, default=0.0)) + fill_s


def local_compute_scale(w: Workload, hw: Hardware, cfg: dict) -> dict | None:
    """Time training steps and evaluation forwards of the model on a few of the sampled minibatches, on this
    machine (each the mean of the fastest quarter of several, after warm-up steps:
    :data:`~diskgraph.capacity.timing.STEP_TIMING`),
    and return how far the calibrated fit is off for them (``{"train": x, "eval": y, ...}``): the
    estimate is then scaled by it. Only when the profile was calibrated on this host for this device (a plan for
    other hardware keeps the profile's fit as it is); None otherwise."""
    import platform

    import torch

    if hw.get("machine.hostname") != platform.node():
        return None
    dev = torch.device(hw.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        return None
    mbs = [mb for s in w.splits.values() for mb in s.examples if s.name == "train"] or \
          [mb for s in w.splits.values() for mb in s.examples]
    if not mbs:
        return None
    tt, te = hw_time(cfg, w, mbs, dev)
    coef = hw.compute(cfg["model"])
    terms = np.array([work_terms(cfg["model"], mb.layer_sizes, [len(i) for i in mb.hop_indices], w.feature_dim,
                                 cfg["hidden"], w.num_classes, cfg["heads"])[:4] for mb in mbs])
    pt, pe = terms @ np.asarray(coef["train"]), terms @ np.asarray(coef["eval"])
    return {"train": float(sum(tt) / max(pt.sum(), 1e-12)), "eval": float(sum(te) / max(pe.sum(), 1e-12)),
            "steps": len(mbs), "measured_train_s": [round(t, 5) for t in tt]}


def hw_time(cfg: dict, w: Workload, mbs, dev):
    """Seconds of the training steps and evaluation forwards of the plan's model on ``mbs`` (see
    :func:`~diskgraph.capacity.compute.time_model_steps`)."""
    return time_model_steps(cfg["model"], mbs, w.feature_dim, cfg["hidden"], w.num_classes, cfg["heads"], dev)


def training_memory(w: Workload, hw: Hardware, cr: ColdRows, cfg: dict, fp: dict, bd: Bounded | None = None) -> dict:
    """Peak host (and GPU) memory of a training process, part by part."""
    rb, f = w.row_bytes, w.feature_dim
    qd = cfg["queue_depth"]
    cuda = hw.device.startswith("cuda")
    base = int(hw.get("process.base_anon_bytes", 0))
    parts_host = {"process": base}
    parts_gpu: dict[str, int] = {}
    tiers = fp["tier_bytes"]
    tier_host = {k: int(v * rb / (rb + 8)) for k, v in tiers.items()}  # rows only (the ids stay on disk)
    if cuda:
        parts_gpu["gpu_tier"] = tier_host["gpu"]
    else:
        parts_host["gpu_tier"] = tier_host["gpu"]
    parts_host["host_tier"] = tier_host["host"]
    x_bytes = staging = device_copy = 0
    for name, s in w.splits.items():
        if not s.k:
            continue
        max_in = int(s.sizes[:, -1].max())
        bound = bd is not None and bd.binding
        max_pad = int((bd.padded[name] if bound else _round_up(cr.cold[name] * rb)).max())
        x_bytes += (qd + 2) * max_in * f * 4 + (max_in * rb if w.feature_dtype != "float32" else 0)
        staging += (qd + 2) * max_pad
        if bound and bd.table_rows[name].max() > 0:
            # the table tier: its own ring of the largest table rows, and the reader's run buffers (one per thread)
            from ..store.table_reader import MAX_RUN_BYTES, READ_THREADS

            staging += (qd + 2) * int(_round_up(np.ceil(bd.table_rows[name].max()) * rb)) + READ_THREADS * MAX_RUN_BYTES
        device_copy += max_pad  # CUDA: the loader's device copy of its staged extent (its own buffer)
    (parts_gpu if cuda else parts_host)["x_buffers"] = x_bytes
    parts_host["staging"] = staging
    # minibatches in flight between the stages (2 queues of queue_depth, one in each stage and the consumer's):
    # their blocks (int64 indptr/indices/dst_index, float32 degrees, the CSR values), the tier positions and the
    # hot rows gathered before they are scattered into x
    in_flight = 0
    for name, s in w.splits.items():
        if not s.k:
            continue
        per = (8 * 3 + 4) * s.edges.sum(axis=1) + 28 * s.sizes[:, :-1].sum(axis=1) + 16 * s.sizes[:, -1]
        hot = (cr.gpu[name] + cr.host[name]) * rb
        in_flight = max(in_flight, int((per + hot).max()))
    parts_host["in_flight"] = (2 * qd + 3) * in_flight
    train = w.splits.get("train")
    act_el = 0.0
    if train is not None and train.k:
        act_el = max(work_terms(cfg["model"], train.sizes[i], train.edges[i], f, cfg["hidden"], w.num_classes,
                                cfg["heads"])[4] for i in range(train.k))
    act = int(act_el * float(hw.get("process.bytes_per_activation_element", 4.0)))
    params = parameter_estimate(cfg["model"], f, cfg["hidden"], w.num_classes, w.num_hops, cfg["heads"])
    (parts_gpu if cuda else parts_host)["activations"] = act
    (parts_gpu if cuda else parts_host)["parameters"] = int(params * 4 * 4)
    if cuda:
        parts_gpu["staging_device_copy"] = device_copy  # one per loader (train, val, test)
    out = {"host_bytes": int(sum(parts_host.values())), "host_parts": parts_host}
    if cuda:
        out.update(gpu_bytes=int(sum(parts_gpu.values())), gpu_parts=parts_gpu)
    # page cache that keeps later epochs from re-reading the plan and pack index (reclaimable)
    t = fp["plan_files"].get("train", 0) + fp["index_bytes"].get("train", 0)
    out["file_cache_bytes"] = int(t)
    return out


def preprocess(w: Workload, hw: Hardware, cr: ColdRows, fp: dict, cfg: dict) -> dict:
    """Time and peak memory of sampling and packing (and of importing, for a summary)."""
    disk = hw.get("disk")
    cores = hw.cores
    threads = cfg.get("threads") or cores
    total_mb = sum(s.total for s in w.splits.values())
    per_mb = sum(s.sample_s for s in w.splits.values()) / max(sum(s.k for s in w.splits.values()), 1)
    # sampled minibatches on a scaled-down graph touch the same number of nodes, so the rate carries over
    sample_s = total_mb * per_mb / min(threads, cores) + fp["plan_bytes"] / disk["write_Bps"]
    base = int(hw.get("process.base_anon_bytes", 0))
    mb_bytes = max(int(s.plan_row_bytes.max()) for s in w.splits.values() if s.k)
    sample_mem = base + 4 * w.num_nodes * len(w.splits) + 2 * threads * 3 * mb_bytes
    index_s = total_mb * cr.index_s
    if cfg.get("max_blowup") is not None:
        index_s *= 2  # pass A: the packer indexes every minibatch once more to find the budget's threshold
    written = fp["packed_bytes"] + sum(fp["tier_bytes"].values())
    pass_s = max(fp["feature_bytes"] / disk["seq_read_Bps"], written / disk["write_Bps"])
    budget = cfg["memory_budget"]
    pack_mem = _packer_memory(w, fp, total_mb, budget)
    out = {
        "sample": {"seconds": sample_s, "peak_host_bytes": int(sample_mem),
                   "how": f"{total_mb:,} minibatches x {per_mb * 1e3:.3g} ms (timed on the sample) / "
                          f"{min(threads, cores)} threads + plan bytes / disk write bandwidth"},
        "pack": {"seconds": index_s + pass_s, "index_s": index_s, "pass_s": pass_s,
                 "peak_host_bytes": int(base + pack_mem),
                 "how": f"index pass {total_mb:,} x {cr.index_s * 1e3:.3g} ms (the packer's kernel, timed) + one pass: "
                        "max(feature table / read bandwidth, packed bytes / write bandwidth); memory: the process + "
                        "what the packer holds under --memory-budget (per-node and per-minibatch arrays, carry pages, "
                        "two feature slices, two gather buffers)"},
    }
    if w.scale != 1 or not w.source.startswith("dataset"):
        edge_bytes = 8 * w.num_edges
        imp = (3 * edge_bytes + 2 * fp["feature_bytes"]) / disk["seq_read_Bps"] + fp["dataset_bytes"] / disk["write_Bps"]
        out["import"] = {"seconds": imp, "peak_host_bytes": int(base + budget),
                         "how": "I/O bound: edges read 3 times, features twice, the dataset written once"}
    out["total_s"] = sum(v["seconds"] for v in out.values() if isinstance(v, dict))
    return out


def _packer_memory(w: Workload, fp: dict, total_mb: int, budget: int) -> int:
    """What :func:`~diskgraph.store.packer.pack_features` holds under ``budget`` (its memory plan, two threads)."""
    from ..store.packer import MAX_GATHER_BYTES, TIER_CHUNK_BYTES, _RUNS

    n, rb = w.num_nodes, w.row_bytes
    chunk_rows = max(1, min(TIER_CHUNK_BYTES, budget // 32) // rb)
    runs = int(min(_RUNS, max(64, budget // 1024)))
    fixed = 5 * n + 33 * (total_mb + 1) + 2 * chunk_rows * rb + 3 * runs * 32
    carry = total_mb * ALIGNMENT
    if carry <= (budget - fixed) // 4:
        fixed += carry
    avail = max(budget - fixed, 4 * rb)
    slices = 2 * min(n, max(1, avail // 2 // 2 // rb)) * rb
    gather = 2 * max(1, min(MAX_GATHER_BYTES, avail * 15 // 100 // 2) // rb) * rb
    return int(fixed + slices + gather + 8 * sum(fp["tier_rows"].values()))  # + the tiers' id lists


def choose_bound(w: Workload, cr: ColdRows, max_blowup: float | None, disk_budget: int | None) -> tuple[Bounded, dict | None]:
    """The ``--max-blowup`` prediction for this cache split: at ``max_blowup``, or, with ``disk_budget`` (bytes of
    the pack on disk), at the largest ``B`` whose predicted pack — extents (at most ``B x`` the feature table: the
    packer's guarantee), tiers, index and metadata — fits it; and what was decided (None without a disk budget)."""
    if disk_budget is None:
        return predict_bounded(w, cr, max_blowup), None
    unb = predict_bounded(w, cr, None)
    fp = footprint(w, cr, unb)
    index = sum(fp["index_bytes"].values())
    # the extents are bounded by the packer itself; the index is an estimate when minibatches were left out
    margin = 0 if w.exhaustive else int(0.02 * index)
    other = fp["pack_bytes"] - fp["packed_bytes"] + margin
    b = largest_fitting_blowup(disk_budget, other, fp["feature_bytes"], max(fp["packed_bytes"], unb.unbounded_bytes))
    fits = b is not False
    bd = unb if b is None else predict_bounded(w, cr, 0.0 if b is False else b)
    return bd, {"disk_budget_bytes": int(disk_budget), "fits": fits, "max_blowup": None if b is False else b,
                "other_bytes": int(other), "unbounded_pack_bytes": int(fp["pack_bytes"])}


def cache_alternatives(w: Workload, hw: Hardware, cfg: dict, host_limit: int | None, gpu_limit: int | None,
                       steps: int = 8, max_blowup: float | None = None, disk_budget: int | None = None) -> list[dict]:
    """Epoch time, blow-up and memory of cache splits from none to the whole table (within the limits), each packed
    with ``max_blowup`` — or, with ``disk_budget``, with the largest bound whose pack fits it (:func:`choose_bound`;
    a split whose tiers alone do not fit does not fit).

    Each also carries ``rank_epoch_s``: its epoch with the profile's compute fit as it is (not rescaled by the
    model steps timed for this plan), which :func:`recommend` compares: it depends on the profile and the
    workload only, so every run against one profile recommends the same split."""
    fb = w.num_nodes * w.row_bytes
    fracs = [0.0] + [2.0 ** -i for i in range(steps - 1, -1, -1)]
    cuda = hw.device.startswith("cuda")
    cands = []
    for fr in fracs:
        size = int(fr * fb)
        if cuda:
            cands += [(size, 0), (0, size)]
        else:
            cands.append((0, size))
    fit_cfg = {k: v for k, v in cfg.items() if k != "compute_scale"} if "compute_scale" in cfg else cfg
    seen, out = set(), []
    for g, h in cands:
        if (g, h) in seen:
            continue
        seen.add((g, h))
        cr = cold_rows(w, g, h)
        bd, disk = choose_bound(w, cr, max_blowup, disk_budget)
        fp = footprint(w, cr, bd)
        ep = epoch_time(w, hw, cr, cfg, bd=bd)
        rank = epoch_time(w, hw, cr, fit_cfg, bd=bd)["epoch_s"] if fit_cfg is not cfg else ep["epoch_s"]
        mem = training_memory(w, hw, cr, cfg, fp, bd)
        fits = (host_limit is None or mem["host_bytes"] <= host_limit) and (
            gpu_limit is None or mem.get("gpu_bytes", 0) <= gpu_limit) and (disk is None or disk["fits"])
        out.append({"gpu_cache_bytes": g, "host_cache_bytes": h, "epoch_s": ep["epoch_s"], "rank_epoch_s": rank,
                    "bottleneck": ep["bottleneck"], "max_blowup": bd.max_blowup,
                    "packed_bytes": fp["packed_bytes"], "blowup": fp["blowup"], "table_rows": fp["table_rows"],
                    "pack_bytes": fp["pack_bytes"], "peak_host_bytes": mem["host_bytes"],
                    "peak_gpu_bytes": mem.get("gpu_bytes"), "fits": fits,
                    "fits_disk": None if disk is None else disk["fits"],
                    "hit_rate": _hit_rate(w, cr)})
    return out


def recommend(alts: list[dict], tolerance: float = 0.02) -> dict | None:
    """The split with the shortest epoch among those that fit; within ``tolerance`` (a fraction) of it, the least
    memory. Epochs are compared as ``rank_epoch_s`` (see :func:`cache_alternatives`) where the alternatives have it."""
    fit = [a for a in alts if a["fits"]]
    if not fit:
        return None

    def epoch(a):
        return a.get("rank_epoch_s", a["epoch_s"])

    best = min(epoch(a) for a in fit)
    near = [a for a in fit if epoch(a) <= best * (1 + tolerance)]
    return min(near, key=lambda a: (a["peak_host_bytes"] + (a["peak_gpu_bytes"] or 0), a["blowup"]))


def _disk_message(disk: dict, fp: dict, fp_unb: dict) -> str:
    """One sentence: what fits the disk budget."""
    from ..store.progress import format_bytes

    size = format_bytes(disk["disk_budget_bytes"])
    if not disk["fits"]:
        return (f"even --max-blowup 0 does not fit --disk-budget {size}: the hot tiers, index and metadata alone take "
                f"{format_bytes(disk['other_bytes'])}; give more disk or smaller --gpu-cache/--host-cache")
    if disk["max_blowup"] is None:
        return (f"the unbounded pack ({format_bytes(fp_unb['pack_bytes'])}, blow-up {fp_unb['blowup']:.2f}x) fits "
                f"--disk-budget {size}: --max-blowup inf")
    return (f"--max-blowup {disk['max_blowup']:g} is the largest bound whose pack ({format_bytes(fp['pack_bytes'])}) "
            f"fits --disk-budget {size} (unbounded: {format_bytes(fp_unb['pack_bytes'])})")


def _hit_rate(w: Workload, cr: ColdRows) -> dict:
    s = w.splits.get("train") or next(iter(w.splits.values()))
    n = cr.gpu[s.name] + cr.host[s.name] + cr.cold[s.name]
    tot = float(n.sum()) or 1.0
    return {"gpu": float(cr.gpu[s.name].sum()) / tot, "host": float(cr.host[s.name].sum()) / tot,
            "cold": float(cr.cold[s.name].sum()) / tot}


def estimate_plan(w: Workload, hw: Hardware, *, model: str = "sage", hidden: int = 256, heads: int = 4,
                  gpu_cache: int = 0, host_cache: int = 0, queue_depth: int = 2, memory_budget: int = 1 << 30,
                  threads: int | None = None, alternatives: bool = True, time_steps: bool = True,
                  max_blowup: float | None = DEFAULT_MAX_BLOWUP, disk_budget: int | None = None) -> dict:
    """Every estimate of ``diskgraph plan`` as one JSON-ready dict (see the module docstring).

    ``max_blowup``: the pack's ``--max-blowup`` (None: unbounded; default: the packer's). ``disk_budget``: bytes the
    pack may take on disk; the plan is then made at the largest bound that fits (``disk_budget`` in the result)."""
    from ..store.packer import normalize_max_blowup

    max_blowup = normalize_max_blowup(max_blowup)
    if disk_budget is not None and disk_budget <= 0:
        raise InputError(f"--disk-budget {disk_budget} must be a positive size (e.g. 20G)")
    cfg = {"model": model, "hidden": int(hidden), "heads": int(heads), "queue_depth": int(queue_depth),
           "memory_budget": int(memory_budget), "threads": threads}
    local = local_compute_scale(w, hw, cfg) if time_steps else None
    if local:
        cfg["compute_scale"] = {"train": local["train"], "eval": local["eval"]}
    cr = cold_rows(w, gpu_cache, host_cache)
    bd, disk = choose_bound(w, cr, max_blowup, disk_budget)
    cfg["max_blowup"] = bd.max_blowup
    fp = footprint(w, cr, bd)
    ep = epoch_time(w, hw, cr, cfg, bd=bd)
    ev = epoch_time(w, hw, cr, cfg, "val", train=False, bd=bd) if "val" in w.splits else None
    mem = training_memory(w, hw, cr, cfg, fp, bd)
    pre = preprocess(w, hw, cr, fp, cfg)
    unb = predict_bounded(w, cr, None) if bd.binding else bd
    ep_unb = epoch_time(w, hw, cr, cfg, bd=unb) if bd.binding else ep
    fp_unb = footprint(w, cr, unb) if bd.binding else fp
    bounded = {
        "max_blowup": bd.max_blowup, "budget_bytes": bd.budget, "binding": bd.binding,
        "packed_bytes": fp["packed_bytes"], "blowup": fp["blowup"], "pack_bytes": fp["pack_bytes"],
        "table_rows": fp["table_rows"], "table_page_reads": fp["table_page_reads"],
        "table_page_reads_per_epoch": ep["table_page_reads"], "table_requests_per_epoch": ep["table_requests"],
        "table_bytes_read_per_epoch": ep["table_bytes_read"], "table_read_s": ep["table_io_s"],
        "group_threshold": bd.kstar, "packed_fraction_at_threshold": bd.fraction if bd.binding else None,
        "epoch_s": ep["epoch_s"], "read_s": ep["stage_s"]["read"], "bottleneck": ep["bottleneck"],
        "unbounded": {"packed_bytes": fp_unb["packed_bytes"], "blowup": fp_unb["blowup"],
                      "pack_bytes": fp_unb["pack_bytes"], "epoch_s": ep_unb["epoch_s"],
                      "read_s": ep_unb["stage_s"]["read"], "bottleneck": ep_unb["bottleneck"]},
        "splits": {n: {"table_rows": int(round(float(bd.table_rows[n].sum()) * s.weight)),
                       "table_page_reads": int(round(float(bd.table_pages[n].sum()) * s.weight)),
                       "padded_bytes": fp["cold_bytes"][n]} for n, s in w.splits.items()},
        "exact": bd.exact, "how": bd.method,
    }
    if disk is not None:
        disk.update(pack_bytes=fp["pack_bytes"], epoch_s=ep["epoch_s"], unbounded_epoch_s=ep_unb["epoch_s"],
                    message=_disk_message(disk, fp, fp_unb))
    host_limit = hw.get("machine.host_memory_bytes")
    gpu_limit = hw.get("machine.gpu_memory_bytes") if hw.device.startswith("cuda") else None
    alts = cache_alternatives(w, hw, cfg, host_limit, gpu_limit, max_blowup=max_blowup,
                              disk_budget=disk_budget) if alternatives else []
    rec = recommend(alts) if alts else None
    sample_info = {n: {"sampled": s.k, "minibatches": s.total, "minibatches_per_epoch": s.minibatches_per_epoch,
                       "mean_layer_sizes": [round(float(v), 1) for v in s.sizes.mean(axis=0)] if s.k else [],
                       "mean_edges_per_hop": [round(float(v), 1) for v in s.edges.mean(axis=0)] if s.k else []}
                   for n, s in w.splits.items()}
    cfg.pop("compute_scale", None)
    out = {
        "source": w.source, "exact": w.exhaustive, "compute_scale": local,
        "graph": {"num_nodes": w.num_nodes, "num_edges": w.num_edges, "feature_dim": w.feature_dim,
                  "feature_dtype": w.feature_dtype, "row_bytes": w.row_bytes, "num_classes": w.num_classes},
        "config": {**cfg, "gpu_cache_bytes": int(gpu_cache), "host_cache_bytes": int(host_cache),
                   "disk_budget_bytes": None if disk_budget is None else int(disk_budget),
                   "fanouts": w.splits["train"].fanouts if "train" in w.splits else None,
                   "batch_size": w.splits["train"].batch_size if "train" in w.splits else None,
                   "epochs_presampled": w.splits["train"].epochs if "train" in w.splits else None},
        "hardware": {"profile": str(hw.path) if hw.path else None, "device": hw.device, "cores": hw.cores,
                     "flags": list(hw.overrides), "created_at": hw.get("created_at"),
                     "disk_read_Bps": hw.get("disk.seq_read_Bps"), "disk_write_Bps": hw.get("disk.write_Bps"),
                     "host_memory_bytes": host_limit, "gpu_memory_bytes": gpu_limit},
        "sample": {"splits": sample_info, "hit_rate_method": cr.method},
        "hit_rate": _hit_rate(w, cr),
        # the interface fields (keep them stable)
        "packed_bytes": fp["packed_bytes"], "blowup": fp["blowup"], "peak_host_bytes": mem["host_bytes"],
        "epoch_s": ep["epoch_s"], "bottleneck": ep["bottleneck"],
        "peak_gpu_bytes": mem.get("gpu_bytes"),
        "bytes_read_per_epoch": ep["bytes_read"],
        "max_blowup": bd.max_blowup, "table_rows": fp["table_rows"], "table_page_reads": fp["table_page_reads"],
        "bounded": bounded, "disk_budget": disk,
        "footprint": fp,
        "memory": {"train": mem, "sample": {"peak_host_bytes": pre["sample"]["peak_host_bytes"]},
                   "pack": {"peak_host_bytes": pre["pack"]["peak_host_bytes"]}},
        "epoch": {k: ep[k] for k in ("epoch_s", "stage_s", "bounds_s", "bottleneck", "read_cpu_s", "io_s", "fill_s",
                                     "minibatches", "bytes_read", "table_io_s", "table_page_reads", "table_requests",
                                     "table_bytes_read", "how")},
        "eval_s": ev["epoch_s"] if ev else None,
        "preprocess": pre,
        "alternatives": alts,
        "recommended": rec,
        "how": {
            "footprint": "plan and index rows serialized with their Arrow schemas from the sampled minibatches; cold "
                         "extents round_up(cold rows x row bytes, 4096) per minibatch; each sampled minibatch stands "
                         "for minibatches / sampled of its split",
            "hit_rate": cr.method,
            "max_blowup": bd.method + ("; table reads: requests (pages closer than 4 apart merged, at most 1 MiB) at the "
                                       "queued random-read rate + the bytes beyond a page per request at the sequential "
                                       "rate, in the read stage after the extent" if bd.binding else ""),
            "compute": (f"calibrated fit, scaled by {local['train']:.3g} (train) / {local['eval']:.3g} (eval) from "
                        f"model steps on {local['steps']} sampled minibatches timed on this machine (per minibatch, "
                        "the mean of the fastest quarter of several, after warm-up steps)") if local else
                       "calibrated fit of the profile (no steps timed here: another host's profile, or --no-time-steps)",
            "epoch": ep["how"],
            "memory": "calibrated process baseline + tiers + per loader (queue_depth + 2) x buffers and staging "
                      "buffers of the split's largest minibatch and extent (on CUDA also one device copy of that "
                      "extent) + 2 x queue_depth + 3 minibatches in "
                      "flight + the largest step's activations (calibrated bytes per element) + parameters, gradients "
                      "and Adam moments",
        },
    }
    if not math.isfinite(out["epoch_s"]):  # pragma: no cover - a profile with a zero rate
        raise ValueError("the epoch time is not finite; check the hardware profile")
    return out
