"""Directories that appear only when complete (store.atomic)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from diskgraph.store.atomic import AtomicDirectory
from diskgraph.store.errors import InputError


def _hidden(parent, name):
    return sorted(parent.glob(f".{name}.diskgraph-tmp-*"))


def test_written_under_a_hidden_name_then_renamed(tmp_path):
    out = tmp_path / "ds"
    with AtomicDirectory(out) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(f".ds.diskgraph-tmp-{os.getpid()}-")
        (tmp / "f").write_text("x")
        assert not out.exists()
    assert (out / "f").read_text() == "x"
    assert _hidden(tmp_path, "ds") == []


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_an_exception_leaves_nothing(tmp_path, exc):
    out = tmp_path / "ds"
    with pytest.raises(exc):
        with AtomicDirectory(out) as tmp:
            (tmp / "f").write_text("x")
            raise exc()
    assert not out.exists() and _hidden(tmp_path, "ds") == []


def test_existing_output_is_refused_or_replaced(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "old").write_text("old")
    with pytest.raises(InputError, match=rf"output directory {out} already exists; .* --overwrite"):
        with AtomicDirectory(out):
            pass
    assert (out / "old").exists()
    with AtomicDirectory(out, overwrite=True) as tmp:
        (tmp / "new").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new"]
    assert _hidden(tmp_path, "ds") == []


def test_missing_parent_is_refused(tmp_path):
    with pytest.raises(InputError, match="parent directory .*nope does not exist"):
        AtomicDirectory(tmp_path / "nope" / "ds").check()


def test_output_appearing_meanwhile_is_not_clobbered(tmp_path):
    out = tmp_path / "ds"
    with pytest.raises(InputError, match="already exists"):
        with AtomicDirectory(out) as tmp:
            (tmp / "f").write_text("x")
            out.mkdir()  # someone else finished first
    assert list(out.iterdir()) == [] and _hidden(tmp_path, "ds") == []


def test_stale_temp_dirs_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".ds.diskgraph-tmp-{dead_pid}-abcdef"
    stale.mkdir()
    (stale / "junk").write_text("x")
    alive = tmp_path / f".ds.diskgraph-tmp-{os.getppid()}-abcdef"  # a live process (our parent): kept
    alive.mkdir()
    other = tmp_path / f".other.diskgraph-tmp-{dead_pid}-abcdef"  # another name: kept
    other.mkdir()
    with AtomicDirectory(tmp_path / "ds"):
        pass
    assert not stale.exists() and alive.exists() and other.exists()
