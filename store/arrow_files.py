"""Arrow IPC files of per-minibatch rows (plans, pack indexes), opened memory-mapped, rows checked as read.

Every row (record batch) of these files starts with a ``checksum`` column: the
:func:`~diskgraph.store.checksums.row_checksum` of the values of its other columns.
:func:`decode_row` returns those values as numpy arrays (zero-copy views of the memory map) only
after the checksum matched, so a damaged byte is refused where it is read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from .checksums import read_checks, row_checksum
from .errors import FormatError


def open_ipc_file(path: Path, minibatches: int, what: str, fix: str, schema: pa.Schema | None = None,
                  file_bytes: int | None = None) -> pa.ipc.RecordBatchFileReader:
    """Open ``path`` memory-mapped and check it holds ``minibatches`` record batches (of ``schema``, and
    ``file_bytes`` long, when given).

    Raises:
        FormatError: unreadable, another size, schema or number of record batches; the message names
            ``what`` (e.g. "plan file") and ``fix`` (e.g. "sample the plan again").
    """
    if file_bytes is not None:
        try:
            size = Path(path).stat().st_size
        except FileNotFoundError:
            raise FormatError(f"{what} {path} is missing; {fix}") from None
        if size != file_bytes:
            raise FormatError(f"{what} {path} holds {size} bytes, the manifest {file_bytes}; the file is truncated or "
                              f"damaged, {fix}")
    try:
        r = pa.ipc.open_file(pa.memory_map(str(path), "r"))
    except (FileNotFoundError, pa.ArrowException, OSError, ValueError) as e:
        raise FormatError(f"{what} {path} cannot be read ({_first_line(e)}); {fix}") from None
    if r.num_record_batches != minibatches:
        raise FormatError(f"{what} {path} holds {r.num_record_batches} minibatches, the manifest {minibatches}; {fix}")
    if schema is not None and not r.schema.equals(schema):
        raise FormatError(f"{what} {path} has another schema than this format's; the file is damaged, {fix}")
    return r


def decode_row(reader: pa.ipc.RecordBatchFileReader, i: int, what: str, fix: str) -> list[np.ndarray]:
    """Row ``i``'s column values after ``checksum``, in schema order, as numpy arrays (scalar columns as
    1-element arrays, list columns as the list's values), after checking them against the row's checksum
    (the file's schema was checked when it was opened: :func:`open_ipc_file`).

    Raises:
        FormatError: the row cannot be decoded or does not match its checksum.
    """
    try:
        b = reader.get_batch(i)
        if b.num_rows != 1:
            raise ValueError(f"{b.num_rows} rows where one is expected")
        recorded = int(b.column(0).to_numpy()[0])
        cols = [(c.values if pa.types.is_list(c.type) else c).to_numpy() for c in b.columns[1:]]
    except (pa.ArrowException, ValueError, IndexError, KeyError, TypeError, OSError) as e:
        raise FormatError(f"{what} row {i} cannot be read ({_first_line(e)}); the file is damaged, {fix}") from None
    if read_checks() and row_checksum(cols) != recorded:
        raise FormatError(f"{what} row {i} does not match its checksum; the file is damaged, {fix}")
    return cols


def checksummed_record_batch(columns: list[np.ndarray], schema: pa.Schema) -> pa.RecordBatch:
    """A one-row record batch of ``schema``: its ``checksum`` column (the first) is the
    :func:`~diskgraph.store.checksums.row_checksum` of ``columns``, the values of the others (scalar columns as
    1-element arrays, list columns as the list's values), in schema order."""
    arrays = [pa.array([row_checksum(columns)], pa.uint64())]
    for field, values in zip(list(schema)[1:], columns):
        if pa.types.is_list(field.type):
            values = np.ascontiguousarray(values)
            arrays.append(pa.ListArray.from_arrays(pa.array(np.array([0, len(values)], dtype=np.int32)),
                                                   pa.array(values, type=field.type.value_type)))
        else:
            arrays.append(pa.array(values, field.type))
    return pa.record_batch(arrays, schema=schema)


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]
