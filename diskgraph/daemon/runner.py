"""The child process that runs one job: ``python -m diskgraph.daemon.runner JOBDIR``.

It reads ``JOBDIR/job.json`` and runs the job's stages in order: import (when the preprocess spec
has raw inputs), sample, pack, train. ``progress.json`` records each finished stage, so a later
attempt skips it; an artifact already at its final name on a later attempt was finished by an
attempt that died before recording it (every artifact is renamed into place only when complete),
so it is kept too. Training resumes from ``run/checkpoint.pt`` when there is one.

SIGTERM stops the job resumably: training saves a checkpoint after the current minibatch; a
preprocessing stage is interrupted (its temporary directory is removed) and starts again on the
next attempt. The child asks Linux to send it SIGTERM when the daemon dies (``PR_SET_PDEATHSIG``),
so a daemon killed with ``kill -9`` leaves no job running unsupervised.

Exit status: 0 succeeded, 2 refused input (no retry), 75 stopped on SIGTERM (resumable), 1 anything else.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import traceback
from pathlib import Path

import psutil

from ..store.errors import InputError
from .jobdir import JobDir, read_json
from .spec import RAW_INPUTS, leaves, section_argv

EXIT_STOPPED = 75
ENV_DAEMON_PID = "DISKGRAPH_DAEMON_PID"
log = logging.getLogger("diskgraph")


class Stopped(Exception):
    """SIGTERM arrived outside training: the stage is abandoned, the job stays resumable."""


def _die_with_parent() -> None:
    """SIGTERM this process when the daemon that started it dies (Linux); at once if it already has."""
    parent = int(os.environ.get(ENV_DAEMON_PID) or 0)
    if not parent or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def _remove_stale_temporaries(directory: Path) -> None:
    """Remove ``.NAME.tmp-PID`` files an attempt killed mid-write left (``NAME`` itself is the previous one, intact)."""
    for tmp in directory.glob(".*.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not psutil.pid_exists(int(pid)):
            log.info("removing %s, left by an attempt killed while writing it", tmp)
            tmp.unlink(missing_ok=True)


def _stages(spec: dict, jobdir: JobDir, stop: threading.Event, training: dict) -> list[tuple]:
    """(name, artifact path or None, function) for each stage of the job, in order."""
    from ..cli_preprocess import import_from_args, pack_from_args, sample_from_args

    parsers = leaves()
    dataset = Path(spec["dataset"])
    out = []
    pre = spec.get("preprocess")
    if pre is not None:
        raw = any(k in pre for k in RAW_INPUTS)
        flags = section_argv("preprocess", pre, parsers["preprocess"])
        args = parsers["preprocess"].parse_args(flags + ["--out", str(dataset)] if raw else [str(dataset)] + flags)
        plan_dir = dataset / "plans" / args.name
        if raw:
            out.append(("import", dataset, lambda: import_from_args(args)))
        out.append(("sample", plan_dir, lambda: sample_from_args(args, dataset)))
        out.append(("pack", dataset / "packs" / args.name, lambda: pack_from_args(args, dataset, str(plan_dir))))
    if spec.get("train") is not None:
        def train():
            from ..cli_train import options_from_args
            from ..train import run_training

            args = parsers["train"].parse_args([str(dataset)] + section_argv("train", spec["train"], parsers["train"]))
            opts = options_from_args(args)
            opts.run_dir, opts.step_log, opts.stop = str(jobdir.run), str(jobdir.steps), stop
            opts.resume = (jobdir.run / "checkpoint.pt").exists()
            _remove_stale_temporaries(jobdir.run)
            training["on"] = True
            try:
                return run_training(dataset, opts)
            finally:
                training["on"] = False

        out.append(("train", None, train))
    return out


def run_job(job: dict, jobdir: JobDir, stop: threading.Event, training: dict) -> dict | None:
    """Run the stages not finished yet; returns the training summary (None for preprocessing only)."""
    done = jobdir.stages_done()
    summary = None
    for name, artifact, fn in _stages(job["spec"], jobdir, stop, training):
        if name in done:
            log.info("stage %s: finished by an earlier attempt, skipped", name)
            continue
        if artifact is not None and artifact.exists():
            if job["attempt"] <= 1:
                raise InputError(f"{artifact} already exists; a job never replaces artifacts, so submit it with another "
                                 "dataset path or preprocess.name")
            log.info("stage %s: %s was completed by an earlier attempt, kept", name, artifact)
        else:
            jobdir.write_progress(name, done)
            log.info("stage %s: starting", name)
            result = fn()
            if name == "train":
                summary = result
        done.append(name)
        jobdir.write_progress(None, done)
    return summary


def main(argv: list[str] | None = None) -> int:
    from ..pipeline.trainer import StopRequested
    from ..store.progress import set_quiet

    argv = sys.argv[1:] if argv is None else argv
    jobdir = JobDir(argv[0])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s diskgraph: %(message)s", stream=sys.stderr)
    set_quiet(True)
    stop = threading.Event()
    training = {"on": False}

    def on_term(signum, frame):
        stop.set()
        if not training["on"]:
            raise Stopped()

    try:
        signal.signal(signal.SIGTERM, on_term)
        _die_with_parent()
        job = read_json(jobdir.job_json)
        log.info("job %s attempt %s (pid %d)", job["id"], job["attempt"], os.getpid())
        _remove_stale_temporaries(jobdir.path)
        summary = run_job(job, jobdir, stop, training)
    except (Stopped, StopRequested):
        log.info("stopped on SIGTERM; the job resumes from where it stopped")
        jobdir.write_outcome("stopped", "stopped on SIGTERM")
        return EXIT_STOPPED
    except InputError as e:
        print(f"diskgraph: error: {e}", file=sys.stderr)
        jobdir.write_outcome("failed", str(e))
        return 2
    except BaseException as e:  # noqa: BLE001 — the reason goes to the job record
        traceback.print_exc()
        jobdir.write_outcome("failed", f"{type(e).__name__}: {e}".splitlines()[0])
        return 1
    jobdir.write_outcome("succeeded", summary=summary)
    log.info("job %s succeeded", job["id"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
