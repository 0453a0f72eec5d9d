"""The README's quick start works pasted line by line, in order, in a fresh clone (issue 12, finding 8).

The bash blocks under "## Quick start" run one command at a time (continuation lines joined) in an empty
directory that stands for a fresh clone, with ``../shared`` pointing at the shared datasets as it does
next to the repository; then the Python block runs there. Every command must exit 0. The README must
also link only to files inside the repository, and what the quick start writes must be ignored by git.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
SHARED = REPO.parent / "shared"
INPUT_FLAGS = ("--npz", "--edges", "--features", "--labels", "--train", "--val", "--test")


def quick_start_blocks(text: str) -> list[tuple[str, str]]:
    """``(language, code)`` of every fenced block in the README's "## Quick start" section."""
    section = text.split("\n## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S)


def commands(code: str) -> list[str]:
    """The shell commands of a bash block: continuation lines joined, blank and comment lines dropped."""
    out, current = [], ""
    for line in code.splitlines():
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip() and not current.strip().startswith("#"):
            out.append(current.strip())
        current = ""
    return out


def test_the_quick_start_has_commands_in_a_sensible_order():
    blocks = quick_start_blocks(README.read_text())
    lines = [c for lang, code in blocks if lang == "bash" for c in commands(code)]
    assert lines, "no bash block under ## Quick start"
    assert all(c.startswith("diskgraph ") for c in lines), lines
    made: set[str] = set()
    for c in lines:  # a command reads only what an earlier line wrote (or the shared datasets)
        words = c.split()
        for prev, w in zip(words, words[1:]):
            reads = (prev in INPUT_FLAGS and not w.isdigit()) or (w.startswith("data/") and prev not in ("--out", "--log-json"))
            if reads and not w.startswith("../shared/"):
                assert "/".join(w.split("/")[:2]) in made, f"{c!r} reads {w}, which no earlier line wrote"
        if "--out" in words:
            made.add(words[words.index("--out") + 1])


def test_the_readme_links_only_inside_the_repository():
    text = README.read_text()
    for target in re.findall(r"\]\(([^)#\s]+)", text):
        if re.match(r"[a-z]+://", target):
            continue
        resolved = (REPO / target).resolve()
        assert REPO in resolved.parents or resolved == REPO, f"README links outside the repository: {target}"
        assert resolved.exists(), f"README links to a missing file: {target}"


def test_what_the_quick_start_writes_is_ignored_by_git():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout (or no git): cannot ask git what it ignores")
    lines = [c for lang, code in quick_start_blocks(README.read_text()) if lang == "bash" for c in commands(code)]
    outputs = {c.split()[c.split().index(flag) + 1] for c in lines for flag in ("--out", "--log-json") if flag in c.split()}
    assert outputs
    for path in sorted(outputs):
        r = subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", path])
        assert r.returncode == 0, f"{path} (written by the quick start) is not ignored by git; add it to .gitignore"


def test_the_quick_start_runs_line_by_line_in_a_fresh_clone(tmp_path):
    if not (SHARED / "datasets" / "cora" / "data.npz").is_file():
        pytest.skip(f"the quick start reads the shared datasets, not found at {SHARED / 'datasets'}")
    clone = tmp_path / "clone"
    clone.mkdir()
    (tmp_path / "shared").symlink_to(SHARED)  # the clone's ../shared, as next to the repository
    shim = tmp_path / "bin"
    shim.mkdir()
    exe = shim / "diskgraph"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m diskgraph "$@"\n')
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{shim}{os.pathsep}{os.environ.get('PATH', '')}"}

    blocks = quick_start_blocks(README.read_text())
    assert [lang for lang, _ in blocks].count("bash") >= 1 and [lang for lang, _ in blocks].count("python") >= 1
    ran = 0
    for lang, code in blocks:
        if lang == "bash":
            for command in commands(code):
                r = subprocess.run(["bash", "-c", command], cwd=clone, env=env, capture_output=True, text=True,
                                   timeout=600)
                assert r.returncode == 0, f"README quick start: `{command}` exited {r.returncode}:\n{r.stderr[-3000:]}"
                assert "Traceback" not in r.stderr, r.stderr
                ran += 1
        elif lang == "python":
            r = subprocess.run([sys.executable, "-c", code], cwd=clone, env=env, capture_output=True, text=True,
                               timeout=300)
            assert r.returncode == 0, f"README quick start (python):\n{r.stderr[-3000:]}"
    assert ran >= 5
    assert (clone / "data" / "cora" / "packs" / "default").is_dir()
