"""Directories that appear at their final name only when complete.

A writer builds everything under a hidden sibling ``.NAME.diskgraph-tmp-PID``
and renames it to ``NAME`` at the end. An interrupted writer leaves only the
hidden directory (never something that opens as valid under ``NAME``); the next
writer to the same ``NAME`` removes leftovers whose process is gone.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .errors import InputError
from .files import fsync_dir
from .progress import log

_TMP_TAG = ".diskgraph-tmp-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale(parent: Path, name: str) -> None:
    prefix = f".{name}{_TMP_TAG}"
    for entry in parent.glob(prefix + "*"):
        tail = entry.name[len(prefix):]
        pid = int(tail.split("-")[0]) if tail.split("-")[0].isdigit() else -1
        if pid != os.getpid() and not _pid_alive(pid):
            log.info("removing %s left by an interrupted run", entry)
            shutil.rmtree(entry, ignore_errors=True)


class AtomicDirectory:
    """Build a directory under a temporary name and rename it to ``final`` on success.

    ``with AtomicDirectory(out, overwrite=False) as tmp:`` yields the temporary
    path to write into. On a clean exit the directory is synced and renamed to
    ``out`` (replacing an existing one only when ``overwrite``); on any
    exception, KeyboardInterrupt included, the temporary directory is removed.

    Raises:
        InputError: ``out`` exists and ``overwrite`` is false, or its parent is missing.
    """

    def __init__(self, final: str | os.PathLike, overwrite: bool = False, option: str = "--out"):
        self.final = Path(final).absolute()
        self.overwrite = overwrite
        self.option = option
        self.tmp: Path | None = None

    def check(self) -> None:
        """Refuse early (before any work) when the destination cannot be written."""
        if self.final.exists() and not self.overwrite:
            raise InputError(
                f"output directory {self.final} already exists; choose another {self.option} or pass --overwrite to replace it"
            )
        if not self.final.parent.is_dir():
            raise InputError(
                f"cannot create {self.final}: its parent directory {self.final.parent} does not exist; create it first"
            )

    def __enter__(self) -> Path:
        self.check()
        _remove_stale(self.final.parent, self.final.name)
        self.tmp = self.final.parent / f".{self.final.name}{_TMP_TAG}{os.getpid()}-{os.urandom(3).hex()}"
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.tmp is not None
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        for root, dirs, _files in os.walk(self.tmp):
            for d in dirs:
                fsync_dir(os.path.join(root, d))
        fsync_dir(self.tmp)
        trash = None
        if self.final.exists():
            if not self.overwrite:
                shutil.rmtree(self.tmp, ignore_errors=True)
                self.check()
            trash = self.final.parent / f".{self.final.name}{_TMP_TAG}{os.getpid()}-old"
            os.rename(self.final, trash)
        os.rename(self.tmp, self.final)
        fsync_dir(self.final.parent)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
