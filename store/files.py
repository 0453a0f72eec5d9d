"""Low-level file writing that keeps the page cache bounded.

Out-of-core jobs run inside memory caps that also charge the page cache. Files
written here are flushed to disk every ``flush_bytes`` and their pages dropped
from the cache, so writing a 100 GB array costs a few MiB of memory, and every
file is durable (fdatasync) before the directory holding it is renamed into place.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
from pathlib import Path

FLUSH_BYTES = 64 << 20
"""Bytes written between a flush to disk and a drop of the written pages from the cache."""


def drop_cache(fd: int, offset: int = 0, length: int = 0) -> None:
    """Ask the kernel to drop a file's cached pages (``length=0`` means to the end)."""
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def evict_file(path: str | os.PathLike) -> None:
    """Drop every cached page of the file at ``path`` (it must be clean: written and synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        drop_cache(fd)
    finally:
        os.close(fd)


class AppendFile:
    """A file written front to back, durable on :meth:`close`, with a bounded page-cache footprint.

    ``write`` takes any buffer (bytes, a contiguous numpy array). Every
    ``flush_bytes`` the written range is synced and dropped from the cache.
    With ``readable=True`` the file is opened for reading too (``os.pread(f.fd, …)``).
    """

    def __init__(self, path: str | os.PathLike, flush_bytes: int = FLUSH_BYTES, readable: bool = False):
        self.path = os.fspath(path)
        self.fd = os.open(self.path, (os.O_RDWR if readable else os.O_WRONLY) | os.O_CREAT | os.O_TRUNC, 0o644)
        self.bytes_written = 0
        self._flushed_to = 0
        self._flush_bytes = flush_bytes

    def write(self, data) -> None:
        """Append ``data`` (a bytes-like object) to the file."""
        view = memoryview(data).cast("B")
        while len(view):
            n = os.write(self.fd, view)
            view = view[n:]
            self.bytes_written += n
        if self.bytes_written - self._flushed_to >= self._flush_bytes:
            self._flush()

    def _flush(self) -> None:
        os.fdatasync(self.fd)
        drop_cache(self.fd, self._flushed_to, self.bytes_written - self._flushed_to)
        self._flushed_to = self.bytes_written

    def close(self) -> None:
        """Sync what is left, drop it from the cache and close the file."""
        if self.fd < 0:
            return
        try:
            self._flush()
        finally:
            os.close(self.fd)
            self.fd = -1

    # file-object protocol, so pyarrow can write through this class (pa.PythonFile)
    closed = property(lambda self: self.fd < 0)

    def tell(self) -> int:
        """Bytes written so far."""
        return self.bytes_written

    def flush(self) -> None:
        """Nothing to do: writes go straight to the file (syncs happen every ``flush_bytes``)."""

    def writable(self) -> bool:
        return True

    def abort(self) -> None:
        """Close without syncing (the caller is about to delete the file)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "AppendFile":
        return self

    def __exit__(self, exc_type, *rest) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_file(path: str | os.PathLike, data) -> None:
    """Write ``data`` to ``path`` in one go, durable, with its pages dropped from the cache."""
    with AppendFile(path) as f:
        f.write(data)


def write_atomic(path: str | os.PathLike, write, binary: bool = True, sync_dir: bool = False) -> None:
    """Write a file atomically: ``write(f)`` fills a temporary sibling, which is fsynced and renamed over ``path``
    (readers see the old file or the new one, never a part); ``sync_dir`` also makes the rename durable.

    When the write fails the temporary file is removed. An ``OSError`` (a full disk, a read-only filesystem)
    is raised with ``path`` as its ``filename``, also when a library reported it as another exception
    (``torch.save`` raises a RuntimeError whose context is the OSError)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        cause = e
        while cause is not None and not (isinstance(cause, OSError) and cause.errno):
            cause = cause.__cause__ or cause.__context__
        if cause is None or not isinstance(e, (OSError, RuntimeError)):
            raise
        raise OSError(cause.errno, cause.strerror or os.strerror(cause.errno), str(path)) from e
    if sync_dir:
        fsync_dir(path.parent)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a directory's entries (new names, renames) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def dir_size(path: str | os.PathLike) -> int:
    """Bytes of all regular files under ``path`` (apparent size)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                pass
    return total


def read_json(path: str | os.PathLike, missing: str, damaged: str):
    """Parse the JSON file at ``path``; raises FormatError with ``missing`` or ``damaged`` as the message."""
    from .errors import FormatError

    try:
        return json.loads(open(path, "rb").read())
    except FileNotFoundError:
        raise FormatError(missing) from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise FormatError(damaged) from None


_libc = None


def _libc_handle():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    return _libc


def start_writeback(fd: int) -> None:
    """Start writing the file's dirty pages to disk without waiting (Linux ``sync_file_range``), so the
    periodic ``fdatasync`` finds little left to do and dirty pages stay few."""
    try:
        _libc_handle().sync_file_range(ctypes.c_int(fd), ctypes.c_int64(0), ctypes.c_int64(0),
                                       ctypes.c_uint(2))  # SYNC_FILE_RANGE_WRITE
    except (OSError, AttributeError):
        pass


def preallocate(fd: int, size: int) -> None:
    """Size the file to ``size`` bytes and reserve its blocks where the filesystem can (unwritten bytes read as 0)."""
    os.ftruncate(fd, size)
    if size == 0 or not hasattr(os, "posix_fallocate"):
        return
    try:
        # Linux fallocate(2): fails with EOPNOTSUPP instead of writing zeros where unsupported
        _libc_handle().fallocate(ctypes.c_int(fd), ctypes.c_int(0), ctypes.c_int64(0), ctypes.c_int64(size))
    except (OSError, AttributeError):
        pass
