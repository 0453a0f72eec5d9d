"""The output of ``diskgraph predict`` / ``diskgraph embed``: a Zarr v3 group with a manifest, and its reader.

Layout of an output directory ``OUT`` (M = number of output rows, one per requested node, in output order)::

    OUT/zarr.json            Zarr v3 group (attributes: a short description, the format and its version)
    OUT/node_ids/            int64 [M]      the node id of each row
    OUT/logits/              float32 [M, C] predict: the model's class scores (before softmax)
    OUT/predictions/         int64 [M]      predict: the predicted class of each row (argmax of its logits)
    OUT/embeddings/          float32 or float16 [M, H]   embed: the output of the requested layer
    OUT/manifest.json        written last (a directory without it is not an output)

Every array is an uncompressed little-endian Zarr v3 array in row chunks (:mod:`~diskgraph.store.zarr_arrays`:
about 8 MiB per chunk, the last one padded), so ``zarr.open_group(OUT)["logits"][:]`` reads it with zarr alone and
diskgraph reads row slices with positioned reads.

The manifest (``format`` ``diskgraph.inference``, ``format_version`` 1, self-checksummed,
:mod:`~diskgraph.store.manifest`) holds what the caller passes to :meth:`OutputWriter.finish` — ``kind``
(``predict``/``embed``), ``mode`` (``exact``/``sampled``), ``run`` (the training run: ``{"path", ...}``), ``model``
(its configuration), ``dataset`` (its path and checksum), ``nodes`` (the node set requested), ``layer``, ``dtype``
and a ``summary`` (seconds, bytes read, read amplification, peak memory) — plus, added by the writer:

* ``num_rows``: M;
* ``arrays``: ``{NAME: {"shape": [M, ...], "dtype": "float32", "chunk_rows": R, "sha256": "<hex>"}}`` — the sha256
  covers the array's logical bytes in C order (no padding), re-checked by :meth:`InferenceOutput.verify`.

:func:`write_parquet` exports an output as one Parquet table (``node_id`` int64, then ``prediction`` int64 and
``logits`` fixed_size_list<float32>[C], or ``embedding`` fixed_size_list<float16|float32>[H]), streaming row slices.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from .errors import FormatError, InputError
from .files import AppendFile, dir_size, fsync_dir
from .manifest import MANIFEST_NAME, read_manifest, write_manifest
from .zarr_arrays import _ZARR_DTYPES, BFLOAT16, RawArray, RowChunkWriter, storage_dtype, write_group

INFERENCE_FORMAT = "diskgraph.inference"
"""The manifest ``format`` of an inference output."""

INFERENCE_VERSION = 1
"""The manifest ``format_version`` this module writes and reads."""

CHUNK_BYTES = 8 << 20
"""Default bytes per row chunk of every array (one chunk per array is what a writer holds in memory)."""

REQUIRED_ARRAYS = {"predict": ("node_ids", "logits", "predictions"), "embed": ("node_ids", "embeddings")}
"""The arrays each ``kind`` of output must hold."""

_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_FIX = "run the inference again (diskgraph predict or diskgraph embed)"


def _default_chunk_rows(num_rows: int, row_bytes: int) -> int:
    return max(1, min(max(1, num_rows), CHUNK_BYTES // max(1, row_bytes)))


class OutputWriter:
    """Write the arrays of an inference output row slice by row slice, then its manifest.

    Args:
        directory: an existing, empty directory (the caller's :class:`~diskgraph.store.atomic.AtomicDirectory`
            temporary path); the output is complete only after :meth:`finish`.
        num_rows: M, the number of rows every array will have.
        columns: array name → ``(row_shape, dtype)``, e.g. ``{"node_ids": ((), "int64"), "logits": ((C,),
            "float32"), "predictions": ((), "int64")}`` or ``{"node_ids": ((), "int64"), "embeddings": ((H,),
            "float16")}``.
        chunk_rows: rows per chunk file of every array (default: about :data:`CHUNK_BYTES` per chunk for each
            array, at least 1, at most ``num_rows``).

    Memory: one chunk per column (``chunk_rows * row_bytes`` each, about 8 MiB by default).

    Raises:
        ValueError: a bad column name, dtype or row shape, or ``directory`` missing or not empty.
    """

    def __init__(self, directory: str | os.PathLike, num_rows: int, columns: dict[str, tuple[tuple[int, ...], str]],
                 chunk_rows: int | None = None):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise ValueError(f"{self.directory} is not an existing directory")
        if next(self.directory.iterdir(), None) is not None:
            raise ValueError(f"{self.directory} is not empty")
        self.num_rows = int(num_rows)
        if self.num_rows < 0:
            raise ValueError(f"num_rows {num_rows} is negative")
        if not columns:
            raise ValueError("no columns")
        self.columns = {}
        self._writers: dict[str, RowChunkWriter] = {}
        for name, (row_shape, dtype) in columns.items():
            if not _NAME.match(name):
                raise ValueError(f"column name {name!r} is not letters, digits and underscores")
            row_shape = tuple(int(s) for s in row_shape)
            try:
                sdt = storage_dtype(dtype)
            except TypeError:
                raise ValueError(f"column {name}: unknown dtype {dtype!r}") from None
            if dtype != BFLOAT16 and sdt.name not in _ZARR_DTYPES:
                raise ValueError(f"column {name}: dtype {dtype!r} has no Zarr v3 data type")
            dtype = BFLOAT16 if dtype == BFLOAT16 else sdt.name
            row_bytes = int(np.prod(row_shape, dtype=np.int64)) * sdt.itemsize if row_shape else sdt.itemsize
            rows = _default_chunk_rows(self.num_rows, row_bytes) if chunk_rows is None else max(1, int(chunk_rows))
            self.columns[name] = (row_shape, dtype)
            self._writers[name] = RowChunkWriter(self.directory / name, self.num_rows, row_shape, dtype, rows)
        self.rows = 0
        self._done = False

    def append(self, **rows: np.ndarray) -> None:
        """Append the next rows of every column (keyword = column name), all with the same leading length.

        Values are converted to the column's dtype when numpy casts them within their kind (float64 → float16,
        int32 → int64); anything else is refused.

        Raises:
            ValueError: a column missing or unknown, lengths that differ, a wrong row shape or dtype kind, more rows
                than ``num_rows``, or the writer already finished or aborted.
        """
        if self._done:
            raise ValueError("the output writer is closed")
        if set(rows) != set(self.columns):
            raise ValueError(f"append needs exactly the columns {sorted(self.columns)}, got {sorted(rows)}")
        arrays = {}
        n = None
        for name, values in rows.items():
            row_shape, dtype = self.columns[name]
            sdt = storage_dtype(dtype)
            values = np.asarray(values)
            if values.ndim < 1 or values.shape[1:] != row_shape:
                raise ValueError(f"column {name}: rows of shape {values.shape[1:]}, expected {row_shape}")
            if n is None:
                n = values.shape[0]
            elif values.shape[0] != n:
                raise ValueError(f"columns have different lengths ({n} and {values.shape[0]} for {name})")
            if not np.can_cast(values.dtype, sdt, casting="same_kind"):
                raise ValueError(f"column {name}: dtype {values.dtype} cannot become {dtype}")
            arrays[name] = values.astype(sdt, copy=False)
        if self.rows + n > self.num_rows:
            raise ValueError(f"{self.rows + n} rows appended, more than the {self.num_rows} declared")
        if n == 0:
            return
        for name, values in arrays.items():
            self._writers[name].append(values)
        self.rows += n

    def finish(self, body: dict) -> dict:
        """Finish every array, make the directory a Zarr v3 group and write ``manifest.json`` (last).

        Args:
            body: the manifest's fields (``kind`` — ``predict`` or ``embed`` — and ``mode``, ``run``, ``model``,
                ``dataset``, ``nodes``, ``layer``, ``dtype``, ``summary``); ``num_rows`` and ``arrays`` are set here.

        Returns:
            the manifest written.

        Raises:
            ValueError: fewer rows than ``num_rows`` appended, a ``kind`` other than predict/embed, or the arrays that
                kind needs (:data:`REQUIRED_ARRAYS`) missing.
        """
        if self._done:
            raise ValueError("the output writer is closed")
        if self.rows != self.num_rows:
            raise ValueError(f"{self.rows} rows appended of the {self.num_rows} declared")
        kind = body.get("kind")
        if kind not in REQUIRED_ARRAYS:
            raise ValueError(f"body kind {kind!r} is not one of {sorted(REQUIRED_ARRAYS)}")
        missing = [a for a in REQUIRED_ARRAYS[kind] if a not in self.columns]
        if missing:
            raise ValueError(f"a {kind} output needs the arrays {missing}")
        arrays = {}
        for name, w in self._writers.items():
            shape, sha = w.finish()
            arrays[name] = {"shape": list(shape), "dtype": w.dtype, "chunk_rows": w.chunk_rows, "sha256": sha}
        self._done = True
        write_group(self.directory, {"description": f"diskgraph {kind} output: {', '.join(arrays)} "
                                                    f"({self.num_rows} rows, one per node)",
                                     "format": INFERENCE_FORMAT, "format_version": INFERENCE_VERSION})
        return write_manifest(self.directory, INFERENCE_FORMAT, INFERENCE_VERSION,
                              {**body, "num_rows": self.num_rows, "arrays": arrays})

    def abort(self) -> None:
        """Stop without finishing (the caller removes the directory); the buffers are released."""
        self._done = True
        self._writers = {}


class InferenceOutput:
    """An inference output directory, opened read-only (see the module docstring for the layout).

    Attributes:
        path: the directory.
        manifest: the parsed ``manifest.json``.
        kind: ``predict`` or ``embed``.
        num_rows: M, the rows of every array.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.manifest = read_manifest(self.path, INFERENCE_FORMAT, INFERENCE_VERSION, checksum_since=1)
        mfile = self.path / MANIFEST_NAME
        m = self.manifest
        num_rows, records, kind = m.get("num_rows"), m.get("arrays"), m.get("kind")
        if isinstance(num_rows, bool) or not isinstance(num_rows, int) or num_rows < 0:
            raise FormatError(f"{mfile} has no whole-number num_rows; the output is damaged, {_FIX}")
        if kind not in REQUIRED_ARRAYS:
            raise FormatError(f"{mfile} has kind {kind!r}, not predict or embed; the output is damaged, {_FIX}")
        if not isinstance(records, dict):
            raise FormatError(f"{mfile} has no arrays table; the output is damaged, {_FIX}")
        missing = [a for a in REQUIRED_ARRAYS[kind] if a not in records]
        if missing:
            raise FormatError(f"{mfile} lists no arrays {missing} (a {kind} output has them); the output is damaged, "
                              f"{_FIX}")
        self.kind: str = kind
        self.num_rows: int = num_rows
        self.array_records: dict[str, dict] = records
        self._arrays: dict[str, RawArray] = {}
        for name, rec in records.items():
            if not isinstance(name, str) or not _NAME.match(name) or not isinstance(rec, dict):
                raise FormatError(f"{mfile} has a bad entry arrays.{name}; the output is damaged, {_FIX}")
            arr = RawArray(self.path / name)
            meta = arr.path / "zarr.json"
            for field, have, want in (("shape", list(arr.shape), rec.get("shape")),
                                      ("dtype", arr.dtype, rec.get("dtype")),
                                      ("chunk_rows", arr.chunk_shape[0], rec.get("chunk_rows"))):
                if have != want:
                    raise FormatError(f"{meta} records {field} {have} but the manifest's arrays.{name}.{field} is "
                                      f"{want}; the output is damaged, {_FIX}")
            if arr.shape[0] != num_rows:
                raise FormatError(f"{meta} has {arr.shape[0]} rows but the manifest's num_rows is {num_rows}; the "
                                  f"output is damaged, {_FIX}")
            if not isinstance(rec.get("sha256"), str):
                raise FormatError(f"{mfile} has no arrays.{name}.sha256; the output is damaged, {_FIX}")
            for i in range(arr.num_chunks):
                arr._check_chunk(i)
            self._arrays[name] = arr

    def __repr__(self) -> str:
        return f"InferenceOutput({str(self.path)!r}, kind={self.kind!r}, num_rows={self.num_rows})"

    def array(self, name: str) -> RawArray:
        """The stored array ``name`` (``node_ids``, ``logits``, ``predictions`` or ``embeddings``)."""
        try:
            return self._arrays[name]
        except KeyError:
            raise KeyError(f"{self.path} has no array {name!r} (it has {self.array_names})") from None

    @property
    def array_names(self) -> list[str]:
        """Names of the stored arrays, in manifest order."""
        return list(self._arrays)

    def read(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``[start, stop)`` of array ``name`` (``stop`` None: to the end), read with positioned reads.

        Returns:
            ``[stop - start, *row_shape]`` in the array's dtype (clamped to ``0..num_rows``).
        """
        arr = self.array(name)
        return arr.read_rows(int(start), arr.shape[0] if stop is None else int(stop))

    @property
    def nbytes(self) -> int:
        """Logical bytes of all arrays (no chunk padding)."""
        return sum(a.nbytes for a in self._arrays.values())

    def disk_bytes(self) -> int:
        """Bytes of the directory's files on disk (apparent size, padding and metadata included)."""
        return dir_size(self.path)

    def verify(self, slice_bytes: int = 32 << 20) -> list[str]:
        """Re-read every array (slices of about ``slice_bytes``) and compare its sha256 with the manifest.

        Returns:
            one sentence per array whose bytes differ from what was written (or cannot be read); empty when sound.
        """
        problems = []
        for name, arr in self._arrays.items():
            try:
                sha = arr.sha256(slice_bytes)
            except (FormatError, OSError) as e:
                problems.append(f"{name}: {e}")
                continue
            if sha != self.array_records[name]["sha256"]:
                problems.append(f"{arr.path} does not match the manifest's arrays.{name}.sha256 (its data changed or "
                                f"is damaged); {_FIX}")
        return problems


def open_output(path: str | os.PathLike) -> InferenceOutput:
    """Open the inference output at ``path`` (cheap: reads the manifest, checks every array's metadata and files).

    Raises:
        FormatError: not an inference output, an edited manifest, a newer format version, an array whose metadata
            disagrees with the manifest, or a missing or truncated chunk file — one sentence naming the file.
    """
    return InferenceOutput(path)


def parquet_schema(output: InferenceOutput):
    """The Arrow schema of :func:`write_parquet`'s table for ``output``."""
    import pyarrow as pa

    def row_list(name: str):
        arr = output.array(name)
        width = int(np.prod(arr.row_shape)) if arr.row_shape else 1
        return pa.field(name, pa.list_(pa.from_numpy_dtype(arr.storage_dtype), width))

    fields = [pa.field("node_id", pa.int64())]
    if output.kind == "predict":
        fields += [pa.field("prediction", pa.int64()), row_list("logits")]
    else:
        fields += [row_list("embeddings").with_name("embedding")]
    meta = {"diskgraph.format": INFERENCE_FORMAT, "diskgraph.kind": output.kind, "diskgraph.source": str(output.path)}
    return pa.schema(fields, metadata=meta)


def write_parquet(output: InferenceOutput, path: str | os.PathLike, rows_per_group: int = 65536) -> int:
    """Export ``output`` as one Parquet file at ``path``, streaming ``rows_per_group`` rows at a time.

    Columns: ``node_id`` int64, then for ``predict`` ``prediction`` int64 and ``logits``
    fixed_size_list<float32>[C]; for ``embed`` ``embedding`` fixed_size_list<float16|float32>[H]. One row group per
    slice; memory is one slice of every column (``rows_per_group * row_bytes``). The file is written under a hidden
    temporary sibling and renamed to ``path`` at the end (an interrupted export leaves nothing at ``path``; an
    existing file there is replaced).

    Returns:
        the bytes of the file written.

    Raises:
        InputError: ``path`` is an existing directory.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if path.is_dir():
        raise InputError(f"cannot write the Parquet table to {path}: it is a directory; choose another --parquet file")
    rows_per_group = max(1, int(rows_per_group))
    schema = parquet_schema(output)
    columns = ["node_ids", "predictions", "logits"] if output.kind == "predict" else ["node_ids", "embeddings"]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.diskgraph-tmp-{os.getpid()}")
    try:
        with AppendFile(tmp) as f:
            writer = pq.ParquetWriter(pa.PythonFile(f, mode="w"), schema)
            try:
                for start in range(0, output.num_rows, rows_per_group):
                    stop = min(start + rows_per_group, output.num_rows)
                    arrays = []
                    for name, field in zip(columns, schema):
                        block = output.read(name, start, stop)
                        if isinstance(field.type, pa.FixedSizeListType):
                            flat = pa.array(np.ascontiguousarray(block).reshape(-1), type=field.type.value_type)
                            arrays.append(pa.FixedSizeListArray.from_arrays(flat, field.type.list_size))
                        else:
                            arrays.append(pa.array(block, type=field.type))
                    writer.write_table(pa.Table.from_arrays(arrays, schema=schema), row_group_size=rows_per_group)
            finally:
                writer.close()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path.stat().st_size
