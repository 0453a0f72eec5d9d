"""Import graphs from PyG and OGB: :func:`from_pyg` and :func:`from_ogb`.

Both run the ordinary import (:func:`diskgraph.store.importer.import_dataset`): the same checks,
memory budget, atomic output and manifest as ``diskgraph preprocess import``, and the same arrays
as that command makes from the same inputs (a labelled graph without splits gets the CLI's default
``random:0.6,0.2,0.2`` split, seed 0). ``torch_geometric`` is needed only to pass a ``Data``;
``ogb`` is never needed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .store.errors import InputError
from .store.sources.edges import EdgeSource
from .store.sources.features import FeatureSource

_SPLIT_ATTRS = {"train": ("train_mask", "train_idx"), "val": ("val_mask", "val_idx", "valid_mask", "valid_idx"),
                "test": ("test_mask", "test_idx")}


class ArrayEdges(EdgeSource):
    """Edges held in memory as ``src``/``dst`` arrays (a PyG ``edge_index``), read in chunks."""

    def __init__(self, src: np.ndarray, dst: np.ndarray, label: str):
        self.src, self.dst, self.label = src, dst, label
        self.num_edges = int(src.shape[0])

    def chunks(self, max_edges: int):
        for s in range(0, self.num_edges, max_edges):
            yield s, self.src[s:s + max_edges].astype(np.int64), self.dst[s:s + max_edges].astype(np.int64)

    def describe(self) -> dict:
        return {"kind": "pyg", "attribute": "edge_index"}


class ArrayFeatures(FeatureSource):
    """Features held in memory (a PyG ``x``), read in row slices."""

    def __init__(self, array: np.ndarray, dtype: str, label: str):
        self.array, self.dtype, self.label = array, dtype, label
        self.num_rows, self.dim = (int(s) for s in array.shape)

    def describe(self) -> dict:
        return {"kind": "pyg", "attribute": "x", "dtype": self.dtype}


def _numpy(value, name: str) -> tuple[np.ndarray, str]:
    """A torch tensor or array-like → (numpy array, logical dtype name); bfloat16 as uint16 bits."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch_geometric needs torch
        torch = None
    if torch is not None and isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        if t.is_sparse:
            raise InputError(f"data.{name} is a sparse tensor; pass a dense one (data.{name}.to_dense())")
        if t.dtype == torch.bfloat16:
            return t.contiguous().view(torch.int16).numpy().view(np.uint16), "bfloat16"
        a = t.contiguous().numpy()
        return a, a.dtype.name
    a = np.asarray(value)
    if a.dtype.hasobject:
        raise InputError(f"data.{name} holds Python objects; give a numeric tensor")
    return a, a.dtype.name


def _options(overwrite, undirected, memory_budget, options):
    from .store.importer import ImportOptions

    opts = ImportOptions(**(options or {}))
    opts.overwrite = bool(overwrite)
    opts.undirected = bool(undirected)
    if memory_budget is not None:
        opts.memory_budget = int(memory_budget)
    return opts


def _random_split(split, seed: int, labels, splits) -> tuple | None:
    from .store.sources.labels import parse_random_split

    if split is not None:
        if splits:
            raise InputError("split= and the input's own train/val/test splits both give splits; drop split= or the splits")
        return parse_random_split(split), int(seed)
    if not splits and labels is not None:
        return (0.6, 0.2, 0.2), int(seed)
    return None


def _edge_split(spec: str | None, seed: int):
    from .store.edge_splits import EdgeSplitSpec

    return EdgeSplitSpec.from_options(spec, None, None, seed)


