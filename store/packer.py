"""Batched packing: lay out every minibatch's cold feature rows contiguously on disk.

Given a plan and the hot tiers (node ids chosen by
:func:`diskgraph.sampler.hot_set.select_hot_sets`), :func:`pack_features`
writes a pack directory (format in :mod:`diskgraph.store.packed`) in three steps:

1. ``tier_of`` (int8 [N]) and ``slot_of`` (int32 [N]) from the tier lists.
2. Index pass over the plan's minibatches, in plan order: each input node's
   tier and slot (a cold node's slot is its rank among the minibatch's cold
   nodes, sorted by id), the extent's offset (a multiple of 4096) and padded
   length, computed by a numba kernel (:func:`~diskgraph.native.packing.index_minibatch`,
   GIL released) while a helper thread writes the previous rows to
   ``index/{split}.arrow``. Each ``cold/{split}`` file is then preallocated.
3. ONE sequential pass over the feature table in slices: each slice's hot rows
   are appended to the tier arrays, and for every minibatch (all splits) a
   cursor into its sorted cold ids tells which of its rows fall in the slice;
   a numba kernel gathers them and they are written with one ``pwrite`` per
   minibatch and slice, contiguous within the extent (the ids are sorted). No
   feature row is ever read at random. The sorted cold ids are read back from
   the index files themselves (memory-mapped: the ``cold_nodes`` buffers of an
   Arrow IPC file are 8-byte aligned int64), so no copy of them is written.
   As each gathered buffer goes to the writer, its bytes are fed to the checksum
   of the extents they belong to (:class:`_ExtentHasher`); ``checksums/{split}``
   records them, and every reader verifies an extent against it.

How the cold files are written:
  * ``O_DIRECT`` (the default where the filesystem allows it): the kernel
    (:func:`~diskgraph.native.packing.gather_pages`) lays the rows out as whole
    4 KiB pages in an aligned buffer; the bytes of a minibatch's not-yet-full
    last page wait in its *carry* page (4 KiB per minibatch) and go in front of
    its rows from the next slice; an extent's last page is zero-padded when its
    last row is in. Nothing goes through the page cache, so there is no copy
    into it and no writeback to wait for. The files are synced at the end.
  * buffered, when ``O_DIRECT`` is refused (``EINVAL`` at open or write: one
    warning, and the same pages are written through the page cache), when the
    carries would take more than a quarter of the budget, or with
    ``direct_io=False``: the kernel (:func:`~diskgraph.native.packing.gather_runs`)
    gathers whole rows, and the writer starts writeback after each batch of
    writes and syncs and drops the written pages every
    :data:`~diskgraph.store.files.FLUSH_BYTES` per file.
Both write the same bytes.

``max_blowup`` (a guarantee, not a warning): before step 2, when it is finite, one more pass over the plan
(:func:`_budget_threshold`) groups every minibatch's cold ids by their 4 KiB page of the feature table and finds the
largest group size ``k*`` such that packing every group of fewer than ``k*`` rows fits the budget (padded bytes,
exact); step 2 then packs those, the groups of exactly ``k*`` rows while the budget allows (plan order), and names
the other cold rows *table rows* (tier 3, ``table_nodes``), read at training time from the feature table. Their
checksums (``table_checksums/{split}``) are computed in step 3 from the same slices (:class:`_TableHasher`).

Three threads overlap: one reads the next slice, the main thread gathers
(numba, GIL released) and one writes (pwrite releases the GIL). Feature
chunks are dropped from the page cache once read, so the page cache stays bounded.

Memory held (``memory_budget`` covers all of it; what is left after the fixed
parts goes 50 % to the slices and 15 % to the gather buffers, the rest is
headroom for the interpreter and temporaries):
  * O(N): ``tier_of`` + ``slot_of``, 5 bytes per node (freed after the index pass);
  * O(#minibatches): extent offsets, cold-id starts, ends and cursors, 33 bytes per minibatch, the streaming
    checksum of its extent (about 720 bytes), and with ``O_DIRECT`` one 4 KiB carry page per minibatch;
  * two feature slices (the one being gathered and the one being read);
  * two gather buffers (the one being filled and the one being written), at most 64 MiB each;
  * one chunk per tier writer (at most 16 MiB, budget / 32) and the tier id lists given as input;
  * during the index pass, a few minibatches' arrays (the one being indexed and those queued for writing).
The per-minibatch sorted cold ids are not held: the kernel reads them from the
memory-mapped index files, one cursor position per minibatch and slice; like
the memory-mapped plan, these are clean file pages the kernel reclaims under
a memory cap (they show in RSS as RssFile, not RssAnon). With ``threads=False``
there is one slice and one gather buffer, each twice as large, and the index
rows are written by the main thread.
"""

from __future__ import annotations

import concurrent.futures as cf
import errno
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..native.packing import gather_pages, gather_runs, index_minibatch, word_dtype
from .atomic import AtomicDirectory
from .binding import artifact_identity, check_plan, pack_binding
from .checksums import DATA_CHECKSUM, new_data_hasher
from .direct_io import ALIGNMENT, O_DIRECT, aligned_empty, round_up
from .errors import FormatError, InputError
from .files import FLUSH_BYTES, AppendFile, drop_cache, evict_file, preallocate, start_writeback
from .manifest import write_manifest
from .packed import (COLD, PACK_FORMAT, PACK_VERSION, TABLE, TABLE_PAGE_BYTES, TIERS, cold_chunk_path,
                     index_record_batch, index_schema)
from .progress import Progress, format_bytes, log
from .zarr_arrays import RowChunkWriter, write_array, write_array_metadata, write_group

TIER_CHUNK_BYTES = 16 << 20
"""Target bytes per chunk file of the tier arrays."""

MAX_GATHER_BYTES = 64 << 20
"""Upper bound of one gather buffer (larger buffers only add memory)."""

