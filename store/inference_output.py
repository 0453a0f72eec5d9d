"""The output of ``diskgraph predict`` / ``diskgraph embed``: a Zarr v3 group with a manifest, and its reader.

Layout of an output directory ``OUT`` (M = number of output rows, one per requested node, in output order)::

    OUT/zarr.json            Zarr v3 group (attributes: a short description, the format and its version)
    OUT/node_ids/            int64 [M]      the node id of each row
    OUT/<predict arrays>     predict: per task, see the table below
    OUT/embeddings/          float32 or float16 [M, H]   embed: the output of the requested layer (any task)
    OUT/manifest.json        written last (a directory without it is not an output)

The arrays of a ``predict`` output depend on the run's task (the kind of its dataset's labels,
:mod:`~diskgraph.store.label_kinds`); :data:`PREDICT_ARRAYS` is the one place that declares them:

==============  ==================================  ===============================================================
task            array, dtype, shape                 meaning
==============  ==================================  ===============================================================
classification  ``logits`` float32 [M, C]           the model's class scores (before softmax)
                ``predictions`` int64 [M]           the predicted class: argmax of the row's logits
multilabel      ``logits`` float32 [M, C]           one score per label (before the sigmoid)
                ``predictions`` uint8 [M, C]        1 where the label's logit is > 0 (sigmoid > 0.5), else 0
regression      ``predictions`` float32 [M] or      the model's outputs, shaped as the dataset's targets ([M] for
                [M, T]                              ``[N]`` targets, [M, T] for ``[N, T]``); there are no logits
==============  ==================================  ===============================================================

Every array is an uncompressed little-endian Zarr v3 array in row chunks (:mod:`~diskgraph.store.zarr_arrays`:
about 8 MiB per chunk, the last one padded), so ``zarr.open_group(OUT)["predictions"][:]`` reads it with zarr alone
and diskgraph reads row slices with positioned reads.

The manifest (``format`` ``diskgraph.inference``, ``format_version`` 2, self-checksummed,
:mod:`~diskgraph.store.manifest`) holds what the caller passes to :meth:`OutputWriter.finish` — ``kind``
(``predict``/``embed``), ``mode`` (``exact``/``sampled``), ``task`` (:func:`output_task`: ``{"kind", "num_outputs"}``,
plus ``"target_shape"`` for regression), ``run`` (the training run: ``{"path", ...}``), ``model`` (its
configuration), ``dataset`` (its path and checksum), ``nodes`` (the node set requested), ``layer``, ``dtype`` and a
``summary`` (seconds, bytes read, read amplification, peak memory) — plus, added by the writer:

* ``num_rows``: M;
* ``arrays``: ``{NAME: {"shape": [M, ...], "dtype": "float32", "chunk_rows": R, "sha256": "<hex>"}}`` — the sha256
  covers the array's logical bytes in C order (no padding), re-checked by :meth:`InferenceOutput.verify`.

Versions: 1 (before label kinds) records no ``task``; its outputs are read as classification (``logits`` [M, C] and
``predictions`` int64 [M], as version 2 writes them). Version 2 adds ``task``. Newer versions are refused.

:func:`write_parquet` exports an output as one Parquet table: ``node_id`` int64, then for predict ``prediction``
(int64 for classification, fixed_size_list<uint8>[C] for multilabel, float32 or fixed_size_list<float32>[T] for
regression) and, where the task has logits, ``logits`` fixed_size_list<float32>[C]; for embed ``embedding``
fixed_size_list<float16|float32>[H]. Row slices are streamed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from .errors import FormatError, InputError
from .files import AppendFile, dir_size, fsync_dir
from .label_kinds import CLASSIFICATION, MULTILABEL, REGRESSION, TASKS
from .manifest import MANIFEST_NAME, read_manifest, write_manifest
from .zarr_arrays import _ZARR_DTYPES, BFLOAT16, RawArray, RowChunkWriter, storage_dtype, write_group

INFERENCE_FORMAT = "diskgraph.inference"
"""The manifest ``format`` of an inference output."""

INFERENCE_VERSION = 2
"""The manifest ``format_version`` this module writes (it reads 1 and 2; see the module docstring)."""

CHUNK_BYTES = 8 << 20
"""Default bytes per row chunk of every array (one chunk per array is what a writer holds in memory)."""

PREDICT_ARRAYS: dict[str, dict[str, tuple[str, str]]] = {
    CLASSIFICATION: {"logits": ("outputs", "float32"), "predictions": ("scalar", "int64")},
    MULTILABEL: {"logits": ("outputs", "float32"), "predictions": ("outputs", "uint8")},
    REGRESSION: {"predictions": ("targets", "float32")},
}
"""The arrays of a predict output of each task besides ``node_ids``: name → (row shape, dtype), where the row shape
is ``scalar`` (``[M]``), ``outputs`` (``[M, num_outputs]``) or ``targets`` (``[M, *target_shape]``: ``[M]`` or
``[M, T]``). :func:`predict_rows` derives them from the model's outputs."""

