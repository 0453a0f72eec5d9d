"""Preprocessing stages over a dataset directory: sample plans and pack features.

Plans live in ``DATASET/plans/NAME`` and packs in ``DATASET/packs/NAME``, so a
dataset directory carries everything derived from it; ``diskgraph inspect``
lists them. Each stage writes its directory atomically.
"""

from __future__ import annotations

import os
from pathlib import Path

from .store.errors import FormatError, InputError
from .store.manifest import read_manifest
from .store.plan import shard_name

PLANS_DIR = "plans"
PACKS_DIR = "packs"
DEFAULT_NAME = "default"


def _name_ok(name: str, option: str) -> str:
    if not name or "/" in name or name.startswith(".") or name in (".", ".."):
        raise InputError(f"{option} {name!r} is not a usable name; use letters, digits, '-' or '_'")
    return name


def artifact_path(dataset: str | os.PathLike, kind: str, name: str, option: str) -> Path:
    """``DATASET/{kind}/NAME`` for a bare name (``kind`` is plans or packs); a path (with a separator) as given."""
    if os.sep in name or Path(name).is_absolute():
        return Path(name)
    return Path(dataset) / kind / _name_ok(name, option)


def run_sample(dataset: str | os.PathLike, *, name: str = DEFAULT_NAME, fanouts: list[int], batch_size: int,
               seed: int = 0, epochs: int = 1, eval_fanouts: list[int] | None = None,
               eval_batch_size: int | None = None, threads: int | None = None, overwrite: bool = False,
               splits: list[str] | None = None, shard: tuple[int, int] | None = None) -> Path:
    """Sample a plan of ``dataset`` into ``DATASET/plans/NAME``; returns its path (``splits``: None = all present).

    ``shard=(R, W)`` samples share R of W for data-parallel training into ``DATASET/plans/NAME.rankR-of-W``.
    """
    from .sampler.neighbor_sampler import sample_plan
    from .store.dataset import open_dataset

    ds = open_dataset(dataset)
    out = artifact_path(dataset, PLANS_DIR, name, "--name")
    if shard is not None:
        out = out.parent / shard_name(out.name, *shard)
    out.parent.mkdir(exist_ok=True)
    return sample_plan(ds, out, fanouts=fanouts, batch_size=batch_size, seed=seed, epochs=epochs,
                       eval_fanouts=eval_fanouts, eval_batch_size=eval_batch_size, threads=threads,
                       overwrite=overwrite, splits=splits, shard=shard)


def run_pack(dataset: str | os.PathLike, *, plan: str = DEFAULT_NAME, name: str | None = None, gpu_cache: int = 0,
             host_cache: int = 0, memory_budget: int | None = None, max_blowup: float | None = 10.0,
             overwrite: bool = False, shard: tuple[int, int] | None = None) -> Path:
    """Choose hot sets from the plan's access counts and pack ``dataset``'s features into ``DATASET/packs/NAME``.

    ``shard=(R, W)`` packs share R of W: plan ``PLAN.rankR-of-W`` into ``packs/NAME.rankR-of-W`` (its hot tiers
    are chosen from that share's counts).
    """
    from .sampler.hot_set import SCORE_NAME, hot_sets_for_plan
    from .store.dataset import open_dataset
    from .store.importer import default_memory_budget
    from .store.packer import pack_features
    from .store.plan import open_plan

    ds = open_dataset(dataset)
    if ds.features is None:
        raise InputError(f"dataset {dataset} has no features to pack; import it with --features")
    pdir = artifact_path(dataset, PLANS_DIR, plan, "--plan")
    if shard is not None:
        pdir = pdir.parent / shard_name(pdir.name, *shard)
    if not pdir.exists():
        raise InputError(f"plan {pdir} does not exist; create it with `diskgraph preprocess sample {dataset} --name {plan}`")
    pl = open_plan(pdir)
    if gpu_cache < 0 or host_cache < 0:
        raise InputError("--gpu-cache and --host-cache must not be negative; pass sizes in bytes (0 = no cache)")
    tiers = hot_sets_for_plan(pl, ds.features.row_bytes, gpu_cache, host_cache)
    out = artifact_path(dataset, PACKS_DIR, name or pdir.name, "--name")
    if shard is not None and name:
        out = out.parent / shard_name(out.name, *shard)
    out.parent.mkdir(exist_ok=True)
    return pack_features(ds, pl, out, tiers=tiers, memory_budget=memory_budget or default_memory_budget(),
                         max_blowup=max_blowup, overwrite=overwrite, gpu_cache_bytes=gpu_cache,
                         host_cache_bytes=host_cache, score=SCORE_NAME)


def describe_artifacts(dataset: str | os.PathLike) -> dict:
    """Plans and packs found in a dataset directory, from their manifests (JSON-ready).

    Returns ``{"plans": {name: summary}, "packs": {name: summary}}``; a directory
    that does not read as a plan or pack is listed with its ``error``.
    """
    from .store.packed import PACK_FORMAT, PACK_VERSION
    from .store.plan import PLAN_FORMAT, PLAN_VERSION

    out: dict = {"plans": {}, "packs": {}}
    for kind, fmt, version, summarize in (("plans", PLAN_FORMAT, PLAN_VERSION, _plan_summary),
                                          ("packs", PACK_FORMAT, PACK_VERSION, _pack_summary)):
        root = Path(dataset) / kind
        if not root.is_dir():
            continue
        for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                out[kind][d.name] = summarize(read_manifest(d, fmt, version), d)
            except FormatError as e:
                out[kind][d.name] = {"error": str(e)}
    return out


def _plan_summary(m: dict, path: Path) -> dict:
    splits = m.get("splits", {})
    return {
        "path": str(path), "created_at": m.get("created_at"), "config": m.get("config", {}),
        "minibatches": {s: v.get("minibatches") for s, v in splits.items()},
        "minibatches_per_epoch": {s: v.get("minibatches_per_epoch") for s, v in splits.items()},
        "mean_layer_sizes": {s: v.get("mean_layer_sizes") for s, v in splits.items()},
        "bytes": sum(int(v.get("file_bytes", 0)) for v in splits.values()),
        "seconds": m.get("seconds"),
    }


def _pack_summary(m: dict, path: Path) -> dict:
    keys = ("plan", "gpu_cache_bytes", "host_cache_bytes", "tiers", "splits", "packed_bytes", "cold_bytes",
            "tier_bytes", "blowup", "feature_bytes", "alignment", "seconds", "config")
    return {"path": str(path), "created_at": m.get("created_at"), **{k: m[k] for k in keys if k in m}}
