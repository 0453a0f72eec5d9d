"""Arrow IPC files of per-minibatch rows (plans, pack indexes), opened memory-mapped."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from .errors import FormatError


def open_ipc_file(path: Path, minibatches: int, what: str, fix: str) -> pa.ipc.RecordBatchFileReader:
    """Open ``path`` memory-mapped and check it holds ``minibatches`` record batches.

    Raises:
        FormatError: unreadable, or a different number of record batches; the
            message names ``what`` (e.g. "plan file") and ``fix`` (e.g. "sample the plan again").
    """
    try:
        r = pa.ipc.open_file(pa.memory_map(str(path), "r"))
    except (FileNotFoundError, pa.ArrowInvalid, OSError) as e:
        raise FormatError(f"{what} {path} cannot be read ({str(e).splitlines()[0]}); {fix}") from None
    if r.num_record_batches != minibatches:
        raise FormatError(f"{what} {path} holds {r.num_record_batches} minibatches, the manifest {minibatches}; {fix}")
    return r
