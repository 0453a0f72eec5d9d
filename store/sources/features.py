"""Node-feature inputs, read in row slices.

A :class:`FeatureSource` yields ``(first_row, rows)`` with ``rows`` of shape
``[k, dim]`` in the source's storage dtype. Supported: ``.npy`` (memory-mapped),
Zarr arrays (v2 or v3, any codecs), Parquet (one fixed-size-list column or one
column per dimension), raw little-endian binary with a given dtype and
dimension, ``.npz`` members (streamed) and generated rows.

Dtypes: float32, float16 and bfloat16 are stored as they are; float64 is
narrowed to float32; integer features need an explicit ``--feature-dtype``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..errors import InputError
from ..zarr_arrays import BFLOAT16, storage_dtype
from .npy import NpzMember, advise_sequential, open_npy, require_file
from .tables import part_files

STORED_DTYPES = ("float32", "float16", BFLOAT16)
"""Feature dtypes a dataset can hold."""


class FeatureSource:
    """Base of feature inputs.

    Attributes:
        label: how messages name this input.
        num_rows: number of rows (nodes).
        dim: features per row.
        dtype: the logical dtype of the stored values (``bfloat16`` for uint16 bit patterns).
    """

    label = "features"
    num_rows: int = 0
    dim: int = 0
    dtype: str = "float32"

    array = None
    """An array-like ``[num_rows, dim]`` sliced by rows (memmap, Zarr array), for sources that have one."""

    def slices(self, rows_per_slice: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first_row, rows)``, rows of shape ``[k, dim]``, in order, k ≤ rows_per_slice."""
        for s in range(0, self.num_rows, rows_per_slice):
            yield s, np.asarray(self.array[s:s + rows_per_slice])

    def describe(self) -> dict:
        """What to record about this input in a manifest."""
        return {"kind": type(self).__name__}


def _logical_dtype(dtype: np.dtype, attrs: dict | None = None) -> str:
    if attrs and attrs.get("diskgraph_dtype") == BFLOAT16 and dtype == np.uint16:
        return BFLOAT16
    return np.dtype(dtype).name


def _check_2d(shape: tuple[int, ...], label: str) -> None:
    if len(shape) != 2:
        raise InputError(f"{label} has shape {tuple(shape)}; features must be a 2-D array [num_nodes, dim]: reshape it")


class NpyFeatures(FeatureSource):
    """Features in a ``.npy`` file, memory-mapped and read in row slices."""

    def __init__(self, path: str | os.PathLike, option: str = "--features"):
        self.path = require_file(path, "features", option)
        self.label = f"features file {self.path}"
        self.array = open_npy(self.path, "features", option)
        advise_sequential(self.array)
        _check_2d(self.array.shape, self.label)
        self.num_rows, self.dim = (int(s) for s in self.array.shape)
        self.dtype = _logical_dtype(self.array.dtype)

    def describe(self) -> dict:
        return {"kind": "npy", "path": str(self.path.absolute()), "dtype": self.dtype}


class NpzFeatures(FeatureSource):
    """Features stored as a member of an ``.npz`` archive, streamed row slice by row slice."""

    def __init__(self, path: str | os.PathLike, key: str = "features"):
        self.path = Path(path)
        self.key = key
        self.label = f"member {key!r} of npz file {self.path}"
        self.member = NpzMember(self.path, key)
        _check_2d(self.member.shape, self.label)
        if self.member.fortran:
            raise InputError(f"{self.label} is stored in Fortran order; re-save it in C order (np.ascontiguousarray)")
        self.num_rows, self.dim = (int(s) for s in self.member.shape)
        self.dtype = _logical_dtype(self.member.dtype)

    def slices(self, rows_per_slice: int):
        row_bytes = self.dim * self.member.dtype.itemsize
        f = self.member.stream(0)
        try:
            for s in range(0, self.num_rows, rows_per_slice):
                k = min(rows_per_slice, self.num_rows - s)
                yield s, self.member.read_exact(f, k * row_bytes).reshape(k, self.dim)
        finally:
            f.close()

    def describe(self) -> dict:
        return {"kind": "npz", "path": str(self.path.absolute()), "key": self.key, "dtype": self.dtype}