def from_pyg(data, out: str | os.PathLike, *, overwrite: bool = False, undirected: bool | None = None,
             memory_budget: int | None = None, dedup: bool = False, drop_self_loops: bool = False,
             feature_dtype: str | None = None, split: str | None = None, seed: int = 0, task: str | None = None,
             edge_split: str | None = None, **options) -> Path:
    """Import a PyG ``Data`` as a dataset directory at ``out``.

    Reads ``data.edge_index`` ``[2, E]`` (row 0 → row 1: PyG's message direction, stored as CSC over
    in-edges), ``data.x`` ``[N, F]`` (float32/float16/bfloat16 kept, float64 narrowed to float32),
    ``data.y`` — ``[N]`` (or ``[N, 1]``) class ids, -1 = unlabelled; ``[N, C]`` of 0/1 (PPI, Yelp: multilabel);
    float ``[N]`` / ``[N, T]`` that are not class ids or 0/1 (regression targets, NaN row = unlabelled) — and
    ``data.train_mask`` /
    ``val_mask`` / ``test_mask`` (boolean ``[N]`` or index tensors; ``*_idx`` names work too). Without
    ``x`` the node count is ``data.num_nodes`` when set, else the labels' length, else the largest id + 1.

    Args:
        data: a ``torch_geometric.data.Data`` (on any device).
        out: the dataset directory to create.
        overwrite: replace an existing dataset at ``out``.
        undirected: add the reverse of every edge (None or False: the edges as given; PyG's
            datasets usually hold both directions already).
        memory_budget: bytes the import may hold (default: half the available memory, at most 4 GiB).
        dedup, drop_self_loops, feature_dtype: as ``preprocess import``'s options.
        split: ``"random:TRAIN,VAL,TEST"`` to draw splits (seed ``seed``) instead of the data's masks;
            a labelled graph without masks gets ``random:0.6,0.2,0.2``.
        task: the label kind of ``data.y``: ``classification``, ``multilabel`` or ``regression`` (None: told from
            the values, as above); one the values contradict is refused.
        edge_split: ``"random:TRAIN,VAL,TEST"`` to split the edges for link prediction (seed ``seed``), as
            ``preprocess import --edge-split``: val/test edges are left out of the topology.
        **options: further :class:`~diskgraph.store.importer.ImportOptions` fields (``num_classes``,
            ``allow_nonfinite``).

    Returns:
        The dataset directory.

    Raises:
        InputError: not a ``Data``, no ``edge_index``, shapes that disagree or ids out of range — one
            sentence; nothing is left at ``out``.
    """
    try:
        from torch_geometric.data import Data
    except ImportError:
        raise InputError("from_pyg needs torch_geometric, which is not installed; pip install 'diskgraph[pyg]'") from None
    if not isinstance(data, Data):
        hint = " (a HeteroData: convert it with data.to_homogeneous())" if type(data).__name__ == "HeteroData" else ""
        raise InputError(f"from_pyg got a {type(data).__name__}{hint}; pass a torch_geometric.data.Data with an edge_index")
    keys = set(data.keys())
    if "edge_index" not in keys or data.edge_index is None:
        raise InputError("the Data has no edge_index; from_pyg needs edge_index [2, E] (convert an adj_t with "
                         "torch_geometric.utils.to_edge_index)")
    ei, _ = _numpy(data.edge_index, "edge_index")
    if ei.ndim != 2 or ei.shape[0] != 2:
        raise InputError(f"data.edge_index has shape {tuple(ei.shape)}; it must be [2, E] (source row, target row): "
                         "transpose it with edge_index.t()")
    if ei.dtype.kind not in "iu":
        raise InputError(f"data.edge_index has dtype {ei.dtype}; node ids must be integers: convert it with edge_index.long()")

    num_nodes = None
    features = None
    x = data.x if "x" in keys else None
    if x is not None:
        xa, xdt = _numpy(x, "x")
        if xa.ndim == 1:
            xa = xa.reshape(-1, 1)
        if xa.ndim != 2:
            raise InputError(f"data.x has shape {tuple(xa.shape)}; features must be [num_nodes, F]: reshape it")
        features = ArrayFeatures(xa, xdt, "data.x")
        if "num_nodes" in keys and data.num_nodes != xa.shape[0]:
            raise InputError(f"data.x has {xa.shape[0]} rows but data.num_nodes is {data.num_nodes}; give one feature row per node")
    elif "num_nodes" in keys and data.num_nodes is not None:
        num_nodes = int(data.num_nodes)

    labels = None
    y = data.y if "y" in keys else None
    if y is not None:
        labels, _ = _numpy(y, "y")
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
    n_expected = features.num_rows if features is not None else num_nodes
    if labels is not None and n_expected is not None and labels.shape[0] != n_expected:
        what = "data.x has" if features is not None else "data.num_nodes is"
        raise InputError(f"data.y has {labels.shape[0]} entries but {what} {n_expected}; give one label per node")

    if ei.size:
        lo, hi = int(ei.min()), int(ei.max())
        n = n_expected if n_expected is not None else (labels.shape[0] if labels is not None else None)
        if lo < 0:
            raise InputError(f"data.edge_index holds negative node id {lo}; node ids must be 0..num_nodes-1: fix edge_index")
        if n is not None and hi >= n:
            origin = ("the rows of data.x" if features is not None else "data.num_nodes" if num_nodes is not None
                      else "the length of data.y")
            raise InputError(f"data.edge_index holds node id {hi} but the graph has {n} nodes ({origin}); "
                             "node ids must be 0..num_nodes-1: fix edge_index or the node count")

    splits: dict[str, tuple[np.ndarray, str]] = {}
    for name, attrs in _SPLIT_ATTRS.items():
        for attr in attrs:
            if attr in keys and getattr(data, attr) is not None:
                splits[name] = (_numpy(getattr(data, attr), attr)[0], f"data.{attr}")
                break
    random_split = _random_split(split, seed, labels, splits)
    if random_split is not None:
        splits = {}

    from .store.importer import import_dataset

    opts = _options(overwrite, undirected, memory_budget, {"dedup": dedup, "drop_self_loops": drop_self_loops,
                                                           "feature_dtype": feature_dtype, "task": task, **options})
    if num_nodes is not None and opts.num_nodes is None:
        opts.num_nodes = num_nodes
    edges = ArrayEdges(ei[0], ei[1], "data.edge_index")
    return import_dataset(out, edges, features=features, labels=labels, labels_label="data.y",
                          splits=splits or None, random_split=random_split, options=opts,
                          sources={"from": "torch_geometric.data.Data"}, edge_split=_edge_split(edge_split, seed))


