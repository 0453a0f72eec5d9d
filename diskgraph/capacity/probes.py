"""The calibration's measurements of the machine (each a function that returns one entry of the profile).

* :func:`measure_machine` — what the machine is (``machine``);
* :func:`measure_disk`, :func:`measure_memory` — O_DIRECT disk rates and memory copy bandwidth (``disk``, ``memory``);
* :func:`measure_gather`, :func:`measure_read_stage` — the loader's assemble-stage gathers and its read stage's CPU
  work per minibatch (``gather``, ``read_stage``);
* :func:`measure_process_memory` — a training process's fixed memory and a step's bytes per activation element
  (``process``);
* :func:`measure_h2d` — host-to-GPU copies (``pcie``, CUDA only).

Model steps (``compute``) are in :mod:`~diskgraph.capacity.compute`, the training run that gives the pipeline factor
and the order of it all in :mod:`~diskgraph.capacity.calibration`.
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
from pathlib import Path

import numpy as np

from .compute import sampled_minibatches
from .fit import relative_fit
from .timing import CALIBRATION_TIMING, clock, per_unit_seconds, robust_seconds

MiB = 1 << 20


def measure_machine(device: str) -> dict:
    """The profile's ``machine`` entry: host name, cores this process may use, CPU model, memory, torch threads and
    versions, the compute device (and the GPU's name and memory)."""
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


# -- disk and memory ---------------------------------------------------------------------------------

def _queued_reads(fd: int, pages: int, reads: int, depth: int) -> float:
    """4 KiB random reads per second with ``depth`` of them in flight (``depth`` threads, each its own aligned buffer,
    as :class:`~diskgraph.store.table_reader.FeatureTableReader` issues a bounded pack's table reads): the median of 5
    rounds of ``reads / 5`` reads each (at least ``depth`` per round)."""
    from concurrent.futures import ThreadPoolExecutor

    from ..store.direct_io import ALIGNMENT, aligned_empty

    per_round = max(depth, reads // 5)
    rng = np.random.default_rng(2)
    bufs = [aligned_empty(ALIGNMENT) for _ in range(depth)]
    rates = []
    with ThreadPoolExecutor(depth) as pool:
        for _ in range(5):
            offs = (rng.integers(0, pages, per_round) * ALIGNMENT).tolist()
            parts = [offs[k::depth] for k in range(depth)]
            t0 = clock()
            list(pool.map(lambda kp: [os.preadv(fd, [bufs[kp[0]]], off) for off in kp[1]], enumerate(parts)))
            rates.append(per_round / max(clock() - t0, 1e-9))
    return float(statistics.median(rates))


TABLE_PROBE_ROW_BYTES = 256
TABLE_PROBE_ROWS_PER_CALL = 256


def _table_reader_rate(directory: Path, probe: Path, probe_bytes: int, reads: int, direct: bool) -> float:
    """Requests per second of the loader's own table reader (:class:`~diskgraph.store.table_reader.FeatureTableReader`:
    its threads, its per-request Python and copy work, the GIL they share) on the probe file seen as a feature table of
    256-byte rows, each request one isolated row (8 pages apart, so none merge), :data:`TABLE_PROBE_ROWS_PER_CALL` rows
    per call as a minibatch asks for them: the median of 5 rounds of ``reads / 5`` requests. On a fast disk this, not
    the device, bounds a bounded pack's table reads."""
    from ..store.table_reader import FeatureTableReader
    from ..store.zarr_arrays import write_array_metadata

    rows = probe_bytes // TABLE_PROBE_ROW_BYTES
    table = directory / f"{probe.name}-table"
    chunk = table / "c" / "0" / "0"
    try:
        write_array_metadata(table, (rows, TABLE_PROBE_ROW_BYTES // 4), (rows, TABLE_PROBE_ROW_BYTES // 4), "float32")
        chunk.parent.mkdir(parents=True)
        try:
            os.link(probe, chunk)
        except OSError:  # no hard links here: the probe moves (and goes with the directory)
            os.rename(probe, chunk)
        rng = np.random.default_rng(3)
        per_page = 4096 // TABLE_PROBE_ROW_BYTES
        slots = probe_bytes // (8 * 4096)  # one row every 8 pages
        per_call = int(min(TABLE_PROBE_ROWS_PER_CALL, slots))
        n_calls = max(1, -(-max(per_call, reads // 5) // per_call))
        rates = []
        with FeatureTableReader(table, direct=direct) as reader:
            out = np.empty((per_call, TABLE_PROBE_ROW_BYTES), np.uint8)
            for _ in range(5):
                calls = [np.sort(rng.choice(slots, per_call, replace=False)) * 8 * per_page for _ in range(n_calls)]
                t0 = clock()
                requests = sum(reader.read_rows(ids, out).requests for ids in calls)
                rates.append(requests / max(clock() - t0, 1e-9))
        return float(statistics.median(rates))
    finally:
        import shutil

        shutil.rmtree(table, ignore_errors=True)


def measure_disk(directory: str | os.PathLike, probe_bytes: int = 256 * MiB, random_reads: int = 2000,
                 depth: int | None = None) -> dict:
    """O_DIRECT write and sequential/random read rates of a probe file in ``directory`` (deleted after).

    Every request is timed on its own and the rates come from the median request (writes of 16 MiB,
    sequential reads of 4 MiB) or the median of groups of 100 random 4 KiB reads, so a moment of
    interference from another process does not set the rate. Returns bytes/s (``seq_read_Bps``,
    ``write_Bps``), reads/s (``rand_read_iops`` at depth 1; ``rand_read_iops_qd`` with ``rand_read_depth`` reads in
    flight, by default the table reader's :data:`~diskgraph.store.table_reader.READ_THREADS`; ``table_read_rps``,
    requests per second of the loader's table reader itself: :func:`_table_reader_rate`) and seconds
    (``read_latency_s``)."""
    if depth is None:
        from ..store.table_reader import READ_THREADS

        depth = READ_THREADS
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
            if not direct:
                drop_cache(fd)
            qd_rate = _queued_reads(fd, pages, random_reads, depth)
        finally:
            os.close(fd)
        reader_rate = _table_reader_rate(directory, fd_path, probe_bytes, random_reads, direct)
    finally:
        try:
            os.unlink(fd_path)
        except FileNotFoundError:
            pass
    seq_Bps = 4 * MiB / statistics.median(seq)
    iops = 1.0 / per_unit_seconds(rand, [len(g) for g in groups])
    return {"path": str(directory.absolute()), "direct": direct, "probe_bytes": probe_bytes,
            "seq_read_Bps": seq_Bps, "rand_read_iops": iops, "rand_read_iops_qd": qd_rate, "rand_read_depth": depth,
            "table_read_rps": reader_rate,
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
    h, c = relative_fit(X, hot)[0], relative_fit(X, cold)[0]
    return {"hot_row_s": float(h[0]), "hot_byte_s": float(h[1]), "cold_row_s": float(c[0]),
            "cold_byte_s": float(c[1]), "points": {"row_bytes": xs, "hot_s_per_row": hot, "cold_s_per_row": cold}}


READ_STAGE_SHAPES = [(64, [5]), (256, [10, 5]), (512, [15, 10]), (1024, [10, 5]), (1024, [15, 10]), (256, [10, 10, 5])]
"""``(batch, fanouts)`` of the minibatches the read stage is timed on."""


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
    c, err = relative_fit(rows, times)
    return {"per_minibatch_s": float(c[0]), "per_node_s": float(c[1]), "per_edge_s": float(c[2]),
            "fit_max_rel_error": err}


# -- process memory ----------------------------------------------------------------------------------

_ACTIVATION_PROBE = r"""
import json, sys
import numpy as np, torch, torch.nn.functional as F
from diskgraph.capacity.compute import blocks_on, sampled_minibatches
from diskgraph.models import build_model, work_terms
def status():
    out = {}
    for line in open('/proc/self/status'):
        k, _, v = line.partition(':')
        if k in ('VmHWM', 'VmRSS'):
            out[k] = int(v.split()[0]) * 1024
    return out
b, fdim = 4096, 256
mb = sampled_minibatches([(b, [15, 10])])[0]
blocks = blocks_on(mb, torch.device('cpu'))
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


def python_env() -> dict:
    """The environment of a calibration subprocess: this one's, with this checkout first on ``PYTHONPATH``."""
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

    env = python_env()
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


# -- host-to-GPU copies ------------------------------------------------------------------------------

def measure_h2d(dev) -> dict:
    """Bytes/s of a 64 MiB copy from pinned host memory to the GPU ``dev``."""
    import torch

    host = torch.empty(64 * MiB, dtype=torch.uint8, pin_memory=True)
    d = torch.empty_like(host, device=dev)

    def copy():
        d.copy_(host, non_blocking=True)
        torch.cuda.synchronize(dev)

    return {"h2d_Bps": host.numel() / robust_seconds(copy, **CALIBRATION_TIMING)}