class ZarrFeatures(FeatureSource):
    """Features in a Zarr array (any version and codecs the zarr package reads)."""

    def __init__(self, path: str | os.PathLike, option: str = "--features"):
        import zarr

        self.path = require_file(path, "features", option)
        self.label = f"features Zarr array {self.path}"
        try:
            self.array = zarr.open_array(str(self.path), mode="r")
        except Exception as e:  # zarr raises several types for a directory that is not an array
            raise InputError(f"{self.label} cannot be opened as a Zarr array ({type(e).__name__}); pass the array's directory") from None
        _check_2d(self.array.shape, self.label)
        self.num_rows, self.dim = (int(s) for s in self.array.shape)
        self.dtype = _logical_dtype(np.dtype(self.array.dtype), dict(self.array.attrs))

    def describe(self) -> dict:
        return {"kind": "zarr", "path": str(self.path.absolute()), "dtype": self.dtype}


class RawFeatures(FeatureSource):
    """Features in a raw little-endian binary file of ``[num_rows, dim]`` values of ``dtype``."""

    def __init__(self, path: str | os.PathLike, dtype: str | None, dim: int | None, option: str = "--features"):
        self.path = require_file(path, "features", option)
        self.label = f"raw features file {self.path}"
        if dtype is None or dim is None:
            raise InputError(f"{self.label} needs its value type and row length; pass --dtype (float32, float16 or bfloat16) and --dim")
        if dim <= 0:
            raise InputError(f"--dim {dim} is not a positive row length; pass the number of features per node")
        try:
            sdt = storage_dtype(dtype).newbyteorder("<")
        except TypeError:
            raise InputError(f"--dtype {dtype} is not a known value type; use float32, float16 or bfloat16") from None
        size = self.path.stat().st_size
        row_bytes = dim * sdt.itemsize
        if size % row_bytes:
            raise InputError(
                f"{self.label} holds {size} bytes, not a whole number of {dim}-value {dtype} rows ({row_bytes} bytes each); "
                "it is truncated or --dtype/--dim are wrong"
            )
        self.num_rows, self.dim, self.dtype = size // row_bytes, int(dim), dtype
        self.array = (np.memmap(self.path, dtype=sdt, mode="r", shape=(self.num_rows, self.dim))
                      if self.num_rows else np.zeros((0, self.dim), sdt))

    def describe(self) -> dict:
        return {"kind": "raw", "path": str(self.path.absolute()), "dtype": self.dtype, "dim": self.dim}


