"""The hardware profile a plan is for: its file (read, written), the :class:`Hardware` object, flags over it.

Measured by :func:`~diskgraph.capacity.calibration.calibrate` (``diskgraph plan --calibrate``) or given by flags.

A profile is one JSON object (format ``diskgraph.hardware``), by default
``~/.cache/diskgraph/hardware.json`` (``$DISKGRAPH_PROFILE`` or ``--profile FILE`` elsewhere)::

    machine   cores, memory, CPU model, torch threads, the compute device (and the GPU's name and memory)
    disk      O_DIRECT sequential read bandwidth (4 MiB reads), 4 KiB random reads per second at depth 1 and
              with 8 in flight (``rand_read_iops_qd``, ``rand_read_depth``: a bounded pack's table reads),
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

Every number is measured on this machine by :func:`~diskgraph.capacity.calibration.calibrate`, each from several
timed calls after a warm-up (:mod:`~diskgraph.capacity.timing`: the median request of the disk, the median call of
memory-bound work, the mean of the fastest quarter of model steps), never from one; flags of ``diskgraph plan``
override single entries (:func:`apply_overrides`), and the plan reports which entries came from where.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..store.errors import InputError

PROFILE_FORMAT = "diskgraph.hardware"
PROFILE_VERSION = 1
PROFILE_ENV = "DISKGRAPH_PROFILE"


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
    "disk_queue_iops": ("disk.rand_read_iops_qd", "4 KiB random reads/s with the table reader's requests in flight"),
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
