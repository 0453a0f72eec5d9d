"""Run a command inside a memory-capped cgroup-v1 child and measure it; drop files from the page cache.

The benchmarks in ``tools/bench`` run every contestant in its own child of
this process's cgroup-v1 memory controller, so each gets the same cap and its
own counters::

    from cgroup import MemoryCgroup, run_in_cgroup, evict

    check_memory_cgroup()                       # CgroupUnavailable, one sentence, when it cannot work
    evict(["bench-data/raw"])                   # posix_fadvise(DONTNEED) on every file below
    r = run_in_cgroup(["diskgraph", "inspect", "x"], 512 << 20, name="inspect")
    print(r.returncode, r.wall_s, r.max_usage_bytes, r.failcnt, r.oom_kills, r.read_bytes)

What is measured (:class:`RunResult`):

* the cgroup's ``memory.max_usage_in_bytes`` (anonymous memory **and** page
  cache charged to it — a job that streams more file data than the cap always
  reaches the cap here, that is how cgroup v1 reclaims), ``memory.failcnt``
  (how often a charge hit the cap and forced reclaim), the ``oom_kill`` count
  of ``memory.oom_control``;
* sampled peaks of the cgroup's ``memory.stat`` (``total_rss`` = anonymous
  memory, ``total_cache``, ``total_mapped_file``, dirty, writeback) and of the
  process's ``RssAnon``/``RssFile`` — the numbers that say where the memory went;
* the child's peak RSS (``VmHWM`` of /proc/PID/status, sampled; it counts mapped
  file pages too), user and system CPU and ``ru_maxrss`` (``os.wait4``; Linux
  carries the spawning process's own high-water mark across fork/exec into
  ``ru_maxrss``, so it is at least the harness's RSS — prefer ``peak_rss_bytes``);
* bytes read from / written to the block layer by the child: the delta of this
  process's ``/proc/self/io`` across the child's reaping (Linux adds a reaped
  child's I/O counters to its parent's), so it counts the child and all its
  descendants exactly; this process itself does no block I/O while it waits.

Cgroup v1 only (``/sys/fs/cgroup/memory``); root, or write access to our
memory cgroup, is needed. :func:`check_memory_cgroup` says in one sentence why
it cannot run. Run ``python tools/bench/cgroup.py --help`` for a command-line
front end (``--cap 512M -- CMD ...`` prints the measurements as JSON).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_MOUNT = Path("/sys/fs/cgroup/memory")
STAT_KEYS = ("total_rss", "total_cache", "total_mapped_file", "total_dirty", "total_writeback", "total_shmem")
"""``memory.stat`` fields whose peaks a run records (hierarchical totals, bytes)."""


class CgroupUnavailable(RuntimeError):
    """A memory-capped cgroup cannot be made here; ``str()`` is one sentence saying why."""


# -- finding our cgroup ----------------------------------------------------------------------------

def memory_mount() -> Path:
    """Where the cgroup-v1 memory controller is mounted (from /proc/self/mountinfo)."""
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields = right.split()
                if len(fields) >= 3 and fields[0] == "cgroup" and "memory" in fields[2].split(","):
                    return Path(left.split()[4])
    except OSError:
        pass
    return DEFAULT_MOUNT


def own_memory_cgroup() -> Path:
    """The directory of this process's cgroup-v1 memory cgroup (``N:memory:/path`` in /proc/self/cgroup).

    Raises:
        CgroupUnavailable: no v1 memory controller, or its directory is missing.
    """
    rel = None
    with open("/proc/self/cgroup") as f:
        for line in f:
            parts = line.rstrip("\n").split(":", 2)
            if len(parts) == 3 and "memory" in parts[1].split(","):
                rel = parts[2]
                break
    if rel is None:
        raise CgroupUnavailable("this machine has no cgroup-v1 memory controller (no 'memory' line in /proc/self/cgroup); "
                                "the benchmark needs cgroup v1 with the memory controller mounted at /sys/fs/cgroup/memory")
    mount = memory_mount()
    path = mount / rel.lstrip("/")
    if not (path / "memory.limit_in_bytes").exists():
        # Inside a cgroup namespace the mount's root is our own cgroup.
        if (mount / "memory.limit_in_bytes").exists() and rel != "/":
            cand = mount
            if (cand / "cgroup.procs").exists() and str(os.getpid()) in (cand / "cgroup.procs").read_text().split():
                return cand
        raise CgroupUnavailable(f"our memory cgroup {rel} has no directory under {mount} (is cgroup v1 memory mounted?); "
                                "the benchmark needs a writable cgroup-v1 memory controller")
    return path


def check_memory_cgroup() -> Path:
    """Our memory cgroup directory when children with a cap can be made in it.

    Raises:
        CgroupUnavailable: not root / not writable / no cgroup v1 memory, in one sentence.
    """
    path = own_memory_cgroup()
    if not os.access(path, os.W_OK):
        who = "not running as root" if os.geteuid() != 0 else "no write access"
        raise CgroupUnavailable(f"cannot create a memory cgroup under {path} ({who}); run the benchmark as root")
    return path


# -- one capped child cgroup -----------------------------------------------------------------------

def swap_total() -> int:
    """Bytes of swap configured on this machine (SwapTotal)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("SwapTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _read(path: Path) -> str:
    return path.read_text().strip()


def _write(path: Path, value) -> None:
    with open(path, "w") as f:
        f.write(str(value))


def parse_kv(text: str) -> dict[str, int]:
    """``key value`` lines (memory.stat, memory.oom_control, /proc/PID/io with ':') → dict of ints."""
    out = {}
    for line in text.splitlines():
        parts = line.replace(":", " ").split()
        if len(parts) >= 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                pass
    return out


class MemoryCgroup:
    """A child of our memory cgroup with ``memory.limit_in_bytes`` = ``limit``.

    When the machine has swap, ``memory.memsw.limit_in_bytes`` is set to the
    same value so the cap covers swap too (``memsw`` is then True).

    Use as a context manager: created on enter, emptied and removed on exit.
    """

    def __init__(self, name: str, limit_bytes: int, parent: Path | None = None):
        self.parent = parent or check_memory_cgroup()
        self.name = name
        self.path = self.parent / name
        self.limit = int(limit_bytes)
        self.memsw = False

    def create(self) -> "MemoryCgroup":
        if self.path.exists():
            self.remove()
        try:
            self.path.mkdir()
        except OSError as e:
            raise CgroupUnavailable(f"cannot create memory cgroup {self.path} ({e.strerror}); run the benchmark as root "
                                    "on a machine with cgroup v1") from None
        _write(self.path / "memory.limit_in_bytes", self.limit)
        memsw = self.path / "memory.memsw.limit_in_bytes"
        if memsw.exists() and swap_total() > 0:
            # With swap the cap must cover it too (memsw = memory + swap, >= the memory limit). Without swap
            # memsw equals memory usage and a memsw limit adds nothing, and it would hide reclaim: the kernel
            # charges memsw first and (6.x) counts failures only in memory.failcnt, which then stays 0.
            _write(memsw, self.limit)
            self.memsw = True
        got = int(_read(self.path / "memory.limit_in_bytes"))
        if got > self.limit:
            raise CgroupUnavailable(f"the kernel set {self.path}/memory.limit_in_bytes to {got}, above the {self.limit} asked")
        self.limit = got  # the kernel rounds down to whole pages
        return self

    @property
    def procs_file(self) -> Path:
        return self.path / "cgroup.procs"

    def read(self, name: str) -> str:
        return _read(self.path / name)

    def counter(self, name: str, default: int = 0) -> int:
        try:
            return int(self.read(name))
        except (OSError, ValueError):
            return default

    def stat(self) -> dict[str, int]:
        return parse_kv(self.read("memory.stat"))

    def oom_control(self) -> dict[str, int]:
        return parse_kv(self.read("memory.oom_control"))

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in self.read("cgroup.procs").split()]
        except OSError:
            return []

    def remove(self) -> None:
        """Kill what is left inside, drop its charged page cache and rmdir it."""
        if not self.path.exists():
            return
        for _ in range(50):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
        try:
            _write(self.path / "memory.force_empty", 0)
        except OSError:
            pass  # rmdir moves remaining charges to the parent anyway
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)
        self.path.rmdir()

    def __enter__(self) -> "MemoryCgroup":
        return self.create()

    def __exit__(self, *exc) -> None:
        self.remove()


