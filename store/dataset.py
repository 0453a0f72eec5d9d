"""Read a dataset directory written by :mod:`diskgraph.store.importer`.

>>> ds = open_dataset("data/cora")
>>> ds.num_nodes, ds.num_edges, ds.feature_dim
>>> ds.indptr, ds.indices            # read-only memory maps (CSC over in-edges)
>>> ds.features.read_rows(0, 128)    # [128, F] rows
>>> ds.labels, ds.splits["train"]
>>> ds.task, ds.num_outputs          # "classification" | "multilabel" | "regression", the model's output width
>>> ds.targets(ds.splits["train"][:4])  # the training targets of those nodes, as the loss takes them
>>> ds.edge_splits["val"]             # link prediction: int64 [2, E_val] supervision edges ({} without a split)

Arrays are memory-mapped or read in slices on demand; opening is cheap (it
reads the manifest and checks every array's metadata and file sizes).
"""

from __future__ import annotations

import hashlib
import os
from functools import cached_property
from pathlib import Path

import numpy as np

from ..native import csc as kernels
from .checksums import array_sha256
from .edge_splits import split_problems
from .errors import FormatError
from .features_copy import nonfinite_mask
from .files import dir_size
from .importer import DATASET_CHECKSUM_SINCE, DATASET_FORMAT, DATASET_VERSION
from .label_kinds import (DEFAULT_TASK, TASKS, expected_layout, gather_targets, label_problems, label_stats,
                          labelled_mask, output_width)
from .manifest import read_manifest
from .progress import Progress
from .zarr_arrays import RawArray

_CSC_PROBLEMS = {
    1: "indptr decreases at node {v}",
    2: "the in-edges of node {v} name a node id outside 0..N-1",
    3: "the in-edges of node {v} are not sorted",
    4: "the in-edges of node {v} repeat a source although the import de-duplicated",
}


