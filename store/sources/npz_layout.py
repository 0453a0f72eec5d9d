"""The shared datasets' ``data.npz`` layout, as a convenience input.

Keys: ``edges`` int [2, E] (or ``edges_upper`` [2, E] with each undirected edge
once, read in both directions), optional ``features`` [N, F], optional
``labels`` ([N] class ids or regression targets, [N, C] multilabel 0/1 or regression targets: see
:mod:`~diskgraph.store.label_kinds`), optional ``train_idx``/``val_idx``/``test_idx`` (index arrays)
or ``train_mask``/``val_mask``/``test_mask`` (boolean masks). Edges and
features are streamed out of the archive; labels and splits are node-sized and
loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from .edges import EdgeSource, NpzEdges
from .features import FeatureSource, NpzFeatures
from .labels import SPLIT_NAMES, npz_array
from .npy import npz_keys


@dataclass
class NpzInputs:
    """What a ``data.npz`` provides: edges, features, labels and splits (each may be absent but edges)."""

    edges: EdgeSource
    features: FeatureSource | None
    labels: np.ndarray | None
    labels_label: str
    splits: dict[str, tuple[np.ndarray, str]]


def open_npz_dataset(path: str | os.PathLike) -> NpzInputs:
    """Open the ``data.npz`` at ``path`` (see the module docstring for its keys).

    Raises:
        InputError: the file is missing or not an archive, or has no edges.
    """
    p = Path(path)
    keys = set(npz_keys(p))
    if "edges" in keys:
        edges: EdgeSource = NpzEdges(p, "edges")
    elif "edges_upper" in keys:
        edges = NpzEdges(p, "edges_upper", symmetric_upper=True)
    else:
        raise InputError(f"npz file {p} has no 'edges' (or 'edges_upper') array; it holds {', '.join(sorted(keys))}: add the edges")
    features = NpzFeatures(p, "features") if "features" in keys else None
    labels = npz_array(p, "labels") if "labels" in keys else None
    splits: dict[str, tuple[np.ndarray, str]] = {}
    for name in SPLIT_NAMES:
        for key in (f"{name}_idx", f"{name}_mask"):
            if key in keys:
                splits[name] = (npz_array(p, key), f"member {key!r} of npz file {p}")
                break
    return NpzInputs(edges, features, labels, f"member 'labels' of npz file {p}", splits)
