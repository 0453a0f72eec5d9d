"""An OGB node-property-prediction directory, as ogb downloads it, read without the ogb package.

Layout (``DIR`` is the dataset root; ``DIR/raw`` itself, or a directory holding the raw files
directly, are accepted too)::

    DIR/raw/edge.csv.gz            E rows "src,dst", no header (src → dst, PyG's message direction)
    DIR/raw/node-feat.csv.gz       N rows of F floats (optional)
    DIR/raw/node-label.csv.gz      N rows of one class id; "nan" or empty = unlabelled (-1) (optional); several
                                   columns: multilabel when all 0/1, else regression targets (empty = NaN)
    DIR/raw/num-node-list.csv.gz   one row: N (optional)
    DIR/split/SCHEME/{train,valid,test}.csv.gz   one node id per row (``valid`` → ``val``)

The binary layout ogb uses for its largest graphs (``raw/data.npz`` with ``edge_index``,
``node_feat``, ``num_nodes_list``; ``raw/node-label.npz`` with ``node_label``) is read too. ``.csv``
files without ``.gz`` are accepted. CSV files are streamed in blocks (pyarrow's CSV reader), never
loaded whole; labels and splits are node-sized and held in memory.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from ..errors import InputError
from .edges import NpzEdges, TableEdges
from .features import FeatureSource, NpzFeatures
from .labels import npz_array
from .npy import npz_keys
from .npz_layout import NpzInputs

ADD_INVERSE_EDGE = {"ogbn-products": True, "ogbn-proteins": True, "ogbn-arxiv": False, "ogbn-papers100M": False}
"""ogb's ``add_inverse_edge`` per dataset (its master.csv): whether the raw edges hold each undirected edge once."""

_BLOCK = 16 << 20


def _csv_reader(path: Path, what: str, column_types: dict | None = None):
    read = pacsv.ReadOptions(block_size=_BLOCK, autogenerate_column_names=True)
    convert = pacsv.ConvertOptions(column_types=column_types, null_values=["", "nan", "NaN", "NAN"],
                                   strings_can_be_null=True)
    try:
        return pacsv.open_csv(path, read_options=read, convert_options=convert)
    except (pa.ArrowInvalid, OSError, EOFError) as e:
        raise InputError(f"{what} file {path} cannot be read as CSV ({str(e).splitlines()[0]}); fix or re-download it") from None


def _batches(path: Path, what: str, column_types: dict | None = None):
    reader = _csv_reader(path, what, column_types)
    while True:
        try:
            batch = next(reader)
        except StopIteration:
            return
        except (pa.ArrowInvalid, OSError, EOFError) as e:
            raise InputError(f"{what} file {path} holds a value that cannot be read ({str(e).splitlines()[0]}); fix or re-download it") from None
        yield batch


def _count_lines(path: Path) -> int:
    """Non-empty lines of a (gzip) text file, streamed."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    n, last = 0, b"\n"
    try:
        with opener(path, "rb") as f:
            while True:
                block = f.read(8 << 20)
                if not block:
                    break
                n += block.count(b"\n")
                last = block[-1:]
    except (OSError, EOFError) as e:
        raise InputError(f"file {path} cannot be read ({e}); fix or re-download it") from None
    return n + (last != b"\n")


def _typed_batches(path: Path, what: str, typ: pa.DataType):
    names = _csv_reader(path, what).schema.names
    return names, _batches(path, what, {n: typ for n in names})


def read_column(path: Path, what: str, kind: str, task: str | None = None) -> np.ndarray:
    """A one-column CSV (``kind`` ``ids``: int64 node ids; ``labels``: see :func:`ogb_labels`, given ``task``).

    Two or more label columns come back as a float64 ``[N, C]`` array (nan kept) for the importer to judge.
    """
    names, batches = _typed_batches(path, what, pa.int64() if kind == "ids" else pa.float64())
    if kind == "ids" and len(names) != 1:
        raise InputError(f"{what} file {path} has {len(names)} columns; write one node id per row")
    parts = []
    for batch in batches:
        if kind == "ids" and batch.column(0).null_count:
            raise InputError(f"{what} file {path} has empty rows; write one node id per row")
        parts.append(np.stack([c.to_numpy(zero_copy_only=False) for c in batch.columns], axis=1))
    a = np.concatenate(parts) if parts else np.zeros((0, len(names)))
    if kind == "ids":
        return a[:, 0].astype(np.int64)
    return ogb_labels(a, task)


def ogb_labels(y: np.ndarray, task: str | None) -> np.ndarray:
    """OGB's labels as the importer takes them: one column of whole numbers >= 0 (nan = unlabelled) becomes int64
    class ids with -1 for nan, unless ``task`` is ``regression``; anything else (fractions, several columns) is
    returned as given (nan kept) for the importer to tell or check the label kind."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim == 1 and y.dtype.kind == "f" and task != "regression":
        known = y[~np.isnan(y)]
        if np.all(known == np.round(known)) and np.all(known >= 0) and np.all(np.isfinite(known)):
            return np.where(np.isnan(y), -1, y).astype(np.int64)
    return y


