"""Batched packing: lay out every minibatch's cold feature rows contiguously on disk.

Given a plan and the hot tiers (node ids chosen by
:func:`diskgraph.sampler.hot_set.select_hot_sets`), :func:`pack_features`
writes a pack directory (format in :mod:`diskgraph.store.packed`) in three steps:

1. ``tier_of`` (int8 [N]) and ``slot_of`` (int32 [N]) from the tier lists.
2. Index pass over the plan's minibatches, in plan order: each input node's
   tier and slot (a cold node's slot is its rank among the minibatch's cold
   nodes, sorted by id), the extent's offset (a multiple of 4096) and padded
   length; the index rows go to ``index/{split}.arrow`` and the sorted cold
   ids to a scratch file. Each ``cold/{split}`` file is then preallocated.
3. ONE sequential pass over the feature table in slices: each slice's hot rows
   are appended to the tier arrays, and for every minibatch (all splits) a
   cursor into its sorted cold ids tells which of its rows fall in the slice;
   a numba kernel gathers them and they are written with one ``pwrite`` per
   minibatch and slice at ``extent offset + cursor * row_bytes`` (contiguous,
   because the ids are sorted). No feature row is ever read at random.

Three threads overlap: one reads the next slice, the main thread gathers
(numba, GIL released) and one writes (pwrite releases the GIL). Written
files are synced and dropped from the page cache every
:data:`~diskgraph.store.files.FLUSH_BYTES` per file, and feature chunks are
dropped once read, so the page cache stays bounded.

Memory held (``memory_budget`` covers all of it; what is left after the fixed
parts goes 50 % to the slices and 15 % to the gather buffers, the rest is
headroom for the interpreter and temporaries):
  * O(N): ``tier_of`` + ``slot_of``, 5 bytes per node (freed after the index pass);
  * O(#minibatches): extent offsets, cold-id pointers and cursors, 25 bytes per minibatch;
  * two feature slices (the one being gathered and the one being read);
  * two gather buffers (the one being filled and the one being written), at most 64 MiB each;
  * one chunk per tier writer (at most 16 MiB, budget / 32) and the tier id lists given as input;
  * during the index pass, one minibatch's arrays.
The per-minibatch sorted cold ids are not held: the kernel reads them from a
memory-mapped scratch file, one cursor position per minibatch and slice; like
the memory-mapped plan, these are clean file pages the kernel reclaims under
a memory cap (they show in RSS as RssFile, not RssAnon). The scratch file is
deleted before the pack is renamed into place. With ``threads=False`` there is
one slice and one gather buffer, each twice as large.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..native.packing import gather_runs, word_dtype
from .atomic import AtomicDirectory
from .direct_io import ALIGNMENT, round_up
from .errors import FormatError, InputError
from .files import FLUSH_BYTES, AppendFile, drop_cache, evict_file, preallocate, start_writeback
from .manifest import write_manifest
from .packed import PACK_FORMAT, PACK_VERSION, TIERS, cold_chunk_path, index_schema
from .progress import Progress, format_bytes, log
from .zarr_arrays import RowChunkWriter, write_array, write_array_metadata, write_group

TIER_CHUNK_BYTES = 16 << 20
"""Target bytes per chunk file of the tier arrays."""

MAX_GATHER_BYTES = 64 << 20
"""Upper bound of one gather buffer (larger buffers only add memory)."""

_RUNS = 1 << 14
"""Runs (one minibatch's rows within one slice) per gather buffer at most."""


# -- checks ----------------------------------------------------------------------------------------

def _check_binding(ds, plan) -> None:
    """Refuse a plan sampled from another dataset."""
    info = plan.manifest.get("dataset", {}) or {}
    if plan.num_nodes != ds.num_nodes:
        raise InputError(f"plan {plan.path} was sampled from a graph of {plan.num_nodes} nodes but dataset {ds.path} "
                         f"has {ds.num_nodes}; sample a plan of this dataset")
    want = info.get("indptr_sha256")
    have = ds.manifest.get("arrays", {}).get("topology/indptr", {}).get("sha256")
    if want is not None and have is not None and want != have:
        raise InputError(f"plan {plan.path} was sampled from another graph (its dataset.indptr_sha256 differs from "
                         f"{ds.path}'s topology); sample a plan of this dataset")
    if "num_edges" in info and int(info["num_edges"]) != ds.num_edges:
        raise InputError(f"plan {plan.path} was sampled from a graph of {info['num_edges']} edges but dataset {ds.path} "
                         f"has {ds.num_edges}; sample a plan of this dataset")


def _tier_arrays(tiers: dict[str, np.ndarray], num_nodes: int) -> dict[str, np.ndarray]:
    unknown = set(tiers) - set(TIERS)
    if unknown:
        raise InputError(f"unknown tier {sorted(unknown)[0]!r}; the tiers are {', '.join(TIERS)}")
    out = {}
    for name in TIERS:
        ids = np.asarray(tiers.get(name, np.zeros(0, np.int64)))
        if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
            raise InputError(f"the {name} tier must be a 1-D array of node ids, got shape {ids.shape} dtype {ids.dtype}")
        ids = np.sort(ids.astype(np.int64))
        if ids.size and (ids[0] < 0 or ids[-1] >= num_nodes):
            raise InputError(f"the {name} tier names node {ids[0] if ids[0] < 0 else ids[-1]}, outside 0..{num_nodes - 1}; "
                             "pass ids of this dataset's nodes")
        if ids.size > 1 and np.any(ids[1:] == ids[:-1]):
            raise InputError(f"the {name} tier repeats a node id; pass distinct ids")
        out[name] = ids
    if np.intersect1d(out["gpu"], out["host"], assume_unique=True).size:
        raise InputError("the gpu and host tiers share node ids; a node belongs to one tier at most")
    return out


def _relative_plan_path(plan_dir: Path, dataset_dir: Path, out: Path) -> str:
    plan_dir, dataset_dir, out = plan_dir.absolute(), dataset_dir.absolute(), out.absolute()
    try:
        out.relative_to(dataset_dir)
        return str(plan_dir.relative_to(dataset_dir))
    except ValueError:
        return str(plan_dir)


# -- the packer ------------------------------------------------------------------------------------

class _ColdWriter:
    """pwrites into the preallocated cold files.

    After each batch of writes, writeback of the touched files starts in the background; every
    FLUSH_BYTES per file, the file is synced and its pages dropped from the page cache.
    """

    def __init__(self, paths: list[Path], sizes: list[int], flush_bytes: int = FLUSH_BYTES):
        self.fds = []
        for p, size in zip(paths, sizes):
            p.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            self.fds.append(fd)
            preallocate(fd, size)
        self.dirty = [0] * len(self.fds)
        self.flush_bytes = flush_bytes
        self.bytes_written = 0
        self.seconds = 0.0

    def write_runs(self, buf: memoryview, files: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> None:
        """Write consecutive pieces of ``buf`` (``lengths`` bytes each) to ``files[k]`` at ``offsets[k]``."""
        t0 = time.perf_counter()
        pos = 0
        for f, off, n in zip(files.tolist(), offsets.tolist(), lengths.tolist()):
            fd = self.fds[f]
            view = buf[pos:pos + n]
            done = 0
            while done < n:
                done += os.pwrite(fd, view[done:], off + done)
            pos += n
            self.dirty[f] += n
            if self.dirty[f] >= self.flush_bytes:
                os.fdatasync(fd)
                drop_cache(fd)
                self.dirty[f] = 0
        for f in np.unique(files).tolist():
            if self.dirty[f]:
                start_writeback(self.fds[f])
        self.bytes_written += pos
        self.seconds += time.perf_counter() - t0

    def close(self) -> None:
        for fd in self.fds:
            os.fdatasync(fd)
            drop_cache(fd)
            os.close(fd)
        self.fds = []

    def abort(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def pack_features(dataset, plan, out_dir: str | os.PathLike, *, tiers: dict[str, np.ndarray], memory_budget: int,
                  max_blowup: float | None = None, overwrite: bool = False, splits: list[str] | None = None,
                  gpu_cache_bytes: int | None = None, host_cache_bytes: int | None = None,
                  score: str | None = None, threads: bool = True) -> Path:
    """Pack ``dataset``'s features for ``plan`` into the pack directory ``out_dir``.

    Args:
        dataset: a :class:`~diskgraph.store.dataset.Dataset` or its directory.
        plan: a :class:`~diskgraph.store.plan.Plan` or its directory; it must belong to ``dataset``.
        out_dir: the pack directory to create (normally ``DATASET/packs/NAME``), written atomically.
        tiers: ``{"gpu": ids, "host": ids}`` global node ids of the hot tiers (missing = empty).
        memory_budget: bytes the packer may hold; sizes the feature slices and gather buffers.
        max_blowup: log a warning when packed cold bytes / feature-table bytes exceeds it.
        overwrite: replace an existing ``out_dir``.
        splits: the plan's splits to pack (default: all).
        gpu_cache_bytes, host_cache_bytes: the requested cache sizes, recorded in the manifest
            (default: the tiers' row bytes).
        score: name of the hotness score the tiers were chosen by, recorded in the manifest.
        threads: overlap slice reads, gathering and writes with two helper threads.

    Returns:
        ``out_dir``.

    Raises:
        InputError: a plan of another dataset, a dataset without features, negative cache sizes,
            bad tier ids, unknown splits, too small a memory budget or too little free disk.
    """
    from .dataset import Dataset, open_dataset
    from .plan import Plan, open_plan

    t_start = time.perf_counter()
    ds = dataset if isinstance(dataset, Dataset) else open_dataset(dataset)
    pl = plan if isinstance(plan, Plan) else open_plan(plan)
    out = Path(out_dir)
    feats = ds.features
    if feats is None or ds.num_nodes == 0:
        raise InputError(f"dataset {ds.path} has no features to pack; import it with --features")
    _check_binding(ds, pl)
    for what, v in (("gpu", gpu_cache_bytes), ("host", host_cache_bytes)):
        if v is not None and v < 0:
            raise InputError(f"the {what} cache size {v} is negative; pass a size in bytes (0 = no cache)")
    if memory_budget is None or memory_budget <= 0:
        raise InputError(f"memory budget {memory_budget} must be a positive number of bytes; pass --memory-budget")
    if splits is None:
        splits = list(pl.splits)
    for s in splits:
        if s not in pl.splits:
            raise InputError(f"plan {pl.path} has no {s!r} split (it has {', '.join(pl.splits)})")
    tier_ids = _tier_arrays(tiers, ds.num_nodes)
    n = ds.num_nodes
    rb = feats.row_bytes
    dim = feats.shape[1]
    counts = [pl.num_minibatches(s) for s in splits]
    total_mb = int(sum(counts))

    # -- memory plan
    tier_chunk_rows = max(1, min(TIER_CHUNK_BYTES, memory_budget // 32) // rb)
    runs_cap = int(min(_RUNS, max(64, memory_budget // 1024)))
    fixed = 5 * n + 25 * (total_mb + 1) + 2 * tier_chunk_rows * rb + 3 * runs_cap * 48
    avail = memory_budget - fixed
    if avail < 4 * rb:
        raise InputError(f"memory budget {format_bytes(memory_budget)} is too small to pack {n} nodes and {total_mb} "
                         f"minibatches (the packer holds about {format_bytes(fixed + 4 * rb)} at least); "
                         "raise --memory-budget")
    n_buf = 2 if threads else 1
    # 50 % for the feature slices, 15 % for the gather buffers; the rest is headroom for the interpreter,
    # the libraries and per-minibatch temporaries
    slice_rows = int(min(n, max(1, (avail // 2) // n_buf // rb)))
    gather_rows = int(max(1, min(MAX_GATHER_BYTES, (avail * 15 // 100) // n_buf) // rb))

    target = AtomicDirectory(out, overwrite=overwrite)
    target.check()
    log.info("packing %s for plan %s into %s: %d minibatches over %s, gpu tier %d rows, host tier %d rows, "
             "memory budget %s (slices of %d rows)", ds.path, pl.path, out, total_mb, ", ".join(splits),
             tier_ids["gpu"].size, tier_ids["host"].size, format_bytes(memory_budget), slice_rows)

    tier_of = np.zeros(n, dtype=np.int8)
    slot_of = np.zeros(n, dtype=np.int32)
    for name, code in (("host", 1), ("gpu", 2)):
        ids = tier_ids[name]
        tier_of[ids] = code
        slot_of[ids] = np.arange(ids.size, dtype=np.int32)

    with target as tmp:
        write_group(tmp, {"diskgraph": PACK_FORMAT})
        (tmp / "index").mkdir()
        write_group(tmp / "cold")
        write_group(tmp / "tiers")

        # -- step 2: index pass
        t0 = time.perf_counter()
        ptr = np.zeros(total_mb + 1, dtype=np.int64)
        ext_off = np.zeros(total_mb, dtype=np.int64)
        file_of = np.zeros(total_mb, dtype=np.int8)
        split_stats: dict[str, dict] = {}
        flat_path = tmp / "cold_nodes.scratch"
        schema = index_schema()
        m = 0
        with AppendFile(flat_path) as flat, Progress("indexing", total_mb, "minibatches") as bar:
            for si, split in enumerate(splits):
                stats = {"minibatches": counts[si], "minibatches_per_epoch": pl.minibatches_per_epoch(split),
                         "epochs": pl.num_epochs(split), "input_rows": 0, "gpu_rows": 0, "host_rows": 0,
                         "cold_rows": 0, "cold_bytes": 0, "padded_bytes": 0, "max_padded_nbytes": 0}
                f = AppendFile(tmp / "index" / f"{split}.arrow")
                sink = pa.PythonFile(f, mode="w")
                writer = pa.ipc.new_file(sink, schema)
                pos = 0
                try:
                    for i in range(counts[si]):
                        mb = pl.minibatch(split, i)
                        nodes = mb.input_nodes
                        if nodes.size and (nodes.min() < 0 or nodes.max() >= n):
                            raise FormatError(f"plan {pl.path} minibatch {i} of {split} names node "
                                              f"{nodes.min() if nodes.min() < 0 else nodes.max()}, outside 0..{n - 1}; "
                                              "the plan is damaged, sample it again")
                        t = tier_of[nodes]
                        slot = slot_of[nodes]
                        cold_at = np.flatnonzero(t == 0)
                        cn = nodes[cold_at]
                        order = np.argsort(cn, kind="stable")
                        cold_sorted = cn[order]
                        k = int(cold_sorted.size)
                        slot[cold_at[order]] = np.arange(k, dtype=np.int32)
                        nbytes = k * rb
                        padded = round_up(nbytes, ALIGNMENT)
                        cols = [pa.array([mb.epoch], pa.int32()), pa.array([mb.batch], pa.int32()),
                                pa.array([pos], pa.int64()), pa.array([nbytes], pa.int64()),
                                pa.array([padded], pa.int64()), pa.array([k], pa.int32()),
                                _list(t, pa.int8()), _list(slot, pa.int32()), _list(cold_sorted, pa.int64())]
                        writer.write_batch(pa.record_batch(cols, schema=schema))
                        flat.write(cold_sorted)
                        ext_off[m] = pos
                        file_of[m] = si
                        ptr[m + 1] = ptr[m] + k
                        pos += padded
                        m += 1
                        n_gpu = int(np.count_nonzero(t == 2))
                        stats["input_rows"] += int(nodes.size)
                        stats["gpu_rows"] += n_gpu
                        stats["host_rows"] += int(nodes.size) - n_gpu - k
                        stats["cold_rows"] += k
                        stats["max_padded_nbytes"] = max(stats["max_padded_nbytes"], padded)
                        bar.update(1)
                    writer.close()
                    f.close()
                except BaseException:
                    f.abort()
                    raise
                stats["cold_bytes"] = stats["cold_rows"] * rb
                stats["padded_bytes"] = pos
                stats["cold_bytes_per_epoch"] = stats["padded_bytes"] // max(1, stats["epochs"])
                stats["index_bytes"] = (tmp / "index" / f"{split}.arrow").stat().st_size
                split_stats[split] = stats
        t_index = time.perf_counter() - t0
        del tier_of, slot_of

        feature_bytes = n * rb
        packed_bytes = sum(s["padded_bytes"] for s in split_stats.values())
        cold_bytes = sum(s["cold_bytes"] for s in split_stats.values())
        tier_bytes = {name: int(ids.size) * rb for name, ids in tier_ids.items()}
        blowup = packed_bytes / feature_bytes if feature_bytes else 0.0
        log.info("index: %d minibatches in %.1f s; cold extents %s (payload %s), blow-up %.2fx of the %s feature table",
                 total_mb, t_index, format_bytes(packed_bytes), format_bytes(cold_bytes), blowup,
                 format_bytes(feature_bytes))
        if max_blowup is not None and blowup > max_blowup:
            log.warning("the pack's disk blow-up is %.2fx (cold extents %s for a %s feature table), above --max-blowup "
                        "%.2f; larger --gpu-cache/--host-cache or fewer presampled epochs shrink it", blowup,
                        format_bytes(packed_bytes), format_bytes(feature_bytes), max_blowup)
        need = packed_bytes + sum(tier_bytes.values())
        free = shutil.disk_usage(tmp).free
        if need > free:
            raise InputError(f"the pack needs {format_bytes(need)} but {tmp.parent} has {format_bytes(free)} free; "
                             "free disk space, raise --gpu-cache/--host-cache or pack fewer epochs")

        # -- step 3: one pass over the feature table
        t0 = time.perf_counter()
        paths = [cold_chunk_path(tmp, s) for s in splits]
        cold = _ColdWriter(paths, [split_stats[s]["padded_bytes"] for s in splits])
        tier_writers = {}
        for name in TIERS:
            write_group(tmp / "tiers" / name)
            tier_writers[name] = RowChunkWriter(tmp / "tiers" / name / "features", tier_ids[name].size, (dim,),
                                                feats.dtype, min(tier_chunk_rows, max(1, tier_ids[name].size)))
        try:
            _pack_slices(feats, tier_ids, tier_writers, cold, flat_path, ptr, ext_off, file_of, slice_rows,
                         gather_rows, runs_cap, threads, packed_bytes)
            cold.close()
        except BaseException:
            cold.abort()
            raise
        t_pack = time.perf_counter() - t0
        flat_path.unlink()

        tiers_record = {}
        for name in TIERS:
            shape, sha = tier_writers[name].finish()
            _, nodes_sha = write_array(tmp / "tiers" / name / "nodes", tier_ids[name], "int64")
            tiers_record[name] = {"rows": int(shape[0]), "bytes": tier_bytes[name], "sha256": sha,
                                  "nodes_sha256": nodes_sha}
        for s in splits:
            size = split_stats[s]["padded_bytes"]
            write_array_metadata(tmp / "cold" / s, (size,), (size,), "uint8",
                                 {"diskgraph": "packed cold rows", "alignment": ALIGNMENT, "row_bytes": rb})

        seconds = time.perf_counter() - t_start
        written = packed_bytes + sum(tier_bytes.values())
        rate = written / max(t_pack, 1e-9)
        feat_rec = ds.manifest.get("arrays", {}).get("features", {})
        write_manifest(tmp, PACK_FORMAT, PACK_VERSION, {
            "plan": {"path": _relative_plan_path(pl.path, ds.path, out), "created_at": pl.manifest.get("created_at"),
                     "counts_sha256": {s: pl.split_info[s].get("counts_sha256") for s in splits},
                     "config": pl.config},
            "dataset": {"num_nodes": n, "feature_sha256": feat_rec.get("sha256"), "feature_dim": dim,
                        "feature_dtype": feats.dtype, "row_bytes": rb,
                        "indptr_sha256": ds.manifest.get("arrays", {}).get("topology/indptr", {}).get("sha256")},
            "gpu_cache_bytes": int(gpu_cache_bytes if gpu_cache_bytes is not None else tier_bytes["gpu"]),
            "host_cache_bytes": int(host_cache_bytes if host_cache_bytes is not None else tier_bytes["host"]),
            "score": score or "given",
            "tiers": tiers_record,
            "alignment": ALIGNMENT,
            "splits": split_stats,
            "feature_bytes": feature_bytes,
            "cold_bytes": cold_bytes,
            "packed_bytes": packed_bytes,
            "tier_bytes": tier_bytes,
            "blowup": round(blowup, 4),
            "config": {"memory_budget": int(memory_budget), "max_blowup": max_blowup, "slice_rows": slice_rows,
                       "gather_rows": gather_rows, "runs_per_write": runs_cap, "threads": bool(threads)},
            "seconds": round(seconds, 3),
            "timing": {"index_seconds": round(t_index, 3), "pack_seconds": round(t_pack, 3),
                       "write_seconds": round(cold.seconds, 3), "bytes_written": written,
                       "write_mb_per_s": round(rate / 1e6, 1)},
        })
    log.info("packed %s: blow-up %.2fx (cold extents %s over %s), gpu tier %s (%d rows), host tier %s (%d rows); "
             "%.1f s (index %.1f s, pack %.1f s at %.0f MB/s written)", out, blowup, format_bytes(packed_bytes),
             ", ".join(f"{s} {format_bytes(split_stats[s]['padded_bytes'])}" for s in splits),
             format_bytes(tier_bytes["gpu"]), tier_ids["gpu"].size, format_bytes(tier_bytes["host"]),
             tier_ids["host"].size, seconds, t_index, t_pack, rate / 1e6)
    return out


def _list(values: np.ndarray, type_: pa.DataType) -> pa.Array:
    values = np.ascontiguousarray(values)
    return pa.ListArray.from_arrays(pa.array(np.array([0, len(values)], dtype=np.int32)), pa.array(values, type=type_))


def _pack_slices(feats, tier_ids, tier_writers, cold: _ColdWriter, flat_path: Path, ptr: np.ndarray,
                 ext_off: np.ndarray, file_of: np.ndarray, slice_rows: int, gather_rows: int, runs_cap: int, threads: bool,
                 total_bytes: int) -> None:
    """Step 3: read the feature table slice by slice, write tier rows and every minibatch's rows in the slice."""
    n = feats.shape[0]
    rb = feats.row_bytes
    dim = feats.shape[1]
    word = word_dtype(rb)
    width = rb // word.itemsize
    n_buf = 2 if threads else 1
    slices = [np.empty((slice_rows, dim), dtype=feats.storage_dtype) for _ in range(n_buf)]
    gbufs = [np.empty((gather_rows, width), dtype=word) for _ in range(n_buf)]
    runs = np.empty((runs_cap, 3), dtype=np.int64)
    cursor = ptr[:-1].copy()
    have_cold = int(ptr[-1]) > 0
    flat = np.asarray(np.memmap(flat_path, dtype=np.int64, mode="r")) if have_cold else np.zeros(1, np.int64)
    chunk_rows = feats.chunk_shape[0]

    def read(k: int, lo: int, hi: int) -> np.ndarray:
        out = feats.read_rows(lo, hi, out=slices[k][: hi - lo])
        for c in range(lo // chunk_rows, (hi - 1) // chunk_rows + 1):
            evict_file(feats.chunk_path(c))  # the table is read once: keep it out of the page cache
        return out

    # one reader thread (the next slice) and one writer thread (pwrites are serialized: one writer owns the files)
    pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="pack-read") if threads else None
    wpool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="pack-write") if threads else None
    pending_write: list[cf.Future | None] = [None] * n_buf
    bounds = [(lo, min(lo + slice_rows, n)) for lo in range(0, n, slice_rows)]
    try:
        with Progress("packing", total_bytes, "B") as bar:
            nxt = pool.submit(read, 0, *bounds[0]) if pool else None
            g = 0
            for si, (lo, hi) in enumerate(bounds):
                k = si % n_buf
                block = nxt.result() if pool else read(k, lo, hi)
                if pool and si + 1 < len(bounds):
                    nxt = pool.submit(read, (si + 1) % n_buf, *bounds[si + 1])
                for name in TIERS:
                    ids = tier_ids[name]
                    a, b = np.searchsorted(ids, [lo, hi])
                    step = tier_writers[name].chunk_rows  # bounded temporaries: one tier chunk at a time
                    for j in range(a, b, step):
                        tier_writers[name].append(block[ids[j:min(j + step, b)] - lo])
                if not have_cold:
                    continue
                words = block.reshape(hi - lo, -1).view(np.uint8).view(word).reshape(hi - lo, width)
                m = 0
                while m < cursor.shape[0]:
                    if pending_write[g] is not None:
                        pending_write[g].result()
                        pending_write[g] = None
                    m, fill, nr = gather_runs(words, lo, hi, flat, ptr, cursor, m, gbufs[g], runs)
                    if nr == 0:
                        continue
                    r = runs[:nr]
                    mbs = r[:, 0]
                    files = file_of[mbs]
                    offsets = ext_off[mbs] + (r[:, 1] - ptr[mbs]) * rb
                    lengths = r[:, 2] * rb
                    view = memoryview(gbufs[g]).cast("B")
                    if pool:
                        pending_write[g] = wpool.submit(cold.write_runs, view, files, offsets, lengths)
                        g = (g + 1) % n_buf
                    else:
                        cold.write_runs(view, files, offsets, lengths)
                    bar.update(int(lengths.sum()))
            for f in pending_write:
                if f is not None:
                    f.result()
        if have_cold and not np.array_equal(cursor, ptr[1:]):
            raise RuntimeError("packing did not place every cold row (an input node id outside the feature table?)")
    finally:
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)
            wpool.shutdown(wait=True, cancel_futures=True)
        del flat
