"""The child process that runs one job: ``python -m diskgraph.daemon.runner JOBDIR``.

It reads ``JOBDIR/job.json`` and runs the job's stages in order: import (when the preprocess spec
has raw inputs), sample, pack, train, predict, embed (inference with the trained model, when the spec
has those tables; their output goes to the table's ``out``, else ``JOBDIR/predict`` /
``JOBDIR/embed``). Before each stage it resolves every path the job uses again: one that a symbolic
link made after submission leads outside the daemon's allowed roots (or out of the job's directory)
stops the job with one sentence, before the stage touches it.

``progress.json`` records each finished stage, so a later attempt skips it; an artifact already at
its final name on a later attempt was finished by an attempt that died before recording it (every
artifact is renamed into place only when complete), so it is kept too (an inference output only when
it is this job's run's output of its kind). Training resumes from ``run/checkpoint.pt`` when there is
one; a run whose training finished (its ``metrics.jsonl`` ends with the summary) goes straight on to
inference. Inference resumes by itself after its last finished layer (exact mode: the engine keeps
the finished layers' tables and a state file next to the output).

SIGTERM stops the job resumably: training saves a checkpoint after the current minibatch, inference
stops after its current unit of work (both raise ``StopRequested``); a preprocessing stage is
interrupted (its temporary directory is removed) and starts again on the next attempt. The child asks Linux to send it SIGTERM when the daemon dies (``PR_SET_PDEATHSIG``),
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
from .jobdir import JobDir, read_json, write_json_atomic
from .spec import INFERENCE, RAW_INPUTS, inference_options, leaves, path_options, root_of, section_argv

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


def _used_paths(job: dict, jobdir: JobDir, parsers: dict) -> list[tuple[str, Path, list[Path], str]]:
    """(what, path, roots, what the roots are) for every path the job reads or writes: the spec's paths and the
    artifacts in the dataset must stay in the allowed roots, the run directory and step log in the job's directory."""
    spec, allowed = job["spec"], [Path(r) for r in job["allowed_roots"]]
    dataset, pre = Path(spec["dataset"]), spec.get("preprocess")
    paths = [("dataset", dataset)]
    if pre is not None:
        inputs = path_options(parsers["preprocess"])
        paths += [(f"preprocess.{key}", Path(value)) for key, value in pre.items() if key in inputs]
        paths += [(kind[:-1], dataset / kind / pre.get("name", "default")) for kind in ("plans", "packs")]
    if spec.get("train") is not None:
        paths.append(("pack", dataset / "packs" / spec["train"].get("pack", "default")))
        where = str(spec["train"].get("model", "")).rpartition(":")[0]
        if where.endswith(".py") or "/" in where:  # --model path/to/file.py:Class
            paths.append(("train.model's file", Path(where)))
    home = Path(os.path.realpath(jobdir.path))
    own = [("run directory", "run"), ("step log", "steps.jsonl")]
    for kind in INFERENCE:
        section = spec.get(kind)
        if section is None:
            continue
        paths += [(f"{kind}.{key}", Path(section[key])) for key in ("out", "parquet", "nodes")
                  if key in section and (key != "nodes" or os.path.isabs(section[key]))]
        if "out" not in section:
            own.append((f"{kind} output", kind))
    return ([(what, path, allowed, "the daemon's allowed roots") for what, path in paths] +
            [(what, home / name, [home], "the job's directory") for what, name in own])


def inference_out(spec: dict, kind: str, jobdir: JobDir) -> Path:
    """Where the job's ``kind`` stage writes: the table's ``out``, else ``JOBDIR/KIND`` (next to ``run/``)."""
    out = spec[kind].get("out")
    return Path(out) if out is not None else Path(os.path.realpath(jobdir.path)) / kind


def check_paths(paths: list[tuple[str, Path, list[Path], str]]) -> None:
    """Resolve every path now (see :func:`_used_paths`): one whose real path left its roots, through a symbolic link
    made since the job was submitted, stops the job (:class:`InputError`) before the job uses it."""
    for what, path, roots, where in paths:
        root = root_of(path, roots)
        if root is None:
            raise InputError(f"{what} {path} is no longer inside {where} ({', '.join(map(str, roots))}); start the "
                             "daemon with --allow covering it or submit the job again with a path inside them")
        real = Path(os.path.realpath(path))
        if root_of(real, roots) is None:
            raise InputError(f"{what} {path} now leads outside {root} through a symbolic link (to {real}) made after "
                             "the job was submitted; the job stops without using it, so remove the link and submit "
                             "the job again")