# -- running a command -----------------------------------------------------------------------------

@dataclass
class RunResult:
    """What :func:`run_in_cgroup` measured (bytes, seconds)."""

    cmd: list[str]
    limit_bytes: int
    returncode: int | None = None
    timed_out: bool = False
    stopped_early: bool = False
    wall_s: float = 0.0
    user_s: float = 0.0
    sys_s: float = 0.0
    max_usage_bytes: int = 0
    failcnt: int = 0
    memsw_failcnt: int | None = None
    oom_kills: int = 0
    oom_killed: bool = False
    ru_maxrss_bytes: int = 0
    peak_rss_bytes: int = 0
    peak_rss_anon_bytes: int = 0
    peak_rss_file_bytes: int = 0
    peak_stat: dict = field(default_factory=dict)
    final_stat: dict = field(default_factory=dict)
    read_bytes: int = 0
    write_bytes: int = 0
    cancelled_write_bytes: int = 0
    read_chars: int = 0
    write_chars: int = 0
    samples: int = 0
    timeline: list = field(default_factory=list)
    stdout: str | None = None
    stderr: str | None = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and self.oom_kills == 0

    def to_dict(self, timeline: bool = True) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        if not timeline:
            d.pop("timeline")
        return d


def _self_io() -> dict[str, int]:
    with open("/proc/self/io") as f:
        return parse_kv(f.read())


