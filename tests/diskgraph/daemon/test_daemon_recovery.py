"""Jobs survive crashes: a killed job process, a killed daemon, a daemon stopped with SIGTERM.

Each test runs ``diskgraph serve`` in a subprocess and a real training job (3 epochs of 29
minibatches, checkpoints every 4) and compares the job's final model with an uninterrupted run
of the same spec and seed, tensor for tensor.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import time

import psutil

from daemon_helpers import (TRAIN, DaemonProcess, assert_same_model, final_model, wait_gone,
                            wait_mid_epoch_checkpoint)

PER_EPOCH = 29


def _submit(daemon: DaemonProcess, spec: dict) -> int:
    status, body, _ = daemon.api("POST", "/jobs", spec)
    assert status == 201, body
    return body["id"]


def _wait_running_pid(daemon: DaemonProcess, job_id: int, timeout: float = 60) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = daemon.job(job_id)
        if job["state"] == "running" and job["pid"]:
            return job["pid"]
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not start: {job}")


def _resume_points(log_text: str) -> list[tuple[int, int]]:
    return [(int(e), int(p)) for e, p in re.findall(r"resuming \S+ at epoch (\d+), minibatch (\d+)", log_text)]


def _assert_epochs_once(run_dir, epochs: int) -> None:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines[:-1]] == list(range(epochs)) and lines[-1]["summary"] is True
    assert [r["minibatches"] for r in lines[:-1]] == [PER_EPOCH] * epochs
    assert not [p for p in run_dir.iterdir() if ".tmp" in p.name]


def _transitions(root, job_id: int) -> list[tuple]:
    db = sqlite3.connect(f"file:{root / 'jobs.db'}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return db.execute("SELECT from_state, to_state FROM transitions WHERE job_id = ? ORDER BY seq", (job_id,)).fetchall()
    finally:
        db.close()


def test_killed_job_is_retried_and_resumes_mid_epoch(workspace, reference_model, tmp_path):
    root = tmp_path / "root"
    daemon = DaemonProcess(root, workspace, "--max-concurrent", "1", "--max-retries", "2").start()
    try:
        job_id = _submit(daemon, {"dataset": "syn", "train": TRAIN})
        pid = _wait_running_pid(daemon, job_id)
        run_dir = root / "jobs" / str(job_id) / "run"
        ckpt = wait_mid_epoch_checkpoint(pid, run_dir, PER_EPOCH, TRAIN["checkpoint_every"])
        os.kill(pid, signal.SIGKILL)
        job = daemon.wait_state(job_id, ("succeeded", "failed"))
        assert job["state"] == "succeeded", job
        assert (job["attempts"], job["retries"]) == (2, 1)
        assert "killed by SIGKILL; retry 1 of 2, resuming" in [t["reason"] for t in job["transitions"]]
        assert [(t["from_state"], t["to_state"]) for t in job["transitions"]] == [
            (None, "queued"), ("queued", "running"), ("running", "queued"), ("queued", "running"), ("running", "succeeded")]
        log = (root / "jobs" / str(job_id) / "log.txt").read_text()
        (epoch, position), = _resume_points(log)
        assert epoch == ckpt["epoch"] and 0 < position < PER_EPOCH  # resumed mid-epoch, from the checkpoint
        assert job["checkpoint"]["epoch"] == TRAIN["epochs"] and job["summary"]["summary"] is True
        _assert_epochs_once(run_dir, TRAIN["epochs"])
        assert_same_model(final_model(run_dir), reference_model)
    finally:
        daemon.stop()


def test_daemon_sigterm_then_kill9_jobs_resume_and_nothing_runs_twice(workspace, reference_model, tmp_path):
    root = tmp_path / "root"
    daemon = DaemonProcess(root, workspace, "--max-concurrent", "1").start()
    first = _submit(daemon, {"dataset": "syn", "train": TRAIN})
    second = _submit(daemon, {"dataset": "syn", "name": "queued behind",
                              "train": {**TRAIN, "epochs": 1, "seed": 4}})
    run_dir = root / "jobs" / str(first) / "run"
    steps = root / "jobs" / str(first) / "steps.jsonl"

    # 1. graceful stop: the running job checkpoints where it stands and stays `running` (resumable)
    pid = _wait_running_pid(daemon, first)
    while not steps.exists() or len(steps.read_text().splitlines()) < 6:
        time.sleep(0.02)
    assert daemon.stop(signal.SIGTERM) == 0
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    last_step = json.loads(steps.read_text().splitlines()[-1])
    ckpt = json.loads((run_dir / "checkpoint.json").read_text())
    done = (last_step["epoch"], last_step["position"])
    if last_step["position"] == last_step["of"]:  # the stop came at an epoch's end: its checkpoint is the next's start
        done = (last_step["epoch"] + 1, 0)
    assert (ckpt["epoch"], ckpt["position"]) == done  # nothing lost
    assert _transitions(root, first) == [(None, "queued"), ("queued", "running")]
    assert _transitions(root, second) == [(None, "queued")]
    assert "stopped on SIGTERM" in (root / "jobs" / str(first) / "log.txt").read_text()

    # 2. restart, then kill -9 the daemon mid-epoch once the job has resumed and checkpointed again (step 1's
    # checkpoint may be mid-epoch too, when the stop landed in a later epoch): the child gets SIGTERM
    # (parent-death signal) and checkpoints
    daemon = DaemonProcess(root, workspace, "--max-concurrent", "1").start()
    pid = _wait_running_pid(daemon, first)
    wait_mid_epoch_checkpoint(pid, run_dir, PER_EPOCH, TRAIN["checkpoint_every"], after=done)
    os.kill(pid, signal.SIGCONT)
    daemon.stop(signal.SIGKILL)
    wait_gone(pid)
    ckpt = json.loads((run_dir / "checkpoint.json").read_text())
    killed = (ckpt["epoch"], ckpt["position"])
    assert killed > done

    # 3. restart: the job continues from its checkpoint; the queued one runs once after it
    daemon = DaemonProcess(root, workspace, "--max-concurrent", "1").start()
    try:
        job = daemon.wait_state(first, ("succeeded", "failed"))
        assert job["state"] == "succeeded", job
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        other = daemon.wait_state(second, ("succeeded", "failed"))
        assert other["state"] == "succeeded" and other["attempts"] == 1, other
    finally:
        daemon.stop()
    assert (job["attempts"], job["retries"]) == (3, 0)  # daemon restarts are not retries
    assert _transitions(root, first) == [(None, "queued"), ("queued", "running"), ("running", "queued"),
                                         ("queued", "running"), ("running", "queued"), ("queued", "running"),
                                         ("running", "succeeded")]
    assert other["started_at"] >= job["finished_at"]  # submission order, one at a time
    # each later attempt resumed where the one before stopped (an epoch's start when a stop came at its end)
    assert _resume_points((root / "jobs" / str(first) / "log.txt").read_text()) == [done, killed]
    _assert_epochs_once(run_dir, TRAIN["epochs"])
    assert_same_model(final_model(run_dir), reference_model)
    db = sqlite3.connect(f"file:{root / 'jobs.db'}?mode=ro", uri=True)
    assert db.execute("SELECT id, state, pid FROM jobs ORDER BY id").fetchall() == [
        (first, "succeeded", None), (second, "succeeded", None)]
    db.close()
