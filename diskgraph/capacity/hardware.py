"""The machine a plan is for: a hardware profile, measured (``diskgraph plan --calibrate``) or given by flags.

A profile is one JSON object (format ``diskgraph.hardware``), by default
``~/.cache/diskgraph/hardware.json`` (``$DISKGRAPH_PROFILE`` or ``--profile FILE`` elsewhere)::

    machine   cores, memory, CPU model, torch threads, the compute device (and the GPU's name and memory)
    disk      O_DIRECT sequential read bandwidth (4 MiB reads), 4 KiB random reads per second at depth 1,
              the per-request latency they imply, O_DIRECT write bandwidth (16 MiB writes); the probe's
              directory (the disk it measured)
    memory    copy bandwidth (numpy copy of 256 MiB)
    gather    seconds per feature row gathered into a minibatch's ``x`` on the compute device, as the
              loader's assemble stage does it: ``index_select`` + ``index_copy_`` (hot rows) and
              ``index_copy_`` (cold rows), each ``a + b * row_bytes``
    read_stage  the loader's read stage without the disk read (Arrow rows of the plan and pack index,
              blocks, tier positions): ``c0 + c1 * input_nodes + c2 * sampled_edges`` seconds per minibatch
    compute   per model (sage, gcn, gat): a training step (forward, backward, Adam) and an evaluation
              forward, each ``c0 + c1 * dense_flops + c2 * edge_elements + c3 * node_elements`` seconds,
              fitted (non-negative least squares) to timed steps on synthetic blocks; the speed-up of the
              default thread count over one thread; the bytes of memory a step takes per activation element
    process   anonymous memory of a training process before it loads any data (interpreter, torch,
              pyarrow, numba, diskgraph, one model step)
    pipeline  (CPU) a real training epoch of a calibration graph ÷ the estimate of it (``epoch_factor``)
    seconds, seconds_per_piece   how long the calibration took, in all and per entry

Every number is measured on this machine by :func:`calibrate`, each from several timed calls after a warm-up
(:mod:`~diskgraph.capacity.timing`: the median request of the disk, the median call of memory-bound work, the
mean of the fastest quarter of model steps), never from one; flags of ``diskgraph plan`` override single entries (:func:`apply_overrides`), and the
plan reports which entries came from where.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..store.errors import InputError
from .timing import clock, fast_mean, robust_seconds

PROFILE_FORMAT = "diskgraph.hardware"
PROFILE_VERSION = 1
PROFILE_ENV = "DISKGRAPH_PROFILE"
MODELS = ("sage", "gcn", "gat")
MiB = 1 << 20


def default_profile_path() -> Path:
    """``$DISKGRAPH_PROFILE``, else ``~/.cache/diskgraph/hardware.json``."""
    env = os.environ.get(PROFILE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "diskgraph" / "hardware.json"


@dataclass
class Hardware:
    """A hardware profile (the JSON object described in the module docstring) and where its entries came from.

    Attributes:
        profile: the nested dict.
        path: the file it was read from or saved to (None: not saved).
        overrides: dotted keys set by flags (``disk.seq_read_Bps``, ``machine.host_memory_bytes``, …).
    """

    profile: dict
    path: Path | None = None
    overrides: list[str] = field(default_factory=list)

    def get(self, dotted: str, default=None):
        cur = self.profile
        for part in dotted.split("."):
            if not isinstance(cur, dict) or part not in cur:
                return default
            cur = cur[part]
        return cur

    @property
    def cores(self) -> int:
        return int(self.get("machine.cores", 1))

    @property
    def device(self) -> str:
        return str(self.get("machine.device", "cpu"))

    def source(self, dotted: str) -> str:
        """``flag`` when a flag set the entry, else ``calibrated``."""
        return "flag" if dotted in self.overrides else "calibrated"

    def compute(self, model: str) -> dict:
        models = self.get("compute.models", {}) or {}
        if model not in models:
            raise InputError(f"the hardware profile {self.path} has no compute calibration for model {model!r}; "
                             "run `diskgraph plan --calibrate` again")
        return models[model]


# -- profile files ---------------------------------------------------------------------------------

def load_profile(path: str | os.PathLike | None = None) -> Hardware:
    """Read a profile; raises InputError (naming ``--profile``) when it is missing or not a profile."""
    p = Path(path).expanduser() if path else default_profile_path()
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise InputError(f"hardware profile {p} does not exist; measure it with `diskgraph plan --calibrate "
                         f"--profile {p}` or give the hardware by flags") from None
    except (OSError, ValueError) as e:
        raise InputError(f"--profile {p} is not a readable JSON hardware profile ({e}); calibrate again") from None
    if not isinstance(data, dict) or data.get("format") != PROFILE_FORMAT:
        raise InputError(f"--profile {p} is not a diskgraph hardware profile (format {PROFILE_FORMAT}); calibrate again")
    if int(data.get("version", 0)) > PROFILE_VERSION:
        raise InputError(f"--profile {p} has version {data.get('version')}, newer than this diskgraph reads "
                         f"({PROFILE_VERSION}); calibrate again with this version")
    return Hardware(data, p)


def save_profile(hw: Hardware, path: str | os.PathLike | None = None) -> Path:
    """Write the profile atomically (temporary file, rename); returns its path."""
    p = Path(path).expanduser() if path else (hw.path or default_profile_path())
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(hw.profile, indent=2) + "\n")
    os.replace(tmp, p)
    hw.path = p
    return p


OVERRIDES = {
    # flag dest → (dotted key, what it is)
    "disk_read_bw": ("disk.seq_read_Bps", "sequential read bandwidth, bytes/s"),
    "disk_write_bw": ("disk.write_Bps", "write bandwidth, bytes/s"),
    "disk_iops": ("disk.rand_read_iops", "4 KiB random reads/s"),
    "memory_bw": ("memory.copy_Bps", "memory copy bandwidth, bytes/s"),
    "host_memory": ("machine.host_memory_bytes", "host memory, bytes"),
    "gpu_memory": ("machine.gpu_memory_bytes", "GPU memory, bytes"),
    "cores": ("machine.cores", "CPU cores"),
}


def apply_overrides(hw: Hardware, values: dict) -> Hardware:
    """Set the entries the flags give (``values``: flag dest → number or None); the latency follows the IOPS."""
    for dest, (dotted, _) in OVERRIDES.items():
        v = values.get(dest)
        if v is None:
            continue
        if v <= 0:
            raise InputError(f"--{dest.replace('_', '-')} {v} must be positive")
        section, key = dotted.split(".")
        hw.profile.setdefault(section, {})[key] = v
        hw.overrides.append(dotted)
        if dotted in ("disk.rand_read_iops", "disk.seq_read_Bps"):
            d = hw.profile["disk"]
            d["read_latency_s"] = max(0.0, 1.0 / d["rand_read_iops"] - 4096 / d["seq_read_Bps"])
    return hw


# -- helpers ---------------------------------------------------------------------------------------

CALIBRATION_TIMING = {"warmup": 1, "reps": 5, "min_seconds": 0.05, "max_reps": 25}
"""How the calibration times its gathers and read stage (:func:`~diskgraph.capacity.timing.robust_seconds`): one warm-up
call, then at least 5 timed calls, more until 0.05 s were timed (at most 25); their median (memory-bound work:
its fastest calls are the cache-warm ones)."""
CALIBRATION_STEP_TIMING = {**CALIBRATION_TIMING, "statistic": fast_mean}
"""How the calibration times model steps: as :data:`CALIBRATION_TIMING`, but the mean of the fastest quarter
(:func:`~diskgraph.capacity.timing.fast_mean`), the statistic the steps a plan times (:data:`STEP_TIMING`) are
compared with."""
QUICK_TIMING = {"warmup": 1, "reps": 3, "min_seconds": 0.0, "max_reps": 3, "statistic": fast_mean}
"""``--quick-calibration``'s model steps: one warm-up call, then the fastest of 3."""
STEP_TIMING = {"warmup": 2, "reps": 5, "min_seconds": 0.3, "max_reps": 40, "statistic": fast_mean}
"""How a plan times model steps on its own minibatches (:func:`~diskgraph.capacity.estimate.local_compute_scale`):
two warm-up steps, then at least 5 timed steps, more until 0.3 s were timed (at most 40), the mean of the fastest
quarter: interference in bursts that cover up to three quarters of the window is left out. On a small graph's
steps (milliseconds each) that is a few dozen steps per minibatch."""


