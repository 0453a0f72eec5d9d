"""Synthetic graphs of any size, streamed to disk: R-MAT topology with a planted, neighbor-only signal.

The model (all of it a pure function of the seed, so any slice can be
regenerated on its own and the importer can read the edge stream twice):

* **Labels.** Node ``v`` has class ``y_v = v % C``.
* **Topology.** ``E`` directed edges from R-MAT with probabilities
  ``(a, b, c, d)`` (default ``(0.57, 0.19, 0.19, 0.05)``, Graph500) over
  ``2**ceil(log2 N)`` ids. Ids pass through a seeded bijection so degree is not
  correlated with id (nor with class); an edge with an endpoint ``>= N`` is
  redrawn (see :mod:`diskgraph.native.rmat`). Then, with probability
  ``homophily``, the destination moves to the node of the source's class in its
  block of ``C`` consecutive ids (``v' = v - v % C + u % C``), which keeps the
  heavy-tailed degrees while making ``homophily + (1 - homophily) / C`` of the
  edges join nodes of one class. Self loops and repeats are possible; the
  dataset import drops and merges them.
* **Features.** ``x_v = signal * mu[y_v] + z_v`` with ``z_v ~ N(0, I_F)`` and
  ``mu`` ``C`` random unit vectors in ``R^F``. With a small ``signal`` a
  classifier that sees one node's features is weak (the class means sit about
  ``signal * sqrt(2)`` apart against unit noise), while the mean over a node's
  in-neighbors shrinks the noise by the square root of the degree and keeps most
  of the class mean, so a GNN that aggregates neighbors does clearly better.

With the defaults (``homophily=0.7``, ``signal=1.0``) on 20,000 nodes,
200,000 edges and 8 classes, a linear discriminant on a node's own features
scores about 37 % (chance 12.5 %), on ``[X, mean of in-neighbors]`` about 66 %,
and with the two-hop mean added about 78 % (32 or 64 features alike; the test
``tests/diskgraph/test_generate.py`` checks this margin, and that it vanishes
with ``homophily=0``).

Randomness is counter based (a splitmix64 hash of the key and the index of each
value, :mod:`diskgraph.native.rmat`), independent of numpy's generators and of
how the work is split. Edges and labels are integer arithmetic, identical
everywhere; features go through float32 ``log``/``sin``/``cos``, so a
different math library could, rarely, change a value's last bit.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .native import rmat as _kernels
from .store.errors import InputError
from .store.features_copy import float32_to_bfloat16
from .store.files import FLUSH_BYTES, drop_cache
from .store.sources.features import STORED_DTYPES
from .store.zarr_arrays import BFLOAT16, storage_dtype

DEFAULT_HOMOPHILY = 0.7
"""Probability that an edge's destination is rewired to the source's class."""

DEFAULT_SIGNAL = 1.0
"""Length of the class mean added to unit-variance Gaussian features."""

DEFAULT_RMAT = (0.57, 0.19, 0.19, 0.05)
"""R-MAT quadrant probabilities (a, b, c, d), those of Graph500."""

GENERATOR_VERSION = 1
"""Bumped whenever the same parameters would produce a different graph."""

_BLOCK = 1 << 20
"""Edges or rows per call of a kernel in the bulk writers."""

_U64 = (1 << 64) - 1

RAW_FORMAT = "diskgraph.raw-inputs"
"""The manifest format of the raw input directory :func:`write_raw_inputs` writes."""

IMPORT_BYTES_PER_NODE = 32
"""Memory the import of a generated graph holds per node: labels (8), splits (8) and the topology's node counts
with their cumulative copy (16)."""


def _mix64(x: int) -> int:
    """splitmix64 finaliser on a Python int (same function as the numba kernel's)."""
    x &= _U64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _U64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _U64
    return x ^ (x >> 31)


def _subkey(seed: int, stream: int) -> int:
    """A 64-bit key for one random stream (edges, features, means, scramble) of ``seed``."""
    return _mix64(_mix64(seed + 0x9E3779B97F4A7C15) ^ (stream * 0xD1B54A32D192ED03 & _U64))


def _check_int(value, name: str, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{name} is {value!r}; pass a whole number")
    if value < lo:
        raise InputError(f"{name} is {value}; pass a number of at least {lo}")
    return int(value)


class SyntheticGraph:
    """The synthetic graph of one parameter set; every method is deterministic per element.

    ``edges(s, n)``, ``features(s, n)`` and ``labels(s, n)`` return the same
    values for an element however the range is cut into calls.

    Args:
        nodes: N, number of nodes (>= 1).
        edges: E, number of directed edges drawn (>= 0; repeats and self loops included).
        feature_dim: F, features per node (>= 1).
        classes: C, number of classes (1 <= C <= N).
        seed: non-negative integer; the same seed gives the same graph.
        homophily: probability in [0, 1] of rewiring an edge's destination to the source's class.
        signal: length (>= 0) of the class mean in the features, against unit-variance noise.
        feature_dtype: ``float32``, ``float16`` or ``bfloat16`` (rows as uint16 bit patterns).
        rmat: R-MAT quadrant probabilities ``(a, b, c, d)``, non-negative, summing to 1.

    Raises:
        InputError: a parameter out of range, named in one sentence.
    """

    def __init__(self, nodes: int, edges: int, feature_dim: int, classes: int, seed: int = 0, *,
                 homophily: float = DEFAULT_HOMOPHILY, signal: float = DEFAULT_SIGNAL,
                 feature_dtype: str = "float32", rmat: tuple[float, float, float, float] = DEFAULT_RMAT):
        self.num_nodes = _check_int(nodes, "--nodes", 1)
        self.num_edges = _check_int(edges, "--edges", 0)
        self.feature_dim = _check_int(feature_dim, "--feature-dim", 1)
        self.num_classes = _check_int(classes, "--classes", 1)
        self.seed = _check_int(seed, "--seed", 0)
        if self.num_nodes >= 1 << 62:
            raise InputError(f"--nodes {self.num_nodes} is too large; the generator supports fewer than 2**62 nodes")
        if self.num_classes > self.num_nodes:
            raise InputError(f"--classes {self.num_classes} is more than --nodes {self.num_nodes}; every class needs a node: lower --classes")
        if not 0.0 <= float(homophily) <= 1.0:
            raise InputError(f"--homophily {homophily} is not a probability; pass a value between 0 and 1")
        if not (np.isfinite(signal) and signal >= 0):
            raise InputError(f"--signal {signal} is not a non-negative number; pass e.g. {DEFAULT_SIGNAL}")
        if feature_dtype not in STORED_DTYPES:
            raise InputError(f"--feature-dtype {feature_dtype} is not supported; use float32, float16 or bfloat16")
        probs = tuple(float(p) for p in rmat)
        if len(probs) != 4 or min(probs) < 0 or abs(sum(probs) - 1.0) > 1e-6:
            raise InputError(f"R-MAT probabilities {rmat} must be four non-negative numbers (a, b, c, d) summing to 1")
        self.homophily = float(homophily)
        self.signal = float(signal)
        self.feature_dtype = feature_dtype
        self.rmat = probs

        self.scale = max(1, (self.num_nodes - 1).bit_length())
        cum = np.cumsum(probs)[:3]
        self._thresholds = np.array([min(65536, int(round(t * 65536))) for t in cum], dtype=np.uint64)
        self._homophily16 = np.uint64(int(round(self.homophily * 65536)))
        self._edge_key = np.uint64(_subkey(self.seed, 1))
        self._feature_key = np.uint64(_subkey(self.seed, 2))
        self._scramble = np.array([_subkey(self.seed, 3) | 1, _subkey(self.seed, 4),
                                   _subkey(self.seed, 5) | 1, _subkey(self.seed, 6)], dtype=np.uint64)
        raw = np.empty((self.num_classes, self.feature_dim), dtype=np.float32)
        _kernels.gaussian_rows(np.uint64(_subkey(self.seed, 7)), 0, np.zeros(self.num_classes, dtype=np.int64),
                               np.zeros((1, self.feature_dim), dtype=np.float32), raw)
        norms = np.linalg.norm(raw.astype(np.float64), axis=1, keepdims=True)
        self.class_means = (self.signal * raw / np.maximum(norms, 1e-12)).astype(np.float32)
        """float32 [C, F]: ``signal * mu``, the mean of each class's feature rows."""

    def params(self) -> dict:
        """Every parameter that determines the graph (JSON-ready; recorded in manifests)."""
        return {"model": "rmat-homophily", "version": GENERATOR_VERSION, "nodes": self.num_nodes,
                "edges": self.num_edges, "feature_dim": self.feature_dim, "classes": self.num_classes,
                "seed": self.seed, "homophily": self.homophily, "signal": self.signal,
                "feature_dtype": self.feature_dtype, "rmat": list(self.rmat), "scale": self.scale,
                "labels": "id % classes"}

    def _range(self, start: int, count: int, total: int, what: str) -> tuple[int, int]:
        start, count = int(start), int(count)
        if start < 0 or count < 0 or start + count > total:
            raise InputError(f"{what} {start}..{start + count} is outside the generated 0..{total}; ask for a range inside it")
        return start, count

    def edges(self, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Edges ``start .. start + count - 1`` as ``(src, dst)``, two int64 arrays of length ``count``.

        Ids lie in ``[0, N)``; self loops and repeated edges may occur.
        """
        start, count = self._range(start, count, self.num_edges, "edge range")
        src = np.empty(count, dtype=np.int64)
        dst = np.empty(count, dtype=np.int64)
        if count:
            _kernels.rmat_edges(self._edge_key, start, self.scale, self.num_nodes, self._thresholds,
                                self._scramble, self._homophily16, self.num_classes, src, dst)
        return src, dst

    def labels(self, start: int = 0, count: int | None = None) -> np.ndarray:
        """Classes of nodes ``start .. start + count - 1`` (all from ``start`` when count is None): int64 ``[count]``."""
        if count is None:
            count = self.num_nodes - int(start)
        start, count = self._range(start, count, self.num_nodes, "node range")
        return np.arange(start, start + count, dtype=np.int64) % self.num_classes

    def features(self, start: int, count: int) -> np.ndarray:
        """Feature rows of nodes ``start .. start + count - 1``: ``[count, F]`` of the storage dtype.

        float32 or float16 values, or uint16 bfloat16 bit patterns for ``bfloat16``.
        """
        rows = self.features_float32(start, count)
        if self.feature_dtype == "float32":
            return rows
        if self.feature_dtype == BFLOAT16:
            return float32_to_bfloat16(rows)
        return rows.astype(self.feature_dtype)

    def features_float32(self, start: int, count: int) -> np.ndarray:
        """Feature rows of nodes ``start .. start + count - 1`` before narrowing: float32 ``[count, F]``."""
        start, count = self._range(start, count, self.num_nodes, "node range")
        out = np.empty((count, self.feature_dim), dtype=np.float32)
        if count:
            _kernels.gaussian_rows(self._feature_key, start, self.labels(start, count), self.class_means, out)
        return out


def check_budgets(out: str | os.PathLike, *, nodes: int, edges: int, feature_dim: int, classes: int,
                  feature_dtype: str = "float32", raw: bool = False, memory_budget: int | None = None) -> None:
    """Refuse, before anything is allocated or written, a graph whose generation would exceed the memory budget
    or the free space of the filesystem ``out`` goes to.

    Memory: the class means (``classes x feature_dim``) and, for a dataset, what the import holds per node
    (:data:`IMPORT_BYTES_PER_NODE`); raw inputs are written in slices and hold nothing per node. Disk: the
    exact size of the raw files, or a lower bound of the dataset (features, node offsets, labels).

    Raises:
        InputError: one sentence naming the option to lower and the budget to raise.
    """
    from .store.atomic import check_free_space
    from .store.importer import default_memory_budget
    from .store.progress import format_bytes

    n, e, f, c = (_check_int(v, name, lo) for v, name, lo in ((nodes, "--nodes", 1), (edges, "--edges", 0),
                                                              (feature_dim, "--feature-dim", 1), (classes, "--classes", 1)))
    budget = memory_budget if memory_budget is not None else default_memory_budget()
    means = 12 * c * f  # float32 draws and their float64 norms
    per_node = 0 if raw else IMPORT_BYTES_PER_NODE * n
    if means + per_node > budget:
        what = (f"--nodes {n} needs about {format_bytes(per_node + means)} of memory to import ({IMPORT_BYTES_PER_NODE} "
                f"bytes per node for labels, splits and the topology's node counts)" if per_node >= means else
                f"--classes {c} with --feature-dim {f} needs about {format_bytes(means)} of memory for the class means")
        raise InputError(f"{what}, more than the memory budget of {format_bytes(budget)}; raise --memory-budget or "
                         f"generate a smaller graph")
    row = f * np.dtype(np.uint16 if feature_dtype == BFLOAT16 else feature_dtype).itemsize
    need = n * row + 8 * n + (16 * e + 3 * 128 if raw else 8 * (n + 1))
    check_free_space(out, need, "--out", f"--out {Path(out).absolute()}")


def generate_dataset(out: str | os.PathLike, *, nodes: int, edges: int, feature_dim: int, classes: int,
                     seed: int = 0, homophily: float = DEFAULT_HOMOPHILY, signal: float = DEFAULT_SIGNAL,
                     feature_dtype: str = "float32", split: str = "random:0.6,0.2,0.2",
                     memory_budget: int | None = None, overwrite: bool = False) -> Path:
    """Generate a synthetic graph and import it as a dataset directory at ``out``, streaming.

    Edges are drawn twice by the importer (count, then place), features once;
    repeated edges are merged and self loops dropped, so the stored edge count
    is at most ``edges``. Labels are ``id % classes``; the split is drawn with
    ``seed``. The manifest's ``generator`` entry records every parameter.

    Args:
        out: the dataset directory to create.
        nodes, edges, feature_dim, classes, seed, homophily, signal, feature_dtype: see :class:`SyntheticGraph`.
        split: ``random:TRAIN,VAL,TEST`` fractions of the nodes.
        memory_budget: bytes the import may hold (None: the importer's default).
        overwrite: replace an existing ``out``.

    Returns:
        The dataset directory.

    Raises:
        InputError: a parameter out of range, ``out`` exists without ``overwrite`` (or is not a dataset) or
            cannot be written, or the graph exceeds the memory budget or the free disk space
            (:func:`check_budgets`) — all before anything is allocated or written.
    """
    from .store.atomic import AtomicDirectory
    from .store.importer import DATASET_FORMAT, ImportOptions, import_dataset
    from .store.sources.edges import GeneratedEdges
    from .store.sources.features import GeneratedFeatures
    from .store.sources.labels import parse_random_split

    fractions = parse_random_split(split)
    AtomicDirectory(out, overwrite=overwrite, kind=DATASET_FORMAT).check()
    check_budgets(out, nodes=nodes, edges=edges, feature_dim=feature_dim, classes=classes,
                  feature_dtype=feature_dtype, memory_budget=memory_budget)
    g = SyntheticGraph(nodes, edges, feature_dim, classes, seed, homophily=homophily, signal=signal,
                       feature_dtype=feature_dtype)
    info = g.params()
    name = f"synthetic R-MAT graph (seed {g.seed})"
    edge_source = GeneratedEdges(g.num_edges, g.edges, label=f"edges of the {name}", info=info)
    feature_source = GeneratedFeatures(g.num_nodes, g.feature_dim, g.feature_dtype, g.features,
                                       label=f"features of the {name}", info=info)
    options = ImportOptions(dedup=True, drop_self_loops=True, memory_budget=memory_budget, num_nodes=g.num_nodes,
                            num_classes=g.num_classes, feature_dtype=g.feature_dtype, overwrite=overwrite)
    return import_dataset(out, edge_source, features=feature_source, labels=g.labels(),
                          labels_label="generated labels", random_split=(fractions, g.seed), options=options,
                          extra_manifest={"generator": {**info, "split": split}})


def _pwrite_all(fd: int, data: np.ndarray, offset: int) -> None:
    view = memoryview(np.ascontiguousarray(data)).cast("B")
    while len(view):
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


class _BackgroundWriter:
    """Writes byte ranges of one preallocated file on a helper thread while the caller makes the next slice.

    At most one batch is in flight (so memory holds two slices); the file is
    synced and its pages dropped from the page cache every ``FLUSH_BYTES``.
    """

    def __init__(self, fd: int):
        self.fd = fd
        self.unsynced = 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="diskgraph-generate-writer")
        self._job = None

    def write(self, *pieces: tuple[np.ndarray, int]) -> None:
        """Queue ``(array, byte offset)`` pieces, after the previous batch is written."""
        self._wait()
        self._job = self._pool.submit(self._write, pieces)

    def _write(self, pieces) -> None:
        for data, offset in pieces:
            _pwrite_all(self.fd, data, offset)
            self.unsynced += data.nbytes
        if self.unsynced >= FLUSH_BYTES:
            self._sync()

    def _sync(self) -> None:
        os.fdatasync(self.fd)
        drop_cache(self.fd)
        self.unsynced = 0

    def _wait(self) -> None:
        if self._job is not None:
            job, self._job = self._job, None
            job.result()  # re-raises a failed write here

    def finish(self) -> None:
        """Write what is queued, sync the file and drop it from the page cache."""
        try:
            self._wait()
            self._sync()
        finally:
            self._pool.shutdown(wait=True)

    def abort(self) -> None:
        """Stop after the batch in flight, ignoring its errors (the caller deletes the file)."""
        self._pool.shutdown(wait=True)


def _npy_file(path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> tuple[int, int]:
    """Create ``path`` as an ``.npy`` file of ``shape`` (a header, then unwritten zeros); returns (open fd, data offset)."""
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        offset = f.tell()
        f.truncate(offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
    return os.open(path, os.O_WRONLY), offset


def write_raw_inputs(out_dir: str | os.PathLike, *, nodes: int, edges: int, feature_dim: int, classes: int,
                     seed: int = 0, homophily: float = DEFAULT_HOMOPHILY, signal: float = DEFAULT_SIGNAL,
                     feature_dtype: str = "float32", slice_bytes: int = 64 << 20) -> dict:
    """Write the synthetic graph as raw import inputs in ``out_dir``, never holding it whole.

    Files: ``edges.npy`` (int64 ``[2, E]``: sources then destinations, as drawn,
    repeats and self loops included), ``features.npy`` (``[N, F]`` float32 or
    float16), ``labels.npy`` (int64 ``[N]``) and, last, ``manifest.json``
    (format ``diskgraph.raw-inputs``: the generator's parameters and the
    files' sizes). Each array is written to a
    ``.partial`` name in slices of about ``slice_bytes`` bytes (one slice is
    written on a helper thread while the next is generated), synced and dropped
    from the page cache every 64 MiB, then renamed into place, so memory stays
    at about two slices whatever the graph's size.

    Args:
        out_dir: directory to write into (created if missing).
        nodes, edges, feature_dim, classes, seed, homophily, signal: see :class:`SyntheticGraph`.
        feature_dtype: ``float32`` or ``float16`` (``.npy`` has no bfloat16).
        slice_bytes: bytes generated per step (bounded memory).

    Returns:
        ``{"edges": Path, "features": Path, "labels": Path, "bytes": {name: bytes}, "seconds": {name: s},
        "params": SyntheticGraph.params()}``.

    Raises:
        InputError: a parameter out of range, or ``bfloat16`` features.
    """
    if feature_dtype == BFLOAT16:
        raise InputError("--feature-dtype bfloat16 has no .npy type for raw inputs; write float32 and import with --feature-dtype bfloat16")
    g = SyntheticGraph(nodes, edges, feature_dim, classes, seed, homophily=homophily, signal=signal,
                       feature_dtype=feature_dtype)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n, e, f = g.num_nodes, g.num_edges, g.feature_dim
    fdt = storage_dtype(feature_dtype)
    paths = {"edges": out / "edges.npy", "features": out / "features.npy", "labels": out / "labels.npy"}
    result: dict = {**paths, "bytes": {}, "seconds": {}, "params": g.params()}

    def write(name: str, dtype: np.dtype, shape: tuple[int, ...], fill) -> None:
        t0 = time.perf_counter()
        tmp = paths[name].with_name(paths[name].name + ".partial")
        fd, offset = _npy_file(tmp, np.dtype(dtype), shape)
        w = _BackgroundWriter(fd)
        try:
            fill(w, offset)
            w.finish()
        except BaseException:
            w.abort()
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.replace(tmp, paths[name])
        result["bytes"][name] = paths[name].stat().st_size
        result["seconds"][name] = time.perf_counter() - t0

    def fill_edges(w: _BackgroundWriter, offset: int) -> None:
        step = max(1, slice_bytes // 16)
        for s in range(0, e, step):
            src, dst = g.edges(s, min(step, e - s))
            w.write((src, offset + 8 * s), (dst, offset + 8 * (e + s)))

    def fill_features(w: _BackgroundWriter, offset: int) -> None:
        row_bytes = f * fdt.itemsize
        step = max(1, slice_bytes // (f * 4))
        for s in range(0, n, step):
            w.write((g.features(s, min(step, n - s)), offset + row_bytes * s))

    def fill_labels(w: _BackgroundWriter, offset: int) -> None:
        step = max(1, slice_bytes // 8)
        for s in range(0, n, step):
            w.write((g.labels(s, min(step, n - s)), offset + 8 * s))

    write("edges", np.int64, (2, e), fill_edges)
    write("features", fdt, (n, f), fill_features)
    write("labels", np.int64, (n,), fill_labels)
    from .store.manifest import write_manifest

    write_manifest(out, RAW_FORMAT, 1, {"generator": g.params(), "files": {
        k: {"path": paths[k].name, "bytes": result["bytes"][k]} for k in paths}})
    return result
