"""Edge-list inputs, read in chunks of bounded size.

An :class:`EdgeSource` yields ``(first_edge_index, src, dst)`` chunks of int64
node ids. Sources check shape and dtype when opened; node-id ranges are checked
chunk by chunk by the importer (which knows the node count).

Accepted inputs:

* ``.npy`` of shape ``[2, E]`` or ``[E, 2]`` (memory-mapped), integer dtype;
* Parquet or CSV with source/target columns, one file or a directory of parts;
* a member of an ``.npz`` archive (the shared ``data.npz`` layout), streamed;
* any generator of chunks (the synthetic graph generator).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..errors import InputError
from .npy import NpzMember, advise_sequential, open_npy, require_file
from .tables import TableReader, part_files, table_format

Chunk = tuple[int, np.ndarray, np.ndarray]


class EdgeSource:
    """Base of edge inputs.

    Attributes:
        label: how messages name this input (``edges file /data/e.npy``).
        num_edges: number of edges when known before reading (None for CSV).
    """

    label: str = "edges"
    num_edges: int | None = None

    def chunks(self, max_edges: int) -> Iterator[Chunk]:
        """Yield ``(first_edge_index, src, dst)`` with at most ``max_edges`` int64 ids each."""
        raise NotImplementedError

    def describe(self) -> dict:
        """What to record about this input in a manifest."""
        return {"kind": type(self).__name__}


def _check_edge_dtype(dtype: np.dtype, label: str) -> None:
    if dtype.kind not in "iu":
        raise InputError(
            f"{label} has dtype {dtype}; node ids must be integers (int32 or int64): convert it, e.g. edges.astype('int64')"
        )


def _check_edge_shape(shape: tuple[int, ...], label: str) -> bool:
    """True when the layout is [2, E], False for [E, 2]."""
    if len(shape) == 2 and shape[0] == 2:
        return True
    if len(shape) == 2 and shape[1] == 2:
        return False
    raise InputError(f"{label} has shape {tuple(shape)}; edges must be an array of shape [2, E] or [E, 2]: reshape it")


class NpyEdges(EdgeSource):
    """Edges in a ``.npy`` file, ``[2, E]`` or ``[E, 2]``, memory-mapped."""

    def __init__(self, path: str | os.PathLike, option: str = "--edges"):
        self.path = require_file(path, "edges", option)
        self.label = f"edges file {self.path}"
        self.array = open_npy(self.path, "edges", option)
        advise_sequential(self.array)
        self.rows_first = _check_edge_shape(self.array.shape, self.label)
        _check_edge_dtype(self.array.dtype, self.label)
        self.num_edges = int(self.array.shape[1] if self.rows_first else self.array.shape[0])

    def chunks(self, max_edges: int) -> Iterator[Chunk]:
        a = self.array
        for s in range(0, self.num_edges, max_edges):
            e = min(s + max_edges, self.num_edges)
            if self.rows_first:
                yield s, a[0, s:e].astype(np.int64), a[1, s:e].astype(np.int64)
            else:
                block = np.asarray(a[s:e])
                yield s, block[:, 0].astype(np.int64), block[:, 1].astype(np.int64)

    def describe(self) -> dict:
        return {"kind": "npy", "path": str(self.path.absolute()), "layout": "[2,E]" if self.rows_first else "[E,2]",
                "dtype": self.array.dtype.name}


class NpzEdges(EdgeSource):
    """Edges stored as a member of an ``.npz`` archive, streamed without loading it.

    ``symmetric_upper=True`` reads a ``[2, E]`` array that holds each
    undirected edge once (the shared ``edges_upper`` layout) and yields both
    directions, ``2 * E`` edges in all.
    """

    def __init__(self, path: str | os.PathLike, key: str, symmetric_upper: bool = False):
        self.path = Path(path)
        self.key = key
        self.label = f"member {key!r} of npz file {self.path}"
        self.member = NpzMember(self.path, key)
        self.rows_first = _check_edge_shape(self.member.shape, self.label)
        _check_edge_dtype(self.member.dtype, self.label)
        if self.member.fortran:
            self.rows_first = not self.rows_first
        e = int(self.member.shape[1] if _check_edge_shape(self.member.shape, self.label) else self.member.shape[0])
        self._stored = e
        self.symmetric_upper = symmetric_upper
        self.num_edges = 2 * e if symmetric_upper else e

    def _pairs(self, max_edges: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        m, e, isz = self.member, self._stored, self.member.dtype.itemsize
        if self.rows_first:
            fa, fb = m.stream(0), m.stream(e * isz)
            try:
                for s in range(0, e, max_edges):
                    n = min(max_edges, e - s)
                    yield s, m.read_exact(fa, n * isz).astype(np.int64), m.read_exact(fb, n * isz).astype(np.int64)
            finally:
                fa.close()
                fb.close()
        else:
            f = m.stream(0)
            try:
                for s in range(0, e, max_edges):
                    n = min(max_edges, e - s)
                    block = m.read_exact(f, 2 * n * isz).reshape(n, 2)
                    yield s, block[:, 0].astype(np.int64), block[:, 1].astype(np.int64)
            finally:
                f.close()

    def chunks(self, max_edges: int) -> Iterator[Chunk]:
        yield from self._pairs(max_edges)
        if self.symmetric_upper:
            for s, u, v in self._pairs(max_edges):
                yield self._stored + s, v, u

    def describe(self) -> dict:
        return {"kind": "npz", "path": str(self.path.absolute()), "key": self.key,
                "symmetric_upper": self.symmetric_upper, "dtype": self.member.dtype.name}


class TableEdges(EdgeSource):
    """Edges in Parquet or CSV, one file or a directory of part files."""

    def __init__(self, path: str | os.PathLike, fmt: str | None = None, src_column: str = "source",
                 dst_column: str = "target", option: str = "--edges"):
        self.path = require_file(path, "edges", option)
        files, self.fmt = part_files(self.path, "edges", option, fmt)
        self.src_column, self.dst_column = src_column, dst_column
        self.label = f"edges {'directory' if self.path.is_dir() else 'file'} {self.path}"
        self.reader = TableReader(files, self.fmt, [src_column, dst_column], "edges", "--src-column/--dst-column")
        self.num_edges = self.reader.num_rows

    def chunks(self, max_edges: int) -> Iterator[Chunk]:
        pos = 0
        for _f, (src, dst) in self.reader.batches(max_edges):
            yield pos, src.astype(np.int64, copy=False), dst.astype(np.int64, copy=False)
            pos += len(src)

    def describe(self) -> dict:
        return {"kind": self.fmt, "path": str(self.path.absolute()), "files": len(self.reader.files),
                "src_column": self.src_column, "dst_column": self.dst_column}


class GeneratedEdges(EdgeSource):
    """Edges produced by a function (the synthetic generator): ``make(start, count) -> (src, dst)``.

    The function must be deterministic: the importer reads the edges twice.
    """

    def __init__(self, num_edges: int, make: Callable[[int, int], tuple[np.ndarray, np.ndarray]],
                 label: str = "generated edges", info: dict | None = None):
        self.num_edges = int(num_edges)
        self.make = make
        self.label = label
        self.info = info or {}

    def chunks(self, max_edges: int) -> Iterator[Chunk]:
        for s in range(0, self.num_edges, max_edges):
            n = min(max_edges, self.num_edges - s)
            src, dst = self.make(s, n)
            yield s, src, dst

    def describe(self) -> dict:
        return {"kind": "generated", **self.info}


def open_edges(path: str | os.PathLike, fmt: str | None = None, src_column: str = "source",
               dst_column: str = "target", option: str = "--edges") -> EdgeSource:
    """Open an edge input by format (``npy``, ``parquet``, ``csv``; None infers from the name)."""
    p = require_file(path, "edges", option)
    if fmt is None:
        if p.is_dir():
            fmt = None
        elif p.name.lower().endswith(".npy"):
            fmt = "npy"
        elif table_format(p) is None:
            raise InputError(f"cannot tell the format of edges file {p} from its name; pass --edges-format npy, parquet or csv")
    if fmt == "npy":
        return NpyEdges(p, option)
    return TableEdges(p, fmt, src_column, dst_column, option)
