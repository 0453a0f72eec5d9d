"""Directories that appear only when complete (store.atomic)."""

from __future__ import annotations

import json
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
    _manifest(out, "diskgraph.dataset")
    with pytest.raises(InputError, match=rf"output directory {out} already exists; .* --overwrite"):
        with AtomicDirectory(out):
            pass
    assert (out / "manifest.json").exists()
    with AtomicDirectory(out, overwrite=True) as tmp:
        (tmp / "new").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new"]
    assert _hidden(tmp_path, "ds") == []


def test_missing_parents_are_created_and_removed_again_on_failure(tmp_path):
    out = tmp_path / "a" / "b" / "ds"
    with pytest.raises(RuntimeError):
        with AtomicDirectory(out) as tmp:
            assert tmp.parent == tmp_path / "a" / "b"
            raise RuntimeError()
    assert list(tmp_path.iterdir()) == []
    with AtomicDirectory(out) as tmp:
        (tmp / "f").write_text("x")
    assert (out / "f").read_text() == "x"


def test_a_file_in_the_way_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match=r"cannot create .*file/ds: .*file is not a directory; choose another --out"):
        AtomicDirectory(tmp_path / "file" / "ds").check()


def _manifest(d, fmt):
    d.mkdir(parents=True, exist_ok=True)
    (d / "manifest.json").write_text(json.dumps({"format": fmt}))


def test_overwrite_replaces_only_diskgraph_directories_of_the_same_kind(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(InputError, match=r"refusing to replace .*ds: it is not a directory diskgraph wrote"):
        with AtomicDirectory(out, overwrite=True):
            pass
    assert (out / "thesis.tex").exists()
    (out / "thesis.tex").unlink()
    _manifest(out, "diskgraph.plan")
    with pytest.raises(InputError, match="it holds a diskgraph plan, not a diskgraph dataset"):
        AtomicDirectory(out, overwrite=True, kind="diskgraph.dataset").check()
    # without a kind, the manifest the writer made decides, when it is about to rename
    with pytest.raises(InputError, match="it holds a diskgraph plan, not a diskgraph dataset"):
        with AtomicDirectory(out, overwrite=True) as tmp:
            _manifest(tmp, "diskgraph.dataset")
    assert json.loads((out / "manifest.json").read_text())["format"] == "diskgraph.plan"
    assert _hidden(tmp_path, "ds") == []
    with AtomicDirectory(out, overwrite=True) as tmp:
        _manifest(tmp, "diskgraph.plan")
        (tmp / "new").write_text("new")
    assert (out / "new").exists()


def test_an_empty_directory_is_replaced_with_overwrite(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    with AtomicDirectory(out, overwrite=True) as tmp:
        (tmp / "f").write_text("x")
    assert (out / "f").exists()


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
