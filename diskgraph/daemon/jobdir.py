"""A job's directory, ``ROOT/jobs/ID``: what the runner writes and what the API reads back.

=================  =========================================================================
``job.json``       the validated spec and the attempt (written by the scheduler before each start)
``log.txt``        the child's stdout and stderr, every attempt appended (headed by a line each)
``progress.json``  the stage running now and the stages finished (written by the runner)
``steps.jsonl``    one line per training minibatch (the trainer's step log)
``run/``           the training run: ``checkpoint.pt``, ``checkpoint.json``, ``metrics.jsonl``, ``best_model.pt``
``predict/``       the predict stage's output (a Zarr v3 group), unless the spec's ``predict.out`` names another place
``embed/``         the embed stage's output, likewise
``predict.json``   the predict stage's summary once it finished (``embed.json`` likewise)
``outcome.json``   how the last attempt ended: succeeded / failed / stopped, the reason, the summary
``cancel``         made by the scheduler before it stops a job it cancels (so the job's log says it ends)
=================  =========================================================================
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..store.files import write_atomic


def write_json_atomic(path: Path, obj) -> None:
    """Write ``obj`` as JSON to a temporary sibling, fsync it and rename it into place."""
    write_atomic(path, lambda f: json.dump(obj, f), binary=False)


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def tail_lines(path: Path, n: int = 1, max_bytes: int = 1 << 16) -> list[str]:
    """The last ``n`` complete lines of a text file (reading at most ``max_bytes`` from its end)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return []
    lines = data.split(b"\n")
    if not data.endswith(b"\n"):
        lines = lines[:-1]  # a line still being written
    if size > max_bytes:
        lines = lines[1:]  # cut in the middle
    return [line.decode("utf-8", "replace") for line in lines if line][-n:]


