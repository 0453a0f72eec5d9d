"""Environment failures end in one sentence, not a traceback (issue 12, finding 6).

A full disk (ENOSPC) during import, sample, pack or a training checkpoint, an output on a read-only
filesystem (EROFS) or in a directory this user may not write (EACCES), and a generator asked for more
nodes than the memory budget holds are each refused with exit status 2 and one sentence naming the
path and the fix, and nothing half-made is left behind.

The full and read-only filesystems are small tmpfs mounts (the tests skip with a reason where mounting
is not permitted). Root bypasses permission bits, so the EACCES tests run the command in a child that
drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from its capability bounding set: it stays uid 0 but
may no longer write into a directory owned by another user.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest

from diskgraph.generate import generate_dataset
from diskgraph.preprocess import run_pack, run_sample

TMP_TAG = ".diskgraph-tmp-"


# -- helpers -----------------------------------------------------------------------------------------

@contextmanager
def tmpfs(path: Path, size: str = "1m", ro: bool = False):
    """Mount a tmpfs of ``size`` at ``path`` for the block (skips the test where mounting is not permitted)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the test fills or write-protects a small filesystem)")
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if ro else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount_ro(path: Path) -> None:
    r = subprocess.run(["mount", "-o", "remount,ro", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot remount {path} read-only here ({r.stderr.strip()})")


def fill(fs: Path) -> Path:
    """Write a file into ``fs`` until the filesystem is full; returns it."""
    filler = fs / "filler"
    with open(filler, "wb") as f:
        block = b"\0" * (64 << 10)
        try:
            while True:
                f.write(block)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC
    return filler


def temporaries(root: Path) -> list[Path]:
    """Hidden temporary directories and files a writer left anywhere under ``root``."""
    return sorted(p for p in root.rglob("*") if TMP_TAG in p.name or ".tmp-" in p.name)


def _result(proc: subprocess.CompletedProcess) -> SimpleNamespace:
    return SimpleNamespace(rc=proc.returncode, out=proc.stdout, err=proc.stderr)


def _drop_dac_override() -> None:  # runs in the child, before exec
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            os._exit(99)


def run_without_dac_override(*args, cwd=None):
    """``diskgraph ARGS`` as uid 0 without the capabilities that let root ignore permission bits."""
    if os.geteuid() != 0:
        pytest.skip("the EACCES test drops root's capabilities; it needs to run as root")
    proc = subprocess.run([sys.executable, "-m", "diskgraph", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, preexec_fn=_drop_dac_override, timeout=300)
    if proc.returncode == 99:
        pytest.skip("cannot drop CAP_DAC_OVERRIDE here (prctl PR_CAPBSET_DROP was refused)")
    return _result(proc)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    """A 2,000-node synthetic dataset with 128-d features (1 MiB), a plan and a pack (default)."""
    ds = tmp_path_factory.mktemp("disk-errors") / "syn"
    generate_dataset(ds, nodes=2000, edges=20000, feature_dim=128, classes=4, seed=0)
    run_sample(ds, fanouts=[5, 5], batch_size=256, seed=0)
    run_pack(ds, host_cache=64 << 10)
    return ds


def _copy_dataset(src: Path, dst: Path, *, derived: tuple[str, ...] = ()) -> Path:
    """Copy the dataset at ``src`` to ``dst`` with only the derived directories named (plans, packs)."""
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*{"plans", "packs", "runs"} - set(derived)))
    return dst


# -- ENOSPC ------------------------------------------------------------------------------------------

def test_import_on_a_full_disk(cli, refused, shared_dataset, tmp_path):
    with tmpfs(tmp_path / "fs") as fs:
        out = fs / "cora"
        msg = refused(cli.run("preprocess", "import", "--npz", shared_dataset("cora"), "--out", out, "-q"),
                      "no space left", str(out), "--out", out=out)
        assert "free space" in msg
        assert list(fs.iterdir()) == []  # the temporary dataset is gone too


def test_import_on_a_full_disk_removes_the_parents_it_made(cli, refused, shared_dataset, tmp_path):
    with tmpfs(tmp_path / "fs") as fs:
        out = fs / "data" / "deeper" / "cora"
        refused(cli.run("preprocess", "import", "--npz", shared_dataset("cora"), "--out", out, "-q"),
                "no space left", "--out")
        assert list(fs.iterdir()) == []


def test_sample_on_a_full_disk(cli, refused, small_dataset, tmp_path):
    with tmpfs(tmp_path / "fs", size="4m") as fs:
        ds = _copy_dataset(small_dataset, fs / "syn")
        fill(fs)
        msg = refused(cli.run("preprocess", "sample", ds, "--fanouts", "5,5", "--batch-size", "64", "-q"),
                      "no space left", str(ds))
        assert "free space" in msg
        assert not (ds / "plans").exists() and temporaries(fs) == []


def test_pack_on_a_full_disk(cli, refused, small_dataset, tmp_path):
    with tmpfs(tmp_path / "fs", size="4m") as fs:
        ds = _copy_dataset(small_dataset, fs / "syn", derived=("plans",))
        fill(fs)
        refused(cli.run("preprocess", "pack", ds, "--host-cache", "64K", "-q"), "no space left", str(ds))
        assert not (ds / "packs").exists() and temporaries(fs) == []


def test_training_checkpoint_on_a_full_disk(cli, refused, small_dataset, tmp_path):
    with tmpfs(tmp_path / "fs", size="1m") as fs:
        run = fs / "run"
        # hidden 512 over 128-d features: the model is ~0.5 MiB, a checkpoint (model + Adam moments) ~1.6 MiB
        r = cli.subprocess("train", small_dataset, "--run-dir", run, "--hidden", "512", "--epochs", "1",
                           "--checkpoint-every", "1", "--device", "cpu", "-q")
        msg = refused(r, "no space left", str(run), "--run-dir")
        assert "checkpoint.pt" in msg
        assert temporaries(fs) == []  # write_atomic removed its temporary checkpoint


def test_write_atomic_removes_its_temporary_file_on_a_full_disk(tmp_path):
    from diskgraph.store.files import write_atomic

    with tmpfs(tmp_path / "fs", size="64k") as fs:
        target = fs / "state.bin"
        with pytest.raises(OSError) as info:
            write_atomic(target, lambda f: f.write(b"x" * (1 << 20)))
        assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
        assert list(fs.iterdir()) == []


def test_write_atomic_reports_the_os_error_behind_a_library_error(tmp_path):
    """torch.save turns a failed write into a RuntimeError; write_atomic raises the OSError underneath."""
    import torch

    from diskgraph.store.files import write_atomic

    with tmpfs(tmp_path / "fs", size="64k") as fs:
        target = fs / "model.pt"
        with pytest.raises(OSError) as info:
            write_atomic(target, lambda f: torch.save({"w": torch.zeros(1 << 16)}, f))
        assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
        assert list(fs.iterdir()) == []


# -- EROFS -------------------------------------------------------------------------------------------

def test_import_onto_a_read_only_filesystem(cli, refused, shared_dataset, tmp_path):
    with tmpfs(tmp_path / "ro", ro=True) as ro:
        out = ro / "cora"
        msg = refused(cli.run("preprocess", "import", "--npz", shared_dataset("cora"), "--out", out, "-q"),
                      "read-only", str(out), "--out", out=out)
        assert "writable filesystem" in msg


def test_generate_onto_a_read_only_filesystem(cli, refused, tmp_path):
    with tmpfs(tmp_path / "ro", ro=True) as ro:
        for fmt in ("raw", "dataset"):
            out = ro / "data" / fmt
            refused(cli.run("generate", "--format", fmt, "--nodes", "100", "--edges", "500", "--out", out, "-q"),
                    "read-only", "--out")


def test_sample_and_train_in_a_dataset_on_a_read_only_filesystem(cli, refused, small_dataset, tmp_path):
    with tmpfs(tmp_path / "fs", size="8m") as fs:
        ds = _copy_dataset(small_dataset, fs / "syn", derived=("plans", "packs"))
        remount_ro(fs)
        refused(cli.run("preprocess", "sample", ds, "--name", "other", "-q"), "read-only", str(ds))
        refused(cli.run("preprocess", "pack", ds, "--name", "other", "-q"), "read-only", str(ds))
        r = cli.subprocess("train", ds, "--epochs", "1", "--hidden", "16", "--device", "cpu", "-q")
        refused(r, "read-only", str(ds), "--run-dir")


# -- EACCES ------------------------------------------------------------------------------------------

@pytest.fixture
def locked_dir(tmp_path_factory):
    """A world-readable directory owned by nobody (uid 65534): only its owner may create entries in it."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="diskgraph-eacces-"))
    base.chmod(0o755)
    locked = base / "locked"
    locked.mkdir(mode=0o755)
    os.chown(locked, 65534, 65534)
    yield locked
    import shutil

    shutil.rmtree(base, ignore_errors=True)


def test_output_in_a_directory_this_user_may_not_write(refused, shared_dataset, locked_dir):
    out = locked_dir / "cora"
    msg = refused(run_without_dac_override("preprocess", "import", "--npz", shared_dataset("cora"), "--out", out, "-q"),
                  "may not write", str(locked_dir), "--out", out=out)
    assert "writable" in msg
    refused(run_without_dac_override("generate", "--format", "raw", "--nodes", "100", "--edges", "500",
                                     "--out", locked_dir / "a" / "raw", "-q"),
            "may not write", str(locked_dir), "--out")
    assert list(locked_dir.iterdir()) == []


def test_training_run_dir_this_user_may_not_write(refused, small_dataset, locked_dir):
    run = locked_dir / "run"
    refused(run_without_dac_override("train", small_dataset, "--run-dir", run, "--epochs", "1", "--hidden", "16",
                                     "--device", "cpu", "-q"),
            "permission denied", str(locked_dir), "--run-dir")


def test_an_unreadable_input_is_named(refused, tmp_path_factory, locked_dir):
    import numpy as np

    secret = locked_dir.parent / "edges.npy"
    np.save(secret, np.zeros((2, 10), dtype=np.int64))
    os.chown(secret, 65534, 65534)
    secret.chmod(0o600)
    out = locked_dir.parent / "ds"
    msg = refused(run_without_dac_override("preprocess", "import", "--edges", secret, "--out", out, "-q"),
                  "permission denied", str(secret), out=out)
    assert "readable" in msg


def test_os_errors_raised_anywhere_become_one_sentence(cli, refused, monkeypatch, tmp_path):
    """The central handler: an OSError of the listed kinds from deep inside a command, with or without a file."""
    import diskgraph.generate as gen

    cases = [(errno.ENOSPC, None, ["no space left", str(tmp_path / "raw")]),
             (errno.EDQUOT, str(tmp_path / "raw" / "x"), ["quota", str(tmp_path / "raw")]),
             (errno.EPERM, str(tmp_path / "raw" / "x"), ["permission denied", str(tmp_path / "raw")]),
             (errno.EROFS, str(tmp_path / ".raw.diskgraph-tmp-1-abc" / "edges.npy"), ["read-only", str(tmp_path / "raw")])]
    for code, filename, needles in cases:
        def boom(*a, _code=code, _filename=filename, **k):
            raise OSError(_code, os.strerror(_code), *([_filename] if _filename else []))

        monkeypatch.setattr(gen, "write_raw_inputs", boom)
        refused(cli.run("generate", "--format", "raw", "--nodes", "10", "--edges", "10", "--out", tmp_path / "raw"),
                *needles, "--out", out=tmp_path / "raw")
    # another OSError is not one of these: it is not dressed up as a refusal
    monkeypatch.setattr(gen, "write_raw_inputs", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with pytest.raises(OSError):
        cli.run("generate", "--format", "raw", "--nodes", "10", "--edges", "10", "--out", tmp_path / "raw")


# -- the generator checks its budgets before it allocates ----------------------------------------------

def test_generate_refuses_more_nodes_than_the_memory_budget_before_allocating(refused, tmp_path):
    def cap_memory():  # a 6 GiB address space: allocating the labels of 10**10 nodes (75 GiB) fails
        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))

    proc = subprocess.run([sys.executable, "-m", "diskgraph", "generate", "--nodes", "10000000000", "--edges", "10",
                           "--out", tmp_path / "huge", "-q"], capture_output=True, text=True, timeout=120,
                          preexec_fn=cap_memory)
    msg = refused(_result(proc), "--nodes 10000000000", "--memory-budget",
                  out=tmp_path / "huge")
    assert "memory" in msg


def test_generate_refuses_an_output_larger_than_the_free_space(cli, refused, tmp_path):
    with tmpfs(tmp_path / "fs", size="1m") as fs:
        for fmt in ("raw", "dataset"):
            out = fs / fmt
            msg = refused(cli.run("generate", "--format", fmt, "--nodes", "10000", "--edges", "1000",
                                  "--feature-dim", "64", "--out", out, "-q"), "free", str(fs), "--out", out=out)
            assert "MiB" in msg
        assert list(fs.iterdir()) == []
