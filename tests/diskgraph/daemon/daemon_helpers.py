"""Helpers of the daemon tests: a tiny packed dataset, a daemon in a subprocess, a raw HTTP client.

The dataset is a 3000-node synthetic graph with 8 features, sampled with fanouts 4,3 in batches of
64 (29 training minibatches per epoch), so a 16-wide GraphSAGE trains an epoch in about a second:
long enough to stop or kill a job mid-epoch, short enough for CI.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

TRAIN = {"model": "sage", "hidden": 16, "epochs": 3, "seed": 3, "device": "cpu", "checkpoint_every": 4}
"""The train spec of the recovery tests (and of their uninterrupted reference run)."""


def make_dataset(workspace: Path, name: str = "syn") -> Path:
    from diskgraph.generate import generate_dataset
    from diskgraph.preprocess import run_pack, run_sample

    ds = generate_dataset(workspace / name, nodes=3000, edges=20000, feature_dim=8, classes=4, seed=0)
    run_sample(ds, fanouts=[4, 3], batch_size=64, seed=0)
    run_pack(ds, memory_budget=32 << 20)
    return ds


def request(url: str, token: str | None, method: str, path: str, body: bytes | str | dict | None = None,
            headers: dict | None = None, timeout: float = 30) -> tuple[int, dict | str, dict]:
    """One HTTP request; returns (status, JSON body or text, headers)."""
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    h = dict(headers or {})
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    if isinstance(body, dict):
        body = json.dumps(body)
    if body is not None:
        h.setdefault("Content-Type", "application/json")
    try:
        conn.request(method, path, body=body, headers=h)
        resp = conn.getresponse()
        data = resp.read().decode()
        ctype = resp.getheader("Content-Type", "")
        return resp.status, (json.loads(data) if ctype.startswith("application/json") else data), dict(resp.getheaders())
    finally:
        conn.close()


class DaemonProcess:
    """``diskgraph serve`` in a subprocess on a free loopback port."""

    def __init__(self, root: Path, allow: Path, *flags: str):
        self.root, self.allow, self.flags = root, allow, flags
        self.proc: subprocess.Popen | None = None
        self.url = self.token = None

    def start(self, timeout: float = 60) -> "DaemonProcess":
        self.stderr = open(self.root.parent / f"{self.root.name}-serve.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "diskgraph", "serve", "--root", str(self.root), "--port", "0",
                                      "--allow", str(self.allow), *self.flags], stdout=self.stderr, stderr=self.stderr)
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                address = json.loads((self.root / "daemon.json").read_text())
            except (OSError, ValueError):
                address = None
            if address and address["pid"] == self.proc.pid:
                self.url, self.token = address["url"], (self.root / "token").read_text().strip()
                return self
            assert self.proc.poll() is None, (self.root.parent / f"{self.root.name}-serve.log").read_text()
            time.sleep(0.05)
        raise AssertionError("the daemon did not start listening")

    def api(self, method: str, path: str, body=None, **kw):
        return request(self.url, self.token, method, path, body, **kw)

    def job(self, job_id: int) -> dict:
        status, body, _ = self.api("GET", f"/jobs/{job_id}")
        assert status == 200, body
        return body

    def wait_state(self, job_id: int, states: tuple[str, ...], timeout: float = 120) -> dict:
        deadline = time.time() + timeout
        while True:  # looks once more after the deadline: a test process paused past it still sees the end
            late = time.time() > deadline
            job = self.job(job_id)
            if job["state"] in states:
                return job
            if late:
                raise AssertionError(f"job {job_id} did not reach {states}: {job}")
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        self.stderr.close()
        return rc


def checkpoint_info(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "checkpoint.json").read_text())
    except (OSError, ValueError):
        return None


def wait_mid_epoch_checkpoint(pid: int, run_dir: Path, per_epoch: int, every: int, min_epoch: int = 1,
                              after: tuple[int, int] = (-1, 0), timeout: float = 120) -> dict:
    """Freeze process ``pid`` (SIGSTOP) at a moment its latest checkpoint is mid-epoch, in epoch ≥ ``min_epoch``,
    past the point ``after`` (epoch, position), and not the epoch's last mid-epoch one (so a checkpoint written
    after the one read is mid-epoch too). ``after`` makes it a checkpoint this process wrote, not one an earlier
    attempt left in ``run_dir`` (which may satisfy the rest while this process still starts).

    Returns that checkpoint's info; the process stays stopped (the caller kills or continues it).
    """
    def wanted(info):
        return (info and info["epoch"] >= min_epoch and (info["epoch"], info["position"]) > tuple(after)
                and 0 < info["position"] and info["position"] + every < per_epoch)

    deadline = time.time() + timeout
    while time.time() < deadline:
        if wanted(checkpoint_info(run_dir)):
            os.kill(pid, signal.SIGSTOP)
            info = checkpoint_info(run_dir)
            if wanted(info):
                return info
            os.kill(pid, signal.SIGCONT)
        time.sleep(0.01)
    raise AssertionError(f"no mid-epoch checkpoint in {run_dir}")


def wait_gone(pid: int, timeout: float = 60) -> None:
    """Wait until process ``pid`` has exited (a zombie nobody reaped counts as exited)."""
    import psutil

    deadline = time.time() + timeout
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.time() < deadline, f"process {pid} did not exit"
        time.sleep(0.02)


def final_model(run_dir: Path) -> dict:
    from diskgraph.pipeline.trainer import read_checkpoint_file

    return read_checkpoint_file(run_dir / "checkpoint.pt")["model"]


def assert_same_model(a: dict, b: dict) -> None:
    import torch

    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def metric_families(text: str) -> dict[str, list[str]]:
    """Prometheus text (0.0.4) → {family: its sample lines}, checking each line's form and that every declared
    family (``# TYPE``) has at least one sample."""
    families: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE"):
            _, _, name, kind = line.split()
            assert kind in ("gauge", "counter") and name not in families, line
            families[name] = []
        elif not line.startswith("#"):
            assert re.fullmatch(r'[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? -?[0-9.e+-]+', line), line
            families[line.split("{")[0].split(" ")[0]].append(line)
    assert not [name for name, samples in families.items() if not samples], f"declared without a sample: {text}"
    return families
