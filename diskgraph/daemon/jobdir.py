"""A job's directory, ``ROOT/jobs/ID``: what the runner writes and what the API reads back.

=================  =========================================================================
``job.json``       the validated spec and the attempt (written by the scheduler before each start)
``log.txt``        the child's stdout and stderr, every attempt appended (headed by a line each)
``progress.json``  the stage running now and the stages finished (written by the runner)
``steps.jsonl``    one line per training minibatch (the trainer's step log)
``run/``           the training run: ``checkpoint.pt``, ``checkpoint.json``, ``metrics.jsonl``, ``best_model.pt``
``outcome.json``   how the last attempt ended: succeeded / failed / stopped, the reason, the summary
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

    # -- written by the scheduler and the runner ---------------------------------------------------

    def prepare(self, job_id: int, spec: dict, attempt: int, recovering: bool) -> None:
        """Write ``job.json`` for the next start and head the log with the attempt."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.job_json, {"id": job_id, "spec": spec, "attempt": attempt, "recovering": recovering})
        try:
            self.outcome_json.unlink()
        except FileNotFoundError:
            pass
        with open(self.log, "a") as f:
            f.write(f"== diskgraph daemon: job {job_id} attempt {attempt}"
                    f"{' (resuming)' if recovering else ''} at {time.strftime('%Y-%m-%d %H:%M:%S')} ==\n")

    def write_progress(self, stage: str | None, done: list[str]) -> None:
        write_json_atomic(self.progress_json, {"stage": stage, "done": done, "updated_at": time.time()})

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
        """Minibatches per second over the last ``window`` steps of the current epoch and process."""
        steps = []
        for line in tail_lines(self.steps, window):
            try:
                steps.append(json.loads(line))
            except ValueError:
                continue
        last = steps[-1] if steps else None
        same = [s for s in steps if last and s["epoch"] == last["epoch"] and s["seconds"] <= last["seconds"]
                and s["position"] <= last["position"]]
        if len(same) < 2 or same[-1]["seconds"] <= same[0]["seconds"]:
            return None
        return (same[-1]["position"] - same[0]["position"]) / (same[-1]["seconds"] - same[0]["seconds"])

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

    def progress(self) -> dict:
        """Stage, finished stages and the training position (epoch, minibatch of the epoch's total)."""
        p = read_json(self.progress_json) or {}
        out = {"stage": p.get("stage"), "stages_done": p.get("done", [])}
        step = self.last_step()
        if step:
            out.update(epoch=step["epoch"], minibatch=step["position"], minibatches=step["of"])
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
