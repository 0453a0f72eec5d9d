"""Calibrating a machine: every measurement of the profile in order, with one log line and a progress bar.

:func:`calibrate` runs the pieces of :data:`CALIBRATION_SECONDS` (the measurements of
:mod:`~diskgraph.capacity.probes`, the model steps of :mod:`~diskgraph.capacity.compute` and, on the CPU,
:func:`measure_pipeline`: a real training run against the estimate of it) and returns the
:class:`~diskgraph.capacity.profile.Hardware` profile. :func:`calibration_seconds` says beforehand about how long
that takes. torch, the models and the estimator are imported when a calibration runs, not with this module (the
CLI imports it to state the time in ``--help``).
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from .compute import COMPUTE_SHAPES, QUICK_SHAPES, measure_compute
from .probes import (MiB, READ_STAGE_SHAPES, measure_disk, measure_gather, measure_h2d, measure_machine,
                     measure_memory, measure_process_memory, measure_read_stage, python_env)
from .profile import PROFILE_FORMAT, PROFILE_VERSION, Hardware
from .timing import clock


PIPELINE_EPOCHS = 4
"""Epochs of the pipeline calibration's training run: the first warms up, the median of the others is measured."""


def measure_pipeline(hw: Hardware, device: str, quick: bool = False) -> dict:
    """How much slower a real pipelined epoch is than the model's sum of its parts, on this machine.

    Trains a calibration graph (60K nodes, 600K edges, 64-d, fanouts 10,5, batch 512, a 10 % host tier — not one of
    the graphs plans are checked on) for :data:`PIPELINE_EPOCHS` epochs with ``diskgraph train`` and divides the
    measured epoch time (the median epoch after the first, which warms up) by the estimate of
    :func:`~diskgraph.capacity.estimate.estimate_plan` from the profile measured so far. On the CPU the read and
    assemble threads share the cores with torch's thread pool, and per-minibatch work outside the model step (the
    handover between threads, the loss and accuracy bookkeeping) is not in the calibrated step; both show in this
    factor, which estimates then apply to the CPU-bound epoch.
    """
    from ..generate import generate_dataset
    from ..preprocess import run_pack, run_sample
    from .estimate import estimate_plan
    from .workload import sample_workload

    env = python_env()
    nodes = 20_000 if quick else 60_000
    with tempfile.TemporaryDirectory(prefix="diskgraph-calibrate-") as tmp:
        ds = Path(tmp) / "pipe"
        generate_dataset(ds, nodes=nodes, edges=10 * nodes, feature_dim=64, classes=8, split="random:0.5,0.1,0.4")
        run_sample(ds, fanouts=[10, 5], batch_size=512)
        host = int(0.1 * nodes) * 64 * 4
        run_pack(ds, host_cache=host, memory_budget=64 << 20)
        log_json = Path(tmp) / "log.jsonl"
        proc = subprocess.run([sys.executable, "-m", "diskgraph", "train", str(ds), "--epochs", str(PIPELINE_EPOCHS),
                               "--device", device, "--hidden", "256", "--run-dir", str(Path(tmp) / "run"),
                               "--log-json", str(log_json), "-q"], capture_output=True, text=True, env=env, timeout=1200)
        if proc.returncode:
            raise RuntimeError(f"the pipeline calibration run failed: {proc.stderr[-2000:]}")
        records = [json.loads(line) for line in log_json.read_text().splitlines() if line.strip()]
        epochs = [r["epoch_s"] for r in records if not r.get("summary")]
        measured = statistics.median(epochs[1:] or epochs)
        w = sample_workload(ds, fanouts=[10, 5], batch_size=512, sample_minibatches=64)
        predicted = estimate_plan(w, hw, model="sage", hidden=256, host_cache=host, alternatives=False)["epoch_s"]
    factor = min(4.0, max(0.5, measured / predicted)) if predicted > 0 else 1.0
    return {"epoch_factor": factor, "measured_epoch_s": measured, "epochs_s": epochs, "predicted_epoch_s": predicted,
            "graph": {"nodes": nodes, "edges": 10 * nodes, "feature_dim": 64, "fanouts": [10, 5], "batch_size": 512,
                      "host_cache_bytes": host}}


# -- all of it ---------------------------------------------------------------------------------------

CALIBRATION_SECONDS = {
    # piece: (seconds of a full calibration, of a quick one), measured cold (fresh profile and numba cache) on the quiet
    # 2-core machine of docs/planning.md (the first piece that samples also compiles the sampler); "pcie" (CUDA
    # only) was not measured there, it copies 64 MiB a few times. They weigh the progress bar and make the time
    # calibrate() announces and --help states.
    "disk": (0.4, 0.3), "memory": (1.5, 0.3), "gather": (8.0, 1.7), "read_stage": (7.2, 6.9), "compute": (12.9, 1.1),
    "pcie": (1.0, 1.0), "process": (13.2, 13.0), "pipeline": (7.6, 5.2),
}