def from_ogb(directory: str | os.PathLike, out: str | os.PathLike, *, split: str | None = None,
             overwrite: bool = False, undirected: bool | None = None, memory_budget: int | None = None,
             dedup: bool = False, drop_self_loops: bool = False, feature_dtype: str | None = None,
             seed: int = 0, task: str | None = None, edge_split: str | None = None, **options) -> Path:
    """Import an OGB node-property-prediction directory (as ogb downloads it; ogb itself is not needed).

    Reads ``DIR/raw/edge.csv.gz`` (``src,dst`` rows), ``node-feat.csv.gz``, ``node-label.csv.gz``
    (nan → unlabelled, -1; several columns: multilabel when all 0/1, else regression targets with empty/nan =
    unlabelled), ``num-node-list.csv.gz`` and ``DIR/split/SCHEME/{train,valid,test}.csv.gz``
    (``valid`` becomes ``val``), or ogb's binary ``raw/data.npz`` + ``raw/node-label.npz``; ``DIR`` may
    also be ``raw/`` itself or a directory holding those files directly. CSV files are streamed.
    See :mod:`diskgraph.store.sources.ogb`.

    Args:
        directory: the dataset directory.
        out: the dataset directory to create.
        split: the split scheme (a folder under ``split/``); needed only when there are several.
        undirected: add the reverse of every edge; None follows ogb's ``add_inverse_edge`` for the
            dataset named by the directory (``ogbn_products``, ``ogbn_proteins``: True), else False.
        overwrite, memory_budget, dedup, drop_self_loops, feature_dtype, seed, task, edge_split, **options: as
            :func:`from_pyg`.

    Returns:
        The dataset directory.
    """
    from .store.importer import import_dataset
    from .store.label_kinds import check_task
    from .store.sources.ogb import ADD_INVERSE_EDGE, dataset_name, open_ogb

    inputs, num_nodes = open_ogb(directory, split, check_task(task))
    if undirected is None:
        undirected = ADD_INVERSE_EDGE.get(dataset_name(directory), False)
    random_split = _random_split(None, seed, inputs.labels, inputs.splits)
    opts = _options(overwrite, undirected, memory_budget, {"dedup": dedup, "drop_self_loops": drop_self_loops,
                                                           "feature_dtype": feature_dtype, "task": task, **options})
    if num_nodes is not None and opts.num_nodes is None and inputs.features is None:
        opts.num_nodes = num_nodes
    return import_dataset(out, inputs.edges, features=inputs.features, labels=inputs.labels,
                          labels_label=inputs.labels_label, splits=inputs.splits or None, random_split=random_split,
                          options=opts, sources={"from": "ogb", "directory": str(Path(directory).absolute()),
                                                 "split": split}, edge_split=_edge_split(edge_split, seed))