def nnls(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares with non-negative coefficients (drops the most negative column until none is left)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    active = list(range(x.shape[1]))
    coef = np.zeros(x.shape[1])
    # scale the columns so the solve is well conditioned
    scale = np.maximum(np.abs(x).max(axis=0), 1e-30)
    while active:
        sol, *_ = np.linalg.lstsq(x[:, active] / scale[active], y, rcond=None)
        sol = sol / scale[active]
        if (sol >= 0).all():
            coef[:] = 0
            coef[active] = sol
            return coef
        active.pop(int(np.argmin(sol)))
    return coef


def _machine(device: str) -> dict:
    import psutil
    import torch

    cpu = platform.processor() or ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    out = {"hostname": platform.node(), "cores": cores, "cpu": cpu, "host_memory_bytes": int(psutil.virtual_memory().total),
           "torch_threads": torch.get_num_threads(), "device": device, "python": platform.python_version(),
           "torch": torch.__version__, "kernel": platform.release()}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        out.update(gpu=props.name, gpu_memory_bytes=int(props.total_memory))
    return out


# -- disk ------------------------------------------------------------------------------------------

def measure_disk(directory: str | os.PathLike, probe_bytes: int = 256 * MiB, random_reads: int = 2000) -> dict:
    """O_DIRECT write and sequential/random read rates of a probe file in ``directory`` (deleted after).

    Every request is timed on its own and the rates come from the median request (writes of 16 MiB,
    sequential reads of 4 MiB) or the median of groups of 100 random 4 KiB reads, so a moment of
    interference from another process does not set the rate. Returns bytes/s (``seq_read_Bps``,
    ``write_Bps``), reads/s (``rand_read_iops``) and seconds (``read_latency_s``)."""
    from ..store.direct_io import ALIGNMENT, O_DIRECT, aligned_empty
    from ..store.files import drop_cache
    from .timing import per_unit_seconds

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    chunk = 16 * MiB
    probe_bytes = max(chunk, probe_bytes // chunk * chunk)
    fd_path = directory / f".diskgraph-probe-{os.getpid()}"
    buf = aligned_empty(chunk)
    buf[:] = np.random.default_rng(0).integers(0, 256, chunk, dtype=np.uint8)
    direct = bool(O_DIRECT)

    def timed_each(call, items) -> list[float]:
        out = []
        for it in items:
            t0 = clock()
            call(it)
            out.append(clock() - t0)
        return out

    try:
        try:
            fd = os.open(fd_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (O_DIRECT if direct else 0), 0o600)
        except OSError:
            direct = False
            fd = os.open(fd_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        t0 = clock()
        writes = timed_each(lambda off: os.pwrite(fd, buf, off), range(0, probe_bytes, chunk))
        os.fdatasync(fd)
        # with O_DIRECT each write reached the device when it returned; without, only the whole pass with its
        # fdatasync measures the disk
        write_s = statistics.median(writes) * len(writes) if direct else clock() - t0
        if not direct:
            drop_cache(fd)
        os.close(fd)
        fd = os.open(fd_path, os.O_RDONLY | (O_DIRECT if direct else 0))
        try:
            if not direct:
                drop_cache(fd)
            rbuf = aligned_empty(4 * MiB)
            seq = timed_each(lambda off: os.preadv(fd, [rbuf], off), range(0, probe_bytes, 4 * MiB))
            if not direct:
                drop_cache(fd)
            small = aligned_empty(ALIGNMENT)
            pages = probe_bytes // ALIGNMENT
            offs = (np.random.default_rng(1).integers(0, pages, random_reads) * ALIGNMENT).tolist()
            group = min(100, max(1, random_reads // 5))
            groups = [offs[i:i + group] for i in range(0, len(offs), group)]
            rand = timed_each(lambda g: [os.preadv(fd, [small], off) for off in g], groups)
        finally:
            os.close(fd)
    finally:
        try:
            os.unlink(fd_path)
        except FileNotFoundError:
            pass
    seq_Bps = 4 * MiB / statistics.median(seq)
    iops = 1.0 / per_unit_seconds(rand, [len(g) for g in groups])
    return {"path": str(directory.absolute()), "direct": direct, "probe_bytes": probe_bytes,
            "seq_read_Bps": seq_Bps, "rand_read_iops": iops,
            "read_latency_s": max(0.0, 1.0 / iops - ALIGNMENT / seq_Bps), "write_Bps": probe_bytes / write_s}


def measure_memory(nbytes: int = 256 * MiB) -> dict:
    """Bytes/s of a numpy copy of ``nbytes`` (median of 5 after one warm-up copy)."""
    a = np.ones(nbytes // 8)
    b = np.empty_like(a)
    return {"copy_Bps": nbytes / robust_seconds(lambda: np.copyto(b, a), warmup=1, reps=5)}


# -- gathers and the read stage ----------------------------------------------------------------------

GATHER_TRIALS = 3
"""Independent trials of each gather (fresh table and buffers each): one allocation can land in a slow layout for a
whole trial (a 1 KiB-row gather measured 3.5× its usual time through all its calls in 2 of 8 calibrations here)."""


def measure_gather(device, rows: int = 100_000, table_rows: int = 400_000, tick=None) -> dict:
    """Seconds per row of the assemble stage's gathers, fitted as ``a + b * row_bytes`` on relative error (float32
    rows of 256, 1024 and 4096 bytes; ``tick()`` is called after each). Each point is the median of
    :data:`GATHER_TRIALS` trials, each the median of several calls (:data:`CALIBRATION_TIMING`)."""
    import torch

    hot, cold, xs = [], [], []
    rng = np.random.default_rng(0)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def trial(n_tab: int, f: int) -> tuple[float, float]:
        """Seconds per row of the hot and the cold gather, with a table and buffers of their own (freed on return)."""
        table = torch.full((n_tab, f), 1.0, device=device)  # the values do not matter, their pages do
        slots = torch.from_numpy(rng.integers(0, n_tab, rows)).to(device)
        pos = torch.from_numpy(rng.permutation(rows)).to(device)
        staged = torch.full((rows, f), 2.0, device=device)
        x = torch.empty(rows, f, device=device)

        def run_hot():
            x.index_copy_(0, pos, table.index_select(0, slots))
            sync()

        def run_cold():
            x.index_copy_(0, pos, staged)
            sync()

        return (robust_seconds(run_hot, **CALIBRATION_TIMING) / rows,
                robust_seconds(run_cold, **CALIBRATION_TIMING) / rows)

    for rb in (256, 1024, 4096):
        n_tab = max(rows, min(table_rows, (256 * MiB) // rb))
        trials_hot, trials_cold = zip(*(trial(n_tab, rb // 4) for _ in range(GATHER_TRIALS)))
        hot.append(statistics.median(trials_hot))
        cold.append(statistics.median(trials_cold))
        if tick:
            tick()
        xs.append(rb)
    X = np.stack([np.ones(len(xs)), np.array(xs, dtype=np.float64)], 1)
    h, c = _relative_fit(X, hot)[0], _relative_fit(X, cold)[0]
    return {"hot_row_s": float(h[0]), "hot_byte_s": float(h[1]), "cold_row_s": float(c[0]),
            "cold_byte_s": float(c[1]), "points": {"row_bytes": xs, "hot_s_per_row": hot, "cold_s_per_row": cold}}


@functools.lru_cache(maxsize=2)
def _rmat(nodes: int, edges: int, seed: int):
    """The calibration's in-memory R-MAT graph (built once per process: the read stage and the model steps both
    sample from it)."""
    from .workload import rmat_csc

    return rmat_csc(nodes, edges, seed)


def sampled_minibatches(shapes, nodes: int = 100_000, edges: int = 1_000_000, seed: int = 0):
    """Minibatches of realistic shape: sampled with the project's sampler from an in-memory R-MAT graph
    (:func:`~diskgraph.capacity.workload.rmat_csc`), one per ``(batch, fanouts, ...)`` in ``shapes``."""
    from ..sampler.neighbor_sampler import sample_minibatch

    indptr, indices = _rmat(nodes, edges, seed)
    rng = np.random.default_rng(seed)
    return [sample_minibatch(indptr, indices, rng.choice(nodes, size=min(b, nodes), replace=False), fan, i + 1)
            for i, (b, fan, *_) in enumerate(shapes)]


def _relative_fit(x, y) -> tuple[np.ndarray, float]:
    """Non-negative coefficients minimising the relative error; and the largest relative error left."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    c = nnls(x / y[:, None], np.ones_like(y))
    return c, float(np.max(np.abs(x @ c - y) / y))


READ_STAGE_SHAPES = [(64, [5]), (256, [10, 5]), (512, [15, 10]), (1024, [10, 5]), (1024, [15, 10]), (256, [10, 10, 5])]


def measure_read_stage(quick: bool = False, tick=None) -> dict:
    """The read stage's CPU work per minibatch without the disk read — Arrow rows of the plan and pack index
    (memory-mapped files), blocks, labels, tier positions, as :class:`~diskgraph.pipeline.loader.PackedLoader`
    does it — fitted as ``c0 + c1 * input_nodes + c2 * sampled_edges`` seconds (``tick()`` after each of
    :data:`READ_STAGE_SHAPES`)."""
    import pyarrow as pa

    from ..pipeline.blocks import blocks_from_minibatch
    from ..pipeline.loader import tier_positions
    from ..store.packed import index_schema, read_entry
    from ..store.plan import PlanSplitWriter, read_minibatch
    from .workload import index_row

    mbs = sampled_minibatches(READ_STAGE_SHAPES, *((20_000, 200_000) if quick else (100_000, 1_000_000)))
    rng = np.random.default_rng(0)
    rows, times = [], []
    labels = rng.integers(0, 8, 1_000_000)
    with tempfile.TemporaryDirectory(prefix="diskgraph-calibrate-") as tmp:
        for si, m in enumerate(mbs):
            hops = m.num_hops
            w = PlanSplitWriter(Path(tmp) / f"plan{si}.arrow", int(m.input_nodes.max()) + 1, hops)
            w.write(m)
            w.close()
            ipath = Path(tmp) / f"index{si}.arrow"
            n = m.input_nodes.shape[0]
            tier = rng.integers(0, 3, n).astype(np.int8)
            slot = np.zeros(n, np.int32)
            for t in range(3):
                where = np.flatnonzero(tier == t)
                slot[where] = np.arange(where.size, dtype=np.int32)
            cold = np.sort(m.input_nodes[tier == 0])
            with pa.OSFile(str(ipath), "wb") as sink, pa.ipc.new_file(sink, index_schema()) as iw:
                iw.write_batch(index_row(tier, slot, cold, 512, index_schema()))
            ppath = Path(tmp) / f"plan{si}.arrow"
            preader = pa.ipc.open_file(pa.memory_map(str(ppath)))
            ireader = pa.ipc.open_file(pa.memory_map(str(ipath)))

            def one():  # (the rows' checksums are checked, as the loader does)
                mb = read_minibatch(preader, 0, hops, ppath)
                e = read_entry(ireader, 0, ipath)
                blocks_from_minibatch(mb)
                np.asarray(labels[mb.seeds], dtype=np.int64)
                tier_positions(e)

            times.append(robust_seconds(one, **CALIBRATION_TIMING))
            rows.append([1.0, n, sum(len(x) for x in m.hop_indices)])
            if tick:
                tick()
    c, err = _relative_fit(rows, times)
    return {"per_minibatch_s": float(c[0]), "per_node_s": float(c[1]), "per_edge_s": float(c[2]),
            "fit_max_rel_error": err}


# -- model steps ---------------------------------------------------------------------------------------

def layer_dims(model: str, in_dim: int, hidden: int, classes: int, layers: int, heads: int = 4) -> list[tuple[int, int]]:
    """(input width, output width) of every layer as :func:`diskgraph.models.build_model` builds them."""
    dims = [in_dim] + [hidden] * (layers - 1) + [classes]
    out = []
    for i in range(layers):
        o = dims[i + 1]
        if model == "gat":
            o = classes * heads if i == layers - 1 else (hidden // heads) * heads
        out.append((dims[i], o))
    return out


def work_terms(model: str, sizes, edges, in_dim: int, hidden: int, classes: int, heads: int = 4) -> np.ndarray:
    """``[1, dense_flops, edge_elements, node_elements, activation_elements]`` of one minibatch.

    ``sizes`` = ``[n_0, …, n_L]`` (seeds … inputs), ``edges`` = sampled edges per hop ``[e_1, …, e_L]``.
    GNN layer ``l`` (0-based) runs hop ``L - l``: sources ``n_{L-l}``, destinations ``n_{L-l-1}``.
    """
    L = len(edges)
    dims = layer_dims(model, in_dim, hidden, classes, L, heads)
    dense = edge_el = node_el = 0.0
    for l_, (din, dout) in enumerate(dims):
        h = L - l_
        ns, nd, e = float(sizes[h]), float(sizes[h - 1]), float(edges[h - 1])
        if model == "sage":
            dense += nd * din * dout + (ns if din > dout else nd) * din * dout
            w = min(din, dout)
            src_el = ns * dout if din > dout else 0.0
        elif model == "gcn":
            dense += (ns if din > dout else nd) * din * dout
            w = min(din, dout)
            src_el = ns * din + (ns * dout if din > dout else 0.0)
        else:
            dense += ns * din * dout
            w = dout + 6 * heads
            src_el = ns * (dout + 2 * heads)
        edge_el += e * w
        node_el += src_el + 4 * nd * dout
    return np.array([1.0, 2.0 * dense, edge_el, node_el, edge_el + node_el])


def _blocks(mb, device):
    from ..pipeline.blocks import blocks_from_minibatch

    return [b.to(device) for b in blocks_from_minibatch(mb)]


def time_model_steps(model_name: str, mbs, in_dim: int, hidden: int, classes: int, heads: int, device,
                     timing: dict | None = None) -> tuple[list[float], list[float]]:
    """Seconds of a training step (forward, backward, Adam) and of an evaluation forward on each minibatch (random
    features and labels), each timed as ``timing`` says (:data:`STEP_TIMING` by default: warm-up steps, then the
    mean of the fastest quarter of several)."""
    import torch
    import torch.nn.functional as F

    from ..models import build_model

    timing = STEP_TIMING if timing is None else timing
    rng = np.random.default_rng(0)
    train_t, eval_t = [], []

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for mb in mbs:
        blocks = _blocks(mb, device)
        x = torch.randn(int(mb.layer_sizes[-1]), in_dim, device=device)
        y = torch.from_numpy(rng.integers(0, classes, int(mb.layer_sizes[0]))).to(device)
        torch.manual_seed(0)
        model = build_model(model_name, in_dim, hidden, classes, mb.num_hops, heads=heads).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step():
            model.train()
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(blocks, x), y)
            loss.backward()
            opt.step()
            float(loss.detach())
            sync()

        def forward():
            model.eval()
            with torch.no_grad():
                float(model(blocks, x).sum())
            sync()

        train_t.append(robust_seconds(step, **timing))
        eval_t.append(robust_seconds(forward, **timing))
    return train_t, eval_t


COMPUTE_SHAPES = [(256, [10, 5], 64), (1024, [10, 5], 64), (512, [15, 10], 128), (1024, [15, 10], 256),
                  (256, [10, 5], 512), (512, [10, 10, 5], 128), (2048, [5, 5], 256), (1024, [10, 5], 1024),
                  (128, [5, 5], 32), (512, [10, 5], 128), (1024, [10, 5, 3], 64), (2048, [10, 5], 128)]
QUICK_SHAPES = [(128, [5, 5], 32), (256, [10, 5], 64), (512, [10, 5], 32), (256, [15, 10], 64), (64, [5], 16)]


def measure_compute(device, models=MODELS, quick: bool = False, hidden: int = 256, tick=None) -> dict:
    """Timed training steps and evaluation forwards of each model on sampled blocks (each timed several times after a
    warm-up, :data:`CALIBRATION_STEP_TIMING`); fitted coefficients. ``tick()`` is called after each model and
    shape, and after the thread speed-up."""
    import torch
    import torch.nn.functional as F

    from ..models import build_model

    shapes = QUICK_SHAPES if quick else COMPUTE_SHAPES
    hidden = 64 if quick else hidden
    mbs = sampled_minibatches(shapes, *((20_000, 200_000) if quick else (100_000, 1_000_000)))
    classes = 16
    timing = QUICK_TIMING if quick else CALIBRATION_STEP_TIMING
    rng = np.random.default_rng(0)
    out = {}
    for name in models:
        rows, train_t, eval_t = [], [], []
        for mb, (b, fan, fdim) in zip(mbs, shapes):
            tt, te = time_model_steps(name, [mb], fdim, hidden, classes, 4, device, timing)
            train_t += tt
            eval_t += te
            rows.append(work_terms(name, mb.layer_sizes, [len(i) for i in mb.hop_indices], fdim, hidden, classes)[:4])
            if tick:
                tick()
        ct, et = _relative_fit(rows, train_t)
        ce, ee = _relative_fit(rows, eval_t)
        out[name] = {"train": [float(v) for v in ct], "eval": [float(v) for v in ce], "train_fit_max_rel_error": et,
                     "eval_fit_max_rel_error": ee,
                     "terms": ["const_s", "s_per_dense_flop", "s_per_edge_element", "s_per_node_element"]}
    # how many cores a training step keeps busy: its speed-up over one thread (CPU only)
    speedup = 1.0
    if device.type == "cpu" and torch.get_num_threads() > 1:
        i = len(shapes) // 2
        mb, (_, fan, fdim) = mbs[i], shapes[i]
        blocks = _blocks(mb, device)
        x = torch.randn(int(mb.layer_sizes[-1]), fdim)
        y = torch.from_numpy(rng.integers(0, classes, int(mb.layer_sizes[0])))
        model = build_model("sage", fdim, hidden, classes, len(fan))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step1():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(blocks, x), y).backward()
            opt.step()

        t_all = robust_seconds(step1, **timing)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            t_one = robust_seconds(step1, **timing)
        finally:
            torch.set_num_threads(threads)
        speedup = max(1.0, t_one / t_all)
    if tick:
        tick()
    return {"models": out, "thread_speedup": speedup, "hidden_calibrated": hidden}


_ACTIVATION_PROBE = r"""
import json, sys
import numpy as np, torch, torch.nn.functional as F
from diskgraph.capacity.hardware import sampled_minibatches, work_terms, _blocks
from diskgraph.models import build_model
def status():
    out = {}
    for line in open('/proc/self/status'):
        k, _, v = line.partition(':')
        if k in ('VmHWM', 'VmRSS'):
            out[k] = int(v.split()[0]) * 1024
    return out
b, fdim = 4096, 256
mb = sampled_minibatches([(b, [15, 10])])[0]
blocks = _blocks(mb, torch.device('cpu'))
x = torch.randn(int(mb.layer_sizes[-1]), fdim)
y = torch.from_numpy(np.random.default_rng(0).integers(0, 16, int(mb.layer_sizes[0])))
model = build_model('sage', fdim, 256, 16, 2)
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
before = status()
opt.zero_grad(); F.cross_entropy(model(blocks, x), y).backward(); opt.step()
after = status()
act = float(work_terms('sage', mb.layer_sizes, [len(i) for i in mb.hop_indices], fdim, 256, 16)[4])
print(json.dumps({'before': before, 'after': after, 'activation_elements': act}))
"""


def _python_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2]) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _peak_memory_of(cmd: list[str], env: dict, interval: float = 0.01) -> tuple[int, subprocess.CompletedProcess]:
    """Run ``cmd``, polling its RssAnon + RssShmem; returns the peak and the finished process."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak = 0
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                kv = {k: v for k, _, v in (line.partition(":") for line in f)}
            peak = max(peak, (int(kv.get("RssAnon", "0 kB").split()[0]) + int(kv.get("RssShmem", "0 kB").split()[0])) * 1024)
        except (OSError, ValueError):
            pass
        time.sleep(interval)
    out, err = proc.communicate()
    return peak, subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def measure_process_memory() -> dict:
    """The memory of a training process that holds almost no data (a real ``diskgraph train`` of a 2,000-node
    graph, one epoch: interpreter, torch, pyarrow, numba, zarr, the loader threads, the model), and the bytes a
    training step takes per activation element."""
    from ..generate import generate_dataset
    from ..preprocess import run_pack, run_sample

    env = _python_env()
    with tempfile.TemporaryDirectory(prefix="diskgraph-calibrate-") as tmp:
        ds = Path(tmp) / "tiny"
        generate_dataset(ds, nodes=2000, edges=10000, feature_dim=8, classes=4, split="random:0.5,0.25,0.25")
        run_sample(ds, fanouts=[3, 3], batch_size=64)
        run_pack(ds, memory_budget=64 << 20)
        peak, proc = _peak_memory_of([sys.executable, "-m", "diskgraph", "train", str(ds), "--epochs", "1", "--device",
                                      "cpu", "--hidden", "256", "--run-dir", str(Path(tmp) / "run"), "-q"], env)
        if proc.returncode:
            raise RuntimeError(f"the baseline training run failed: {proc.stderr[-2000:]}")
    probe = subprocess.run([sys.executable, "-c", _ACTIVATION_PROBE], capture_output=True, text=True, env=env,
                           timeout=600)
    if probe.returncode != 0:
        raise RuntimeError(f"the activation probe failed: {probe.stderr[-2000:]}")
    r = json.loads(probe.stdout.strip().splitlines()[-1])
    step_peak = r["after"]["VmHWM"] - r["before"]["VmRSS"]
    return {"base_anon_bytes": int(peak), "bytes_per_activation_element": max(0.0, step_peak / r["activation_elements"]),
            "probe": r}


PIPELINE_EPOCHS = 4
"""Epochs of the pipeline calibration's training run: the first warms up, the median of the others is measured."""


def measure_pipeline(hw: "Hardware", device: str, quick: bool = False) -> dict:
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

    env = _python_env()
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

    from ..store.progress import Progress

    log = logging.getLogger("diskgraph")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    t0 = clock()
    prof: dict = {"format": PROFILE_FORMAT, "version": PROFILE_VERSION,
                  "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "quick": bool(quick)}
    prof["machine"] = _machine(str(dev))
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
        "pcie": lambda tick: _measure_h2d(dev),
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


def _measure_h2d(dev) -> dict:
    import torch

    host = torch.empty(64 * MiB, dtype=torch.uint8, pin_memory=True)
    d = torch.empty_like(host, device=dev)

    def copy():
        d.copy_(host, non_blocking=True)
        torch.cuda.synchronize(dev)

    return {"h2d_Bps": host.numel() / robust_seconds(copy, **CALIBRATION_TIMING)}