EMBED_ARRAYS = {"embeddings": ("layer", None)}
"""The array of an embed output besides ``node_ids``: ``[M, H]`` in the requested dtype (float32 or float16)."""

PARQUET_NAMES = {"node_ids": "node_id", "predictions": "prediction", "logits": "logits", "embeddings": "embedding"}
"""The Parquet column of each array (:func:`write_parquet`)."""

KINDS = ("predict", "embed")
"""The kinds of inference output."""

_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_FIX = "run the inference again (diskgraph predict or diskgraph embed)"


def output_task(kind: str, num_outputs: int, target_shape=None) -> dict:
    """The manifest's ``task`` entry: ``{"kind", "num_outputs"}``, plus ``"target_shape"`` (``[]`` for ``[N]``
    targets, ``[T]`` for ``[N, T]``) for regression; a regression task without a target shape has ``[]`` when it has
    one output and ``[num_outputs]`` otherwise.

    Raises:
        ValueError: an unknown kind, a width that is not a positive whole number, or a target shape that disagrees
            with it.
    """
    if kind not in TASKS:
        raise ValueError(f"task {kind!r} is not one of {', '.join(TASKS)}")
    if isinstance(num_outputs, bool) or not isinstance(num_outputs, (int, np.integer)) or num_outputs < 1:
        raise ValueError(f"num_outputs {num_outputs!r} is not a positive whole number")
    task = {"kind": kind, "num_outputs": int(num_outputs)}
    if kind == REGRESSION:
        shape = ([] if num_outputs == 1 else [int(num_outputs)]) if target_shape is None else \
            [int(t) for t in target_shape]
        if int(np.prod(shape, dtype=np.int64)) != num_outputs or len(shape) > 1:
            raise ValueError(f"target shape {shape} does not hold the {num_outputs} outputs of the model")
        task["target_shape"] = shape
    return task


def _row_shape(spec: str, task: dict) -> tuple[int, ...]:
    if spec == "scalar":
        return ()
    if spec == "outputs":
        return (int(task["num_outputs"]),)
    return tuple(int(t) for t in task["target_shape"])


def predict_columns(task: dict) -> dict[str, tuple[tuple[int, ...], str]]:
    """The :class:`OutputWriter` columns of a predict output of ``task`` (:func:`output_task`), ``node_ids`` first."""
    return {"node_ids": ((), "int64"),
            **{name: (_row_shape(spec, task), dtype) for name, (spec, dtype) in PREDICT_ARRAYS[task["kind"]].items()}}


