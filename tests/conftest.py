"""Shared fixtures of the diskgraph test suite.

* ``cli``: run ``diskgraph ...`` in-process (``cli.run``) or as a real subprocess
  (``cli.subprocess``), returning ``(rc, out, err)``.
* ``refused``: assert that a run was refused the way the issue requires (exit 2,
  one sentence on stderr naming the offender, no traceback, nothing left behind).
* ``csc_oracle``: CSC over in-edges built in memory with scipy, the reference
  every import is compared against.
* ``shared_dataset``: the path of a shared ``data.npz`` (skipped when absent).

Tests marked ``slow`` are skipped unless ``-m`` selects them (``make test-slow``
runs ``pytest -m slow``) or ``DISKGRAPH_SLOW=1`` is set.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO / ".." / "shared" / "datasets"
TMP_TAG = ".diskgraph-tmp-"


def pytest_collection_modifyitems(config, items):
    markexpr = config.getoption("-m") or ""
    if "slow" in markexpr or os.environ.get("DISKGRAPH_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow check: run with `make test-slow` (pytest -m slow) or DISKGRAPH_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@dataclass
class Result:
    rc: int
    out: str
    err: str


class CLI:
    """Runs the command line in-process (through ``main``) or in a subprocess."""

    def __init__(self, capsys):
        self._capsys = capsys

    def run(self, *args) -> Result:
        from diskgraph.cli import main

        argv = [str(a) for a in args]
        self._capsys.readouterr()
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse: --help, usage errors
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
        captured = self._capsys.readouterr()
        return Result(rc, captured.out, captured.err)

    @staticmethod
    def subprocess(*args, cwd=None, timeout=120, env=None) -> Result:
        proc = subprocess.run([sys.executable, "-m", "diskgraph", *[str(a) for a in args]], cwd=cwd,
                              capture_output=True, text=True, timeout=timeout, env=env)
        return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def cli(capsys) -> CLI:
    return CLI(capsys)


def leftovers(out: Path) -> list[Path]:
    """``out`` itself (if it exists) and hidden temporary siblings a writer left for it."""
    out = Path(out)
    found = [out] if out.exists() else []
    if out.parent.is_dir():
        found += sorted(out.parent.glob(f".{out.name}{TMP_TAG}*"))
    return found


def check_refused(result: Result, *needles: str, out: Path | None = None, status: int = 2) -> str:
    """Assert ``result`` is a refusal: exit status, one error sentence naming ``needles``, no traceback.

    Returns the message (without the ``diskgraph: error:`` prefix).
    """
    assert result.rc == status, f"exit status {result.rc}, expected {status}; stderr:\n{result.err}"
    assert "Traceback" not in result.err, result.err
    errors = [line for line in result.err.splitlines() if line.startswith("diskgraph: error:")]
    assert len(errors) == 1, f"expected one error line on stderr, got:\n{result.err}"
    assert result.err.rstrip("\n").splitlines()[-1] == errors[0], "the error sentence must end stderr"
    message = errors[0][len("diskgraph: error:"):].strip()
    assert message, "empty error message"
    # one sentence: no line breaks, no second sentence starting after a full stop
    assert ". " not in message.replace("e.g. ", "").replace("..", ""), message
    for needle in needles:
        assert str(needle) in message, f"{needle!r} not named in: {message}"
    if out is not None:
        assert leftovers(out) == [], f"left behind: {leftovers(out)}"
    return message


@pytest.fixture(scope="session")
def refused():
    return check_refused


@pytest.fixture(scope="session")
def no_leftovers():
    return leftovers


def csc_reference(src, dst, num_nodes: int, *, undirected: bool = False, dedup: bool = False,
                  drop_self_loops: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """CSC over in-edges (indptr int64 [N+1], sources sorted per destination) built with scipy.

    ``scipy.sparse.csc_matrix((ones, (src, dst)))`` sums repeated edges; without
    ``dedup`` each stored source is repeated by its multiplicity.
    """
    import scipy.sparse as sp

    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    if drop_self_loops:
        keep = src != dst
        src, dst = src[keep], dst[keep]
    if undirected:
        src, dst = np.concatenate([src, dst]), np.concatenate([dst, src])
    m = sp.csc_matrix((np.ones(src.size, dtype=np.int64), (src, dst)), shape=(num_nodes, num_nodes))
    m.sort_indices()
    if dedup:
        return m.indptr.astype(np.int64), m.indices.astype(np.int64)
    counts = np.asarray(m.sum(axis=0)).ravel().astype(np.int64)
    indptr = np.zeros(num_nodes + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return indptr, np.repeat(m.indices.astype(np.int64), m.data)


@pytest.fixture(scope="session")
def csc_oracle():
    return csc_reference


@pytest.fixture(scope="session")
def shared_dataset():
    """``shared_dataset(name)`` → path of ``../shared/datasets/NAME/data.npz`` (skips when absent)."""

    def get(name: str) -> Path:
        p = SHARED_DATASETS / name / "data.npz"
        if not p.is_file():
            pytest.skip(f"shared dataset {name} not found at {p}")
        return p

    return get


@pytest.fixture(scope="session")
def prepared_cora(tmp_path_factory, shared_dataset):
    """``prepared_cora(fanouts="10,5", batch_size=16)`` → a cora dataset directory after ``diskgraph preprocess all``
    with those options (plan seed 0; made once per options in a session; skips without the shared dataset)."""
    from diskgraph.cli import main

    made: dict = {}

    def get(fanouts: str = "10,5", batch_size: int = 16) -> Path:
        key = (fanouts, int(batch_size))
        if key not in made:
            out = tmp_path_factory.mktemp(f"cora-{fanouts.replace(',', '-')}-b{batch_size}") / "cora"
            assert main(["preprocess", "all", "--npz", str(shared_dataset("cora")), "--out", str(out), "--fanouts",
                         fanouts, "--batch-size", str(batch_size), "--seed", "0", "-q"]) == 0
            made[key] = out
        return made[key]

    return get
