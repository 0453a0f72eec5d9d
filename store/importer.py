"""Import a user's raw graph into a validated, versioned dataset directory.

Layout written (all arrays are Zarr v3, uncompressed; the directory is a Zarr group)::

    DIR/manifest.json          format diskgraph.dataset, version, counts, checksums, options
    DIR/topology/indptr        int64 [N+1]   CSC over in-edges: sources of v are
    DIR/topology/indices       int32 [E]     indices[indptr[v]:indptr[v+1]], sorted
    DIR/features               [N, F] float32 | float16 | bfloat16 (uint16 bits), chunked by rows
    DIR/labels                 int64 [N], -1 = unlabelled (classification); uint8 [N, C] of 0/1 (multilabel);
                               float32 [N] or [N, T], NaN row = unlabelled (regression): see label_kinds
    DIR/splits/{train,val,test} int64, sorted node indices
    DIR/edges/{train,val,test}  int64 [2, E_s] supervision edges of a link-prediction split (with ``edge_split``;
                               val/test edges are left out of the topology): see :mod:`~diskgraph.store.edge_splits`

Everything is written under a temporary name and renamed into place at the end
(:class:`~diskgraph.store.atomic.AtomicDirectory`). All checks that need no long
work (paths, shapes, dtypes, node counts, labels, splits) run before the
topology and features are streamed.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import psutil

from .atomic import AtomicDirectory
from .csc_builder import build_csc, max_node_id
from .edge_splits import EdgeSplitSpec, KeptEdges, plan_edge_split, write_edge_splits
from .errors import InputError
from .features_copy import copy_features, stored_feature_dtype
from .label_kinds import STORED_DTYPE, check_node_labels, check_task
from .manifest import write_manifest
from .progress import format_bytes, log
from .sources.edges import EdgeSource
from .sources.features import FeatureSource
from .sources.labels import as_index_split, check_disjoint, random_splits
from .zarr_arrays import RawArray, write_array, write_group

DATASET_FORMAT = "diskgraph.dataset"
DATASET_VERSION = 3
"""The dataset format version this diskgraph writes and the newest it reads (1 and 2 are read too: version 2 adds
the manifest's own checksum, version 3 the label kinds — ``task`` — whose ``labels`` array is not always int64
class ids; a manifest without ``task`` holds classification labels)."""

DATASET_CHECKSUM_SINCE = 2
"""The first dataset version whose manifest must carry its checksum."""


def default_memory_budget() -> int:
    """Half of the memory available now, at most 4 GiB and at least 256 MiB (bytes)."""
    return int(min(4 << 30, max(256 << 20, psutil.virtual_memory().available // 2)))


@dataclass
class ImportOptions:
    """Options of an import; all are recorded in the manifest.

    Attributes:
        undirected: add the reverse of every edge.
        dedup: keep one copy of repeated edges.
        drop_self_loops: remove edges u → u.
        allow_nonfinite: accept NaN/inf features.
        memory_budget: bytes this import may hold (default: :func:`default_memory_budget`).
        num_nodes: node count (default: feature rows, else labels, else largest id + 1).
        num_classes: class count (default: largest label + 1; multilabel: the label columns; not for regression).
        task: the label kind — ``classification``, ``multilabel`` or ``regression``
            (:mod:`~diskgraph.store.label_kinds`); None: told from the labels.
        feature_dtype: stored feature dtype (default: the input's, float64 → float32).
        overwrite: replace an existing output directory.
    """

    undirected: bool = False
    dedup: bool = False
    drop_self_loops: bool = False
    allow_nonfinite: bool = False
    memory_budget: int | None = None
    num_nodes: int | None = None
    num_classes: int | None = None
    task: str | None = None
    feature_dtype: str | None = None
    overwrite: bool = False


def _node_count(edges: EdgeSource, features: FeatureSource | None, labels: np.ndarray | None, labels_label: str,
                opts: ImportOptions, budget: int) -> tuple[int, str]:
    if opts.num_nodes is not None:
        if opts.num_nodes < 0:
            raise InputError(f"--num-nodes {opts.num_nodes} is negative; pass the number of nodes")
        return opts.num_nodes, f"--num-nodes {opts.num_nodes}"
    if features is not None:
        return features.num_rows, f"from the rows of {features.label}"
    if labels is not None:
        return int(np.asarray(labels).shape[0]), f"from the length of {labels_label}"
    n = max_node_id(edges, int(np.clip(budget // 64, 1 << 14, 1 << 23))) + 1
    return n, "from the largest node id in the edges"


def import_dataset(out: str | os.PathLike, edges: EdgeSource, *, features: FeatureSource | None = None,
                   labels: np.ndarray | None = None, labels_label: str = "labels",
                   splits: dict[str, tuple[np.ndarray, str]] | None = None,
                   random_split: tuple[tuple[float, float, float], int] | None = None,
                   options: ImportOptions | None = None, sources: dict | None = None,
                   extra_manifest: dict | None = None, edge_split: EdgeSplitSpec | None = None) -> Path:
    """Validate the inputs and write a dataset directory at ``out``.

    Args:
        out: the directory to create.
        edges: the edge input.
        features: the feature input, or None for a dataset without features.
        labels: the nodes' labels, held in memory: class ids [N] (-1 = unlabelled), multilabel 0/1 [N, C] or
            regression targets [N] / [N, T] (NaN = unlabelled); checked by
            :func:`~diskgraph.store.label_kinds.check_node_labels` as ``options.task`` says (None: detected).
        labels_label: how messages name the labels' origin.
        splits: explicit splits, name → (index array or boolean mask, label for messages).
        random_split: ``((train, val, test) fractions, seed)`` when ``splits`` is None.
        options: see :class:`ImportOptions`.
        sources: extra description of the inputs for the manifest.
        extra_manifest: more top-level manifest entries (e.g. generator parameters).
        edge_split: split the edges into train/val/test supervision edges for link prediction (val/test edges are
            left out of the topology; :mod:`~diskgraph.store.edge_splits`), or None.

    Returns:
        The dataset directory.

    Raises:
        InputError: bad input, with one sentence; nothing is left at ``out``.
    """
    t0 = time.perf_counter()
    opts = options or ImportOptions()
    budget = opts.memory_budget if opts.memory_budget is not None else default_memory_budget()
    target = AtomicDirectory(out, overwrite=opts.overwrite, kind=DATASET_FORMAT)
    target.check()

    num_nodes, nodes_from = _node_count(edges, features, labels, labels_label, opts, budget)
    if num_nodes == 0:
        raise InputError(f"the graph has no nodes (0 {nodes_from}); give a non-empty edge list, features or labels, "
                         "or --num-nodes")
    if features is not None and features.num_rows != num_nodes:
        raise InputError(
            f"{features.label} has {features.num_rows} rows but the graph has {num_nodes} nodes ({nodes_from}); "
            "give exactly one feature row per node"
        )
    if features is not None and features.dim <= 0:
        raise InputError(f"{features.label} has {features.dim} features per row; a feature table needs at least one column")
    feature_dtype = stored_feature_dtype(features, opts.feature_dtype) if features is not None else None

    num_classes = opts.num_classes
    check_task(opts.task)
    label_info = None
    if labels is not None:
        label_info = check_node_labels(np.asarray(labels), num_nodes, task=opts.task, num_classes=opts.num_classes,
                                       label=labels_label, nodes_from=nodes_from)
        labels, num_classes = label_info.values, label_info.num_classes
    elif opts.task is not None:
        raise InputError(f"--task {opts.task} was given but the import has no labels; pass the labels (--labels) or "
                         "drop --task")
    split_arrays: dict[str, np.ndarray] = {}
    if splits:
        for name, (values, label) in splits.items():
            split_arrays[name] = as_index_split(values, num_nodes, name, label)
    elif random_split is not None:
        split_arrays = random_splits(random_split[0], random_split[1], num_nodes, labels,
                                     label_info.task if label_info else "classification")
    check_disjoint(split_arrays, num_nodes, {name: label for name, (_, label) in splits.items()} if splits else None)

    split_plan = None
    if edge_split is not None:
        split_plan = plan_edge_split(edge_split, edges, num_nodes, nodes_from, undirected=opts.undirected,
                                     drop_self_loops=opts.drop_self_loops,
                                     chunk_edges=int(np.clip(budget // 160, 1 << 14, 1 << 23)))
        edges_in = KeptEdges(edges, split_plan)
    else:
        edges_in = edges

    arrays: dict[str, dict] = {}

    def record(name: str, shape, sha: str, dtype: str) -> None:
        arrays[name] = {"shape": list(shape), "dtype": dtype, "sha256": sha}

    log.info("importing %s into %s (%d nodes %s, memory budget %s)", edges.label, Path(out), num_nodes, nodes_from,
             format_bytes(budget))
    with target as tmp:
        write_group(tmp, {"diskgraph": DATASET_FORMAT})
        if label_info is not None:
            dtype = STORED_DTYPE[label_info.task]
            shape, sha = write_array(tmp / "labels", labels, dtype)
            record("labels", shape, sha, dtype)
        if split_arrays:
            write_group(tmp / "splits")
            for name, idx in split_arrays.items():
                shape, sha = write_array(tmp / "splits" / name, idx, "int64")
                record(f"splits/{name}", shape, sha, "int64")
        write_group(tmp / "topology")
        # labels and splits stay referenced (by the caller too) while the topology is built
        held = sum(a.nbytes for a in split_arrays.values()) + (labels.nbytes if labels is not None else 0)
        held += split_plan.held_bytes if split_plan is not None else 0
        csc = build_csc(tmp / "topology", edges_in, num_nodes, nodes_from, undirected=opts.undirected, dedup=opts.dedup,
                        drop_self_loops=opts.drop_self_loops, memory_budget=budget, held_bytes=held)
        record("topology/indptr", (num_nodes + 1,), csc.indptr_sha256, "int64")
        record("topology/indices", (csc.num_edges,), csc.indices_sha256, csc.index_dtype)
        edge_split_record = None
        if split_plan is not None:
            write_group(tmp / "edges")
            written = write_edge_splits(tmp / "edges", split_plan, RawArray(tmp / "topology" / "indptr").memmap(),
                                        RawArray(tmp / "topology" / "indices").memmap())
            for name, (shape, sha) in written.items():
                record(f"edges/{name}", shape, sha, "int64")
            edge_split_record = {
                "fractions": list(edge_split.fractions) if edge_split.fractions is not None else None,
                "seed": edge_split.seed, "undirected": opts.undirected,
                "counts": {name: int(shape[1]) for name, (shape, _sha) in written.items()},
                "source": edge_split.source}
        feat_info = None
        if features is not None:
            fc = copy_features(features, tmp / "features", feature_dtype, allow_nonfinite=opts.allow_nonfinite,
                               memory_budget=budget)
            record("features", (fc.num_rows, fc.dim), fc.sha256, fc.dtype)
            feat_info = {"dim": fc.dim, "dtype": fc.dtype, "row_bytes": fc.nbytes // max(fc.num_rows, 1),
                         "bytes": fc.nbytes, "chunk_rows": fc.chunk_rows}
        seconds = time.perf_counter() - t0
        options_record = {k: v for k, v in asdict(opts).items() if k != "overwrite"}
        options_record["memory_budget"] = budget
        if random_split is not None and not splits:
            options_record["split"] = {"random": list(random_split[0]), "seed": random_split[1]}
        write_manifest(tmp, DATASET_FORMAT, DATASET_VERSION, {
            "num_nodes": num_nodes,
            "num_edges": csc.num_edges,
            "num_classes": num_classes,
            **(label_info.manifest_fields() if label_info is not None else {}),
            "index_dtype": csc.index_dtype,
            "features": feat_info,
            "splits": {name: int(idx.size) for name, idx in split_arrays.items()},
            "arrays": arrays,
            "options": options_record,
            "sources": {"edges": edges.describe(), "features": features.describe() if features else None,
                        **({"val_edges": str(Path(edge_split.val_edges).absolute()),
                            "test_edges": str(Path(edge_split.test_edges).absolute())}
                           if edge_split is not None and edge_split.source == "files" else {}),
                        **(sources or {})},
            **({"edge_split": edge_split_record} if edge_split_record is not None else {}),
            "import": {"input_edges": split_plan.input_edges if split_plan is not None else csc.input_edges,
                       **({"split_edges_removed": split_plan.removed_input_edges} if split_plan is not None else {}),
                       "self_loops_dropped": csc.self_loops_dropped,
                       "duplicates_dropped": csc.duplicates_dropped, "csc_parts": csc.parts,
                       "seconds": round(seconds, 3)},
            **(extra_manifest or {}),
        })
    log.info("imported %s: %d nodes, %d edges%s in %.1f s", Path(out), num_nodes, csc.num_edges,
             f", {feat_info['dim']}-d {feat_info['dtype']} features" if feat_info else "", time.perf_counter() - t0)
    return Path(out)
