"""What binds derived artifacts to what they were made from, and the checks that refuse a mismatch.

* a plan records, under ``dataset``, the node and edge counts and the sha256 of the topology arrays and of
  the splits it sampled (:func:`plan_binding`; a plan of given seed nodes records their sha256 instead, under
  ``seeds_sha256``); it is refused for a dataset whose values differ;
* a pack records, under ``dataset``, the node count and the feature table's sha256, width, dtype and row
  size, and under ``plan`` the plan manifest's checksum (:func:`pack_binding`, :func:`artifact_identity`); it is refused for another
  dataset's features or another plan.

Each check raises :class:`~diskgraph.store.errors.InputError` with one sentence that names the
artifact, the field that differs and the command that rebuilds it; :func:`plan_problem` and
:func:`pack_problem` return the same sentences (``inspect --verify`` lists them).
"""

from __future__ import annotations

import numpy as np

from .checksums import MANIFEST_CHECKSUM_FIELD, array_sha256, manifest_checksum
from .errors import InputError


def plan_binding(ds, splits, seeds: dict | None = None) -> dict:
    """The ``dataset`` record of a plan sampled from dataset ``ds`` over ``splits`` (names), and over ``seeds``
    (``{split name: int64 node ids}``: splits of given nodes that are not the dataset's, recorded as
    ``seeds_sha256``; only the graph binds those)."""
    rec = ds.array_records
    out = {"num_nodes": ds.num_nodes, "num_edges": ds.num_edges,
           "indptr_sha256": rec["topology/indptr"]["sha256"], "indices_sha256": rec["topology/indices"]["sha256"],
           "splits_sha256": {s: rec[f"splits/{s}"]["sha256"] for s in splits}}
    if seeds:
        out["seeds_sha256"] = {s: array_sha256(np.asarray(ids, dtype=np.int64)) for s, ids in seeds.items()}
    return out


def pack_binding(ds) -> dict:
    """The ``dataset`` record of a pack of dataset ``ds``'s features (its ``plan`` record holds the plan's
    checksum: :func:`artifact_identity`)."""
    feats = ds.features
    return {"num_nodes": ds.num_nodes, "feature_sha256": ds.array_records["features"]["sha256"],
            "feature_dim": ds.feature_dim, "feature_dtype": ds.feature_dtype, "row_bytes": feats.row_bytes,
            "indptr_sha256": ds.array_records["topology/indptr"]["sha256"]}


def dataset_identity(ds) -> str:
    """What a training run records of its dataset: ``sha256:<hex>`` over the counts, the class count and every
    array's sha256 (the contents, not where or when the dataset was imported)."""
    return manifest_checksum({"num_nodes": ds.num_nodes, "num_edges": ds.num_edges, "num_classes": ds.num_classes,
                              "arrays": {k: v.get("sha256") for k, v in ds.array_records.items()}})


def artifact_identity(artifact) -> str:
    """A plan's or pack's identity, as a pack records its plan's and a run its pack's: its manifest checksum."""
    return artifact.manifest[MANIFEST_CHECKSUM_FIELD]


def _first_difference(recorded: dict, actual: dict, prefix: str = "dataset.") -> str | None:
    """``"dataset.FIELD is A, the dataset's B"`` for the first field of ``actual`` that ``recorded`` differs in."""
    for key, value in actual.items():
        have = recorded.get(key)
        if isinstance(value, dict):
            inner = _first_difference(have if isinstance(have, dict) else {}, value, f"{prefix}{key}.")
            if inner:
                return inner
        elif have != value:
            return f"{prefix}{key} is {_short(have)}, the dataset's {_short(value)}"
    return None


def _short(v) -> str:
    return f"{v[:12]}…" if isinstance(v, str) and len(v) > 16 else repr(v)


def check_plan(plan, ds) -> None:
    """Refuse plan ``plan`` for dataset ``ds`` unless it was sampled from this dataset's graph and splits."""
    problem = plan_problem(plan, ds)
    if problem:
        raise InputError(problem)


def plan_problem(plan, ds) -> str | None:
    """The sentence :func:`check_plan` raises, or None."""
    recorded = plan.manifest.get("dataset") or {}
    given = recorded.get("seeds_sha256") or {}  # splits of given seed nodes: bound by the graph alone
    named = [s for s in plan.splits if s not in given]
    actual = plan_binding(ds, [s for s in named if f"splits/{s}" in ds.array_records])
    missing = [s for s in named if f"splits/{s}" not in ds.array_records]
    field = f"dataset.splits_sha256.{missing[0]} names a split the dataset lacks" if missing else (
        _first_difference(recorded, actual))
    if field is None:
        return None
    return (f"plan {plan.path} was sampled from another graph than dataset {ds.path} (its manifest's {field}); "
            f"sample a plan of this dataset with `diskgraph preprocess sample {ds.path}`")


def check_pack(pack, ds, plan) -> None:
    """Refuse pack ``pack`` unless it was packed from dataset ``ds``'s features and from plan ``plan``."""
    problem = pack_problem(pack, ds, plan)
    if problem:
        raise InputError(problem)


def pack_problem(pack, ds, plan) -> str | None:
    """The sentence :func:`check_pack` raises, or None (``ds`` or ``plan`` None: that one is not checked)."""
    if ds is not None and ds.features is None:
        return f"dataset {ds.path} has no features, but pack {pack.path} holds packed features; pass the dataset it was packed from"
    field = _first_difference(pack.manifest.get("dataset") or {}, pack_binding(ds)) if ds is not None else None
    if field is not None:
        return (f"pack {pack.path} was packed from other features than dataset {ds.path} has (its manifest's "
                f"{field}); pack them again with `diskgraph preprocess pack {ds.path}`")
    if plan is not None and (pack.manifest.get("plan") or {}).get("checksum") != artifact_identity(plan):
        return (f"pack {pack.path} was built from another plan than {plan.path} (its manifest's plan.checksum differs "
                f"from the plan's); pack this plan again with `diskgraph preprocess pack DATASET --plan "
                f"{plan.path.name}`")
    return None
