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

Every number is measured on this machine by :func:`calibrate`; flags of ``diskgraph plan`` override single
entries (:func:`apply_overrides`), and the plan reports which entries came from where.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..store.errors import InputError

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

def _median_time(fn, reps: int, best: bool = False) -> float:
    """Median (or, with ``best``, the shortest) of ``reps`` timed calls."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) if best else statistics.median(times)


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
    """O_DIRECT write and sequential/random read rates of a probe file in ``directory`` (deleted after)."""
    from ..store.direct_io import ALIGNMENT, O_DIRECT, aligned_empty
    from ..store.files import drop_cache

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    chunk = 16 * MiB
    probe_bytes = max(chunk, probe_bytes // chunk * chunk)
    fd_path = directory / f".diskgraph-probe-{os.getpid()}"
    buf = aligned_empty(chunk)
    buf[:] = np.random.default_rng(0).integers(0, 256, chunk, dtype=np.uint8)
    direct = bool(O_DIRECT)
    try:
        try:
            fd = os.open(fd_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (O_DIRECT if direct else 0), 0o600)
        except OSError:
            direct = False
            fd = os.open(fd_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        t0 = time.perf_counter()
        for off in range(0, probe_bytes, chunk):
            os.pwrite(fd, buf, off)
        os.fdatasync(fd)
        write_s = time.perf_counter() - t0
        if not direct:
            drop_cache(fd)
        os.close(fd)
        fd = os.open(fd_path, os.O_RDONLY | (O_DIRECT if direct else 0))
        try:
            if not direct:
                drop_cache(fd)
            rbuf = aligned_empty(4 * MiB)
            t0 = time.perf_counter()
            for off in range(0, probe_bytes, 4 * MiB):
                os.preadv(fd, [rbuf], off)
            seq_s = time.perf_counter() - t0
            if not direct:
                drop_cache(fd)
            small = aligned_empty(ALIGNMENT)
            pages = probe_bytes // ALIGNMENT
            offs = np.random.default_rng(1).integers(0, pages, random_reads) * ALIGNMENT
            t0 = time.perf_counter()
            for off in offs.tolist():
                os.preadv(fd, [small], off)
            rand_s = time.perf_counter() - t0
        finally:
            os.close(fd)
    finally:
        try:
            os.unlink(fd_path)
        except FileNotFoundError:
            pass
    seq = probe_bytes / seq_s
    iops = random_reads / rand_s
    return {"path": str(directory.absolute()), "direct": direct, "probe_bytes": probe_bytes,
            "seq_read_Bps": seq, "rand_read_iops": iops,
            "read_latency_s": max(0.0, 1.0 / iops - ALIGNMENT / seq), "write_Bps": probe_bytes / write_s}


def measure_memory(nbytes: int = 256 * MiB) -> dict:
    a = np.ones(nbytes // 8)
    b = np.empty_like(a)
    np.copyto(b, a)
    t = _median_time(lambda: np.copyto(b, a), 3)
    return {"copy_Bps": nbytes / t}


# -- gathers and the read stage ----------------------------------------------------------------------

def measure_gather(device, rows: int = 100_000, table_rows: int = 400_000) -> dict:
    """Seconds per row of the assemble stage's gathers, fitted as ``a + b * row_bytes`` (float32 rows)."""
    import torch

    hot, cold, xs = [], [], []
    rng = np.random.default_rng(0)
    for rb in (256, 1024, 4096):
        f = rb // 4
        n_tab = max(rows, min(table_rows, (256 * MiB) // rb))
        table = torch.randn(n_tab, f).to(device)
        slots = torch.from_numpy(rng.integers(0, n_tab, rows)).to(device)
        pos = torch.from_numpy(rng.permutation(rows)).to(device)
        staged = torch.randn(rows, f).to(device)
        x = torch.empty(rows, f, device=device)

        def sync():
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        def run_hot():
            x.index_copy_(0, pos, table.index_select(0, slots))
            sync()

        def run_cold():
            x.index_copy_(0, pos, staged)
            sync()

        run_hot(), run_cold()
        hot.append(_median_time(run_hot, 5) / rows)
        cold.append(_median_time(run_cold, 5) / rows)
        xs.append(rb)
    X = np.stack([np.ones(len(xs)), np.array(xs, dtype=np.float64)], 1)
    h, c = nnls(X, np.array(hot)), nnls(X, np.array(cold))
    return {"hot_row_s": float(h[0]), "hot_byte_s": float(h[1]), "cold_row_s": float(c[0]),
            "cold_byte_s": float(c[1]), "points": {"row_bytes": xs, "hot_s_per_row": hot, "cold_s_per_row": cold}}


def sampled_minibatches(shapes, nodes: int = 100_000, edges: int = 1_000_000, seed: int = 0):
    """Minibatches of realistic shape: sampled with the project's sampler from an in-memory R-MAT graph
    (:func:`~diskgraph.capacity.workload.rmat_csc`), one per ``(batch, fanouts, ...)`` in ``shapes``."""
    from ..sampler.neighbor_sampler import sample_minibatch
    from .workload import rmat_csc

    indptr, indices = rmat_csc(nodes, edges, seed)
    rng = np.random.default_rng(seed)
    return [sample_minibatch(indptr, indices, rng.choice(nodes, size=min(b, nodes), replace=False), fan, i + 1)
            for i, (b, fan, *_) in enumerate(shapes)]


def _relative_fit(x, y) -> tuple[np.ndarray, float]:
    """Non-negative coefficients minimising the relative error; and the largest relative error left."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    c = nnls(x / y[:, None], np.ones_like(y))
    return c, float(np.max(np.abs(x @ c - y) / y))


def measure_read_stage(quick: bool = False) -> dict:
    """The read stage's CPU work per minibatch without the disk read — Arrow rows of the plan and pack index
    (memory-mapped files), blocks, labels, tier positions, as :class:`~diskgraph.pipeline.loader.PackedLoader`
    does it — fitted as ``c0 + c1 * input_nodes + c2 * sampled_edges`` seconds."""
    import pyarrow as pa

    from ..pipeline.blocks import blocks_from_minibatch
    from ..pipeline.loader import tier_positions
    from ..store.packed import PackEntry, index_schema
    from ..store.plan import PlanSplitWriter, SampledMinibatch
    from .workload import index_row

    shapes = [(64, [5]), (256, [10, 5]), (512, [15, 10]), (1024, [10, 5]), (1024, [15, 10]), (256, [10, 10, 5])]
    mbs = sampled_minibatches(shapes, *((20_000, 200_000) if quick else (100_000, 1_000_000)))
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
            preader = pa.ipc.open_file(pa.memory_map(str(Path(tmp) / f"plan{si}.arrow")))
            ireader = pa.ipc.open_file(pa.memory_map(str(ipath)))

            def one():
                bt = preader.get_batch(0)

                def v(name, batch=bt):
                    return batch.column(name).values.to_numpy()

                mb = SampledMinibatch(int(bt.column("epoch")[0].as_py()), int(bt.column("batch")[0].as_py()),
                                      v("input_nodes"), v("layer_sizes"),
                                      [v(f"hop{h}_indptr") for h in range(1, hops + 1)],
                                      [v(f"hop{h}_indices") for h in range(1, hops + 1)])
                ib = ireader.get_batch(0)

                def sc(name):
                    return int(ib.column(name)[0].as_py())

                e = PackEntry(sc("epoch"), sc("batch"), sc("offset"), sc("nbytes"), sc("padded_nbytes"), sc("n_cold"),
                              ib.column("tier").values.to_numpy(), ib.column("slot").values.to_numpy(),
                              ib.column("cold_nodes").values.to_numpy())
                blocks_from_minibatch(mb)
                np.asarray(labels[mb.seeds], dtype=np.int64)
                tier_positions(e)

            one()
            times.append(_median_time(one, 5))
            rows.append([1.0, n, sum(len(x) for x in m.hop_indices)])
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
                     reps: int = 3) -> tuple[list[float], list[float]]:
    """Seconds of a training step (forward, backward, Adam) and of an evaluation forward on each minibatch (random
    features and labels), after one warm-up step each: the shortest of ``reps`` runs, since on a shared machine
    other processes only ever add time (torch's thread pool is very sensitive to a busy core)."""
    import torch
    import torch.nn.functional as F

    from ..models import build_model

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

        step(), forward()
        train_t.append(_median_time(step, reps, best=True))
        eval_t.append(_median_time(forward, reps, best=True))
    return train_t, eval_t


COMPUTE_SHAPES = [(256, [10, 5], 64), (1024, [10, 5], 64), (512, [15, 10], 128), (1024, [15, 10], 256),
                  (256, [10, 5], 512), (512, [10, 10, 5], 128), (2048, [5, 5], 256), (1024, [10, 5], 1024),
                  (128, [5, 5], 32), (512, [10, 5], 128), (1024, [10, 5, 3], 64), (2048, [10, 5], 128)]
QUICK_SHAPES = [(128, [5, 5], 32), (256, [10, 5], 64), (512, [10, 5], 32), (256, [15, 10], 64), (64, [5], 16)]


def measure_compute(device, models=MODELS, quick: bool = False, hidden: int = 256) -> dict:
    """Timed training steps and evaluation forwards of each model on sampled blocks; fitted coefficients."""
    import torch
    import torch.nn.functional as F

    from ..models import build_model

    shapes = QUICK_SHAPES if quick else COMPUTE_SHAPES
    hidden = 64 if quick else hidden
    mbs = sampled_minibatches(shapes, *((20_000, 200_000) if quick else (100_000, 1_000_000)))
    classes = 16
    reps = 2 if quick else 5
    rng = np.random.default_rng(0)
    out = {}
    for name in models:
        rows, train_t, eval_t = [], [], []
        for mb, (b, fan, fdim) in zip(mbs, shapes):
            tt, te = time_model_steps(name, [mb], fdim, hidden, classes, 4, device, reps)
            train_t += tt
            eval_t += te
            rows.append(work_terms(name, mb.layer_sizes, [len(i) for i in mb.hop_indices], fdim, hidden, classes)[:4])
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

        step1()
        t_all = _median_time(step1, reps + 1)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            step1()
            t_one = _median_time(step1, reps + 1)
        finally:
            torch.set_num_threads(threads)
        speedup = max(1.0, t_one / t_all)
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


def measure_pipeline(hw: "Hardware", device: str, quick: bool = False) -> dict:
    """How much slower a real pipelined epoch is than the model's sum of its parts, on this machine.

    Trains a calibration graph (60K nodes, 600K edges, 64-d, fanouts 10,5, batch 512, a 10 % host tier — not one of
    the graphs plans are checked on) for 2 epochs with ``diskgraph train`` and divides the measured epoch time (the
    faster epoch) by the estimate of :func:`~diskgraph.capacity.estimate.estimate_plan` from the profile measured so
    far. On the CPU the read and assemble threads share the cores with torch's thread pool, and per-minibatch work
    outside the model step (the handover between threads, the loss and accuracy bookkeeping) is not in the calibrated
    step; both show in this factor, which estimates then apply to the CPU-bound epoch.
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
        proc = subprocess.run([sys.executable, "-m", "diskgraph", "train", str(ds), "--epochs", "2", "--device", device,
                               "--hidden", "256", "--run-dir", str(Path(tmp) / "run"), "--log-json", str(log_json),
                               "-q"], capture_output=True, text=True, env=env, timeout=1200)
        if proc.returncode:
            raise RuntimeError(f"the pipeline calibration run failed: {proc.stderr[-2000:]}")
        records = [json.loads(line) for line in log_json.read_text().splitlines() if line.strip()]
        measured = min(r["epoch_s"] for r in records if not r.get("summary"))
        w = sample_workload(ds, fanouts=[10, 5], batch_size=512, sample_minibatches=64)
        predicted = estimate_plan(w, hw, model="sage", hidden=256, host_cache=host, alternatives=False)["epoch_s"]
    factor = min(4.0, max(0.5, measured / predicted)) if predicted > 0 else 1.0
    return {"epoch_factor": factor, "measured_epoch_s": measured, "predicted_epoch_s": predicted,
            "graph": {"nodes": nodes, "edges": 10 * nodes, "feature_dim": 64, "fanouts": [10, 5], "batch_size": 512,
                      "host_cache_bytes": host}}


# -- all of it ---------------------------------------------------------------------------------------

def calibrate(directory: str | os.PathLike = ".", device: str = "auto", probe_bytes: int = 256 * MiB,
              quick: bool = False, log=None) -> Hardware:
    """Measure this machine (a few tens of seconds; ``quick`` a few seconds, less precise)."""
    import torch

    say = log or (lambda *a: None)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    t0 = time.perf_counter()
    prof: dict = {"format": PROFILE_FORMAT, "version": PROFILE_VERSION,
                  "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "quick": bool(quick)}
    prof["machine"] = _machine(str(dev))
    say("calibrating the disk in %s (%d MiB probe, O_DIRECT)", directory, probe_bytes // MiB)
    prof["disk"] = measure_disk(directory, probe_bytes, random_reads=300 if quick else 2000)
    say("calibrating memory, gathers and the loader's read stage")
    prof["memory"] = measure_memory(64 * MiB if quick else 256 * MiB)
    prof["gather"] = measure_gather(dev, rows=20_000 if quick else 100_000)
    prof["read_stage"] = measure_read_stage(quick)
    say("calibrating model steps (%s) on %s", ", ".join(MODELS), dev)
    prof["compute"] = measure_compute(dev, quick=quick)
    if dev.type == "cuda":
        prof["pcie"] = _measure_h2d(dev)
    prof["process"] = measure_process_memory()
    if dev.type == "cpu":
        say("calibrating the pipeline: a real 2-epoch training run against its estimate")
        prof["pipeline"] = measure_pipeline(Hardware(prof), device, quick=quick)
    prof["seconds"] = round(time.perf_counter() - t0, 1)
    return Hardware(prof)


def _measure_h2d(dev) -> dict:
    import torch

    host = torch.empty(64 * MiB, dtype=torch.uint8, pin_memory=True)
    d = torch.empty_like(host, device=dev)

    def copy():
        d.copy_(host, non_blocking=True)
        torch.cuda.synchronize(dev)

    copy()
    return {"h2d_Bps": host.numel() / _median_time(copy, 5)}