class JobDir:
    """Paths and readers of one job's directory."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    job_json = property(lambda self: self.path / "job.json")
    log = property(lambda self: self.path / "log.txt")
    progress_json = property(lambda self: self.path / "progress.json")
    steps = property(lambda self: self.path / "steps.jsonl")
    run = property(lambda self: self.path / "run")
    outcome_json = property(lambda self: self.path / "outcome.json")
    cancel_flag = property(lambda self: self.path / "cancel")

    def inference_json(self, kind: str) -> Path:
        """The summary of the ``predict`` / ``embed`` stage, written when it finishes."""
        return self.path / f"{kind}.json"

    # -- written by the scheduler and the runner ---------------------------------------------------

    def prepare(self, job_id: int, spec: dict, attempt: int, recovering: bool, allowed_roots: list) -> None:
        """Write ``job.json`` for the next start (with the roots the job's paths must stay in) and head the log."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.job_json, {"id": job_id, "spec": spec, "attempt": attempt, "recovering": recovering,
                                          "allowed_roots": [str(r) for r in allowed_roots]})
        self.outcome_json.unlink(missing_ok=True)
        self.cancel_flag.unlink(missing_ok=True)
        with self.open_log("a") as f:
            f.write(f"== diskgraph daemon: job {job_id} attempt {attempt}"
                    f"{' (resuming)' if recovering else ''} at {time.strftime('%Y-%m-%d %H:%M:%S')} ==\n")

    def open_log(self, mode: str = "ab"):
        """The log, opened for appending; a symbolic link in its place is refused (OSError), not followed."""
        return open(os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644), mode)

    def write_progress(self, stage: str | None, done: list[str], **detail) -> None:
        """The running stage (None between stages), the finished ones, and what the stage says of itself (an
        inference stage: its ``out`` directory and the ``state`` file of its finished layers)."""
        write_json_atomic(self.progress_json, {"stage": stage, "done": done, "updated_at": time.time(), **detail})

    def write_outcome(self, status: str, reason: str | None = None, summary: dict | None = None) -> None:
        write_json_atomic(self.outcome_json, {"status": status, "reason": reason, "summary": summary})

    # -- read by the API ---------------------------------------------------------------------------

    def stages_done(self) -> list[str]:
        return list((read_json(self.progress_json) or {}).get("done", []))

    def outcome(self) -> dict | None:
        return read_json(self.outcome_json)

    def last_step(self) -> dict | None:
        lines = tail_lines(self.steps, 1)
        try:
            return json.loads(lines[-1]) if lines else None
        except ValueError:
            return None

    def step_rate(self, window: int = 20) -> float | None:
        """Minibatches per second over the latest run of steps of one epoch in one process, among the last ``window``
        steps (None before two such steps): positions and times increase along a run; an epoch or a resumed process
        starts a new one, and a run of one step leaves the rate to the run before it."""
        steps = []
        for line in tail_lines(self.steps, window):
            try:
                steps.append(json.loads(line))
            except ValueError:
                continue
        latest, run = None, []
        for s in steps:
            if run and (s["epoch"] != run[-1]["epoch"] or s["position"] <= run[-1]["position"]
                        or s["seconds"] <= run[-1]["seconds"]):
                run = []
            run.append(s)
            if len(run) >= 2:
                latest = (run[0], run[-1])
        if latest is None:
            return None
        first, last = latest
        return (last["position"] - first["position"]) / (last["seconds"] - first["seconds"])

    def epochs(self) -> list[dict]:
        """The finished epochs' records of the training run (and its summary line, last, when it finished)."""
        try:
            text = (self.run / "metrics.jsonl").read_text()
        except OSError:
            return []
        out = []
        for line in text.splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def training_summary(self) -> dict | None:
        """The training run's summary when it finished (the last line of ``metrics.jsonl``), else None."""
        lines = tail_lines(self.run / "metrics.jsonl", 1)
        try:
            last = json.loads(lines[-1]) if lines else None
        except ValueError:
            return None
        return last if isinstance(last, dict) and last.get("summary") is True else None

    def inference(self) -> dict:
        """The finished inference stages' summaries (``predict`` / ``embed`` → the summary and ``out``)."""
        out = {}
        for kind in ("predict", "embed"):
            summary = read_json(self.inference_json(kind))
            if summary is not None:
                out[kind] = summary
        return out

    def checkpoint(self) -> dict | None:
        """The latest checkpoint: path, size, epoch and position (None before the first)."""
        path = self.run / "checkpoint.pt"
        try:
            st = path.stat()
        except OSError:
            return None
        info = read_json(self.run / "checkpoint.json") or {}
        return {"path": str(path), "bytes": st.st_size, "saved_at": st.st_mtime,
                "epoch": info.get("epoch"), "position": info.get("position")}

    def progress_stage(self) -> str | None:
        """The stage running now (None between stages and before the first)."""
        return (read_json(self.progress_json) or {}).get("stage")

    def progress(self) -> dict:
        """Stage, finished stages, the training position (epoch, minibatch of the epoch's total) and, while an
        inference stage runs, its output and layers (the finished ones of the layers it computes)."""
        p = read_json(self.progress_json) or {}
        out = {"stage": p.get("stage"), "stages_done": p.get("done", [])}
        step = self.last_step()
        if step:
            out.update(epoch=step["epoch"], minibatch=step["position"], minibatches=step["of"])
        if p.get("out"):  # an inference stage runs: where it writes, and (exact mode) the layers finished so far
            out["output"] = p["out"]
            state = read_json(Path(p["state"])) if p.get("state") else None
            if isinstance(state, dict) and isinstance(state.get("identity"), dict):
                out.update(layers_done=state.get("done"), layers=state["identity"].get("final_layer"))
        job = read_json(self.job_json) or {}
        epochs = ((job.get("spec") or {}).get("train") or {}).get("epochs")
        if epochs is None:
            epochs = (read_json(self.run / "checkpoint.json") or {}).get("epochs")
        if epochs is not None:
            out["epochs"] = epochs
        return out

    def log_page(self, offset: int, limit: int) -> dict:
        """``limit`` bytes of the log from ``offset``: the text, the next offset and the log's size."""
        try:
            with open(self.log, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                f.seek(min(offset, size))
                data = f.read(limit)
        except FileNotFoundError:
            size, data = 0, b""
        offset = min(offset, size)
        return {"offset": offset, "next_offset": offset + len(data), "size": size,
                "text": data.decode("utf-8", "replace")}