class Dataset:
    """A diskgraph dataset directory, opened read-only.

    Attributes:
        path: the directory.
        manifest: the parsed ``manifest.json``.
        num_nodes, num_edges: counts (edges as stored, after import options).
        num_classes: number of classes (multilabel: of labels; None without labels and for regression).
        task: the label kind, ``classification``, ``multilabel`` or ``regression`` (:mod:`~diskgraph.store.label_kinds`;
            a manifest without one, format versions 1 and 2, holds classification labels).
        feature_dim, feature_dtype: feature width and logical dtype (0 / None without features).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.manifest = read_manifest(self.path, DATASET_FORMAT, DATASET_VERSION, checksum_since=DATASET_CHECKSUM_SINCE)
        m = self.manifest
        try:
            self.num_nodes = int(m["num_nodes"])
            self.num_edges = int(m["num_edges"])
            self.num_classes = m.get("num_classes")
            self.task = m.get("task", DEFAULT_TASK)
            target_shape = m.get("target_shape")
            feat = m.get("features")
            self.array_records: dict[str, dict] = m["arrays"]
        except (KeyError, TypeError, ValueError):
            raise FormatError(f"{self.path / 'manifest.json'} lacks required fields; the dataset is damaged, re-import it") from None
        self.feature_dim = int(feat["dim"]) if feat else 0
        self.feature_dtype = feat["dtype"] if feat else None
        self._arrays: dict[str, RawArray] = {}
        self._verified: set[str] = set()
        for name, rec in self.array_records.items():
            arr = RawArray(self.path / name)
            if list(arr.shape) != list(rec["shape"]) or arr.dtype != rec["dtype"]:
                raise FormatError(
                    f"array {self.path / name} has shape {arr.shape} and dtype {arr.dtype} but the manifest records "
                    f"{tuple(rec['shape'])} {rec['dtype']}; the dataset is damaged, re-import it"
                )
            for i in range(arr.num_chunks):
                arr._check_chunk(i)
            self._arrays[name] = arr
        if self.task not in TASKS:
            raise FormatError(f"{self.path / 'manifest.json'} records task {self.task!r}, which this diskgraph does not "
                              "know; upgrade diskgraph to read it")
        lab = self._arrays.get("labels")
        if lab is not None:
            dtype, row_shape = expected_layout(self.task, self.num_classes, target_shape)
            if lab.dtype != dtype or (row_shape is not None and tuple(lab.shape[1:]) != row_shape) or len(lab.shape) > 2:
                raise FormatError(f"array {lab.path} has shape {tuple(lab.shape)} and dtype {lab.dtype}, not the labels "
                                  f"of a {self.task} dataset ({dtype}); the dataset is damaged, re-import it")

    def __repr__(self) -> str:
        return (f"Dataset({str(self.path)!r}, num_nodes={self.num_nodes}, num_edges={self.num_edges}, "
                f"feature_dim={self.feature_dim}, num_classes={self.num_classes}, task={self.task!r})")

    def array(self, name: str) -> RawArray:
        """The stored array ``name`` (``topology/indptr``, ``features``, ``splits/train``, …)."""
        return self._arrays[name]

    @property
    def array_names(self) -> list[str]:
        """Names of the stored arrays."""
        return list(self._arrays)

    @cached_property
    def indptr(self) -> np.ndarray:
        """int64 [N+1]: in-edges of v are ``indices[indptr[v]:indptr[v+1]]`` (memory map)."""
        return self._arrays["topology/indptr"].memmap()

    @cached_property
    def indices(self) -> np.ndarray:
        """int32/int64 [E]: source node of each in-edge, sorted per destination (memory map)."""
        return self._arrays["topology/indices"].memmap()

    @property
    def features(self) -> RawArray | None:
        """The [N, F] feature array (read with ``read_rows``), or None."""
        return self._arrays.get("features")

    @cached_property
    def labels(self) -> np.ndarray | None:
        """The stored labels (memory map), or None; as :attr:`task` says: int64 [N] class ids, -1 = unlabelled
        (classification); uint8 [N, C] of 0/1 (multilabel); float32 [N] or [N, T], a NaN row = unlabelled
        (regression). Training reads them through :meth:`targets`."""
        a = self._arrays.get("labels")
        return a.memmap() if a is not None else None

    @property
    def num_outputs(self) -> int | None:
        """The model's output width: C for classification and multilabel, T for [N, T] regression targets, 1 for [N]
        ones (None without labels)."""
        a = self._arrays.get("labels")
        if a is None:
            return None
        if self.task == "classification" and self.num_classes is None:
            return int(np.asarray(self.labels).max(initial=-1)) + 1
        return output_width(self.task, self.num_classes, tuple(a.shape[1:]))

    def targets(self, nodes: np.ndarray) -> np.ndarray:
        """The training targets of ``nodes`` (an int index array), as the loss takes them: int64 [n] class ids
        (classification), float32 [n, C] of 0/1 (multilabel), float32 [n] or [n, T] (regression); a fresh array
        (one gather from the memory map, after :meth:`verified_labels`).

        Raises:
            FormatError: no labels, or labels that changed since the import.
        """
        return gather_targets(self.verified_labels(), nodes, self.task)

    def labelled_mask(self, nodes: np.ndarray | slice | None = None) -> np.ndarray:
        """bool per node of ``nodes`` (an index array or a slice; None: every node): whether it has a label — a class
        id >= 0 (classification), a row that is not NaN (regression), always (multilabel).

        Raises:
            FormatError: no labels, or labels that changed since the import.
        """
        labels = self.verified_labels()
        return labelled_mask(labels if nodes is None else labels[nodes], self.task)

    def check_array(self, name: str, values: np.ndarray | None = None) -> None:
        """Check the bytes of array ``name`` against the manifest's sha256, once per open dataset: training checks
        what it reads from the dataset (labels; the topology and features of in-memory runs) before it starts.

        Args:
            values: the whole array as the caller holds it (in memory or memory-mapped), hashed instead of reading
                the files a second time.

        Raises:
            FormatError: the array's bytes changed since the import (damaged), naming its file.
        """
        if name in self._verified:
            return
        arr = self._arrays[name]
        sha = array_sha256(values) if values is not None else arr.sha256()
        if sha != self.array_records[name]["sha256"]:
            raise FormatError(f"{arr.path} does not match the manifest's arrays.{name}.sha256 (its data changed or is "
                              "damaged); re-import the dataset")
        self._verified.add(name)

    def verified_labels(self) -> np.ndarray:
        """:attr:`labels` (memory map, as stored: see :attr:`task`), after :meth:`check_array` of them.

        Raises:
            FormatError: no labels, or labels that changed since the import.
        """
        if self.labels is None:
            raise FormatError(f"dataset {self.path} has no labels; import it with --labels")
        self.check_array("labels")
        return self.labels

    @cached_property
    def splits(self) -> dict[str, np.ndarray]:
        """Split name → sorted int64 node indices (memory maps)."""
        return {name.split("/", 1)[1]: a.memmap() for name, a in self._arrays.items() if name.startswith("splits/")}

    @cached_property
    def edge_splits(self) -> dict[str, np.ndarray]:
        """Link prediction: split name (``train``, ``val``, ``test``) → int64 ``[2, E_s]`` supervision edges (row 0
        source, row 1 destination; memory maps), ``{}`` for a dataset imported without an edge split. The val and test
        edges are not in the topology (with an undirected split, neither direction; pairs stored as (min, max)); the
        train edges are. Check their bytes with ``check_array("edges/NAME")``."""
        return {name.split("/", 1)[1]: a.memmap() for name, a in self._arrays.items() if name.startswith("edges/")}

    @property
    def edge_split_info(self) -> dict | None:
        """The manifest's ``edge_split`` record — ``fractions`` (or None for given files), ``seed``, ``undirected``,
        ``counts``, ``source`` (``random`` | ``files``) — or None without an edge split."""
        return self.manifest.get("edge_split")

    # -- statistics ---------------------------------------------------------------------------

    def degree_histogram(self, slice_nodes: int = 1 << 22) -> np.ndarray:
        """``h[d]`` = number of nodes with in-degree d, computed over indptr in slices."""
        hist = np.zeros(1, dtype=np.int64)
        ptr = self.indptr
        for s in range(0, self.num_nodes, slice_nodes):
            deg = np.diff(np.asarray(ptr[s:min(s + slice_nodes, self.num_nodes) + 1]))
            if deg.size and deg.min() < 0:
                v = s + int(np.argmax(deg < 0))
                raise FormatError(f"{self.path / 'topology' / 'indptr'} decreases at node {v}; the dataset is damaged, "
                                  "re-import it")
            h = np.bincount(deg)
            if h.size > hist.size:
                h[: hist.size] += hist
                hist = h
            else:
                hist[: h.size] += h
        return hist

    def stats(self) -> dict:
        """Counts, in-degree statistics, features, labels, splits and sizes on disk (JSON-ready)."""
        hist = self.degree_histogram()
        cum = np.cumsum(hist)
        n = self.num_nodes

        def quantile(q: float) -> int:
            return int(np.searchsorted(cum, max(1, int(np.ceil(q * n))))) if n else 0

        deg = {"min": int(np.flatnonzero(hist)[0]) if n else 0, "median": quantile(0.5), "p99": quantile(0.99),
               "max": int(hist.size - 1) if n else 0, "mean": self.num_edges / n if n else 0.0,
               "isolated_nodes": int(hist[0]) if n else 0}
        out = {
            "path": str(self.path),
            "format_version": self.manifest["format_version"],
            "num_nodes": n,
            "num_edges": self.num_edges,
            "in_degree": deg,
            "feature_dim": self.feature_dim,
            "feature_dtype": self.feature_dtype,
            "feature_bytes": self.features.nbytes if self.features is not None else 0,
            "num_classes": self.num_classes,
        }
        if self.labels is not None:
            out["num_outputs"] = self.num_outputs
            out.update(label_stats(self.labels, self.task, self.num_classes))
        out["splits"] = {name: int(idx.shape[0]) for name, idx in self.splits.items()}
        if self.edge_split_info is not None:
            out["edge_split"] = self.edge_split_info
        disk = {name: dir_size(self.path / name) for name in self._arrays}
        manifest_bytes = (self.path / "manifest.json").stat().st_size
        out["disk_bytes"] = {"total": sum(disk.values()) + manifest_bytes, **disk}
        out["options"] = self.manifest.get("options", {})
        return out

    # -- verification -------------------------------------------------------------------------

    def verify(self, slice_bytes: int = 32 << 20) -> list[str]:
        """Re-check checksums and invariants; returns the problems found (empty when sound).

        Checks: every array's sha256 against the manifest; indptr starts at 0,
        never decreases and ends at E; every index is a node id; sources are
        sorted within each destination (and distinct after ``dedup``); labels
        valid for the task (class ids in ``-1..C-1``, multilabel 0/1, regression
        targets finite with whole NaN rows); split indices sorted, distinct, in range and disjoint;
        edge splits in range, val/test pairs out of the topology and train pairs in it;
        features finite unless imported with ``allow_nonfinite``.
        """
        problems: list[str] = []
        allow_nonfinite = bool(self.manifest.get("options", {}).get("allow_nonfinite", False))
        total = sum(a.nbytes for a in self._arrays.values())
        with Progress("verifying", total, "B") as bar:
            for name, arr in self._arrays.items():
                h = hashlib.sha256()
                rows = max(1, slice_bytes // max(1, arr.row_bytes))
                for start, block in arr.iter_slices(rows):
                    h.update(memoryview(np.ascontiguousarray(block)).cast("B"))
                    if name == "features" and not allow_nonfinite and not problems_has(problems, "features"):
                        bad = nonfinite_mask(block, arr.dtype)
                        if bad.any():
                            r, c = np.argwhere(bad)[0]
                            problems.append(f"features: node {start + int(r)} feature {int(c)} is not finite")
                    bar.update(block.nbytes)
                if h.hexdigest() != self.array_records[name]["sha256"]:
                    problems.append(f"{name}: sha256 differs from the manifest (the file changed or is damaged)")
        problems += self._check_topology()
        problems += self._check_labels_and_splits()
        if self.edge_splits and not problems_has(problems, "topology"):
            problems += split_problems(self.edge_splits, self.edge_split_info, self.num_nodes, self.indptr, self.indices)
        return problems

    def _check_topology(self) -> list[str]:
        ptr = np.asarray(self.indptr)
        idx = np.asarray(self.indices)
        if ptr.shape[0] != self.num_nodes + 1:
            return [f"topology/indptr has {ptr.shape[0]} entries, expected num_nodes + 1 = {self.num_nodes + 1}"]
        if ptr[0] != 0 or ptr[-1] != self.num_edges:
            return [f"topology/indptr runs from {ptr[0]} to {ptr[-1]}, expected 0 to num_edges = {self.num_edges}"]
        unique = bool(self.manifest.get("options", {}).get("dedup", False))
        step = 1 << 20
        for s in range(0, self.num_nodes, step):
            e = min(s + step, self.num_nodes)
            # a decreasing indptr is reported here: the kernel would index past the ends of `indices`
            down = np.flatnonzero(np.diff(ptr[s:e + 1]) < 0)
            if down.size:
                return ["topology: " + _CSC_PROBLEMS[1].format(v=s + int(down[0]))]
            code, v = kernels.check_segments(ptr[s:e + 1], idx, 0, self.num_nodes, unique)
            if code:
                return ["topology: " + _CSC_PROBLEMS[code].format(v=s + v)]
        return []

    def _check_labels_and_splits(self) -> list[str]:
        problems = []
        if self.labels is not None:
            problems += label_problems(self.labels, self.task, self.num_classes)
        seen = np.zeros(self.num_nodes, dtype=bool)
        for name, idx in self.splits.items():
            idx = np.asarray(idx)
            if idx.size and (idx.min() < 0 or idx.max() >= self.num_nodes):
                problems.append(f"splits/{name}: node index outside 0..N-1")
                continue
            if idx.size > 1 and not (np.diff(idx) > 0).all():
                problems.append(f"splits/{name}: indices not sorted and distinct")
            if seen[idx].any():
                problems.append(f"splits/{name}: shares nodes with another split")
            seen[idx] = True
        return problems


def problems_has(problems: list[str], prefix: str) -> bool:
    """Whether a problem starting with ``prefix`` was already recorded."""
    return any(p.startswith(prefix) for p in problems)


def open_dataset(path: str | os.PathLike) -> Dataset:
    """Open the dataset directory at ``path``.

    Raises:
        FormatError: not a dataset, a damaged or incomplete one, or a newer format version.
    """
    return Dataset(path)
