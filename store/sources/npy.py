"""``.npy`` files and ``.npz`` members, opened without loading them.

:func:`open_npy` memory-maps a ``.npy`` after checking its header and size (a
truncated file is refused with one sentence rather than a numpy traceback).
:class:`NpzMember` streams one array out of an ``.npz`` (compressed or not)
sequentially, so even a compressed archive is read in bounded memory.
"""

from __future__ import annotations

import mmap
import os
import zipfile
from pathlib import Path

import numpy as np

from ..errors import InputError


def require_file(path: str | os.PathLike, what: str, option: str) -> Path:
    """``path`` as a Path, or an InputError naming ``option`` when it does not exist."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} file {p} does not exist; check the path given to {option}")
    return p


def _read_header(f, path: Path, what: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    except Exception:
        raise InputError(f"{what} file {path} is not a valid .npy file (its header cannot be read); re-save it with numpy.save") from None
    if dtype.hasobject:
        raise InputError(f"{what} file {path} holds Python objects (dtype {dtype}); save a numeric array instead")
    return tuple(shape), bool(fortran), dtype


def open_npy(path: str | os.PathLike, what: str, option: str) -> np.ndarray:
    """Memory-map the ``.npy`` at ``path`` read-only after checking it is complete.

    Raises:
        InputError: the file is missing, not a .npy, or shorter than its header promises.
    """
    p = require_file(path, what, option)
    with open(p, "rb") as f:
        shape, fortran, dtype = _read_header(f, p, what)
        offset = f.tell()
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    have = p.stat().st_size - offset
    if have < need:
        raise InputError(
            f"{what} file {p} is truncated: its header promises {need} bytes of data for shape {shape} "
            f"but the file holds {have}; re-create the file"
        )
    if need == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(p, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def advise_sequential(array: np.ndarray) -> None:
    """Tell the kernel a memory-mapped input is read front to back (once per pass).

    Readahead then reads ahead of the cursor only, and pages behind it are
    dropped first, so a pass over a file larger than a memory cap does not read
    pages twice. A no-op for arrays that are not memory maps.
    """
    m = getattr(array, "_mmap", None)
    if m is not None and hasattr(m, "madvise") and hasattr(mmap, "MADV_SEQUENTIAL"):
        m.madvise(mmap.MADV_SEQUENTIAL)


class NpzMember:
    """One array inside an ``.npz`` archive, read as a sequential stream.

    Attributes:
        shape, dtype, fortran: from the member's .npy header.
    """

    def __init__(self, path: str | os.PathLike, key: str):
        self.path = Path(path)
        self.key = key
        self._zip = zipfile.ZipFile(self.path)
        self._name = key + ".npy"
        with self._zip.open(self._name) as f:
            self.shape, self.fortran, self.dtype = _read_header(f, self.path, f"member {key!r} of")
            self._data_offset = f.tell()

    def stream(self, byte_offset: int = 0):
        """A file object positioned ``byte_offset`` bytes into the array's data."""
        f = self._zip.open(self._name)
        f.seek(self._data_offset + byte_offset)
        return f

    def read_exact(self, f, nbytes: int) -> np.ndarray:
        """Read exactly ``nbytes`` from stream ``f`` as a 1-D array of this member's dtype."""
        buf = np.empty(nbytes // self.dtype.itemsize, dtype=self.dtype)
        view = memoryview(buf).cast("B")
        got = 0
        while got < nbytes:
            n = f.readinto(view[got:])
            if not n:
                raise InputError(f"member {self.key!r} of {self.path} is truncated; re-create the archive")
            got += n
        return buf

    def read_all(self) -> np.ndarray:
        """The whole member in memory (for node-sized arrays: labels, split indices)."""
        with self._zip.open(self._name) as f:
            return np.lib.format.read_array(f, allow_pickle=False)

    def close(self) -> None:
        self._zip.close()


def npz_keys(path: str | os.PathLike) -> list[str]:
    """Names of the arrays stored in an ``.npz`` archive."""
    p = require_file(path, "npz", "--npz")
    try:
        with zipfile.ZipFile(p) as z:
            return [n[:-4] for n in z.namelist() if n.endswith(".npy")]
    except zipfile.BadZipFile:
        raise InputError(f"npz file {p} is not a valid .npz archive (it may be truncated); re-create it with numpy.savez") from None