class CsvFeatures(FeatureSource):
    """Features in a header-less CSV (``N`` rows of ``F`` floats), streamed; stored as float32."""

    def __init__(self, path: Path, num_rows: int | None = None):
        self.path = Path(path)
        self.label = f"features file {self.path}"
        reader = _csv_reader(self.path, "features")
        self.dim = len(reader.schema.names)
        self.names = list(reader.schema.names)
        self.num_rows = int(num_rows) if num_rows is not None else _count_lines(self.path)
        self.dtype = "float32"

    def slices(self, rows_per_slice: int):
        start = 0
        rows_per_slice = max(1, int(rows_per_slice))
        for batch in _batches(self.path, "features", {n: pa.float64() for n in self.names}):
            if batch.num_columns != self.dim:
                raise InputError(f"{self.label} has rows of {batch.num_columns} values after rows of {self.dim}; every row needs {self.dim}")
            for j in range(self.dim):
                if batch.column(j).null_count:
                    raise InputError(f"{self.label} has empty values near row {start + 1}; every node needs {self.dim} feature values")
            for s in range(0, batch.num_rows, rows_per_slice):
                part = batch.slice(s, rows_per_slice)
                k = part.num_rows
                if start + k > self.num_rows:
                    raise InputError(f"{self.label} has more than {self.num_rows} rows (the node count); give one row per node")
                rows = np.empty((k, self.dim), dtype=np.float32)
                for j in range(self.dim):
                    rows[:, j] = part.column(j).to_numpy(zero_copy_only=False)
                yield start, rows
                start += k
        if start != self.num_rows:
            raise InputError(f"{self.label} has {start} rows but the graph has {self.num_rows} nodes; give one row per node")

    def describe(self) -> dict:
        return {"kind": "ogb-csv", "path": str(self.path.absolute()), "dim": self.dim}


def _find(d: Path, stem: str) -> Path | None:
    for suffix in (".csv.gz", ".csv"):
        p = d / (stem + suffix)
        if p.is_file():
            return p
    return None


def _split_dir(root: Path, raw: Path, split: str | None) -> Path | None:
    base = next((b for b in (root / "split", raw.parent / "split") if b.is_dir()), None)
    if base is None:
        return None
    if _find(base, "train"):
        return base
    schemes = sorted(p.name for p in base.iterdir() if p.is_dir())
    if split is not None:
        if split not in schemes:
            raise InputError(f"OGB directory {root} has no split scheme {split!r} (it has: {', '.join(schemes) or 'none'}); "
                             "pass one of those as split")
        return base / split
    if len(schemes) > 1:
        raise InputError(f"OGB directory {root} has split schemes {', '.join(schemes)}; choose one with split= (--ogb-split)")
    return base / schemes[0] if schemes else None


def dataset_name(directory: str | os.PathLike) -> str:
    """``ogbn-products`` from ``…/ogbn_products`` (or ``…/ogbn_products/raw``)."""
    p = Path(directory).absolute()
    if p.name == "raw":
        p = p.parent
    return p.name.replace("_", "-")


def open_ogb(directory: str | os.PathLike, split: str | None = None,
             task: str | None = None) -> tuple[NpzInputs, int | None]:
    """Open an OGB node-property-prediction directory; returns (inputs, node count from num-node-list or None).

    ``task`` is the import's label kind, when given (``regression`` keeps one column of whole numbers as targets).

    Raises:
        InputError: the directory or its edge file is missing, a file cannot be read, or the split scheme is ambiguous.
    """
    root = Path(directory)
    if not root.is_dir():
        raise InputError(f"OGB directory {root} does not exist or is not a directory; pass the dataset's directory (holding raw/ and split/)")
    raw = root / "raw" if (root / "raw").is_dir() else root
    num_nodes = None
    labels = None
    labels_label = "labels"
    if (raw / "data.npz").is_file():
        npz = raw / "data.npz"
        keys = set(npz_keys(npz))
        if "edge_index" not in keys:
            raise InputError(f"npz file {npz} has no 'edge_index' array; re-download the OGB dataset")
        edges = NpzEdges(npz, "edge_index")
        features = NpzFeatures(npz, "node_feat") if "node_feat" in keys else None
        if "num_nodes_list" in keys:
            num_nodes = int(np.asarray(npz_array(npz, "num_nodes_list")).ravel()[0])
        lab = raw / "node-label.npz"
        if lab.is_file():
            y = ogb_labels(npz_array(lab, "node_label"), task)
            labels, labels_label = y, f"member 'node_label' of npz file {lab}"
    else:
        edge_file = _find(raw, "edge")
        if edge_file is None:
            raise InputError(f"OGB directory {root} has no raw/edge.csv.gz (nor edge.csv or raw/data.npz); "
                             "pass the directory ogb downloaded (holding raw/ and split/)")
        edges = TableEdges(edge_file, "csv", "0", "1")
        count = _find(raw, "num-node-list")
        if count is not None:
            values = read_column(count, "node count", "ids")
            if values.size != 1:
                raise InputError(f"node count file {count} has {values.size} rows; a node-property dataset holds one graph")
            num_nodes = int(values[0])
        feat = _find(raw, "node-feat")
        features = CsvFeatures(feat, num_nodes) if feat is not None else None
        lab = _find(raw, "node-label")
        if lab is not None:
            labels, labels_label = read_column(lab, "labels", "labels", task), f"labels file {lab}"
    splits: dict[str, tuple[np.ndarray, str]] = {}
    sdir = _split_dir(root, raw, split)
    if sdir is not None:
        for ogb_name, name in (("train", "train"), ("valid", "val"), ("test", "test")):
            f = _find(sdir, ogb_name)
            if f is not None:
                splits[name] = (read_column(f, f"{name} split", "ids"), f"{name} split file {f}")
    return NpzInputs(edges, features, labels, labels_label, splits), num_nodes