def _stages(spec: dict, jobdir: JobDir, stop: threading.Event, training: dict, parsers: dict,
            attempt: int = 1) -> list[tuple]:
    """(name, artifact path or None, function) for each stage of the job, in order."""
    from ..cli_preprocess import import_from_args, pack_from_args, sample_from_args

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
            finished = jobdir.training_summary() if opts.resume else None
            if finished is not None:  # an earlier attempt finished training and died before recording it
                log.info("stage train: training finished in an earlier attempt (%s epochs), not run again",
                         finished.get("epochs"))
                return finished
            _remove_stale_temporaries(jobdir.run)
            training["on"] = True
            try:
                return run_training(dataset, opts)
            finally:
                training["on"] = False

        out.append(("train", None, train))
    for kind in INFERENCE:
        if spec.get(kind) is None:
            continue

        def infer(kind=kind, out_dir=inference_out(spec, kind, jobdir)):
            from ..inference import run_inference, scratch_dir
            from ..pipeline.layerwise import STATE_NAME

            # where the API finds the layers finished so far (exact mode's state file)
            jobdir.write_progress(kind, jobdir.stages_done(), out=str(out_dir),
                                  state=str(scratch_dir(out_dir) / STATE_NAME))
            # a first attempt replaces nothing (the engine refuses an existing OUT or Parquet file); a later one may
            # find the Parquet table of an attempt that died after writing it (a finished OUT is kept without
            # running, by run_job), and the engine replaces only files and outputs of its own kind
            opts = inference_options(kind, spec[kind], run=str(jobdir.run), out=str(out_dir), overwrite=attempt > 1,
                                     stop=stop)
            training["on"] = True
            try:
                summary = run_inference(dataset, opts)
            finally:
                training["on"] = False
            write_json_atomic(jobdir.inference_json(kind), {"out": str(out_dir), **(summary or {})})
            return summary

        out.append((kind, inference_out(spec, kind, jobdir), infer))
    return out


def _keep_inference_output(kind: str, section: dict, out: Path, jobdir: JobDir) -> None:
    """An inference output found at its final name on a later attempt: it must be a finished ``kind`` output of this
    job's run (else the job stops without touching it); the Parquet table an attempt that died just after renaming
    the output into place did not write yet is written from it."""
    from ..store.errors import FormatError
    from ..store.inference_output import open_output, write_parquet

    try:
        output = open_output(out)
    except FormatError as e:
        raise InputError(f"{out} exists but is not a finished inference output ({e}); the job does not replace it, "
                         "so move it away and submit the job again") from None
    made_by = ((output.manifest.get("run") or {}).get("path"))
    if output.kind != kind or made_by is None or os.path.realpath(made_by) != os.path.realpath(jobdir.run):
        raise InputError(f"{out} is a {output.kind} output of run {made_by}, not this job's {kind} output; the job does "
                         "not replace it, so move it away and submit the job again")
    parquet = section.get("parquet")
    if parquet is not None and not Path(parquet).exists():
        log.info("stage %s: writing %s from %s", kind, parquet, out)
        write_parquet(output, parquet)
    if not jobdir.inference_json(kind).exists():
        summary = output.manifest.get("summary") or {}
        write_json_atomic(jobdir.inference_json(kind), {"out": str(out), "summary": True, **summary})


def run_job(job: dict, jobdir: JobDir, stop: threading.Event, training: dict) -> dict | None:
    """Run the stages not finished yet; returns the training summary (None for preprocessing only; inference
    summaries go to ``JOBDIR/predict.json`` / ``embed.json``).

    Before each stage, and after it before it counts as finished, every path the job uses is resolved again
    (:func:`check_paths`): the spec was checked when it was submitted, and the job may have waited since.
    """
    parsers = leaves()
    paths = _used_paths(job, jobdir, parsers)
    done = jobdir.stages_done()
    summary = None
    for name, artifact, fn in _stages(job["spec"], jobdir, stop, training, parsers, job["attempt"]):
        if name in done:
            log.info("stage %s: finished by an earlier attempt, skipped", name)
            continue
        check_paths(paths)
        if artifact is not None and artifact.exists():
            if job["attempt"] <= 1 and name in INFERENCE:
                raise InputError(f"{artifact} already exists; a job never replaces outputs it did not make, so move it "
                                 f"away or submit the job with another {name}.out")
            if job["attempt"] <= 1:
                raise InputError(f"{artifact} already exists; a job never replaces artifacts, so submit it with another "
                                 "dataset path or preprocess.name")
            if name in INFERENCE:
                _keep_inference_output(name, job["spec"][name], artifact, jobdir)
            log.info("stage %s: %s was completed by an earlier attempt, kept", name, artifact)
        else:
            jobdir.write_progress(name, done)
            log.info("stage %s: starting", name)
            result = fn()
            check_paths(paths)
            if name == "train":
                summary = result
        done.append(name)
        jobdir.write_progress(None, done)
    if summary is None and "train" in done:  # trained by an earlier attempt: the job's summary is still training's
        summary = jobdir.training_summary()
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
        if jobdir.cancel_flag.exists():
            log.info("stopped on SIGTERM because the job was cancelled; it ends here and does not run again")
        else:
            log.info("stopped on SIGTERM; the job can resume from where it stopped")
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
