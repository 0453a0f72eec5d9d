"""Directories that appear at their final name only when complete.

A writer builds everything under a hidden sibling ``.NAME.diskgraph-tmp-PID``
and renames it to ``NAME`` at the end. An interrupted writer leaves only the
hidden directory (never something that opens as valid under ``NAME``); the next
writer to the same ``NAME`` removes leftovers whose process is gone.

Missing parents of ``NAME`` are created (and removed again when the writer
fails). Before any work the destination is checked: it must be creatable
(:func:`check_writable`: not on a read-only filesystem, writable by this user)
and, when it exists and is to be replaced, a diskgraph directory of the same
kind (:func:`check_replaceable`) — ``--overwrite`` never deletes a directory
diskgraph did not write.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .errors import InputError
from .files import fsync_dir
from .manifest import FORMATS, MANIFEST_NAME
from .progress import log

TMP_TAG = ".diskgraph-tmp-"
"""What the hidden temporary names of writers contain (``.NAME.diskgraph-tmp-PID-…``)."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale(parent: Path, name: str) -> None:
    prefix = f".{name}{TMP_TAG}"
    for entry in parent.glob(prefix + "*"):
        tail = entry.name[len(prefix):]
        pid = int(tail.split("-")[0]) if tail.split("-")[0].isdigit() else -1
        if pid != os.getpid() and not _pid_alive(pid):
            log.info("removing %s left by an interrupted run", entry)
            shutil.rmtree(entry, ignore_errors=True)


