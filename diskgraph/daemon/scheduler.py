"""Starts jobs as child processes, reaps them, retries, cancels, recovers after a restart.

One thread (the scheduler's) starts every child, so the children's "parent died" signal
(``PR_SET_PDEATHSIG``, set by the runner) fires exactly when the daemon goes away. Each child runs
in its own session (process group): cancelling signals the whole group, and a Ctrl-C at the daemon's
terminal reaches only the daemon.

* At most ``max_concurrent`` children run; queued jobs start in submission (id) order.
  ``max_concurrent=0`` holds the queue (jobs are accepted and wait).
* A child killed by a signal (or one that stopped on a SIGTERM it did not get from the daemon) is
  queued again, up to ``max_retries`` times, then the job fails with the reason. It resumes from its
  checkpoint and finished stages.
* Cancel: a queued job is cancelled at once; a running one gets SIGTERM (it checkpoints) and, after
  ``stop_timeout`` seconds, SIGKILL.
* Shutdown: every child gets SIGTERM, checkpoints and exits; its job stays ``running`` in the store,
  and the next start resumes it.
* Recovery at start: every job recorded as ``running`` is queued again (a child that somehow
  outlived the old daemon is stopped first, so a job never runs twice at once) and resumes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import psutil

from .jobdir import JobDir
from .layout import Root
from .runner import ENV_DAEMON_PID, EXIT_STOPPED
from .store import JobStore

log = logging.getLogger("diskgraph")


@dataclass
class _Child:
    proc: subprocess.Popen
    slot: int
    kill_at: float | None = None
    """When SIGTERM was sent: SIGKILL follows at this time."""
    shutdown: bool = False


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _same_process(pid: int | None, started: float | None) -> bool:
    """Whether ``pid`` is still the process that started at ``started`` (not a reused pid)."""
    if not pid:
        return False
    try:
        p = psutil.Process(pid)
        return (started is None or abs(p.create_time() - started) < 1.0) and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _signal_name(rc: int) -> str:
    if rc == EXIT_STOPPED:
        return "SIGTERM"
    try:
        return signal.Signals(-rc).name
    except ValueError:
        return f"signal {-rc}"


class Scheduler:
    """Runs the store's queued jobs as children of this process (see the module's description)."""

    def __init__(self, root: Root, store: JobStore, *, allowed_roots: list = (), max_concurrent: int = 1,
                 max_retries: int = 3, stop_timeout: float = 60.0, gpus: int = 0, poll_s: float = 0.2):
        self.root, self.store, self.allowed_roots = root, store, list(allowed_roots)
        self.max_concurrent, self.max_retries = max_concurrent, max_retries
        self.stop_timeout, self.gpus, self.poll_s = stop_timeout, gpus, poll_s
        self.children: dict[int, _Child] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="diskgraph-scheduler")

    # -- control -----------------------------------------------------------------------------------

    def recover(self) -> list[int]:
        """Queue again every job recorded as running (call before :meth:`start`); returns their ids."""
        recovered = []
        for job in self.store.list(state="running"):
            if _same_process(job["pid"], job["pid_started"]):
                log.warning("job %d: its child %d outlived the previous daemon; stopping it first", job["id"], job["pid"])
                self._stop_orphan(job["pid"], job["pid_started"])
            if job["cancel_requested"]:
                self.store.transition(job["id"], "cancelled", "cancelled while running (finished at daemon restart)")
                continue
            self.store.transition(job["id"], "queued", "the daemon restarted while it ran; it resumes from its checkpoint")
            recovered.append(job["id"])
        return recovered

    def _stop_orphan(self, pid: int, started: float | None) -> None:
        """SIGTERM a job process left by a previous daemon, wait for its checkpoint, SIGKILL it after the timeout."""
        _signal_group(pid, signal.SIGTERM)
        deadline = time.time() + self.stop_timeout
        while time.time() < deadline and _same_process(pid, started):
            time.sleep(0.05)
        if _same_process(pid, started):
            _signal_group(pid, signal.SIGKILL)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """Look at the queue and the cancel requests now (after a submission or a cancel)."""
        with self._cond:
            self._cond.notify()

    def shutdown(self) -> None:
        """SIGTERM every child, wait for their checkpoints (SIGKILL after ``stop_timeout``), stop the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join()

    def running(self) -> int:
        return len(self.children)

    # -- the loop ----------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                if not self._stopping:
                    self._cond.wait(self.poll_s)
                stopping = self._stopping
            try:
                self._reap()
                if stopping:
                    break
                self._handle_cancels()
                self._start_queued()
            except Exception:  # noqa: BLE001 — keep scheduling; the error goes to the daemon's log
                log.exception("scheduler error")
        self._stop_all()

    def _stop_all(self) -> None:
        for job_id, child in self.children.items():
            child.shutdown = True
            _signal_group(child.proc.pid, signal.SIGTERM)
            child.kill_at = time.time() + self.stop_timeout
        while self.children:
            for child in self.children.values():
                if time.time() >= child.kill_at:
                    _signal_group(child.proc.pid, signal.SIGKILL)
            time.sleep(0.05)
            self._reap()

    def _start_queued(self) -> None:
        free = self.max_concurrent - len(self.children)
        if free <= 0:
            return
        used = {c.slot for c in self.children.values()}
        slots = [s for s in range(self.max_concurrent) if s not in used]
        for job in self.store.list(state="queued", limit=free):
            if not self.store.transition(job["id"], "running", "started"):
                continue
            try:
                self._spawn(self.store.get(job["id"]), slots.pop(0))
            except OSError as e:  # no process, or its directory cannot be written: the job cannot run
                log.exception("job %d: could not start", job["id"])
                self.store.transition(job["id"], "failed", f"could not start its process ({e})")

    def _spawn(self, job: dict, slot: int) -> None:
        jd = JobDir(self.root.job_path(job["id"]))
        resuming = jd.path.exists() and (bool(jd.stages_done()) or (jd.run / "checkpoint.pt").exists())
        jd.prepare(job["id"], job["spec"], job["attempts"], resuming, self.allowed_roots)
        env = dict(os.environ, **{ENV_DAEMON_PID: str(os.getpid()), "PYTHONUNBUFFERED": "1"})
        if self.gpus > 1:
            env["CUDA_VISIBLE_DEVICES"] = str(slot % self.gpus)
        with jd.open_log() as logf:
            proc = subprocess.Popen([sys.executable, "-m", "diskgraph.daemon.runner", str(jd.path)], cwd=jd.path,
                                    stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                    start_new_session=True, env=env)
        try:
            started = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            started = None
        self.store.update(job["id"], pid=proc.pid, pid_started=started)
        self.children[job["id"]] = _Child(proc, slot)
        log.info("job %d: started attempt %d (pid %d)", job["id"], job["attempts"], proc.pid)

    def _handle_cancels(self) -> None:
        now = time.time()
        for job_id, child in self.children.items():
            if child.kill_at is None:
                job = self.store.get(job_id)
                if job and job["cancel_requested"]:
                    log.info("job %d: cancelling (SIGTERM to its process group)", job_id)
                    with contextlib.suppress(OSError):  # only the wording of the job's last log line depends on it
                        JobDir(self.root.job_path(job_id)).cancel_flag.touch()
                    _signal_group(child.proc.pid, signal.SIGTERM)
                    child.kill_at = now + self.stop_timeout
            elif now >= child.kill_at:
                _signal_group(child.proc.pid, signal.SIGKILL)

    def _reap(self) -> None:
        for job_id, child in list(self.children.items()):
            rc = child.proc.poll()
            if rc is None:
                continue
            del self.children[job_id]
            _signal_group(child.proc.pid, signal.SIGKILL)  # anything the job left behind in its group
            self._record_exit(job_id, rc, child.shutdown)

    def _record_exit(self, job_id: int, rc: int, shutdown: bool) -> None:
        job = self.store.get(job_id)
        outcome = JobDir(self.root.job_path(job_id)).outcome() or {}
        reason = outcome.get("reason")
        if rc == 0:
            self.store.transition(job_id, "succeeded", "finished")
        elif job["cancel_requested"]:
            self.store.transition(job_id, "cancelled", "cancelled while running")
        elif rc < 0 or rc == EXIT_STOPPED:
            if shutdown:
                self.store.update(job_id, pid=None, pid_started=None,
                                  reason="the daemon stopped; the job resumes from its checkpoint when it starts again")
                log.info("job %d: stopped for the daemon's shutdown; resumable", job_id)
                return
            sig = _signal_name(rc)
            if job["retries"] < self.max_retries:
                n = job["retries"] + 1
                self.store.transition(job_id, "queued", f"killed by {sig}; retry {n} of {self.max_retries}, resuming",
                                      retries=n)
                log.warning("job %d: killed by %s; retry %d of %d", job_id, sig, n, self.max_retries)
            else:
                self.store.transition(job_id, "failed", f"killed by {sig} after {self.max_retries} retries")
        else:
            self.store.transition(job_id, "failed", reason or f"its process exited with status {rc}; see its log")
        log.info("job %d: %s", job_id, self.store.get(job_id)["state"])
