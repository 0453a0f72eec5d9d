"""Job execution: stages resume without redoing finished artifacts, the retry policy, recovery at start,
spec paths, and a daemon (in this process) running a preprocess + train job and cancelling a running one."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest

from daemon_helpers import metric_families, request

from diskgraph.daemon.daemon import Daemon
from diskgraph.daemon.jobdir import JobDir, read_json
from diskgraph.daemon.layout import Root
from diskgraph.daemon.runner import run_job
from diskgraph.daemon.scheduler import Scheduler
from diskgraph.daemon.spec import SpecChecker, SpecError
from diskgraph.daemon.store import JobStore
from diskgraph.store.errors import InputError


@pytest.fixture(scope="module")
def raw_inputs(tmp_path_factory):
    from diskgraph.generate import write_raw_inputs

    ws = tmp_path_factory.mktemp("raw-ws")
    write_raw_inputs(ws / "raw", nodes=2000, edges=12000, feature_dim=8, classes=4, seed=1)
    return ws


def _preprocess_spec(ws, dataset="ds"):
    return SpecChecker([ws]).check({"dataset": dataset, "preprocess": {
        "edges": "raw/edges.npy", "features": "raw/features.npy", "labels": "raw/labels.npy", "dedup": True,
        "fanouts": [4, 3], "batch_size": 64, "memory_budget": "32M"}})


def test_spec_paths_are_resolved_inside_the_allowed_roots(raw_inputs, tmp_path):
    other = tmp_path / "second-root"
    (other / "sub").mkdir(parents=True)
    (raw_inputs / "inner-link").symlink_to(raw_inputs / "raw", target_is_directory=True)
    checker = SpecChecker([raw_inputs, other])
    spec = checker.check({"dataset": str(other / "sub" / "new"),
                          "preprocess": {"npz": "inner-link/edges.npy", "seed": 4}})  # a link that stays inside: fine
    assert spec["preprocess"]["npz"] == str((raw_inputs / "raw" / "edges.npy").resolve())
    assert spec["dataset"] == str((other / "sub" / "new").resolve())
    with pytest.raises(SpecError, match="does not exist"):
        checker.check({"dataset": "new", "preprocess": {"edges": "raw/nothing.npy"}})
    with pytest.raises(SpecError, match="parent directory does not exist"):
        checker.check({"dataset": "no/such/new", "preprocess": {"edges": "raw/edges.npy"}})
    with pytest.raises(SpecError, match="set by the daemon"):
        checker.check({"dataset": "new", "preprocess": {"edges": "raw/edges.npy", "out": "elsewhere"}})


def test_stages_resume_without_redoing_finished_artifacts(raw_inputs, tmp_path, monkeypatch, caplog):
    import diskgraph.cli_preprocess as cp

    spec = _preprocess_spec(raw_inputs)
    jd = JobDir(tmp_path / "job")
    roots = [str(raw_inputs)]
    jd.prepare(1, spec, attempt=1, recovering=False, allowed_roots=roots)

    def crash(*a, **k):
        raise RuntimeError("power cut while packing")

    with monkeypatch.context() as m:
        m.setattr(cp, "pack_from_args", crash)
        with pytest.raises(RuntimeError, match="power cut"):
            run_job({"spec": spec, "attempt": 1, "allowed_roots": roots}, jd, None, {})
    assert jd.stages_done() == ["import", "sample"]
    ds = raw_inputs / "ds"
    # the process died after the plan was renamed into place but before it was recorded
    jd.write_progress("sample", ["import"])
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (ds / "manifest.json", ds / "plans/default/manifest.json")}
    with caplog.at_level(logging.INFO, logger="diskgraph"):
        run_job({"spec": spec, "attempt": 2, "allowed_roots": roots}, jd, None, {})
    assert jd.stages_done() == ["import", "sample", "pack"]
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in before} == before  # never redone
    assert (ds / "packs/default/manifest.json").is_file()
    assert "stage import: finished by an earlier attempt, skipped" in caplog.text
    assert re.search(r"stage sample: .*plans/default was completed by an earlier attempt, kept", caplog.text)
    # a first attempt never adopts an artifact it did not make
    jd2 = JobDir(tmp_path / "job2")
    jd2.prepare(2, spec, attempt=1, recovering=False, allowed_roots=roots)
    with pytest.raises(InputError, match="already exists"):
        run_job({"spec": spec, "attempt": 1, "allowed_roots": roots}, jd2, None, {})


def test_a_link_made_while_a_job_waits_cannot_lead_it_outside_the_roots(raw_inputs, tmp_path):
    outside, area = tmp_path / "outside", raw_inputs / "area"
    outside.mkdir()
    area.mkdir()
    spec = {"dataset": "area/new", "preprocess": {"edges": "raw/edges.npy", "features": "raw/features.npy",
                                                  "labels": "raw/labels.npy", "fanouts": "4,3", "batch_size": 64}}
    d = Daemon(tmp_path / "root", allowed_roots=[raw_inputs], port=0, max_concurrent=0).start()  # jobs wait
    try:
        status, out, _ = request(d.url, d.token, "POST", "/jobs", spec)
        assert status == 201, out
    finally:
        d.stop()
    try:
        area.rmdir()  # while the job waits, the directory its dataset goes into becomes a link out of the roots
        area.symlink_to(outside, target_is_directory=True)
        d = Daemon(tmp_path / "root", allowed_roots=[raw_inputs], port=0, max_concurrent=1).start()
        try:
            deadline = time.time() + 60
            while d.store.get(out["id"])["state"] in ("queued", "running") and time.time() < deadline:
                time.sleep(0.1)
            job = d.store.get(out["id"])
        finally:
            d.stop()
    finally:
        area.unlink(missing_ok=True)
    root = raw_inputs.resolve()
    assert job["state"] == "failed" and job["reason"] == (
        f"dataset {root / 'area' / 'new'} now leads outside {root} through a symbolic link (to {outside.resolve() / 'new'}) "
        "made after the job was submitted; the job stops without using it, so remove the link and submit the job again")
    assert list(outside.iterdir()) == []  # nothing written outside


def test_links_made_after_submission_stop_a_job_before_a_stage_uses_them(tmp_path):
    ws, outside, jd = tmp_path / "ws", tmp_path / "outside", JobDir(tmp_path / "job")
    (ws / "ds" / "packs" / "default").mkdir(parents=True)
    (ws / "ds" / "manifest.json").write_text("{}")
    outside.mkdir()
    checker = SpecChecker([ws])
    specs = [checker.check({"dataset": "ds", "preprocess": {"fanouts": "4,3", "name": "more"}}),
             checker.check({"dataset": "ds", "train": {"epochs": 1}})]
    (ws / "ds" / "plans").symlink_to(outside, target_is_directory=True)  # a plan would be written outside
    jd.path.mkdir()
    (jd.path / "run").symlink_to(outside, target_is_directory=True)  # the run would be written outside
    real = tmp_path.resolve()
    for spec, what, inside in ((specs[0], f"plan {real / 'ws/ds/plans/more'}", real / "ws"),
                               (specs[1], f"run directory {real / 'job/run'}", real / "job")):
        jd.prepare(1, spec, attempt=1, recovering=False, allowed_roots=checker.roots)
        with pytest.raises(InputError, match=re.escape(f"{what} now leads outside {inside} through a symbolic link")):
            run_job(read_json(jd.job_json), jd, None, {})
    assert list(outside.iterdir()) == []


def test_temporaries_of_killed_attempts_are_removed(tmp_path):
    from diskgraph.daemon.runner import _remove_stale_temporaries

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale, mine, final = (tmp_path / f".checkpoint.pt.tmp-{dead.pid}", tmp_path / f".checkpoint.pt.tmp-{os.getpid()}",
                          tmp_path / "checkpoint.pt")
    for p in (stale, mine, final):
        p.write_bytes(b"x")
    _remove_stale_temporaries(tmp_path)
    assert sorted(tmp_path.iterdir()) == sorted([mine, final])


def test_step_rate_is_over_the_latest_steps_of_one_epoch_in_one_process(tmp_path):
    jd = JobDir(tmp_path)

    def rate(*steps):
        jd.steps.write_text("".join(json.dumps({"epoch": e, "position": p, "of": 29, "seconds": s}) + "\n"
                                    for e, p, s in steps))
        return jd.step_rate()

    assert rate((0, 1, 0.1), (0, 2, 0.2), (0, 3, 0.3)) == pytest.approx(10)
    # the first step of an epoch: the rate is the previous epoch's latest, not missing
    assert rate((0, 28, 2.8), (0, 29, 2.9), (1, 1, 0.1)) == pytest.approx(10)
    # a resumed process (its clock starts again) is not mixed with the steps of the one before
    assert rate((1, 5, 0.3), (1, 6, 0.4), (1, 7, 0.5), (1, 6, 0.05), (1, 7, 0.25), (1, 8, 0.45)) == pytest.approx(5)
    assert rate((2, 1, 0.1)) is None


def _running_job(store: JobStore, **fields) -> int:
    job_id = store.submit({"dataset": "x", "train": {}})
    assert store.transition(job_id, "running", "started", **fields)
    return job_id


def test_retry_policy_and_recovery(tmp_path):
    root = Root(tmp_path / "root")
    root.create()
    store = JobStore(root.db_path)
    sched = Scheduler(root, store, max_concurrent=1, max_retries=1)
    killed = _running_job(store)
    sched._record_exit(killed, -9, shutdown=False)
    assert store.get(killed)["state"] == "queued" and store.get(killed)["retries"] == 1
    store.transition(killed, "running", "started")
    sched._record_exit(killed, -9, shutdown=False)
    assert (store.get(killed)["state"], store.get(killed)["reason"]) == ("failed", "killed by SIGKILL after 1 retries")
    refused = _running_job(store)
    JobDir(root.job_path(refused)).path.mkdir(parents=True)
    JobDir(root.job_path(refused)).write_outcome("failed", "pack 'x' does not exist")
    sched._record_exit(refused, 2, shutdown=False)
    assert (store.get(refused)["state"], store.get(refused)["reason"]) == ("failed", "pack 'x' does not exist")
    stopped = _running_job(store, pid=1234567, pid_started=1.0)
    sched._record_exit(stopped, 75, shutdown=True)  # checkpointed for the daemon's shutdown: stays running
    assert store.get(stopped)["state"] == "running" and store.get(stopped)["pid"] is None
    cancelled = _running_job(store)
    assert store.request_cancel(cancelled) == "running"
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    outlived = _running_job(store, pid=orphan.pid, pid_started=psutil.Process(orphan.pid).create_time())
    store.close()
    # a new daemon's recovery: a job process that outlived the old daemon is stopped first, running jobs are
    # queued again, a pending cancel completes
    store = JobStore(root.db_path)
    assert Scheduler(root, store, stop_timeout=10).recover() == [stopped, outlived]
    assert orphan.wait(5) == -signal.SIGTERM
    assert store.get(stopped)["state"] == "queued" and store.get(cancelled)["state"] == "cancelled"
    assert [t["to_state"] for t in store.transitions(stopped)] == ["queued", "running", "queued"]
    store.close()


def test_daemon_runs_preprocess_and_train_and_cancels_a_running_job(raw_inputs, workspace, tmp_path):
    d = Daemon(tmp_path / "root", allowed_roots=[raw_inputs, workspace], port=0, max_concurrent=1).start()

    def call(method, path, body=None):
        return request(d.url, d.token, method, path, body)

    try:
        spec = {"dataset": "made", "name": "pre+train",
                "preprocess": {"edges": "raw/edges.npy", "features": "raw/features.npy", "labels": "raw/labels.npy",
                               "fanouts": "4,3", "batch_size": 64, "host_cache": "16K"},
                "train": {"epochs": 1, "hidden": 8, "device": "cpu"}}
        status, out, _ = call("POST", "/jobs", spec)
        assert status == 201, out
        first = out["id"]
        long = call("POST", "/jobs", {"dataset": str(workspace / "syn"),
                                      "train": {"epochs": 100, "hidden": 8, "device": "cpu", "checkpoint_every": 5}})[1]["id"]
        deadline = time.time() + 120
        while call("GET", f"/jobs/{first}")[1]["state"] in ("queued", "running") and time.time() < deadline:
            time.sleep(0.1)
        job = call("GET", f"/jobs/{first}")[1]
        assert job["state"] == "succeeded", job
        assert job["progress"]["stages_done"] == ["import", "sample", "pack", "train"]
        assert job["summary"]["epochs"] == 1 and (raw_inputs / "made" / "packs" / "default").is_dir()
        page = call("GET", f"/jobs/{first}/log?offset=0&limit=100")[1]
        assert page["offset"] == 0 and page["next_offset"] == 100 and page["size"] > 100 and page["finished"]
        # the long job: metrics once it has finished an epoch, then cancel it while it runs
        while time.time() < deadline:
            metrics = call("GET", "/metrics")[1]
            if f'diskgraph_job_epochs{{job="{long}"}} 1' in metrics:
                break
            time.sleep(0.1)
        for line in (f'diskgraph_job_cache_hit_rate{{job="{long}",tier="cold"}}', f'diskgraph_job_read_bytes{{job="{long}"}}',
                     f'diskgraph_job_minibatches_per_second{{job="{long}"}}', "diskgraph_running_jobs 1"):
            assert line in metrics, metrics
        metric_families(metrics)  # every declared family has a sample
        pid = call("GET", f"/jobs/{long}")[1]["pid"]
        status, out, _ = call("POST", f"/jobs/{long}/cancel")
        assert status == 200 and out["state"] == "running" and out["cancel_requested"]
        while call("GET", f"/jobs/{long}")[1]["state"] == "running" and time.time() < deadline:
            time.sleep(0.1)
        job = call("GET", f"/jobs/{long}")[1]
        assert job["state"] == "cancelled" and job["reason"] == "cancelled while running"
        assert job["checkpoint"]["epoch"] >= 1 and not psutil.pid_exists(pid)
        stops = [line for line in (tmp_path / "root" / "jobs" / str(long) / "log.txt").read_text().splitlines()
                 if "stopped on SIGTERM" in line]
        assert len(stops) == 1 and "cancelled" in stops[0] and "resume" not in stops[0], stops  # it ends here
    finally:
        d.stop()
    assert json.loads((tmp_path / "root" / "jobs" / str(first) / "outcome.json").read_text())["status"] == "succeeded"
