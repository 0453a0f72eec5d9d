"""Preprocessing stages over a dataset directory: sample plans and pack features.

Plans live in ``DATASET/plans/NAME`` and packs in ``DATASET/packs/NAME``, so a
dataset directory carries everything derived from it; ``diskgraph inspect``
lists them. Each stage writes its directory atomically (``plans/`` and
``packs/`` appear with their first entry). :func:`plan_difference` and
:func:`pack_difference` tell whether an existing plan or pack is what the
given options would make, so ``preprocess all`` can continue from finished stages.
"""

from __future__ import annotations

import os
from pathlib import Path

from typing import TYPE_CHECKING

from .store.atomic import AtomicDirectory
from .store.errors import FormatError, InputError
from .store.manifest import read_manifest
from .store.packed import PACK_FORMAT
from .store.plan import PLAN_FORMAT, SPLITS, shard_name

if TYPE_CHECKING:
    from .sampler.link_sampler import LinkOptions

PLANS_DIR = "plans"
PACKS_DIR = "packs"
DEFAULT_NAME = "default"
NAME_AS_PATH = "--name (a directory path outside the dataset)"
"""How refusals name the option that puts a plan or pack elsewhere (a --name with a separator is a path)."""


def _name_ok(name: str, option: str) -> str:
    if not name or "/" in name or name.startswith(".") or name in (".", ".."):
        raise InputError(f"{option} {name!r} is not a usable name; use letters, digits, '-' or '_'")
    return name


def artifact_path(dataset: str | os.PathLike, kind: str, name: str, option: str) -> Path:
    """``DATASET/{kind}/NAME`` for a bare name (``kind`` is plans or packs); a path (with a separator) as given."""
    if os.sep in name or Path(name).is_absolute():
        return Path(name)
    return Path(dataset) / kind / _name_ok(name, option)


def plan_path(dataset: str | os.PathLike, name: str, shard: tuple[int, int] | None = None,
              option: str = "--name") -> Path:
    """Where the plan ``name`` (of share ``shard``) of ``dataset`` lives: what :func:`run_sample` writes."""
    return _artifact_out(dataset, PLANS_DIR, name, shard, option)


def pack_path(dataset: str | os.PathLike, name: str, shard: tuple[int, int] | None = None) -> Path:
    """Where the pack ``name`` (of share ``shard``) of ``dataset`` lives: what :func:`run_pack` writes."""
    return _artifact_out(dataset, PACKS_DIR, name, shard, "--name")


def _artifact_out(dataset, kind: str, name: str, shard: tuple[int, int] | None, option: str) -> Path:
    out = artifact_path(dataset, kind, name, option)
    return out.parent / shard_name(out.name, *shard) if shard is not None else out


def run_sample(dataset: str | os.PathLike, *, name: str = DEFAULT_NAME, fanouts: list[int], batch_size: int,
               seed: int = 0, epochs: int = 1, eval_fanouts: list[int] | None = None,
               eval_batch_size: int | None = None, threads: int | None = None, overwrite: bool = False,
               splits: list[str] | None = None, shard: tuple[int, int] | None = None, task: str = "node",
               link_options: LinkOptions | None = None) -> Path:
    """Sample a plan of ``dataset`` into ``DATASET/plans/NAME``; returns its path (``splits``: None = all present).

    ``shard=(R, W)`` samples share R of W for data-parallel training into ``DATASET/plans/NAME.rankR-of-W``.
    ``task="link"`` samples link-prediction minibatches of the dataset's edge splits with ``link_options``
    (negatives, seed-edge exclusion: :class:`~diskgraph.sampler.link_sampler.LinkOptions`): see
    :mod:`diskgraph.sampler.link_sampler`.
    """
    from .sampler.neighbor_sampler import sample_plan
    from .store.dataset import open_dataset

    ds = open_dataset(dataset)
    out = plan_path(dataset, name, shard)
    AtomicDirectory(out, overwrite, option="--name", kind=PLAN_FORMAT).check()  # (before the dataset is read)
    return sample_plan(ds, out, fanouts=fanouts, batch_size=batch_size, seed=seed, epochs=epochs,
                       eval_fanouts=eval_fanouts, eval_batch_size=eval_batch_size, threads=threads,
                       overwrite=overwrite, splits=splits, shard=shard, task=task, link_options=link_options)


