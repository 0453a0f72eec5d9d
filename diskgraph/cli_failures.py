"""How the command line reports a failure of the machine (a full disk, a read-only filesystem, a directory this user
may not write) and an interrupt: one sentence naming the path, what was left there, and what to change."""

from __future__ import annotations

import argparse
import errno
import os
from pathlib import Path

from .store.atomic import TMP_TAG
from .store.errors import InputError

ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})
"""OSError numbers reported as one sentence with exit status 2 (other errors keep their traceback)."""


def environment_failure(e: BaseException, args: argparse.Namespace) -> str | None:
    """The sentence for an environment failure behind ``e`` (None when ``e`` is not one)."""
    failure = _os_error(e)
    if failure is None:
        return None
    output, option = output_of(args)
    return describe_os_error(failure, output, option)


def output_of(args: argparse.Namespace) -> tuple[Path | None, str | None]:
    """What the command writes and the option that chooses it (``(None, None)`` for commands that write nothing)."""
    describe = getattr(args, "output", None)
    if describe is None:
        return None, None
    try:
        path, option = describe(args)
    except InputError:
        return None, None
    return (Path(path).absolute() if path else None), option


def _os_error(e: BaseException) -> OSError | None:
    """The OSError of an environment failure behind ``e`` (itself, or its cause or context), if any."""
    while e is not None:
        if isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS:
            return e
        e = e.__cause__ or e.__context__
    return None


def _related(path: Path, out: Path) -> bool:
    """Whether ``path`` is the output, inside it, one of its temporary siblings, or a parent made for it."""
    if path == out or out in path.parents or path in out.parents:
        return True
    return any(p.parent == out.parent and p.name.startswith(f".{out.name}") for p in (path, *path.parents))


def describe_os_error(e: OSError, output: Path | None, option: str | None) -> str:
    """One sentence for an environment failure: what happened, to which path, and what to change."""
    name = Path(os.path.abspath(e.filename)) if isinstance(e.filename, (str, bytes, os.PathLike)) and e.filename else None
    related = output is not None and (name is None or _related(name, output))
    where = name if name is not None else output
    if related and where is not None and TMP_TAG in str(where):
        where = output
    change = f"another {option}" if related and option else "another path"
    if where is None:
        where = "the output"
    if e.errno == errno.ENOSPC:
        return f"no space left on the filesystem holding {where}; free space there or choose {change} on a larger filesystem"
    if e.errno == errno.EDQUOT:
        return f"the disk quota is exhausted on the filesystem holding {where}; free space within your quota or choose {change}"
    if e.errno == errno.EROFS:
        return f"cannot write {where}: its filesystem is read-only; choose {change} on a writable filesystem"
    if not related and name is not None and os.path.exists(name) and not os.access(name, os.R_OK):
        return f"permission denied reading {name}; make it readable by this user (e.g. chmod a+r) or pass a copy that is"
    parent = where.parent if isinstance(where, Path) else where
    return f"permission denied writing {where}; choose {change} or make {parent} writable by this user"


class Before:
    """The output's state when the command started, to say after an interrupt what it left."""

    def __init__(self, path: Path | None):
        self.path = path
        self.inode = _inode(path)

    def interrupted(self, args: argparse.Namespace) -> str:
        """The sentence printed when the command was interrupted."""
        note = getattr(args, "interrupted", None)
        if note is not None:
            return note(args, self.path)
        if self.path is None or not getattr(args, "atomic_output", False):
            return "interrupted"
        now = _inode(self.path)
        if self.inode is None:
            return (f"interrupted; nothing was left at {self.path}" if now is None else
                    f"interrupted after {self.path} was complete; it is kept")
        if now == self.inode:
            return f"interrupted; {self.path} was left as it was"
        if now is None:
            return f"interrupted while replacing {self.path}; run the command again to write it"
        return f"interrupted after {self.path} was replaced completely; it is kept"


def _inode(path: Path | None) -> int | None:
    try:
        return os.lstat(path).st_ino if path is not None else None
    except OSError:
        return None