def _proc_status(pid: int) -> dict[str, int]:
    """``RssAnon``/``RssFile``/``VmRSS``/``VmHWM`` of a process in bytes ({} once it is gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("RssAnon:", "RssFile:", "VmRSS:", "VmHWM:")):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return out


def _proc_io(pid: int) -> dict[str, int]:
    """``read_bytes``/``write_bytes`` of a live process (its own, not its reaped children's)."""
    try:
        with open(f"/proc/{pid}/io") as f:
            d = parse_kv(f.read())
        return {"read_bytes": d.get("read_bytes", 0), "write_bytes": d.get("write_bytes", 0)}
    except OSError:
        return {}


class _Sampler(threading.Thread):
    """Polls the cgroup and the process every ``interval`` s; keeps peaks and a coarse timeline."""

    def __init__(self, cg: MemoryCgroup, pid: int, interval: float, timeline_every: float, t0: float):
        super().__init__(daemon=True)
        self.cg, self.pid, self.interval, self.timeline_every, self.t0 = cg, pid, interval, timeline_every, t0
        self.stop = threading.Event()
        self.peak_stat = {k: 0 for k in STAT_KEYS}
        self.peak_anon = self.peak_file = self.peak_hwm = 0
        self.samples = 0
        self.timeline: list[dict] = []
        self._next_tl = 0.0

    def sample(self) -> None:
        try:
            st = self.cg.stat()
            usage = self.cg.counter("memory.usage_in_bytes")
        except OSError:
            return
        for k in STAT_KEYS:
            self.peak_stat[k] = max(self.peak_stat[k], st.get(k, 0))
        ps = _proc_status(self.pid)
        self.peak_anon = max(self.peak_anon, ps.get("RssAnon", 0))
        self.peak_file = max(self.peak_file, ps.get("RssFile", 0))
        self.peak_hwm = max(self.peak_hwm, ps.get("VmHWM", 0), ps.get("VmRSS", 0))
        self.samples += 1
        t = time.perf_counter() - self.t0
        if t >= self._next_tl:
            self._next_tl = t + self.timeline_every
            self.timeline.append({"t": round(t, 2), "usage": usage, "rss": st.get("total_rss", 0),
                                  "cache": st.get("total_cache", 0), "mapped_file": st.get("total_mapped_file", 0),
                                  "dirty": st.get("total_dirty", 0), "writeback": st.get("total_writeback", 0),
                                  "failcnt": self.cg.counter("memory.failcnt"),
                                  "rss_anon_proc": ps.get("RssAnon", 0), **_proc_io(self.pid)})

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            self.sample()


def run_in_cgroup(cmd: list[str], limit_bytes: int, *, name: str | None = None, env: dict | None = None,
                  cwd: str | None = None, timeout: float | None = None, capture: bool = False,
                  stdout=None, stderr=None, sample_interval: float = 0.05, timeline_every: float = 1.0,
                  parent: Path | None = None, stop_when=None) -> RunResult:
    """Run ``cmd`` in a new child memory cgroup capped at ``limit_bytes``; return what was measured.

    The command starts through ``sh -c 'echo $$ > cgroup.procs; exec "$@"'`` so
    that it (and everything it starts) is charged to the cgroup from its first
    page. ``timeout`` (s) kills the process group and sets ``timed_out``.
    ``capture`` keeps stdout/stderr as text in the result; otherwise they go to
    ``stdout``/``stderr`` (default: inherited). Sampling every ``sample_interval``
    s gives the memory.stat and RssAnon peaks; the timeline keeps one sample per
    ``timeline_every`` s. Only one command at a time per parent process, so the
    ``/proc/self/io`` delta belongs to it. ``stop_when`` (a callable, polled every
    0.25 s) ends the command early (SIGKILL, ``stopped_early``) once it returns true.

    Raises:
        CgroupUnavailable: no cgroup v1 memory controller, or not allowed to use it.
    """
    cmd = [str(c) for c in cmd]
    name = name or f"bench-{os.getpid()}-{int(time.time() * 1000) % 10**9}"
    res = RunResult(cmd=cmd, limit_bytes=int(limit_bytes))
    with MemoryCgroup(name, limit_bytes, parent) as cg:
        res.limit_bytes = cg.limit
        wrapper = ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(cg.procs_file), *cmd]
        io0 = _self_io()
        t0 = time.perf_counter()
        out = subprocess.PIPE if capture else stdout
        err = subprocess.PIPE if capture else stderr
        proc = subprocess.Popen(wrapper, env=env, cwd=cwd, stdout=out, stderr=err, start_new_session=True,
                                text=capture or None)
        sampler = _Sampler(cg, proc.pid, sample_interval, timeline_every, t0)
        sampler.start()
        readers = []
        bufs = {"stdout": [], "stderr": []}
        if capture:
            for key, stream in (("stdout", proc.stdout), ("stderr", proc.stderr)):
                th = threading.Thread(target=lambda s=stream, k=key: bufs[k].append(s.read()), daemon=True)
                th.start()
                readers.append(th)
        deadline = None if timeout is None else t0 + timeout
        status = rusage = None
        next_check = t0
        while True:
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            now = time.perf_counter()
            early = False
            if stop_when is not None and now >= next_check:
                next_check = now + 0.25
                early = bool(stop_when())
            if early or (deadline is not None and now > deadline):
                res.stopped_early, res.timed_out = early, not early
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                _, status, rusage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.02)
        res.wall_s = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        io1 = _self_io()
        sampler.stop.set()
        sampler.join()
        sampler.sample()
        for th in readers:
            th.join()
        if capture:
            res.stdout, res.stderr = "".join(bufs["stdout"]), "".join(bufs["stderr"])
        res.returncode = proc.returncode
        res.user_s, res.sys_s = rusage.ru_utime, rusage.ru_stime
        res.ru_maxrss_bytes = rusage.ru_maxrss * 1024
        res.max_usage_bytes = cg.counter("memory.max_usage_in_bytes")
        res.failcnt = cg.counter("memory.failcnt")
        if cg.memsw:
            res.memsw_failcnt = cg.counter("memory.memsw.failcnt")
        oc = cg.oom_control()
        res.oom_kills = oc.get("oom_kill", 0)
        res.oom_killed = res.oom_kills > 0 and res.returncode == -signal.SIGKILL
        res.final_stat = {k: v for k, v in cg.stat().items() if k.startswith("total_") or k in ("hierarchical_memory_limit",)}
        res.peak_stat = dict(sampler.peak_stat)
        res.peak_rss_anon_bytes, res.peak_rss_file_bytes = sampler.peak_anon, sampler.peak_file
        res.peak_rss_bytes = sampler.peak_hwm
        res.samples, res.timeline = sampler.samples, sampler.timeline
        res.read_bytes = io1["read_bytes"] - io0["read_bytes"]
        res.write_bytes = io1["write_bytes"] - io0["write_bytes"]
        res.cancelled_write_bytes = io1["cancelled_write_bytes"] - io0["cancelled_write_bytes"]
        res.read_chars = io1["rchar"] - io0["rchar"]
        res.write_chars = io1["wchar"] - io0["wchar"]
    return res