def _nearest_existing(path: Path) -> Path:
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def check_writable(path: str | os.PathLike, option: str = "--out") -> None:
    """Refuse, before any work, a ``path`` that cannot be created.

    The nearest existing ancestor must be a directory, on a writable filesystem, that this user may
    write (missing directories below it are created by the writer).

    Raises:
        InputError: one sentence naming the directory, the reason and ``option`` to change.
    """
    path = Path(path).absolute()
    anc = _nearest_existing(path.parent)
    if not anc.is_dir():
        raise InputError(f"cannot create {path}: {anc} is not a directory; choose another {option}")
    if os.access(anc, os.W_OK | os.X_OK):
        return
    try:
        read_only = bool(os.statvfs(anc).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    if read_only:
        raise InputError(f"cannot create {path}: {anc} is on a read-only filesystem; choose another {option} on a "
                         "writable filesystem")
    raise InputError(f"cannot create {path}: this user may not write to {anc}; choose another {option} or make "
                     f"{anc} writable")


def check_free_space(path: str | os.PathLike, need: int, option: str = "--out", what: str | None = None) -> None:
    """Refuse, before any work, an output of at least ``need`` bytes on a filesystem with less free space.

    Raises:
        InputError: one sentence with both sizes, the filesystem's directory and ``option`` to change.
    """
    from .progress import format_bytes

    path = Path(path).absolute()
    anc = _nearest_existing(path.parent)
    try:
        free = shutil.disk_usage(anc).free
    except OSError:
        return
    if free < need:
        raise InputError(f"{what or path} needs at least {format_bytes(need)} on disk but the filesystem holding {anc} "
                         f"has {format_bytes(free)} free; free space there or choose another {option} on a larger "
                         "filesystem")


def artifact_format(path: str | os.PathLike) -> str | None:
    """The ``format`` named by ``path/manifest.json`` when it names a diskgraph one, else None."""
    try:
        with open(Path(path) / MANIFEST_NAME, "rb") as f:
            fmt = json.load(f).get("format")
    except (OSError, ValueError, AttributeError):
        return None
    return fmt if isinstance(fmt, str) and fmt.startswith("diskgraph.") else None


def _what(fmt: str) -> str:
    return FORMATS[fmt][0] if fmt in FORMATS else f"a diskgraph {fmt.split('.', 1)[-1]} directory"


def check_replaceable(path: str | os.PathLike, kind: str | None = None, option: str = "--out") -> None:
    """Refuse to replace ``path`` unless it is empty or a diskgraph directory (of ``kind``, a manifest format
    such as ``diskgraph.dataset``, when given).

    Raises:
        InputError: ``path`` is a file, or a directory diskgraph did not write, or one of another kind.
    """
    path = Path(path).absolute()
    if not path.is_dir():
        raise InputError(f"refusing to replace {path}: it is a file, not a diskgraph directory; remove it yourself "
                         f"or choose another {option}")
    try:
        if next(path.iterdir(), None) is None:
            return
    except OSError:
        pass
    fmt = artifact_format(path)
    if fmt is None:
        raise InputError(f"refusing to replace {path}: it is not a directory diskgraph wrote (no {MANIFEST_NAME} "
                         f"naming a diskgraph format); remove it yourself or choose another {option}")
    if kind is not None and fmt != kind:
        raise InputError(f"refusing to replace {path}: it holds {_what(fmt)}, not {_what(kind)}; remove it yourself "
                         f"or choose another {option}")


class AtomicDirectory:
    """Build a directory under a temporary name and rename it to ``final`` on success.

    ``with AtomicDirectory(out, overwrite=False) as tmp:`` yields the temporary
    path to write into; missing parents of ``out`` are created. On a clean exit
    the directory is synced and renamed to ``out`` (replacing an existing one only
    when ``overwrite``, and only a diskgraph directory of the same kind: ``kind``,
    else the format of the manifest just written); on any exception,
    KeyboardInterrupt included, the temporary directory and the parents this
    writer created are removed.

    Raises:
        InputError: ``out`` exists and ``overwrite`` is false, or it cannot be
            replaced (:func:`check_replaceable`) or created (:func:`check_writable`).
    """

    def __init__(self, final: str | os.PathLike, overwrite: bool = False, option: str = "--out",
                 kind: str | None = None):
        self.final = Path(final).absolute()
        self.overwrite = overwrite
        self.option = option
        self.kind = kind
        self.tmp: Path | None = None
        self._made: list[Path] = []

    def check(self) -> None:
        """Refuse early (before any work) when the destination cannot be written."""
        if os.path.lexists(self.final):
            if not self.overwrite:
                what = _what(self.kind) if self.kind else "output directory"
                raise InputError(f"{what} {self.final} already exists; choose another {self.option} or pass "
                                 "--overwrite to replace it")
            check_replaceable(self.final, self.kind, self.option)
        check_writable(self.final, self.option)

    def _make_parents(self) -> None:
        missing = []
        p = self.final.parent
        while not os.path.lexists(p) and p != p.parent:
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:
                continue
            self._made.append(d)

    def _remove_parents(self) -> None:
        for d in reversed(self._made):
            try:
                d.rmdir()
            except OSError:
                break  # not empty (someone else wrote there meanwhile) or gone
        self._made = []

    def _discard(self) -> None:
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
        self._remove_parents()

    def __enter__(self) -> Path:
        self.check()
        try:
            self._make_parents()
            _remove_stale(self.final.parent, self.final.name)
            self.tmp = self.final.parent / f".{self.final.name}{TMP_TAG}{os.getpid()}-{os.urandom(3).hex()}"
            self.tmp.mkdir()
        except BaseException:
            self.tmp = None
            self._remove_parents()
            raise
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.tmp is not None
        if exc_type is not None:
            self._discard()
            return
        try:
            self._commit()
        except BaseException:
            self._discard()
            raise

    def _commit(self) -> None:
        for root, dirs, _files in os.walk(self.tmp):
            for d in dirs:
                fsync_dir(os.path.join(root, d))
        fsync_dir(self.tmp)
        trash = None
        if os.path.lexists(self.final):
            if not self.overwrite:
                self.check()  # raises: someone else finished first
            check_replaceable(self.final, self.kind or artifact_format(self.tmp), self.option)
            trash = self.final.parent / f".{self.final.name}{TMP_TAG}{os.getpid()}-old"
            os.rename(self.final, trash)
        os.rename(self.tmp, self.final)
        self.tmp = None
        self._made = []
        fsync_dir(self.final.parent)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