def _pieces(device: str) -> list[str]:
    """The pieces :func:`calibrate` measures for ``device`` (``cpu``, ``cuda`` or ``cuda:N``), in order."""
    kind = str(device).split(":")[0]
    return [p for p in CALIBRATION_SECONDS if (p != "pcie" or kind == "cuda") and (p != "pipeline" or kind == "cpu")]


def calibration_seconds(device: str = "cpu", quick: bool = False) -> float:
    """About how many seconds :func:`calibrate` takes on ``device`` (cold, on the machine of docs/planning.md)."""
    return sum(CALIBRATION_SECONDS[p][int(quick)] for p in _pieces(device))


def duration_text(seconds: float) -> str:
    """``seconds`` as a rounded duration for a person: ``20 s``, ``1.5 minutes``, ``3 minutes``."""
    if seconds < 55:
        return f"{max(5, int(round(seconds / 5.0)) * 5)} s"
    minutes = round(seconds / 30.0) / 2
    return "1 minute" if minutes == 1 else f"{minutes:g} minutes"


@contextmanager
def _quiet_inner_work():
    """The calibration's own small preprocessing runs (generate, sample, pack) log and draw nothing unless -v: the
    calibration's one line and bar say what happens."""
    from ..store import progress

    logger = logging.getLogger("diskgraph")
    if logger.getEffectiveLevel() <= logging.DEBUG:
        yield
        return
    level, quiet = logger.level, progress._settings["quiet"]
    logger.setLevel(logging.WARNING)
    progress.set_quiet(True)
    try:
        yield
    finally:
        logger.setLevel(level)
        progress.set_quiet(quiet)


def calibrate(directory: str | os.PathLike = ".", device: str = "auto", probe_bytes: int = 256 * MiB,
              quick: bool = False, note: str = "") -> Hardware:
    """Measure this machine: about :func:`calibration_seconds` seconds (``quick``: fewer, rougher measurements).

    Logs one line (``diskgraph`` logger, INFO) that says it is calibrating and about how long it will take
    (``note`` is added after "calibrating this machine"), and draws a progress bar on a terminal
    (:class:`~diskgraph.store.progress.Progress`; none with ``-q`` or when stderr is not a terminal). The seconds
    each piece took are kept in the profile (``seconds_per_piece``).
    """
    import torch

    from ..models import MODELS
    from ..store.progress import Progress

    log = logging.getLogger("diskgraph")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    t0 = clock()
    prof: dict = {"format": PROFILE_FORMAT, "version": PROFILE_VERSION,
                  "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "quick": bool(quick)}
    prof["machine"] = measure_machine(str(dev))
    pieces = _pieces(device)
    expected = calibration_seconds(device, quick)
    log.info("calibrating this machine%s: about %s (disk, memory, gathers, the loader's read stage, model steps%s)",
             note, duration_text(expected), ", a short training run" if dev.type == "cpu" else "")
    steps = {"gather": 3, "read_stage": len(READ_STAGE_SHAPES),
             "compute": len(MODELS) * len(QUICK_SHAPES if quick else COMPUTE_SHAPES) + 1}
    run = {
        "disk": lambda tick: measure_disk(directory, probe_bytes, random_reads=300 if quick else 2000),
        "memory": lambda tick: measure_memory(64 * MiB if quick else 256 * MiB),
        "gather": lambda tick: measure_gather(dev, rows=20_000 if quick else 100_000, tick=tick),
        "read_stage": lambda tick: measure_read_stage(quick, tick=tick),
        "compute": lambda tick: measure_compute(dev, quick=quick, tick=tick),
        "pcie": lambda tick: measure_h2d(dev),
        "process": lambda tick: measure_process_memory(),
        "pipeline": lambda tick: measure_pipeline(Hardware(prof), device, quick=quick),
    }
    labels = {"disk": f"the disk in {directory}", "read_stage": "the read stage", "compute": "model steps",
              "pcie": "host-to-GPU copies", "process": "process memory", "pipeline": "a training run"}
    took = {}
    with Progress("calibrating", expected) as bar:
        for piece in pieces:
            weight = CALIBRATION_SECONDS[piece][int(quick)]
            per_step = weight / steps.get(piece, 1)
            done = []

            def tick(per_step=per_step, done=done):
                done.append(per_step)
                bar.update(per_step)

            bar.desc = f"calibrating {labels.get(piece, piece)}"
            log.debug("calibrating %s", labels.get(piece, piece))
            t1 = clock()
            with _quiet_inner_work():
                prof[piece] = run[piece](tick)
            took[piece] = round(clock() - t1, 1)
            bar.update(max(0.0, weight - sum(done)))
    prof["seconds_per_piece"] = took
    prof["seconds"] = round(clock() - t0, 1)
    return Hardware(prof)