def embed_columns(width: int, dtype: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """The :class:`OutputWriter` columns of an embed output of a ``width``-wide layer stored as ``dtype``."""
    return {"node_ids": ((), "int64"), "embeddings": ((int(width),), dtype)}


def predict_rows(task: dict, outputs: np.ndarray) -> dict[str, np.ndarray]:
    """The predict arrays of ``task`` for a slice of the model's outputs (float32 ``[m, num_outputs]``): keyword
    arguments for :meth:`OutputWriter.append` besides ``node_ids``."""
    out = np.asarray(outputs, dtype=np.float32)
    kind = task["kind"]
    if kind == CLASSIFICATION:
        return {"logits": out, "predictions": out.argmax(axis=1).astype(np.int64)}
    if kind == MULTILABEL:
        return {"logits": out, "predictions": (out > 0).astype(np.uint8)}
    return {"predictions": out.reshape(out.shape[0], *task["target_shape"])}


def _describe(columns: dict) -> str:
    """``name dtype [M, ...]`` of each column, for a message."""
    return ", ".join(f"{n} {dt} [{', '.join(['M', *map(str, shape)])}]" for n, (shape, dt) in columns.items())


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
            body: the manifest's fields (``kind`` — ``predict`` or ``embed`` — and ``task``, ``mode``, ``run``,
                ``model``, ``dataset``, ``nodes``, ``layer``, ``dtype``, ``summary``); ``num_rows`` and ``arrays`` are
                set here. ``task`` (:func:`output_task`) decides a predict output's arrays (:data:`PREDICT_ARRAYS`);
                a predict body without one is classification with the width of its ``logits``.

        Returns:
            the manifest written.

        Raises:
            ValueError: fewer rows than ``num_rows`` appended, a ``kind`` other than predict/embed, a bad ``task``, or
                columns other than the arrays that kind and task need.
        """
        if self._done:
            raise ValueError("the output writer is closed")
        if self.rows != self.num_rows:
            raise ValueError(f"{self.rows} rows appended of the {self.num_rows} declared")
        kind = body.get("kind")
        if kind not in KINDS:
            raise ValueError(f"body kind {kind!r} is not one of {', '.join(KINDS)}")
        task = body.get("task")
        if kind == "predict" and task is None:
            logits = self.columns.get("logits")
            task = {"kind": CLASSIFICATION, "num_outputs": logits[0][0] if logits and logits[0] else 0}
        if task is not None:
            if not isinstance(task, dict):
                raise ValueError(f"body task {task!r} is not a dict (see output_task)")
            task = output_task(task.get("kind"), task.get("num_outputs"), task.get("target_shape"))
            body = {**body, "task": task}
        if kind == "predict":
            want = predict_columns(task)
            if self.columns != want:
                raise ValueError(f"a {task['kind']} predict output needs the arrays {_describe(want)}, not "
                                 f"{_describe(self.columns)}")
        else:
            missing = [a for a in ("node_ids", *EMBED_ARRAYS) if a not in self.columns]
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
        task: the run's task (:func:`output_task`: ``{"kind", "num_outputs"}``, ``"target_shape"`` for regression);
            ``{"kind": "classification", ...}`` for a version 1 predict output; None for an embed output without one.
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
        if kind not in KINDS:
            raise FormatError(f"{mfile} has kind {kind!r}, not predict or embed; the output is damaged, {_FIX}")
        if not isinstance(records, dict):
            raise FormatError(f"{mfile} has no arrays table; the output is damaged, {_FIX}")
        self.task: dict | None = self._read_task(mfile, kind, records)
        layout = predict_columns(self.task) if kind == "predict" else {"node_ids": None, **EMBED_ARRAYS}
        missing = [a for a in layout if a not in records]
        if missing:
            what = f"a {self.task['kind']} predict" if kind == "predict" else f"an {kind}"
            raise FormatError(f"{mfile} lists no arrays {missing} ({what} output has them); the output is damaged, "
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
        if kind == "predict":
            for name, (row_shape, dtype) in layout.items():
                arr = self._arrays[name]
                if tuple(arr.row_shape) != row_shape or arr.dtype != dtype:
                    raise FormatError(f"{arr.path / 'zarr.json'} holds {arr.dtype} {['M', *arr.row_shape]}, but a "
                                      f"{self.task['kind']} predict output with {self.task['num_outputs']} outputs has "
                                      f"{name} {dtype} {['M', *row_shape]}; the output is damaged, {_FIX}")

    def _read_task(self, mfile: Path, kind: str, records: dict) -> dict | None:
        """The output's task: as recorded (version 2); classification for a version 1 predict output (written before
        label kinds, when every run was classification); None for an embed output that records none."""
        recorded = self.manifest.get("task")
        if self.manifest["format_version"] < 2:
            if kind != "predict":
                return None
            rec = records.get("logits")
            shape = rec.get("shape") if isinstance(rec, dict) else None
            if not isinstance(shape, list) or len(shape) != 2:
                raise FormatError(f"{mfile} has no arrays.logits of shape [M, C] (a version 1 predict output has "
                                  f"them); the output is damaged, {_FIX}")
            recorded = {"kind": CLASSIFICATION, "num_outputs": shape[1]}
        elif recorded is None and kind == "embed":
            return None
        try:
            if not isinstance(recorded, dict):
                raise ValueError("not a dict")
            return output_task(recorded.get("kind"), recorded.get("num_outputs"), recorded.get("target_shape"))
        except (ValueError, TypeError) as e:
            unknown = recorded.get("kind") if isinstance(recorded, dict) else None
            if isinstance(unknown, str) and unknown not in TASKS:
                raise FormatError(f"{mfile} records task {recorded.get('kind')!r}, which this diskgraph does not know; "
                                  "upgrade diskgraph to read it") from None
            raise FormatError(f"{mfile} has a bad task entry {recorded!r} ({e}); the output is damaged, "
                              f"{_FIX}") from None

    def __repr__(self) -> str:
        task = f", task={self.task['kind']!r}" if self.task else ""
        return f"InferenceOutput({str(self.path)!r}, kind={self.kind!r}{task}, num_rows={self.num_rows})"

    def array(self, name: str) -> RawArray:
        """The stored array ``name`` (``node_ids``, ``logits``, ``predictions`` or ``embeddings``; see
        :data:`PREDICT_ARRAYS` for which a predict output of each task holds)."""
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

    def prediction_summary(self, slice_rows: int = 1 << 20) -> dict | None:
        """What the predictions say, read in slices of ``slice_rows`` rows (JSON-ready; None for an embed output).

        classification: ``predicted_counts`` (class → rows predicted as it); multilabel: ``predicted_positives``
        (label → rows predicted positive) and ``mean_positives`` (labels per row); regression: ``mean`` and ``std``
        (one per target, None without rows).
        """
        if self.kind != "predict":
            return None
        task, kind = self.task, self.task["kind"]
        c = int(task["num_outputs"])
        total = np.zeros(c, np.int64) if kind != REGRESSION else np.zeros(c, np.float64)
        squares = np.zeros(c, np.float64)
        for start in range(0, self.num_rows, max(1, int(slice_rows))):
            block = self.read("predictions", start, start + max(1, int(slice_rows)))
            if kind == CLASSIFICATION:
                total += np.bincount(block[(block >= 0) & (block < c)], minlength=c)[:c]
            elif kind == MULTILABEL:
                total += block.sum(axis=0, dtype=np.int64)
            else:
                v = block.reshape(block.shape[0], c).astype(np.float64)
                total += v.sum(axis=0)
                squares += (v * v).sum(axis=0)
        out: dict = {"task": kind, "num_outputs": c}
        if kind == CLASSIFICATION:
            out["predicted_counts"] = {str(i): int(k) for i, k in enumerate(total)}
        elif kind == MULTILABEL:
            out["predicted_positives"] = {str(i): int(k) for i, k in enumerate(total)}
            out["mean_positives"] = float(total.sum() / self.num_rows) if self.num_rows else None
        else:
            n = self.num_rows
            mean = total / n if n else None
            out["mean"] = [float(v) for v in mean] if n else None
            out["std"] = [float(v) for v in np.sqrt(np.maximum(squares / n - mean * mean, 0))] if n else None
        return out

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


def _parquet_arrays(output: InferenceOutput) -> list[str]:
    """The arrays :func:`write_parquet` exports, in column order: ``node_ids``, then ``predictions`` and (where the
    task has them) ``logits``, or ``embeddings``."""
    if output.kind == "predict":
        return ["node_ids", "predictions", *(a for a in PREDICT_ARRAYS[output.task["kind"]] if a != "predictions")]
    return ["node_ids", *EMBED_ARRAYS]


def parquet_schema(output: InferenceOutput):
    """The Arrow schema of :func:`write_parquet`'s table for ``output``: one column per array (:data:`PARQUET_NAMES`),
    a plain column for ``[M]`` arrays and fixed_size_list for ``[M, W]`` ones."""
    import pyarrow as pa

    fields = []
    for name in _parquet_arrays(output):
        arr = output.array(name)
        value = pa.from_numpy_dtype(arr.storage_dtype)
        if arr.row_shape:
            value = pa.list_(value, int(np.prod(arr.row_shape)))
        fields.append(pa.field(PARQUET_NAMES[name], value))
    meta = {"diskgraph.format": INFERENCE_FORMAT, "diskgraph.kind": output.kind, "diskgraph.source": str(output.path)}
    if output.task is not None:
        meta["diskgraph.task"] = output.task["kind"]
    return pa.schema(fields, metadata=meta)


def write_parquet(output: InferenceOutput, path: str | os.PathLike, rows_per_group: int = 65536) -> int:
    """Export ``output`` as one Parquet file at ``path``, streaming ``rows_per_group`` rows at a time.

    Columns: ``node_id`` int64, then for ``predict`` ``prediction`` (classification: int64; multilabel:
    fixed_size_list<uint8>[C]; regression: float32 for ``[M]`` predictions, fixed_size_list<float32>[T] for
    ``[M, T]``) and, for classification and multilabel, ``logits`` fixed_size_list<float32>[C]; for ``embed``
    ``embedding`` fixed_size_list<float16|float32>[H]. One row group per
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
    columns = _parquet_arrays(output)
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
