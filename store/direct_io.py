"""Direct (O_DIRECT) reads into 4 KiB-aligned buffers, with a buffered fallback.

Packed extents start and end on 4 KiB boundaries, so one ``O_DIRECT`` read
fetches a minibatch's cold rows without going through the page cache: the disk
reads exactly the extent (read amplification ≈ 1) and nothing lingers in memory.
Filesystems that refuse ``O_DIRECT`` (``EINVAL`` on open or on the first read,
e.g. some tmpfs/overlay setups) get ordinary buffered reads instead, with one
logged warning per process.

>>> buf = aligned_empty(1 << 20)
>>> with DirectReader(path) as r:
...     r.read_into(0, 1 << 20, buf)
"""

from __future__ import annotations

import errno
import mmap
import os

import numpy as np

from .errors import FormatError
from .progress import log

ALIGNMENT = 4096
"""Byte alignment of direct reads: offsets, lengths and buffer addresses."""

O_DIRECT = getattr(os, "O_DIRECT", 0)
"""The platform's O_DIRECT flag (0 where there is none: reads are then always buffered)."""

_warned = {"fallback": False}


def round_up(n: int, alignment: int = ALIGNMENT) -> int:
    """``n`` rounded up to a multiple of ``alignment``."""
    return -(-int(n) // alignment) * alignment


def aligned_empty(nbytes: int, alignment: int = ALIGNMENT) -> np.ndarray:
    """An uninitialized uint8 array of ``nbytes`` whose address is a multiple of ``alignment``.

    Large buffers come from an anonymous ``mmap`` (page aligned, returned to the
    OS when the array is freed); small ones from an over-allocated numpy array.
    """
    nbytes = int(nbytes)
    if nbytes < 0:
        raise ValueError(f"nbytes {nbytes} is negative")
    if nbytes >= (1 << 20) and alignment <= mmap.PAGESIZE and mmap.PAGESIZE % alignment == 0:
        # private, so the memory counts as the process's own (anon), not as shared memory
        m = mmap.mmap(-1, round_up(nbytes, mmap.PAGESIZE), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        return np.frombuffer(m, dtype=np.uint8, count=nbytes)
    raw = np.empty(nbytes + alignment, dtype=np.uint8)
    start = (-raw.ctypes.data) % alignment
    return raw[start:start + nbytes]


def is_aligned(buf, alignment: int = ALIGNMENT) -> bool:
    """Whether ``buf``'s start address is a multiple of ``alignment``."""
    return np.frombuffer(buf, dtype=np.uint8).ctypes.data % alignment == 0 if len(memoryview(buf)) else True


def _warn_fallback(path: str, why: str) -> None:
    if not _warned["fallback"]:
        _warned["fallback"] = True
        log.warning("O_DIRECT is refused for %s (%s); reading with buffered I/O instead, which goes through the page "
                    "cache (reads are correct, memory use and read amplification may be higher)", path, why)


class DirectReader:
    """Positioned reads from one file, with ``O_DIRECT`` when the filesystem allows it.

    Attributes:
        path: the file.
        direct: whether reads bypass the page cache (False after a fallback or with ``direct=False``).
        size: the file's size in bytes.

    In direct mode, :meth:`read_into` needs the offset, the length and the
    buffer's address to be multiples of :data:`ALIGNMENT` (packed extents are).
    """

    def __init__(self, path: str | os.PathLike, direct: bool = True, fix: str = "pack the plan again"):
        self.path = os.fspath(path)
        self.fix = fix  # what the messages about a missing or short file tell the user to do
        self.direct = bool(direct and O_DIRECT)
        self.fd = -1
        try:
            if self.direct:
                try:
                    self.fd = os.open(self.path, os.O_RDONLY | O_DIRECT)
                except OSError as e:
                    if e.errno != errno.EINVAL:
                        raise
                    _warn_fallback(self.path, "EINVAL on open")
                    self.direct = False
            if self.fd < 0:
                self.fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            raise FormatError(f"{self.path} is missing; the file set is incomplete, {self.fix}") from None
        self.size = os.fstat(self.fd).st_size

    def _fall_back(self, why: str) -> None:
        _warn_fallback(self.path, why)
        os.close(self.fd)
        self.fd = os.open(self.path, os.O_RDONLY)
        self.direct = False

    def read_into(self, offset: int, length: int, buf, min_length: int | None = None) -> int:
        """Read ``length`` bytes at ``offset`` into the start of ``buf``; returns the bytes read: ``length``, or
        fewer when the file ends after ``min_length`` of them (a page-rounded read of a file whose size is not a page
        multiple).

        Short reads are continued; reaching the end of the file before ``min_length`` (default: ``length``) raises
        FormatError.

        Raises:
            ValueError: direct mode and an unaligned offset, length or buffer.
            FormatError: the file ends before ``offset + length``.
        """
        offset, length = int(offset), int(length)
        view = memoryview(buf).cast("B")
        if len(view) < length:
            raise ValueError(f"buffer of {len(view)} bytes is smaller than the {length} bytes to read")
        if length == 0:
            return 0
        if self.direct and (offset % ALIGNMENT or length % ALIGNMENT or not is_aligned(view)):
            raise ValueError(f"direct read of {length} bytes at {offset} into a buffer at "
                             f"{np.frombuffer(view, np.uint8).ctypes.data:#x}: offset, length and buffer address "
                             f"must be multiples of {ALIGNMENT}")
        done = 0
        while done < length:
            try:
                got = os.preadv(self.fd, [view[done:length]], offset + done)
            except OSError as e:
                if self.direct and e.errno == errno.EINVAL:
                    self._fall_back("EINVAL on read")
                    continue
                raise
            if got == 0:
                if min_length is not None and done >= min_length:
                    return done
                need = offset + (length if min_length is None else min_length)
                raise FormatError(f"{self.path} ends at byte {offset + done} but {need} are needed; "
                                  f"the file is truncated, {self.fix}")
            done += got
        return length

    def read(self, offset: int, length: int) -> np.ndarray:
        """``length`` bytes at ``offset`` in a new aligned uint8 array."""
        buf = aligned_empty(length)
        self.read_into(offset, length, buf)
        return buf

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "DirectReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