EXTENT_HASHER_BYTES = 720
"""Memory of one minibatch's streaming extent checksum (measured: about 712 bytes per XXH3 state)."""

_RUNS = 1 << 14
"""Runs (one minibatch's rows within one slice) per gather buffer at most."""


# -- checks ----------------------------------------------------------------------------------------

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
    """pwrites into the preallocated cold files, with ``O_DIRECT`` when asked and allowed.

    Direct: every write is whole 4 KiB pages from an aligned buffer at an aligned offset (the
    caller's promise); nothing enters the page cache and the files are synced on :meth:`close`.
    ``EINVAL`` at open or at a write (a filesystem that refuses ``O_DIRECT``) switches to buffered
    writes, with one logged warning, and the writes are retried.

    Buffered: after each batch of writes, writeback of the touched files starts in the background;
    every ``flush_bytes`` per file, the file is synced and its pages dropped from the page cache.
    """

    def __init__(self, paths: list[Path], sizes: list[int], flush_bytes: int = FLUSH_BYTES, direct: bool = False):
        self.paths = [os.fspath(p) for p in paths]
        self.direct = bool(direct and O_DIRECT)
        self.fds: list[int] = []
        try:
            for p, size in zip(paths, sizes):
                p.parent.mkdir(parents=True, exist_ok=True)
                fd = self._open(os.fspath(p), os.O_RDWR | os.O_CREAT | os.O_TRUNC)
                self.fds.append(fd)
                preallocate(fd, size)
        except BaseException:
            self.abort()
            raise
        self.dirty = [0] * len(self.fds)
        self.flush_bytes = flush_bytes
        self.bytes_written = 0
        self.seconds = 0.0

    def _open(self, path: str, flags: int) -> int:
        if self.direct:
            try:
                return os.open(path, flags | O_DIRECT, 0o644)
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                self._fall_back(path, "EINVAL on open")
        return os.open(path, flags, 0o644)

    def _fall_back(self, path: str, why: str) -> None:
        """Switch every file to buffered writes (reopening the ones already open without O_DIRECT)."""
        log.warning("O_DIRECT is refused for %s (%s); writing the pack with buffered I/O instead, through the page "
                    "cache (the pack is the same, writing it costs more CPU time and memory)", path, why)
        self.direct = False
        for i, fd in enumerate(self.fds):
            self.fds[i] = os.open(self.paths[i], os.O_RDWR)
            os.close(fd)

    def write_runs(self, buf: memoryview, files: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> None:
        """Write consecutive pieces of ``buf`` (``lengths`` bytes each) to ``files[k]`` at ``offsets[k]``."""
        t0 = time.perf_counter()
        pos = 0
        for f, off, n in zip(files.tolist(), offsets.tolist(), lengths.tolist()):
            view = buf[pos:pos + n]
            done = 0
            while done < n:
                try:
                    done += os.pwrite(self.fds[f], view[done:], off + done)
                except OSError as e:
                    if not (self.direct and e.errno == errno.EINVAL):
                        raise
                    self._fall_back(self.paths[f], "EINVAL on write")
            pos += n
            if not self.direct:
                self.dirty[f] += n
                if self.dirty[f] >= self.flush_bytes:
                    os.fdatasync(self.fds[f])
                    drop_cache(self.fds[f])
                    self.dirty[f] = 0
        if not self.direct:
            for f in np.unique(files).tolist():
                if self.dirty[f]:
                    start_writeback(self.fds[f])
        self.bytes_written += pos
        self.seconds += time.perf_counter() - t0

    def close(self) -> None:
        t0 = time.perf_counter()
        for fd in self.fds:
            os.fdatasync(fd)
            if not self.direct:
                drop_cache(fd)
            os.close(fd)
        self.fds = []
        self.seconds += time.perf_counter() - t0

    def abort(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


class _IndexWriter:
    """Writes one split's index rows (Arrow IPC), in a helper thread when ``threaded``.

    :meth:`add` queues a row; at most ``depth`` rows wait, so memory stays a few minibatches'
    arrays. The rows are written in the order they are added.

    It also finds where each row's sorted cold ids land in the file: the ``cold_nodes`` values are
    the last buffer of a record batch's message, 8-byte aligned, so they end where the message
    ends. Each row is checked against the bytes just written (still in the page cache); should a
    pyarrow lay messages out otherwise, :attr:`starts` is found by reading the file back instead.
    """

    def __init__(self, path: Path, threaded: bool, depth: int = 4):
        self.path = path
        self.schema = index_schema()
        self.file = AppendFile(path, readable=True)
        self.writer = pa.ipc.new_file(pa.PythonFile(self.file, mode="w"), self.schema)
        self.pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="pack-index") if threaded else None
        self.pending: list[cf.Future] = []
        self.depth = depth
        self._starts: list[int] = []
        self._counts: list[int] = []
        self._layout_ok = True

    def _write(self, epoch: int, batch: int, pos: int, nbytes: int, padded: int, k: int, tier: np.ndarray,
               slot: np.ndarray, cold: np.ndarray, table: np.ndarray | None = None) -> None:
        n_table = 0 if table is None else int(table.shape[0])
        self.writer.write_batch(index_record_batch(epoch, batch, pos, nbytes, padded, k, tier, slot, cold,
                                                   n_table=n_table, table_nodes=table))
        end = self.file.tell()
        start = end - 8 * k
        if self._layout_ok and k:
            first = os.pread(self.file.fd, 8, start)
            last = os.pread(self.file.fd, 8, end - 8)
            if end % 8 or first != cold[:1].tobytes() or last != cold[k - 1:].tobytes():
                self._layout_ok = False
        self._starts.append(start // 8 if k else 0)
        self._counts.append(k)

    def add(self, *row) -> None:
        if self.pool is None:
            self._write(*row)
            return
        while len(self.pending) >= self.depth:
            self.pending.pop(0).result()
        self.pending.append(self.pool.submit(self._write, *row))

    def close(self) -> None:
        """Write what is queued, finish the file (footer) and sync it."""
        try:
            for f in self.pending:
                f.result()
            self.pending = []
            self.writer.close()
            self.file.close()
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True)

    @property
    def starts(self) -> np.ndarray:
        """int64 per row: where its cold ids start in the (closed) file read as int64."""
        counts = np.array(self._counts, dtype=np.int64)
        if self._layout_ok:
            return np.array(self._starts, dtype=np.int64)
        return _cold_id_starts(self.path, counts)

    def abort(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        self.file.abort()


def _cold_id_starts(path: Path, counts: np.ndarray, column: str = "cold_nodes") -> np.ndarray:
    """Where each index row's ``cold_nodes`` (or other int64 list ``column``) values start in the file ``path``,
    in int64 units.

    Arrow IPC pads every buffer of a record batch to a multiple of 8 bytes from the start of the
    file, so the file read as int64 holds each minibatch's sorted cold ids as one contiguous run;
    the packing kernel reads them there (memory-mapped) instead of from a copy.
    """
    starts = np.zeros(counts.size, dtype=np.int64)
    if not counts.any():
        return starts
    with pa.memory_map(os.fspath(path), "r") as mm:
        mm.seek(0)
        base = mm.read_buffer(8).address  # zero-copy: the address of the mapping
        reader = pa.ipc.open_file(mm)
        col = reader.schema.get_field_index(column)
        for i in np.flatnonzero(counts).tolist():
            values = reader.get_batch(i).column(col).values
            at = values.buffers()[1].address + values.offset * 8 - base
            if at % 8 or values.type != pa.int64() or len(values) != counts[i]:
                raise RuntimeError(f"{path}: minibatch {i}'s {column} are not an aligned int64 run at byte {at}")
            starts[i] = at // 8
    return starts


# -- the --max-blowup budget: which cold rows are packed, which are read from the feature table ------------

def normalize_max_blowup(max_blowup) -> float | None:
    """``max_blowup`` as the packer takes it: a float >= 0, or None for unbounded (None, ``inf``).

    Raises:
        InputError: negative or not a number.
    """
    if max_blowup is None:
        return None
    try:
        b = float(max_blowup)
    except (TypeError, ValueError):
        raise InputError(f"--max-blowup {max_blowup!r} is not a number; pass a number >= 0, or inf for no bound") from None
    if b != b or b < 0:
        raise InputError(f"--max-blowup {max_blowup} must be a number >= 0 (or inf for no bound)")
    return None if b == float("inf") else b


class _TablePages:
    """Where rows lie in the feature table's chunk files: row ``r`` is in chunk ``r // chunk_rows`` at byte
    ``(r % chunk_rows) * row_bytes``; its *page* is that byte offset // 4096 within that chunk file, one key per
    (chunk, page). A row that straddles two pages is grouped with its first page (:meth:`first`); the reads it
    costs count both (:meth:`reads`)."""

    def __init__(self, chunk_rows: int, row_bytes: int):
        self.cr = int(chunk_rows)
        self.rb = int(row_bytes)
        self.per_chunk = self.cr * self.rb // TABLE_PAGE_BYTES + 2  # more than the pages of one chunk file

    def first(self, ids: np.ndarray) -> np.ndarray:
        c = ids // self.cr
        return c * self.per_chunk + (ids - c * self.cr) * self.rb // TABLE_PAGE_BYTES

    def groups(self, ids: np.ndarray) -> np.ndarray:
        """Sizes of the runs of sorted ``ids`` that share a first page (in id order; the page key grows with the id)."""
        if not ids.shape[0]:
            return np.zeros(0, np.int64)
        keys = self.first(ids)
        starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
        return np.diff(np.append(starts, ids.shape[0])).astype(np.int64)

    def reads(self, ids: np.ndarray) -> int:
        """4 KiB pages a read of the sorted distinct rows ``ids`` touches (a page shared by rows counts once)."""
        if not ids.shape[0]:
            return 0
        c = ids // self.cr
        off = (ids - c * self.cr) * self.rb
        first = c * self.per_chunk + off // TABLE_PAGE_BYTES
        last = c * self.per_chunk + (off + self.rb - 1) // TABLE_PAGE_BYTES
        return int((last - first + 1).sum() - (first[1:] == last[:-1]).sum())


def _padded(rows, rb: int):
    return (rows * rb + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def _budget_threshold(pl, splits: list[str], counts: list[int], tier_of: np.ndarray, slot_of: np.ndarray,
                      pages: _TablePages, budget: int) -> tuple[int | None, int, int]:
    """Pass A over the plan: the group-size threshold under the budget.

    Every minibatch's cold ids are grouped by their page in the feature table (:class:`_TablePages`); packing the
    groups of fewer than ``t`` rows (over all minibatches) costs ``totals[t]`` padded extent bytes, computed exactly
    from the per-minibatch histograms. Returns ``(k*, slack, unbounded bytes)``: ``k*`` the largest ``t`` with
    ``totals[t] <= budget`` (None when every cold row fits: nothing goes to the table) and ``slack = budget -
    totals[k*]``, which pass B spends, in plan order, on groups of exactly ``k*`` rows. Memory: one array over group
    sizes, besides a minibatch's arrays.
    """
    rb = pages.rb
    diff = np.zeros(64, dtype=np.int64)  # diff[t]: change of the padded bytes when the threshold goes from t-1 to t
    scratch = [np.empty(0, np.int64), np.empty(0, np.int64)]
    n = tier_of.shape[0]
    with Progress("budgeting", int(sum(counts)), "minibatches") as bar:
        for si, split in enumerate(splits):
            for i in range(counts[si]):
                nodes = np.ascontiguousarray(pl.minibatch(split, i).input_nodes, dtype=np.int64)
                size = nodes.shape[0]
                if scratch[0].shape[0] < size:
                    scratch = [np.empty(2 * size, np.int64), np.empty(2 * size, np.int64)]
                t, slot, cold = np.empty(size, np.int8), np.empty(size, np.int32), np.empty(size, np.int64)
                k, _, bad = index_minibatch(nodes, tier_of, slot_of, t, slot, cold, *scratch)
                if bad >= 0:
                    raise FormatError(f"plan {pl.path} minibatch {i} of {split} names node {nodes[bad]}, "
                                      f"outside 0..{n - 1}; the plan is damaged, sample it again")
                bar.update(1)
                if not k:
                    continue
                u, cnt = np.unique(pages.groups(cold[:k]), return_counts=True)
                padded = _padded(np.cumsum(u * cnt), rb)
                if u[-1] + 2 > diff.shape[0]:
                    diff = np.concatenate([diff, np.zeros(max(diff.shape[0], int(u[-1]) + 2), np.int64)])
                np.add.at(diff, u + 1, np.diff(padded, prepend=0))
    totals = np.cumsum(diff)  # totals[t]: padded bytes of the groups of fewer than t rows; the last: every row
    full = int(totals[-1])
    if full <= budget:
        return None, budget - full, full
    kstar = int(np.searchsorted(totals[1:], budget, side="right"))  # totals[1] = 0 <= budget: at least 1
    return kstar, budget - int(totals[kstar]), full


def _split_table(cold: np.ndarray, pages: _TablePages, kstar: int, slack: int) -> tuple[np.ndarray, int]:
    """Pass B for one minibatch's sorted cold ids: which to pack (bool mask) and the slack left. Groups of fewer than
    ``kstar`` rows are packed, groups of more are not, groups of exactly ``kstar`` rows as far as ``slack`` allows
    (in id order)."""
    rb = pages.rb
    sizes = pages.groups(cold)
    keep_group = sizes < kstar
    eq = np.flatnonzero(sizes == kstar)
    if eq.size and slack > 0:
        base = int(sizes[keep_group].sum())
        room = (int(_padded(base, rb)) + slack) // ALIGNMENT * ALIGNMENT  # the extent may grow to this many bytes
        j = min(eq.size, max(0, (room // rb - base) // kstar))
        if j:
            keep_group[eq[:j]] = True
            slack -= int(_padded(base + j * kstar, rb) - _padded(base, rb))
    return np.repeat(keep_group, sizes), slack


def _to_table(tier: np.ndarray, slot: np.ndarray, cold: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Move the cold inputs whose sorted position is not in ``keep`` to the table tier, in place in ``tier`` and
    ``slot`` (the kept ones get their rank among the kept); returns ``(extent ids, table ids, extent rows)``."""
    packed = np.ascontiguousarray(cold[keep])
    table = np.unique(cold[~keep])
    rank = np.cumsum(keep) - 1
    at = np.flatnonzero(tier == COLD)
    pos = slot[at]
    kept = keep[pos]
    slot[at[kept]] = rank[pos[kept]]
    moved = at[~kept]
    tier[moved] = TABLE
    slot[moved] = np.searchsorted(table, cold[pos[~kept]])
    return packed, table, int(packed.shape[0])


def pack_features(dataset, plan, out_dir: str | os.PathLike, *, tiers: dict[str, np.ndarray], memory_budget: int,
                  max_blowup: float | None = None, overwrite: bool = False, splits: list[str] | None = None,
                  gpu_cache_bytes: int | None = None, host_cache_bytes: int | None = None,
                  score: str | None = None, threads: bool = True, direct_io: bool = True) -> Path:
    """Pack ``dataset``'s features for ``plan`` into the pack directory ``out_dir``.

    Args:
        dataset: a :class:`~diskgraph.store.dataset.Dataset` or its directory.
        plan: a :class:`~diskgraph.store.plan.Plan` or its directory; it must belong to ``dataset``.
        out_dir: the pack directory to create (normally ``DATASET/packs/NAME``), written atomically.
        tiers: ``{"gpu": ids, "host": ids}`` global node ids of the hot tiers (missing = empty).
        memory_budget: bytes the packer may hold; sizes the feature slices and gather buffers.
        max_blowup: bound of the packed cold bytes (padded extents, all splits) / feature-table bytes, >= 0; None
            or ``inf``: unbounded. Cold rows over the budget are not packed: their index rows name them as table
            rows (tier 3), read at training time from the dataset's feature table itself. The rows sharing a 4 KiB
            page of the table with other rows of their minibatch go to the table first (see :func:`_budget_threshold`).
        overwrite: replace an existing ``out_dir``.
        splits: the plan's splits to pack (default: all).
        gpu_cache_bytes, host_cache_bytes: the requested cache sizes, recorded in the manifest
            (default: the tiers' row bytes).
        score: name of the hotness score the tiers were chosen by, recorded in the manifest.
        threads: overlap slice reads, gathering and writes with two helper threads (and the index
            pass's computing and writing with one).
        direct_io: write the cold files with ``O_DIRECT`` where the filesystem allows it and the
            carry pages fit the budget (the bytes written are the same either way).

    Returns:
        ``out_dir``.

    Raises:
        InputError: a plan of another dataset, a dataset without features, negative cache sizes,
            bad tier ids, unknown splits, too small a memory budget or too little free disk.
    """
    from .dataset import Dataset, open_dataset
    from .plan import Plan, open_plan

    t_start = time.perf_counter()
    max_blowup = normalize_max_blowup(max_blowup)
    ds = dataset if isinstance(dataset, Dataset) else open_dataset(dataset)
    pl = plan if isinstance(plan, Plan) else open_plan(plan)
    out = Path(out_dir)
    feats = ds.features
    if feats is None or ds.num_nodes == 0:
        raise InputError(f"dataset {ds.path} has no features to pack; import it with --features")
    check_plan(pl, ds)
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
    fixed = 5 * n + (33 + EXTENT_HASHER_BYTES) * (total_mb + 1) + 2 * tier_chunk_rows * rb + 3 * runs_cap * 32
    if max_blowup is not None:  # table rows: their ids' starts, ends and cursors, and a checksum per minibatch
        fixed += (24 + EXTENT_HASHER_BYTES) * (total_mb + 1)
    # O_DIRECT: a 4 KiB carry page per minibatch, and gather buffers of at least two pages and a row
    carry_bytes = total_mb * ALIGNMENT
    min_gather = 2 * ALIGNMENT + round_up(rb, ALIGNMENT)
    direct = bool(direct_io and O_DIRECT) and carry_bytes <= (memory_budget - fixed) // 4
    if direct_io and O_DIRECT and not direct:
        log.info("writing the pack with buffered I/O: O_DIRECT needs a %s carry page per minibatch, %s for %d "
                 "minibatches, more than a quarter of the memory budget", format_bytes(ALIGNMENT),
                 format_bytes(carry_bytes), total_mb)
    if direct:
        fixed += carry_bytes
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
    if direct:
        gather_rows = max(gather_rows, -(-min_gather // rb))

    target = AtomicDirectory(out, overwrite=overwrite, option="--name", kind=PACK_FORMAT)
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

    feature_bytes = n * rb
    pages = _TablePages(feats.chunk_shape[0], rb)
    budget = None if max_blowup is None else int(np.floor(max_blowup * feature_bytes))
    kstar, slack, unbounded_bytes = None, 0, None
    if budget is not None:
        t0 = time.perf_counter()
        kstar, slack, unbounded_bytes = _budget_threshold(pl, splits, counts, tier_of, slot_of, pages, budget)
        log.info("budget: cold extents of every row would take %s, %.2fx of the %s feature table; --max-blowup %g "
                 "allows %s%s (%.1f s)", format_bytes(unbounded_bytes), unbounded_bytes / max(feature_bytes, 1),
                 format_bytes(feature_bytes), max_blowup, format_bytes(budget),
                 "" if kstar is None else f": a minibatch's rows that share a 4 KiB table page with {kstar} or more "
                 f"of its others ({kstar - 1} where the budget runs out) are read from the feature table",
                 time.perf_counter() - t0)

    with target as tmp:
        write_group(tmp, {"diskgraph": PACK_FORMAT})
        (tmp / "index").mkdir()
        write_group(tmp / "cold")
        write_group(tmp / "tiers")

        # -- step 2: index pass
        t0 = time.perf_counter()
        n_cold = np.zeros(total_mb, dtype=np.int64)
        n_tab = np.zeros(total_mb, dtype=np.int64)
        table_pages = 0
        ext_off = np.zeros(total_mb, dtype=np.int64)
        file_of = np.zeros(total_mb, dtype=np.int8)
        split_stats: dict[str, dict] = {}
        scratch = [np.empty(0, np.int64), np.empty(0, np.int64)]  # the kernel's sort buffers, grown as needed
        id_start = np.zeros(total_mb, dtype=np.int64)
        tab_start = np.zeros(total_mb, dtype=np.int64)
        m = 0
        with Progress("indexing", total_mb, "minibatches") as bar:
            for si, split in enumerate(splits):
                stats = {"minibatches": counts[si], "minibatches_per_epoch": pl.minibatches_per_epoch(split),
                         "epochs": pl.num_epochs(split), "input_rows": 0, "gpu_rows": 0, "host_rows": 0,
                         "cold_rows": 0, "cold_bytes": 0, "padded_bytes": 0, "max_padded_nbytes": 0,
                         "table_rows": 0, "max_table_rows": 0, "table_page_reads": 0}
                iw = _IndexWriter(tmp / "index" / f"{split}.arrow", threaded=threads)
                pos = 0
                try:
                    for i in range(counts[si]):
                        row = pl.minibatch(split, i)  # (its checksum is verified)
                        nodes = np.ascontiguousarray(row.input_nodes, dtype=np.int64)
                        size = nodes.shape[0]
                        if scratch[0].shape[0] < size:
                            scratch = [np.empty(2 * size, np.int64), np.empty(2 * size, np.int64)]
                        t = np.empty(size, np.int8)
                        slot = np.empty(size, np.int32)
                        cold = np.empty(size, np.int64)
                        k, n_gpu, bad = index_minibatch(nodes, tier_of, slot_of, t, slot, cold, *scratch)
                        if bad >= 0:
                            raise FormatError(f"plan {pl.path} minibatch {i} of {split} names node {nodes[bad]}, "
                                              f"outside 0..{n - 1}; the plan is damaged, sample it again")
                        n_hot = size - k
                        table = None
                        if kstar is not None and k:
                            keep, slack = _split_table(cold[:k], pages, kstar, slack)
                            if not keep.all():
                                cold, table, k = _to_table(t, slot, cold[:k], keep)
                                n_tab[m] = table.shape[0]
                                reads = pages.reads(table)
                                table_pages += reads
                                stats["table_rows"] += int(table.shape[0])
                                stats["max_table_rows"] = max(stats["max_table_rows"], int(table.shape[0]))
                                stats["table_page_reads"] += reads
                        nbytes = k * rb
                        padded = round_up(nbytes, ALIGNMENT)
                        iw.add(row.epoch, row.batch, pos, nbytes, padded, k, t, slot, cold[:k], table)
                        ext_off[m] = pos
                        file_of[m] = si
                        n_cold[m] = k
                        pos += padded
                        m += 1
                        stats["input_rows"] += size
                        stats["gpu_rows"] += n_gpu
                        stats["host_rows"] += n_hot - n_gpu
                        stats["cold_rows"] += k
                        stats["max_padded_nbytes"] = max(stats["max_padded_nbytes"], padded)
                        bar.update(1)
                    iw.close()
                except BaseException:
                    iw.abort()
                    raise
                id_start[m - counts[si]:m] = iw.starts
                if n_tab[m - counts[si]:m].any():  # where each minibatch's table ids lie in the index file (int64)
                    tab_start[m - counts[si]:m] = _cold_id_starts(tmp / "index" / f"{split}.arrow",
                                                                  n_tab[m - counts[si]:m], "table_nodes")
                stats["cold_bytes"] = stats["cold_rows"] * rb
                stats["padded_bytes"] = pos
                stats["cold_bytes_per_epoch"] = stats["padded_bytes"] // max(1, stats["epochs"])
                stats["index_bytes"] = (tmp / "index" / f"{split}.arrow").stat().st_size
                split_stats[split] = stats
        del scratch
        bounds_mb = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        id_end = id_start + n_cold  # minibatch m's sorted cold ids: its split's index file as int64 [id_start:id_end]
        t_index = time.perf_counter() - t0
        hasher = _ExtentHasher(ext_off, n_cold * rb, bounds_mb)
        table_hasher = _TableHasher(tab_start, n_tab, rb)
        del tier_of, slot_of, n_cold

        packed_bytes = sum(s["padded_bytes"] for s in split_stats.values())
        cold_bytes = sum(s["cold_bytes"] for s in split_stats.values())
        table_rows = sum(s["table_rows"] for s in split_stats.values())
        tier_bytes = {name: int(ids.size) * rb for name, ids in tier_ids.items()}
        blowup = packed_bytes / feature_bytes if feature_bytes else 0.0
        if budget is not None and packed_bytes > budget:
            raise RuntimeError(f"packing laid out {packed_bytes} bytes of extents, above the --max-blowup budget of "
                               f"{budget} bytes (a bug of the packer)")
        log.info("index: %d minibatches in %.1f s; cold extents %s (payload %s), blow-up %.2fx of the %s feature table",
                 total_mb, t_index, format_bytes(packed_bytes), format_bytes(cold_bytes), blowup,
                 format_bytes(feature_bytes))
        if table_rows:
            log.info("--max-blowup %g: %d cold rows (%s) are not packed but read from the feature table at training "
                     "time, about %d page reads of 4 KiB (%s) per pass over the packed epochs", max_blowup, table_rows,
                     format_bytes(table_rows * rb), table_pages, format_bytes(table_pages * TABLE_PAGE_BYTES))
        need = packed_bytes + sum(tier_bytes.values())
        free = shutil.disk_usage(tmp).free
        if need > free:
            raise InputError(f"the pack needs {format_bytes(need)} but {tmp.parent} has {format_bytes(free)} free; "
                             "free disk space, raise --gpu-cache/--host-cache or pack fewer epochs")

        # -- step 3: one pass over the feature table
        t0 = time.perf_counter()
        paths = [cold_chunk_path(tmp, s) for s in splits]
        cold = _ColdWriter(paths, [split_stats[s]["padded_bytes"] for s in splits], direct=direct)
        tier_writers = {}
        for name in TIERS:
            write_group(tmp / "tiers" / name)
            tier_writers[name] = RowChunkWriter(tmp / "tiers" / name / "features", tier_ids[name].size, (dim,),
                                                feats.dtype, min(tier_chunk_rows, max(1, tier_ids[name].size)),
                                                data_checksum=True)
        index_paths = [tmp / "index" / f"{s}.arrow" for s in splits]
        try:
            _pack_slices(feats, tier_ids, tier_writers, cold, index_paths, bounds_mb, id_start, id_end, ext_off,
                         file_of, slice_rows, gather_rows, runs_cap, threads, packed_bytes, hasher, table_hasher)
            cold.close()
            extent_checksums = hasher.finish()
            table_checksums = table_hasher.finish()
        except BaseException:
            cold.abort()
            raise
        t_pack = time.perf_counter() - t0

        tiers_record = {}
        for name in TIERS:
            shape, sha = tier_writers[name].finish()
            _, nodes_sha = write_array(tmp / "tiers" / name / "nodes", tier_ids[name], "int64")
            tiers_record[name] = {"rows": int(shape[0]), "bytes": tier_bytes[name], "sha256": sha,
                                  DATA_CHECKSUM: tier_writers[name].checksum, "nodes_sha256": nodes_sha}
        write_group(tmp / "checksums", {"diskgraph": f"{DATA_CHECKSUM} of each minibatch's padded extent"})
        for si, s in enumerate(splits):
            size = split_stats[s]["padded_bytes"]
            write_array_metadata(tmp / "cold" / s, (size,), (size,), "uint8",
                                 {"diskgraph": "packed cold rows", "alignment": ALIGNMENT, "row_bytes": rb})
            _, sha = write_array(tmp / "checksums" / s, extent_checksums[bounds_mb[si]:bounds_mb[si + 1]], "uint64")
            split_stats[s]["extent_checksums_sha256"] = sha
            if si == 0:
                write_group(tmp / "table_checksums", {"diskgraph": f"{DATA_CHECKSUM} of each minibatch's table rows "
                                                                   "(read from the dataset's feature table)"})
            _, sha = write_array(tmp / "table_checksums" / s, table_checksums[bounds_mb[si]:bounds_mb[si + 1]], "uint64")
            split_stats[s]["table_checksums_sha256"] = sha

        seconds = time.perf_counter() - t_start
        written = packed_bytes + sum(tier_bytes.values())
        rate = written / max(t_pack, 1e-9)
        write_manifest(tmp, PACK_FORMAT, PACK_VERSION, {
            "plan": {"path": _relative_plan_path(pl.path, ds.path, out), "created_at": pl.manifest.get("created_at"),
                     "checksum": artifact_identity(pl),
                     "counts_sha256": {s: pl.split_info[s].get("counts_sha256") for s in splits},
                     "config": pl.config},
            "dataset": pack_binding(ds),
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
            "blowup": _rounded_blowup(blowup, max_blowup),
            "max_blowup": max_blowup,
            "table_rows": int(table_rows),
            "table_page_reads": int(table_pages),
            "unbounded_packed_bytes": unbounded_bytes,
            "config": {"memory_budget": int(memory_budget), "max_blowup": max_blowup, "slice_rows": slice_rows,
                       "gather_rows": gather_rows, "runs_per_write": runs_cap, "threads": bool(threads),
                       "direct_io": bool(direct_io)},
            "seconds": round(seconds, 3),
            "timing": {"index_seconds": round(t_index, 3), "pack_seconds": round(t_pack, 3),
                       "write_seconds": round(cold.seconds, 3), "bytes_written": written,
                       "write_mode": "O_DIRECT" if cold.direct else "buffered",
                       "write_mb_per_s": round(rate / 1e6, 1)},
        })
    log.info("packed %s: blow-up %.2fx (cold extents %s over %s), gpu tier %s (%d rows), host tier %s (%d rows); "
             "%.1f s (index %.1f s, pack %.1f s at %.0f MB/s written)", out, blowup, format_bytes(packed_bytes),
             ", ".join(f"{s} {format_bytes(split_stats[s]['padded_bytes'])}" for s in splits),
             format_bytes(tier_bytes["gpu"]), tier_ids["gpu"].size, format_bytes(tier_bytes["host"]),
             tier_ids["host"].size, seconds, t_index, t_pack, rate / 1e6)
    return out


class _ExtentHasher:
    """The checksum (:data:`~diskgraph.store.checksums.DATA_CHECKSUM`) of every minibatch's padded extent, fed the
    bytes the gather kernels lay out, as they are handed to the writer.

    Each minibatch's bytes arrive in file order (its rows are sorted by id and the slices come in order), so one
    streaming hasher per minibatch (about 700 bytes each) covers its extent; the zero padding the buffered path
    never writes (the files are preallocated) is fed at the end. :meth:`finish` checks that every extent was fed
    exactly its padded length — a check of the packer itself.
    """

    def __init__(self, ext_off: np.ndarray, nbytes: np.ndarray, bounds_mb: np.ndarray):
        self.ext_off = ext_off
        self.nbytes = nbytes.astype(np.int64)
        self.padded = (self.nbytes + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT
        self.bounds = bounds_mb
        self.fed = np.zeros(ext_off.shape[0], dtype=np.int64)
        self.hashers = [new_data_hasher() for _ in range(ext_off.shape[0])]

    def feed(self, buf: memoryview, files: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> None:
        """Runs lying back to back in ``buf``: ``lengths[k]`` bytes for file ``files[k]`` at ``offsets[k]``
        (a run may span the extents of consecutive minibatches)."""
        pos = 0
        for f, off, n in zip(files.tolist(), offsets.tolist(), lengths.tolist()):
            lo, hi = int(self.bounds[f]), int(self.bounds[f + 1])
            m = lo + int(np.searchsorted(self.ext_off[lo:hi], off, side="right")) - 1
            while n > 0:
                if not lo <= m < hi or self.ext_off[m] + self.fed[m] != off:
                    raise RuntimeError(f"packing wrote {n} bytes at {off} of file {f} out of extent order")
                take = min(n, int(self.ext_off[m] + self.padded[m] - off))
                self.hashers[m].update(buf[pos:pos + take])
                self.fed[m] += take
                pos, off, n, m = pos + take, off + take, n - take, m + 1

    def finish(self) -> np.ndarray:
        """uint64 [minibatches]: each extent's checksum."""
        zeros = bytes(ALIGNMENT)
        for m in np.flatnonzero(self.fed < self.padded).tolist():
            if self.fed[m] != self.nbytes[m]:
                raise RuntimeError(f"packing wrote {self.fed[m]} bytes of minibatch {m}'s extent of {self.nbytes[m]}")
            self.hashers[m].update(zeros[: self.padded[m] - self.fed[m]])
            self.fed[m] = self.padded[m]
        if not np.array_equal(self.fed, self.padded):
            raise RuntimeError("packing wrote more bytes than an extent holds")
        return np.array([h.intdigest() for h in self.hashers], dtype=np.uint64)


def _rounded_blowup(blowup: float, max_blowup: float | None) -> float:
    """The manifest's ``blowup``: 4 decimals, rounded down where rounding would put it above the bound."""
    b = round(blowup, 4)
    return math.floor(blowup * 1e4) / 1e4 if max_blowup is not None and b > max_blowup else b


class _TableHasher:
    """The checksum of every minibatch's table rows (its ``table_nodes``, ascending, as the feature table stores
    them), fed the rows of each slice of the table as the packer reads it: the ids are sorted, so each minibatch's
    rows arrive in order and one streaming hasher per minibatch with table rows covers them (made when its first
    rows arrive). :meth:`finish` checks each got exactly its rows."""

    def __init__(self, start: np.ndarray, count: np.ndarray, row_bytes: int):
        self.start = start
        self.end = start + count
        self.count = count
        self.cursor = start.copy()
        self.rb = row_bytes
        self.fed = np.zeros(start.shape[0], dtype=np.int64)
        self.hashers: dict[int, object] = {}

    @property
    def any(self) -> bool:
        return bool(self.count.any())

    def feed(self, buf: memoryview, runs: np.ndarray) -> None:
        """Runs ``(minibatch, first row, rows)`` lying back to back in ``buf`` (whole rows)."""
        pos = 0
        for m, first, k in runs.tolist():
            if first != self.fed[m]:
                raise RuntimeError(f"packing fed minibatch {m}'s table rows out of order")
            h = self.hashers.get(m)
            if h is None:
                h = self.hashers[m] = new_data_hasher()
            h.update(buf[pos:pos + k * self.rb])
            self.fed[m] += k
            pos += k * self.rb

    def finish(self) -> np.ndarray:
        """uint64 [minibatches]: each minibatch's table-row checksum (that of no bytes where it has none)."""
        if not np.array_equal(self.fed, self.count):
            raise RuntimeError("packing did not read every table row of a minibatch (an id outside the feature table?)")
        empty = new_data_hasher().intdigest()
        return np.array([self.hashers[m].intdigest() if m in self.hashers else empty
                         for m in range(self.count.shape[0])], dtype=np.uint64)


def _pack_slices(feats, tier_ids, tier_writers, cold: _ColdWriter, index_paths: list[Path], bounds_mb: np.ndarray,
                 id_start: np.ndarray, id_end: np.ndarray, ext_off: np.ndarray, file_of: np.ndarray, slice_rows: int,
                 gather_rows: int, runs_cap: int, threads: bool, total_bytes: int, hasher: _ExtentHasher,
                 table: _TableHasher | None = None) -> None:
    """Step 3: read the feature table slice by slice, write tier rows and every minibatch's rows in the slice.

    Minibatches ``bounds_mb[s]..bounds_mb[s+1]-1`` belong to split ``s``; minibatch ``k``'s sorted cold
    ids are ``flat_s[id_start[k]:id_end[k]]`` where ``flat_s`` is ``index_paths[s]`` read as int64.
    """
    n = feats.shape[0]
    rb = feats.row_bytes
    dim = feats.shape[1]
    word = word_dtype(rb)
    width = rb // word.itemsize
    n_buf = 2 if threads else 1
    pages = cold.direct  # whole-page runs for O_DIRECT (decided once: a later fallback writes the same pages)
    slices = [np.empty((slice_rows, dim), dtype=feats.storage_dtype) for _ in range(n_buf)]
    if pages:
        page_words = ALIGNMENT // word.itemsize
        gwords = max(gather_rows * width // page_words, 1) * page_words
        gbufs = [aligned_empty(gwords * word.itemsize).view(word) for _ in range(n_buf)]
        carry = np.zeros((id_start.shape[0], page_words), dtype=word)
        runs = np.empty((runs_cap, 4), dtype=np.int64)
    else:
        gbufs = [np.empty((gather_rows, width), dtype=word) for _ in range(n_buf)]
        runs = np.empty((runs_cap, 3), dtype=np.int64)
    truns = np.empty((runs_cap, 3), dtype=np.int64)
    cursor = id_start.copy()
    splits = [(s, int(bounds_mb[s]), int(bounds_mb[s + 1])) for s in range(len(index_paths))
              if (id_end[bounds_mb[s]:bounds_mb[s + 1]] > id_start[bounds_mb[s]:bounds_mb[s + 1]]).any()]
    table_splits = [] if table is None or not table.any else [
        (s, int(bounds_mb[s]), int(bounds_mb[s + 1])) for s in range(len(index_paths))
        if table.count[bounds_mb[s]:bounds_mb[s + 1]].any()]
    flats = {s: np.memmap(index_paths[s], dtype=np.int64, mode="r", shape=(index_paths[s].stat().st_size // 8,))
             for s, _, _ in splits + table_splits}
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
                words = block.reshape(hi - lo, -1).view(np.uint8).view(word).reshape(hi - lo, width)
                for s, m, m_end in splits:
                    flat = flats[s]
                    while m < m_end:
                        if pending_write[g] is not None:
                            pending_write[g].result()
                            pending_write[g] = None
                        if pages:
                            m, fill, nr = gather_pages(words, lo, hi, flat, id_start, id_end, cursor, m, m_end, ext_off,
                                                       file_of, carry, page_words, gbufs[g], runs)
                            r = runs[:nr]
                            files, offsets, lengths = r[:, 0], r[:, 1], r[:, 3]
                        else:
                            m, fill, nr = gather_runs(words, lo, hi, flat, id_start, id_end, cursor, m, m_end, gbufs[g],
                                                      runs)
                            r = runs[:nr]
                            mbs = r[:, 0]
                            files = file_of[mbs]
                            offsets = ext_off[mbs] + r[:, 1] * rb
                            lengths = r[:, 2] * rb
                        if nr == 0:
                            continue
                        files, offsets, lengths = files.copy(), offsets.copy(), lengths.copy()
                        view = memoryview(gbufs[g]).cast("B")
                        hasher.feed(view, files, offsets, lengths)
                        if pool:
                            pending_write[g] = wpool.submit(cold.write_runs, view, files, offsets, lengths)
                            g = (g + 1) % n_buf
                        else:
                            cold.write_runs(view, files, offsets, lengths)
                        bar.update(int(lengths.sum()))
                for s, m, m_end in table_splits:  # the table rows' checksums: gathered whole rows, hashed, not written
                    if pending_write[g] is not None:
                        pending_write[g].result()
                        pending_write[g] = None
                    tbuf = gbufs[g].reshape(-1)
                    tbuf = tbuf[: tbuf.shape[0] // width * width].reshape(-1, width)
                    while m < m_end:
                        m, fill, nr = gather_runs(words, lo, hi, flats[s], table.start, table.end, table.cursor, m,
                                                  m_end, tbuf, truns)
                        if nr:
                            table.feed(memoryview(tbuf).cast("B"), truns[:nr])
            for f in pending_write:
                if f is not None:
                    f.result()
        if table is not None and not np.array_equal(table.cursor, table.end):
            raise RuntimeError("packing did not read every table row (an input node id outside the feature table?)")
        if not np.array_equal(cursor, id_end):
            raise RuntimeError("packing did not place every cold row (an input node id outside the feature table?)")
    finally:
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)
            wpool.shutdown(wait=True, cancel_futures=True)
        del flats