# -- page cache ------------------------------------------------------------------------------------

def _files(paths) -> list[Path]:
    out = []
    for p in paths:
        p = Path(p)
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            for root, _dirs, names in os.walk(p):
                out.extend(Path(root) / n for n in names if os.path.isfile(os.path.join(root, n)))
    return out


def evict(paths) -> tuple[int, int]:
    """Drop the page cache of every regular file at or under ``paths``; returns (files, bytes).

    Each file is synced first (dirty pages cannot be dropped), then
    ``posix_fadvise(POSIX_FADV_DONTNEED)`` over its whole length.
    """
    n = total = 0
    for f in _files(paths):
        try:
            fd = os.open(f, os.O_RDONLY)
        except OSError:
            continue
        try:
            try:
                os.fdatasync(fd)
            except OSError:
                pass
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            total += os.fstat(fd).st_size
            n += 1
        finally:
            os.close(fd)
    return n, total


_libc = None


def _get_libc():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.mmap.restype = ctypes.c_void_p
        _libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        _libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        _libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    return _libc


def resident_bytes(paths) -> int:
    """Bytes of the files at or under ``paths`` now in the page cache (mincore), to check an eviction."""
    libc = _get_libc()
    page = os.sysconf("SC_PAGE_SIZE")
    window = 1 << 30
    total = 0
    for f in _files(paths):
        size = f.stat().st_size
        if size == 0:
            continue
        fd = os.open(f, os.O_RDONLY)
        try:
            for off in range(0, size, window):
                length = min(window, size - off)
                addr = libc.mmap(None, length, 1, 1, fd, off)  # PROT_READ, MAP_SHARED
                if addr in (None, ctypes.c_void_p(-1).value):
                    raise OSError(ctypes.get_errno(), f"mmap of {f} failed")
                try:
                    npages = (length + page - 1) // page
                    vec = (ctypes.c_ubyte * npages)()
                    if libc.mincore(addr, length, vec) != 0:
                        raise OSError(ctypes.get_errno(), f"mincore of {f} failed")
                    total += sum(1 for b in bytes(vec) if b & 1) * page
                finally:
                    libc.munmap(addr, length)
        finally:
            os.close(fd)
    return total


