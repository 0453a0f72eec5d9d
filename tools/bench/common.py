"""Small helpers the benchmark programs share (tools/bench is not a package: scripts import this by path)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def tail(text: str | None, n: int = 2000) -> str:
    """The last ``n`` characters of a command's output (for reports)."""
    return (text or "")[-n:]


def read_json(path: Path) -> dict:
    """A JSON file's object, or {} when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def read_log(path: Path) -> tuple[list[dict], dict | None]:
    """The per-epoch records and the summary line of a ``diskgraph train --log-json`` file."""
    epochs, summary = [], None
    if not path.exists():
        return epochs, summary
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if rec.get("summary"):
            summary = rec
        else:
            epochs.append(rec)
    return epochs, summary


def git_state() -> dict:
    """The repository's commit and whether the working tree differs from it."""

    def git(*a):
        return subprocess.run(["git", "-C", str(REPO), *a], capture_output=True, text=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except OSError:
        return {}


def gen_params(a) -> dict:
    """The `diskgraph generate` parameters a benchmark's options ask for (compared with a manifest's ``generator``)."""
    return {"nodes": a.nodes, "edges": a.edges, "feature_dim": a.feature_dim, "classes": a.classes, "seed": a.seed,
            "feature_dtype": "float32", "split": a.split}


def diskgraph_cmd() -> list[str]:
    """How to run the diskgraph command line here."""
    return ["diskgraph"] if shutil.which("diskgraph") else [sys.executable, "-m", "diskgraph"]


def write_outputs(table: str, report: dict, txt: Path | None, json_path: Path | None) -> None:
    """Print a benchmark's table and write it (``--txt``) and its full report (``--json``)."""
    print()
    print(table)
    if txt:
        txt.parent.mkdir(parents=True, exist_ok=True)
        txt.write_text(table + "\n")
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