def run_pack(dataset: str | os.PathLike, *, plan: str = DEFAULT_NAME, name: str | None = None, gpu_cache: int = 0,
             host_cache: int = 0, memory_budget: int | None = None, max_blowup: float | None = 10.0,
             overwrite: bool = False, shard: tuple[int, int] | None = None) -> Path:
    """Choose hot sets from the plan's access counts and pack ``dataset``'s features into ``DATASET/packs/NAME``.

    ``max_blowup`` bounds the extents' padded bytes to that multiple of the feature table's (None or ``inf``:
    unbounded); the cold rows over it are read from the dataset's feature table at training time (see
    :func:`~diskgraph.store.packer.pack_features`).

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
    pdir = plan_path(dataset, plan, shard, "--plan")
    if not pdir.exists():
        raise InputError(f"plan {pdir} does not exist; create it with `diskgraph preprocess sample {dataset} --name {plan}`")
    pl = open_plan(pdir)
    if gpu_cache < 0 or host_cache < 0:
        raise InputError("--gpu-cache and --host-cache must not be negative; pass sizes in bytes (0 = no cache)")
    tiers = hot_sets_for_plan(pl, ds.features.row_bytes, gpu_cache, host_cache)
    out = pack_path(dataset, name or pdir.name, shard if name else None)
    AtomicDirectory(out, overwrite, option="--name", kind=PACK_FORMAT).check()
    return pack_features(ds, pl, out, tiers=tiers, memory_budget=memory_budget or default_memory_budget(),
                         max_blowup=max_blowup, overwrite=overwrite, gpu_cache_bytes=gpu_cache,
                         host_cache_bytes=host_cache, score=SCORE_NAME)


def _show(value) -> str:
    if value is None or value is False:  # (False: a store_true flag left out)
        return "not given"
    if value is True:
        return "given"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    if isinstance(value, dict) and set(value) == {"rank", "world_size"}:
        return f"{value['rank']}/{value['world_size']}"
    return str(value)


def plan_difference(plan_dir: str | os.PathLike, ds, *, fanouts: list[int], batch_size: int, seed: int = 0,
                    epochs: int = 1, eval_fanouts: list[int] | None = None, eval_batch_size: int | None = None,
                    splits: list[str] | None = None, shard: tuple[int, int] | None = None, task: str = "node",
                    link_options: LinkOptions | None = None) -> str | None:
    """Why the plan at ``plan_dir`` is not the one :func:`run_sample` would sample from dataset ``ds`` with
    these options (a phrase: the option with the plan's value and this run's), or None when it is."""
    from .store.binding import plan_problem
    from .store.plan import open_plan

    try:
        plan = open_plan(plan_dir)
    except InputError:
        return "it does not open as a plan"
    if plan_problem(plan, ds):
        return "it was sampled from another graph than the dataset holds"
    c = plan.config
    wanted = {"fanouts": list(fanouts), "batch_size": batch_size, "seed": seed, "epochs": epochs,
              "eval_fanouts": list(eval_fanouts or fanouts), "eval_batch_size": eval_batch_size or batch_size}
    if c.get("task", "node") != task:
        return f"--task {c.get('task', 'node')} there, {task} in this run"
    for key, value in wanted.items():
        if c.get(key) != value:
            return f"--{key.replace('_', '-')} {_show(c.get(key))} there, {_show(value)} in this run"
    if task == "link":
        from .sampler.link_sampler import LINK_FLAGS, LinkOptions

        there, here = LinkOptions.from_config(c).config(), (link_options or LinkOptions()).config()
        for key, value in here.items():
            if there[key] != value:
                a, b = (not there[key], not value) if key == "exclude_seed_edges" else (there[key], value)
                return f"{LINK_FLAGS[key]} {_show(a)} there, {_show(b)} in this run"
    if task == "link":
        edge_splits = getattr(ds, "edge_splits", None) or {}
        chosen = list(dict.fromkeys(splits)) if splits else [
            s for s in SPLITS if s in edge_splits and edge_splits[s].reshape(2, -1).shape[1] > 0]
    else:
        chosen = list(dict.fromkeys(splits)) if splits else [
            s for s in SPLITS if s in ds.splits and (s == "train" or len(ds.splits[s]) > 0)]
    if list(plan.splits) != chosen:
        return f"--splits {_show(plan.splits)} there, {_show(chosen)} in this run"
    if task == "link":
        import numpy as np

        from .store.checksums import array_sha256

        recorded = (plan.manifest.get("dataset") or {}).get("seeds_sha256") or {}
        for s in chosen:
            if recorded.get(s) != array_sha256(np.asarray(edge_splits[s], dtype=np.int64).reshape(-1)):
                return f"it was sampled from another {s} edge split than the dataset holds"
    want_shard = {"rank": shard[0], "world_size": shard[1]} if shard else None
    if c.get("shard") != want_shard:
        return f"--shard {_show(c.get('shard'))} there, {_show(want_shard)} in this run"
    return None


def pack_difference(pack_dir: str | os.PathLike, ds, plan_dir: str | os.PathLike, *, gpu_cache: int = 0,
                    host_cache: int = 0, max_blowup: float | None = 10.0) -> str | None:
    """Why the pack at ``pack_dir`` is not the one :func:`run_pack` would make of dataset ``ds`` and the plan at
    ``plan_dir`` with these cache sizes and ``max_blowup`` bound (a phrase naming the option and both values), or
    None when it is."""
    from .store.binding import pack_problem
    from .store.packed import open_pack
    from .store.packer import normalize_max_blowup
    from .store.plan import open_plan

    try:
        pack = open_pack(pack_dir)
    except InputError:
        return "it does not open as a pack"
    try:
        if pack_problem(pack, ds, open_plan(plan_dir)):
            return "it was packed from another plan or other features than those there now"
        m = pack.manifest
        for option, key, value in (("--gpu-cache", "gpu_cache_bytes", gpu_cache),
                                   ("--host-cache", "host_cache_bytes", host_cache)):
            if int(m.get(key, -1)) != int(value):
                return f"{option} {m.get(key)} there, {value} in this run"
        want = normalize_max_blowup(max_blowup)
        # a pack from before the bound was enforced (format version 2) bounded nothing
        there = m.get("max_blowup") if pack.format_version >= 3 else None
        if (None if there is None else float(there)) != want:
            return (f"--max-blowup {'inf' if there is None else there} there, {'inf' if want is None else want} "
                    "in this run")
    finally:
        pack.close()
    return None


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
            "tier_bytes", "blowup", "max_blowup", "table_rows", "table_page_reads", "feature_bytes", "alignment",
            "seconds", "config")
    return {"path": str(path), "created_at": m.get("created_at"), **{k: m[k] for k in keys if k in m}}
