"""What the trainer records of each epoch: the partial epoch's sums (saved in checkpoints), the epoch's record (the
line ``metrics.jsonl`` gets, aggregated over the ranks of a data-parallel run), its log line, and the metrics files.

The record holds loss, the task's metrics (:mod:`~diskgraph.pipeline.tasks`), time per stage (``stage_s``:
read, assemble and compute — the training steps' own time, from CUDA events on a GPU), overlap, bytes read from disk,
hit rates, the peak resident memory of the process and, on a GPU, the epoch's peak allocated (``peak_gpu_bytes``) and
reserved (``reserved_gpu_bytes``) device memory (the peaks start again at each epoch's start; 0 on CPU).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..store.files import write_atomic
from ..store.progress import format_bytes, log
from . import distributed as _dist
from .checkpoint_file import METRICS_NAME
from .metrics import peak_gpu_bytes, peak_rss_bytes, reserved_gpu_bytes
from .tasks import SumMetric


@dataclass
class EpochAccumulator:
    """Sums over the minibatches of the current epoch, as plain numbers (saved in checkpoints; while the epoch runs,
    the loss and metric sums and the step times live on the device, :class:`~diskgraph.pipeline.device_sums.DeviceSums`,
    and are copied here at checkpoints and at the epoch's end)."""

    loss_sum: float = 0.0
    seeds: int = 0
    metric_sums: dict = field(default_factory=dict)
    """The training metrics' additive sums (:class:`~diskgraph.pipeline.tasks.SumMetric`), per metric name."""
    minibatches: int = 0
    compute_s: float = 0.0
    train_s: float = 0.0
    read_bytes: int = 0
    prior_stats: dict = field(default_factory=dict)
    """The loader's additive epoch statistics from earlier processes of this epoch (a resumed run)."""


RATIOS = {"epoch_s", "overlap", "minibatches_per_s", "read_gb_per_s", "gpu_hit_rate", "host_hit_rate", "cold_rate",
          "slowest_stage_s"}
"""Keys of a loader's ``epoch_stats()`` derived from the others: not summed across a resume."""


def add_stats(total: dict, part: dict) -> dict:
    """``total`` plus the additive numeric entries of a loader's ``epoch_stats()``."""
    out = dict(total)
    for k, v in part.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in RATIOS:
            out[k] = out.get(k, 0) + v
    return out


def metric_values(metrics, sums: dict, split: str) -> dict:
    """``{SPLIT_NAME: value}`` of the additive metrics from their added sums (floats)."""
    return {f"{split}_{m.name}": m.value(sums.get(m.name, {})) for m in metrics if isinstance(m, SumMetric)}


def flatten_sums(sums: dict) -> dict:
    """metric → sum name → value as one flat dict (for summing across ranks); :func:`unflatten_sums` undoes it."""
    return {f"{name}\0{k}": v for name, part in sums.items() for k, v in part.items()}


def unflatten_sums(flat: dict) -> dict:
    out: dict = {}
    for key, v in flat.items():
        name, k = key.split("\0", 1)
        out.setdefault(name, {})[k] = v
    return out


def _memory(device) -> dict:
    return {"peak_rss_bytes": peak_rss_bytes(), "peak_gpu_bytes": peak_gpu_bytes(device),
            "reserved_gpu_bytes": reserved_gpu_bytes(device)}


def epoch_record(trainer, eval_s: float, eval_read_bytes: int, eval_metrics: dict) -> dict:
    """The record of ``trainer``'s epoch just trained (its accumulator and loader statistics complete)."""
    a = trainer.acc
    s = a.prior_stats  # the whole epoch's loader statistics, after the epoch's minibatches
    ranks = None
    if trainer.dist is not None:
        a, s, eval_s, eval_read_bytes, ranks = across_ranks(trainer, eval_s, eval_read_bytes)
    stage = {"read_s": float(s.get("read_busy_s", 0.0)), "assemble_s": float(s.get("assemble_busy_s", 0.0)),
             "compute_s": a.compute_s}
    if s.get("sample_busy_s"):
        stage["sample_s"] = float(s["sample_busy_s"])  # the in-memory reference samples online
    slowest = max(stage.values())
    rows = {t: int(s.get(f"rows_{t}", 0)) for t in ("gpu", "host", "cold", "table")}
    if not rows["table"]:
        del rows["table"]  # (a pack without table rows: the record keeps its three tiers)
    all_rows = sum(rows.values())
    cold_bytes = (rows["cold"] + rows.get("table", 0)) * trainer.row_bytes  # what had to come from disk
    memory = _memory(trainer.device) if ranks is None else {k: max(r[k] for r in ranks) for k in _memory(trainer.device)}
    rec = {
        "epoch": trainer.epoch,
        "loss": a.loss_sum / max(a.seeds, 1),
        **metric_values(trainer.metrics, a.metric_sums, "train"),
        **eval_metrics,
        "epoch_s": a.train_s,
        "eval_s": eval_s,
        "minibatches": a.minibatches,
        "stage_s": stage,
        "io_s": float(s.get("io_s", 0.0)),
        "verify_s": float(s.get("verify_s", 0.0)),
        "queue_wait_s": {k[:-7]: float(v) for k, v in s.items() if k.endswith("_wait_s")},
        "overlap": a.train_s / slowest if slowest > 0 else None,
        "read_bytes": a.read_bytes,
        "eval_read_bytes": eval_read_bytes,
        "cold_bytes_needed": cold_bytes,
        "read_amplification": a.read_bytes / cold_bytes if cold_bytes else None,
        "extent_bytes": int(s.get("bytes_read", 0)),
        "hit_rate": {t: rows[t] / all_rows for t in rows} if all_rows else {},
        **memory,
    }
    if ranks is not None:
        rec["world_size"] = len(ranks)
        rec["ranks"] = ranks
    return rec


def across_ranks(trainer, eval_s: float, eval_read_bytes: int):
    """The epoch's sums and loader statistics over all ranks: times are the slowest rank's (``*_s``: maximum),
    counts and bytes the sums; plus each rank's own figures."""
    a, s = trainer.acc, trainer.acc.prior_stats
    mine = {"rank": trainer.dist.rank, "minibatches": a.minibatches, "seeds": a.seeds, "epoch_s": a.train_s,
            "compute_s": a.compute_s, "read_bytes": a.read_bytes, "extent_bytes": int(s.get("bytes_read", 0)),
            "eval_s": eval_s, "eval_read_bytes": eval_read_bytes, **_memory(trainer.device)}
    parts = _dist.all_gather((asdict(a), s, mine))
    acc, stats = {}, {}
    for part_acc, part_stats, _ in parts:
        for total, part in ((acc, part_acc), (stats, part_stats)):
            for k, v in part.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    total[k] = max(total.get(k, v), v) if k.endswith("_s") else total.get(k, 0) + v
    ranks = [p[2] for p in parts]
    sums: dict = {}
    for part_acc, _, _ in parts:
        for name, part in part_acc["metric_sums"].items():
            for k, v in part.items():
                sums.setdefault(name, {})[k] = sums.get(name, {}).get(k, 0.0) + v
    acc["metric_sums"] = sums
    return (EpochAccumulator(**acc), stats, max(r["eval_s"] for r in ranks),
            sum(r["eval_read_bytes"] for r in ranks), ranks)


def log_epoch(rec: dict, metrics, device) -> None:
    """The epoch's one log line (loss, metrics, stage times, bytes read, where the input rows came from, memory)."""
    stage = rec["stage_s"]
    parts = [f"epoch {rec['epoch']}", f"loss {rec['loss']:.4f}"]
    parts += [f"{k.replace('_', ' ', 1)} {rec[k]:.4f}" for m in metrics for k in (f"train_{m.name}",
              f"val_{m.name}") if isinstance(rec.get(k), float)]
    parts.append(f"{rec['epoch_s']:.2f} s (read {stage['read_s']:.2f}, assemble {stage['assemble_s']:.2f}, "
                 f"compute {stage['compute_s']:.2f}" + (f", overlap {rec['overlap']:.2f})" if rec["overlap"] else ")"))
    parts.append(f"read {format_bytes(rec['read_bytes'])}" +
                 (f" (amplification {rec['read_amplification']:.3f})" if rec["read_amplification"] else ""))
    if rec["hit_rate"]:
        # on a CPU run both hot tiers are RAM: the "gpu" tier is the compute device's (the host's) memory
        where = {"gpu": "GPU" if device.type == "cuda" else "device tier (RAM)",
                 "host": "pinned host" if device.type == "cuda" else "host tier (RAM)", "cold": "disk"}
        parts.append("input rows from " + ", ".join(f"{where.get(t, t)} {v:.1%}" for t, v in rec["hit_rate"].items()))
    parts.append(f"peak RSS {format_bytes(rec['peak_rss_bytes'])}")
    if device.type == "cuda":
        parts.append(f"GPU peak {format_bytes(rec['peak_gpu_bytes'])} (reserved {format_bytes(rec['reserved_gpu_bytes'])})")
    log.info(", ".join(parts))


def write_metrics_files(run_dir: Path, log_json: Path | None, lines: list[dict]) -> None:
    """``RUN_DIR/metrics.jsonl`` (and ``log_json``) rewritten atomically with ``lines``, one JSON object each."""
    text = "".join(json.dumps(line) + "\n" for line in lines)
    for path in [run_dir / METRICS_NAME] + ([log_json] if log_json else []):
        write_atomic(path, lambda f: f.write(text), binary=False)