class ParquetFeatures(FeatureSource):
    """Features in Parquet: one list column (fixed-size) or one float column per dimension.

    With ``column`` the named list column is used; without it, a file whose
    only column is a list uses that, otherwise every floating-point column in
    file order is one dimension. Rows are nodes in id order.
    """

    def __init__(self, path: str | os.PathLike, column: str | None = None, option: str = "--features"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.path = require_file(path, "features", option)
        self.files, fmt = part_files(self.path, "features", option, "parquet")
        self.label = f"features {'directory' if self.path.is_dir() else 'file'} {self.path}"
        try:
            schema = pq.ParquetFile(self.files[0]).schema_arrow
            self.num_rows = sum(pq.ParquetFile(f).metadata.num_rows for f in self.files)
        except (pa.ArrowInvalid, OSError) as e:
            raise InputError(f"{self.label} is not a readable Parquet file ({str(e).splitlines()[0]}); re-create it") from None
        list_cols = [f.name for f in schema if pa.types.is_list(f.type) or pa.types.is_fixed_size_list(f.type)
                     or pa.types.is_large_list(f.type)]
        if column is None and len(schema) == 1 and list_cols:
            column = list_cols[0]
        if column is not None:
            if column not in schema.names:
                raise InputError(f"{self.label} has no column {column!r} (it has: {', '.join(schema.names[:8])}); name it with --feature-column")
            t = schema.field(column).type
            if column not in list_cols:
                raise InputError(f"column {column!r} of {self.label} has type {t}, not a list of values; name a list column or drop --feature-column to use one column per dimension")
            self.columns = [column]
            vt = t.value_type
            self.dim = t.list_size if pa.types.is_fixed_size_list(t) else self._first_list_len(pq, column)
        else:
            self.columns = [f.name for f in schema if pa.types.is_floating(f.type)]
            if not self.columns:
                raise InputError(f"{self.label} has no floating-point columns; store one column per dimension or a list column (--feature-column)")
            vt = schema.field(self.columns[0]).type
            self.dim = len(self.columns)
        self.dtype = np.dtype(vt.to_pandas_dtype()).name

    def _first_list_len(self, pq, column: str) -> int:
        for batch in pq.ParquetFile(self.files[0]).iter_batches(batch_size=1, columns=[column]):
            return len(batch.column(0)[0])
        return 0

    def slices(self, rows_per_slice: int):
        import pyarrow as pa
        import pyarrow.parquet as pq

        start = 0
        for f in self.files:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=rows_per_slice, columns=self.columns):
                k = batch.num_rows
                if len(self.columns) == 1 and not pa.types.is_floating(batch.schema.field(0).type):
                    col = batch.column(0)
                    if col.null_count:
                        raise InputError(f"column {self.columns[0]!r} of {f} has empty rows; every node needs a feature vector")
                    values = col.flatten().to_numpy(zero_copy_only=False)
                    if values.size != k * self.dim:
                        raise InputError(f"column {self.columns[0]!r} of {f} holds lists of different lengths; every feature vector must have {self.dim} values")
                    rows = values.reshape(k, self.dim)
                else:
                    rows = np.empty((k, self.dim), dtype=self.dtype)
                    for j in range(self.dim):
                        rows[:, j] = batch.column(j).to_numpy(zero_copy_only=False)
                yield start, rows
                start += k

    def describe(self) -> dict:
        return {"kind": "parquet", "path": str(self.path.absolute()), "columns": self.columns[:1] if len(self.columns) == 1 else f"{len(self.columns)} columns", "dtype": self.dtype}


class GeneratedFeatures(FeatureSource):
    """Rows produced by a function (the synthetic generator): ``make(start, count) -> [count, dim]``."""

    def __init__(self, num_rows: int, dim: int, dtype: str, make: Callable[[int, int], np.ndarray],
                 label: str = "generated features", info: dict | None = None):
        self.num_rows, self.dim, self.dtype, self.make = int(num_rows), int(dim), dtype, make
        self.label = label
        self.info = info or {}

    def slices(self, rows_per_slice: int):
        for s in range(0, self.num_rows, rows_per_slice):
            yield s, self.make(s, min(rows_per_slice, self.num_rows - s))

    def describe(self) -> dict:
        return {"kind": "generated", **self.info}


def open_features(path: str | os.PathLike, fmt: str | None = None, dtype: str | None = None, dim: int | None = None,
                  column: str | None = None, option: str = "--features") -> FeatureSource:
    """Open a feature input by format (``npy``, ``zarr``, ``parquet``, ``raw``; None infers it)."""
    p = require_file(path, "features", option)
    if fmt is None:
        name = p.name.lower()
        if name.endswith(".npy"):
            fmt = "npy"
        elif (p / "zarr.json").exists() or (p / ".zarray").exists() or name.endswith(".zarr"):
            fmt = "zarr"
        elif name.endswith((".parquet", ".pq")) or p.is_dir():
            fmt = "parquet"
        elif name.endswith((".bin", ".raw", ".f32", ".f16", ".bf16")) or dtype is not None:
            fmt = "raw"
        else:
            raise InputError(f"cannot tell the format of features file {p} from its name; pass --features-format npy, zarr, parquet or raw")
    if fmt == "npy":
        return NpyFeatures(p, option)
    if fmt == "zarr":
        return ZarrFeatures(p, option)
    if fmt == "parquet":
        return ParquetFeatures(p, column, option)
    if fmt == "raw":
        return RawFeatures(p, dtype, dim, option)
    raise InputError(f"--features-format {fmt} is not a known feature format; use npy, zarr, parquet or raw")
