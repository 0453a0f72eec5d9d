"""The daemon's root directory.

``ROOT/token`` (the bearer token, mode 0600, created on first start), ``ROOT/jobs.db`` (SQLite, WAL),
``ROOT/jobs/ID/`` (one directory per job), ``ROOT/daemon.json`` (the address clients connect to, written
when the daemon listens) and ``ROOT/daemon.lock`` (held while a daemon serves this root).
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import stat
from pathlib import Path

from ..store.errors import InputError

ENV_ROOT = "DISKGRAPH_ROOT"


def default_root() -> Path:
    """``$DISKGRAPH_ROOT``, else ``~/.diskgraph``."""
    return Path(os.environ.get(ENV_ROOT) or Path.home() / ".diskgraph")


class Root:
    """Paths and small files of one daemon root."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).absolute()

    @property
    def token_path(self) -> Path:
        return self.path / "token"

    @property
    def db_path(self) -> Path:
        return self.path / "jobs.db"

    @property
    def jobs_path(self) -> Path:
        return self.path / "jobs"

    @property
    def address_path(self) -> Path:
        return self.path / "daemon.json"

    def job_path(self, job_id: int) -> Path:
        return self.jobs_path / str(int(job_id))

    def create(self) -> None:
        """Make the root and its ``jobs`` directory (private to the user)."""
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.jobs_path.mkdir(exist_ok=True)

    def ensure_token(self) -> str:
        """The token, created with mode 0600 on first start; refuses a token file others can read."""
        try:
            fd = os.open(self.token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            mode = stat.S_IMODE(self.token_path.stat().st_mode)
            if mode & 0o077:
                raise InputError(f"token file {self.token_path} has mode {mode:04o}, readable by others; "
                                 f"run `chmod 600 {self.token_path}` or delete it to make a new one") from None
            token = self.token_path.read_text().strip()
            if not token:
                raise InputError(f"token file {self.token_path} is empty; delete it and a new token is made on start")
            return token
        token = secrets.token_urlsafe(32)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
            f.flush()
            os.fsync(f.fileno())
        return token

    def read_token(self) -> str | None:
        try:
            return self.token_path.read_text().strip() or None
        except OSError:
            return None

    def lock(self) -> int:
        """Hold ``daemon.lock`` for this process's life; refuses when another daemon serves this root."""
        fd = os.open(self.path / "daemon.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InputError(f"another daemon already serves {self.path}; stop it first or pass another --root") from None
        return fd

    def write_address(self, url: str) -> None:
        tmp = self.address_path.with_name(f".{self.address_path.name}.tmp")
        tmp.write_text(json.dumps({"url": url, "pid": os.getpid()}) + "\n")
        os.replace(tmp, self.address_path)

    def read_address(self) -> dict | None:
        try:
            return json.loads(self.address_path.read_text())
        except (OSError, ValueError):
            return None
