"""Labels and train/val/test splits: node-sized arrays, checked and held in memory.

Labels are read here; which kinds exist (class ids, multilabel 0/1 rows, regression targets) and how each is
checked and stored is :mod:`diskgraph.store.label_kinds`. Splits
are sorted int64 node-index arrays; they may be given as index arrays, boolean
masks of length ``num_nodes``, or drawn at random (``random:0.6,0.2,0.2``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..label_kinds import CLASSIFICATION, check_labels, labelled_mask
from .npy import NpzMember, open_npy, require_file

__all__ = ["check_labels"]  # (declared in diskgraph.store.label_kinds, with the other label kinds)

SPLIT_NAMES = ("train", "val", "test")


def read_node_array(path: str | os.PathLike, what: str, option: str, column: str | None = None) -> np.ndarray:
    """A node-sized 1-D array from ``.npy`` or Parquet (``column``, or the only column), loaded whole."""
    p = require_file(path, what, option)
    name = p.name.lower()
    if name.endswith(".npy"):
        return np.asarray(open_npy(p, what, option))
    if name.endswith((".parquet", ".pq")):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(p)
        except (pa.ArrowInvalid, OSError) as e:
            raise InputError(f"{what} file {p} is not a readable Parquet file ({str(e).splitlines()[0]}); re-create it") from None
        if column is None:
            if table.num_columns != 1:
                hint = "name the one to use with --label-column" if option == "--labels" else "keep only the index or mask column"
                raise InputError(f"{what} file {p} has {table.num_columns} columns; {hint}")
            column = table.column_names[0]
        if column not in table.column_names:
            raise InputError(f"{what} file {p} has no column {column!r} (it has: {', '.join(table.column_names[:8])}); name the right column")
        col = table.column(column)
        if col.null_count and option == "--labels" and pa.types.is_floating(col.type):
            return col.to_numpy()  # empty = NaN: an unlabelled node of regression targets
        if col.null_count:
            raise InputError(f"column {column!r} of {what} file {p} has {col.null_count} empty values; use -1 for unlabelled nodes (NaN in a float column of regression targets)")
        return col.to_numpy()
    raise InputError(f"cannot tell the format of {what} file {p} from its name; use a .npy or .parquet file")


def load_labels(path: str | os.PathLike, column: str | None = None, option: str = "--labels") -> tuple[np.ndarray, str]:
    """Labels from a ``.npy`` or Parquet file; returns (labels as given, label for messages)."""
    return read_node_array(path, "labels", option, column), f"labels file {Path(path)}"


def npz_array(path: str | os.PathLike, key: str) -> np.ndarray:
    """A node-sized member of an ``.npz`` archive, loaded whole."""
    m = NpzMember(path, key)
    try:
        return m.read_all()
    finally:
        m.close()


def as_index_split(values: np.ndarray, num_nodes: int, name: str, label: str) -> np.ndarray:
    """An index array or boolean mask → sorted unique int64 node indices.

    Raises:
        InputError: wrong dtype, mask of the wrong length, an index out of range, or repeated indices.
    """
    values = np.asarray(values)
    if values.ndim != 1:
        raise InputError(f"{label} ({name} split) has shape {values.shape}; a split must be a 1-D index array or boolean mask")
    if values.dtype == np.bool_:
        if values.shape[0] != num_nodes:
            raise InputError(f"{label} ({name} split) is a boolean mask of length {values.shape[0]} but the graph has {num_nodes} nodes; give one entry per node")
        return np.flatnonzero(values).astype(np.int64)
    if values.dtype.kind not in "iu":
        raise InputError(f"{label} ({name} split) has dtype {values.dtype}; a split must hold integer node indices or booleans")
    idx = values.astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= num_nodes):
        bad = int(idx[(idx < 0) | (idx >= num_nodes)][0])
        raise InputError(f"{label} ({name} split) holds node index {bad}, outside 0..{num_nodes - 1}; fix the index or the node count")
    out = np.unique(idx)
    if out.size != idx.size:
        raise InputError(f"{label} ({name} split) lists {idx.size - out.size} node indices more than once; remove the repeats")
    return out


def parse_random_split(spec: str) -> tuple[float, float, float]:
    """``random:0.6,0.2,0.2`` → fractions (train, val, test)."""
    try:
        kind, fracs = spec.split(":", 1)
        parts = tuple(float(x) for x in fracs.split(","))
    except ValueError:
        kind, parts = "", ()
    if kind != "random" or len(parts) != 3 or any(f < 0 for f in parts) or sum(parts) > 1 + 1e-9:
        raise InputError(f"--split {spec!r} is not understood; write random:TRAIN,VAL,TEST with fractions that sum to at most 1, e.g. random:0.6,0.2,0.2")
    return parts  # type: ignore[return-value]


def random_splits(fractions: tuple[float, float, float], seed: int, num_nodes: int,
                  labels: np.ndarray | None, task: str = CLASSIFICATION) -> dict[str, np.ndarray]:
    """Random disjoint splits over the labelled nodes (all nodes when there are no labels).

    ``labels`` are stored labels of kind ``task``; which nodes are labelled is
    :func:`~diskgraph.store.label_kinds.labelled_mask` (class id >= 0, a regression row not NaN, every node of a
    multilabel dataset).

    A permutation from ``numpy.random.default_rng(seed)``; the first
    ``round(f_train * n)`` go to train, the next ``round(f_val * n)`` to val,
    the next ``round(f_test * n)`` to test; each split is sorted.
    """
    pool = np.flatnonzero(labelled_mask(labels, task)) if labels is not None else np.arange(num_nodes, dtype=np.int64)
    perm = np.random.default_rng(seed).permutation(pool)
    n = pool.size
    a = int(round(fractions[0] * n))
    b = min(n, a + int(round(fractions[1] * n)))
    c = min(n, b + int(round(fractions[2] * n)))
    return {"train": np.sort(perm[:a]), "val": np.sort(perm[a:b]), "test": np.sort(perm[b:c])}


def check_disjoint(splits: dict[str, np.ndarray], num_nodes: int, labels: dict[str, str] | None = None) -> None:
    """Refuse splits that share nodes, naming the pair, their origins (``labels``) and one shared node."""
    seen = np.full(num_nodes, -1, dtype=np.int8)
    names = list(splits)

    def named(split: str) -> str:
        origin = (labels or {}).get(split)
        return f"the {split} split ({origin})" if origin else f"the {split} split"

    for k, name in enumerate(names):
        idx = splits[name]
        clash = seen[idx]
        if (clash >= 0).any():
            j = int(np.argmax(clash >= 0))
            other = names[int(clash[j])]
            count = int((clash >= 0).sum())
            raise InputError(f"{named(other)} and {named(name)} share {count} nodes (node {int(idx[j])} is in both); "
                             "splits must be disjoint: fix the split files")
        seen[idx] = k