# -- facts about the machine -----------------------------------------------------------------------

def machine_facts(disk_paths=(".",)) -> dict:
    """nproc, MemTotal, CPU model, kernel, Python, and ``df`` of the filesystems holding ``disk_paths``."""
    facts: dict = {"nproc": os.cpu_count(), "affinity_cpus": len(os.sched_getaffinity(0)),
                   "kernel": platform.release(), "python": platform.python_version()}
    try:
        with open("/proc/meminfo") as f:
            mem = parse_kv(f.read())
        facts["mem_total_bytes"] = mem.get("MemTotal", 0) * 1024
        facts["swap_total_bytes"] = mem.get("SwapTotal", 0) * 1024
    except OSError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    facts["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    disks = {}
    for p in disk_paths:
        p = Path(p)
        while not p.exists() and p != p.parent:
            p = p.parent
        try:
            out = subprocess.run(["df", "-P", "-T", "-B1", str(p)], capture_output=True, text=True, check=True).stdout
            fields = out.splitlines()[-1].split()
            disks[str(p)] = {"device": fields[0], "fstype": fields[1], "size_bytes": int(fields[2]),
                             "used_bytes": int(fields[3]), "avail_bytes": int(fields[4]), "mount": fields[6]}
        except (OSError, subprocess.CalledProcessError, IndexError, ValueError):
            u = shutil.disk_usage(p)
            disks[str(p)] = {"size_bytes": u.total, "used_bytes": u.used, "avail_bytes": u.free}
    facts["disks"] = disks
    return facts


# -- command line ----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from diskgraph.units import parse_bytes

    p = argparse.ArgumentParser(
        prog="cgroup.py", description="Run CMD in a child cgroup-v1 memory cgroup capped at --cap and print what it "
        "used as JSON (max usage, failcnt, OOM kills, peak RSS, bytes read/written, wall time).",
        epilog="Example: python tools/bench/cgroup.py --cap 512M --evict bench-data -- diskgraph inspect data/x --verify")
    p.add_argument("--cap", type=parse_bytes, required=True, help="memory cap (e.g. 512M, 1.5GiB)")
    p.add_argument("--evict", action="append", default=[], metavar="PATH", help="drop PATH's page cache first (repeatable)")
    p.add_argument("--timeout", type=float, help="kill the command after this many seconds")
    p.add_argument("--timeline", action="store_true", help="include the once-a-second memory timeline")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- the command and its arguments")
    a = p.parse_args(argv)
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd:
        p.error("no command given; put it after --")
    try:
        check_memory_cgroup()
    except CgroupUnavailable as e:
        print(f"cgroup.py: {e}", file=sys.stderr)
        return 2
    if a.evict:
        evict(a.evict)
    r = run_in_cgroup(cmd, a.cap, timeout=a.timeout)
    print(json.dumps({"command": shlex.join(cmd), **r.to_dict(timeline=a.timeline)}, indent=2))
    return 0 if r.ok else 1


if __name__ == "__main__":
    sys.exit(main())
