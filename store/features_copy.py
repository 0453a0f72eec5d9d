"""Copy node features from a source into a dataset's row-chunked Zarr array, slice by slice.

Values are converted to the stored dtype (float32, float16 or bfloat16) and
checked for NaN/inf as they pass; memory holds one input slice, its converted
copy and one output chunk.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .progress import Progress, format_bytes, log
from .sources.features import STORED_DTYPES, FeatureSource
from .zarr_arrays import BFLOAT16, RowChunkWriter, itemsize, storage_dtype

CHUNK_BYTES = 16 << 20
"""Target bytes per feature chunk file (at least one row)."""


def float32_to_bfloat16(x: np.ndarray) -> np.ndarray:
    """float32 → bfloat16 bit patterns (uint16), rounding to nearest even; NaN stays NaN."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((u + (0x7FFF + ((u >> 16) & 1))) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded[nan] = 0x7FC0
    return rounded


def bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) → float32, exactly."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def nonfinite_mask(rows: np.ndarray, dtype: str) -> np.ndarray:
    """Boolean mask of NaN/inf entries; ``rows`` are stored values of logical ``dtype``."""
    if dtype == BFLOAT16:
        return (rows & 0x7F80) == 0x7F80
    return ~np.isfinite(rows)


def stored_feature_dtype(source: FeatureSource, requested: str | None) -> str:
    """The dtype the dataset will store for ``source`` (``requested`` overrides).

    Raises:
        InputError: an unsupported requested dtype, or integer features without a request.
    """
    if requested is not None:
        if requested not in STORED_DTYPES:
            raise InputError(f"--feature-dtype {requested} is not supported; use float32, float16 or bfloat16")
        return requested
    if source.dtype in STORED_DTYPES:
        return source.dtype
    if source.dtype == "float64":
        log.info("features: %s is float64; storing float32 (pass --feature-dtype to choose)", source.label)
        return "float32"
    raise InputError(
        f"{source.label} has dtype {source.dtype}; features are stored as float32, float16 or bfloat16: "
        "pass --feature-dtype float32 to convert them"
    )


def _convert(rows: np.ndarray, src: str, dst: str) -> np.ndarray:
    if src == dst:
        return rows
    if dst == BFLOAT16:
        return float32_to_bfloat16(rows.astype(np.float32, copy=False) if src != BFLOAT16 else rows)
    if src == BFLOAT16:
        return bfloat16_to_float32(rows).astype(dst, copy=False)
    return rows.astype(dst)


@dataclass
class FeatureCopyResult:
    """What :func:`copy_features` wrote: shape, dtype, chunk rows, checksum, bytes and seconds."""

    num_rows: int
    dim: int
    dtype: str
    chunk_rows: int
    sha256: str
    nbytes: int
    seconds: float


def copy_features(source: FeatureSource, out: Path, dtype: str, *, allow_nonfinite: bool,
                  memory_budget: int) -> FeatureCopyResult:
    """Copy ``source`` into a row-chunked array at ``out`` in slices of about ``memory_budget / 4`` bytes.

    Raises:
        InputError: a NaN/inf value (unless ``allow_nonfinite``), or rows of the wrong width.
    """
    t0 = time.perf_counter()
    row_bytes_out = source.dim * itemsize(dtype)
    row_bytes_in = source.dim * max(itemsize(source.dtype) if source.dtype in STORED_DTYPES else 8, 1)
    chunk_rows = max(1, min(CHUNK_BYTES, memory_budget // 8) // max(1, row_bytes_out))
    if source.num_rows:
        # the same number of chunks, evened out so the padded last chunk wastes little
        n_chunks = -(-source.num_rows // chunk_rows)
        chunk_rows = -(-source.num_rows // n_chunks)
    rows_per_slice = max(1, (memory_budget // 4) // max(1, row_bytes_in + row_bytes_out))
    writer = RowChunkWriter(out, source.num_rows, (source.dim,), dtype, chunk_rows)
    total_bytes = source.num_rows * row_bytes_out
    with Progress("features", total_bytes, "B") as bar:
        for start, rows in source.slices(rows_per_slice):
            if rows.ndim != 2 or rows.shape[1] != source.dim:
                raise InputError(f"{source.label} yields rows of shape {rows.shape[1:]} at row {start}, expected ({source.dim},); fix the input")
            conv = _convert(rows, source.dtype, dtype)
            if not allow_nonfinite:
                bad = nonfinite_mask(conv, dtype)
                if bad.any():
                    r, c = np.argwhere(bad)[0]
                    value = rows[r, c] if source.dtype != BFLOAT16 else bfloat16_to_float32(rows[r:r + 1, c])[0]
                    raise InputError(
                        f"{source.label} holds {value} at node {start + int(r)}, feature {int(c)}; features must be finite: "
                        "clean the input or pass --allow-nonfinite"
                    )
            writer.append(np.ascontiguousarray(conv, dtype=storage_dtype(dtype)))
            bar.update(conv.shape[0] * row_bytes_out)
    shape, sha = writer.finish()
    dt = time.perf_counter() - t0
    log.info("features: wrote %d x %d %s (%s) in %.1f s, %s/s", shape[0], shape[1], dtype, format_bytes(total_bytes),
             dt, format_bytes(total_bytes / max(dt, 1e-9)))
    return FeatureCopyResult(shape[0], shape[1], dtype, chunk_rows, sha, total_bytes, dt)
