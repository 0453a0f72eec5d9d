"""Packed feature stores: hot tiers plus one aligned, contiguous extent of cold rows per minibatch.

A pack lives in ``DATASET/packs/NAME/`` (written by :func:`diskgraph.store.packer.pack_features`)::

    manifest.json              format diskgraph.pack: plan and dataset it belongs to, tier sizes, per-split
                               sizes, disk blow-up, timing
    tiers/gpu/features         Zarr [n_gpu, F]   rows of the GPU tier (slot = row)
    tiers/gpu/nodes            Zarr int64 [n_gpu] their global ids, sorted ascending
    tiers/host/features        Zarr [n_host, F]  rows of the pinned-host tier
    tiers/host/nodes           Zarr int64 [n_host]
    cold/{split}               Zarr uint8 [bytes], one chunk (file cold/{split}/c/0): per minibatch, in plan
                               order, one extent of its cold rows (ascending global id), starting at a
                               multiple of 4096 and zero-padded to a multiple of 4096
    checksums/{split}          Zarr uint64 [minibatches]: XXH3-64 of each minibatch's padded extent
    table_checksums/{split}    Zarr uint64 [minibatches]: XXH3-64 of each minibatch's table rows (below), as the
                               dataset's feature table stores them, in ``table_nodes`` order (version 3)
    index/{split}.arrow        Arrow IPC file, one record batch (one row) per minibatch, plan order

Index row (one per minibatch)::

    checksum         uint64        XXH3-64 of the row's other columns, verified whenever the row is read
    epoch, batch     int32         the plan row it packs
    offset           int64         byte offset of the extent in cold/{split} (multiple of 4096)
    nbytes           int64         n_cold * row_bytes (payload)
    padded_nbytes    int64         nbytes rounded up to 4096 (0 for an empty extent)
    n_cold           int32         rows in the extent
    n_table          int32         rows read from the dataset's feature table (version 3)
    tier             list<int8>    per input node (plan order): 0 cold, 1 host, 2 gpu, 3 table
    slot             list<int32>   per input node: row in that tier, row within the extent when cold, rank in
                                   ``table_nodes`` when table
    table_nodes      list<int64>   global ids of the table rows, ascending, distinct (version 3)
    cold_nodes       list<int64>   global ids of the extent's rows, ascending (always the last column)

So assembling a minibatch is ``out[tier == 2] = gpu[slot]``, ``out[tier == 1] = host[slot]``,
``out[tier == 0] = extent[slot]``, ``out[tier == 3] = features[table_nodes][slot]`` — nothing is looked up at
training time. Table rows are the cold rows ``--max-blowup`` left out of the extents (the packer keeps the
extents' total padded bytes within ``max_blowup`` × the feature table's bytes); a version-2 pack has none.

Integrity: every extent is checked against ``checksums/{split}`` as it is read, every index row
against its ``checksum`` column, each tier against the manifest's ``xxh3_64`` as it is loaded; the
manifest (with its own checksum) records the sha256 of the checksum arrays, and binds the pack to the
dataset's features and to its plan (:mod:`diskgraph.store.binding`); the table rows a loader reads from the
dataset are checked against ``table_checksums/{split}`` (:meth:`Pack.check_table_rows`). Version 2 added the
checksums, version 3 the table rows; versions 2 and 3 are read (a version-2 pack has no table rows), version-1 packs
are refused (pack them again).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from .arrow_files import checksummed_record_batch, decode_row, open_ipc_file
from .checksums import DATA_CHECKSUM, array_sha256, data_checksum, new_data_hasher, read_checks
from .direct_io import ALIGNMENT, DirectReader, aligned_empty, round_up
from .errors import FormatError, InputError
from .manifest import read_manifest
from .zarr_arrays import RawArray

PACK_FORMAT = "diskgraph.pack"
PACK_VERSION = 3
"""The pack format version this diskgraph writes (2: checksums of index rows, extents, tiers and the manifest;
binding to the plan's checksum. 3: table rows — cold rows over the ``--max-blowup`` budget, read from the dataset's
feature table — with ``n_table``/``table_nodes`` index columns and ``table_checksums``)."""

MIN_PACK_VERSION = 2
"""The oldest pack format version this diskgraph reads (a version-2 pack reads as having no table rows)."""

REPACK = "pack the plan again"
"""The fix every message about a damaged pack names."""

TIERS = ("gpu", "host")
COLD, HOST, GPU, TABLE = 0, 1, 2, 3
"""Values of the index's ``tier`` column (``TABLE``: read from the dataset's feature table, format version 3)."""

TABLE_PAGE_BYTES = 4096
"""The page a table row is read in (one O_DIRECT read of the feature table's chunk file); the packer groups a
minibatch's cold rows by it."""


def index_schema(version: int = PACK_VERSION) -> pa.Schema:
    """The Arrow schema of ``index/{split}.arrow`` in pack format ``version`` (2 or 3; ``cold_nodes`` is last)."""
    head = [pa.field("checksum", pa.uint64()), pa.field("epoch", pa.int32()), pa.field("batch", pa.int32()),
            pa.field("offset", pa.int64()), pa.field("nbytes", pa.int64()), pa.field("padded_nbytes", pa.int64()),
            pa.field("n_cold", pa.int32())]
    lists = [pa.field("tier", pa.list_(pa.int8())), pa.field("slot", pa.list_(pa.int32()))]
    if version == 2:
        return pa.schema(head + lists + [pa.field("cold_nodes", pa.list_(pa.int64()))])
    return pa.schema(head + [pa.field("n_table", pa.int32())] + lists
                     + [pa.field("table_nodes", pa.list_(pa.int64())), pa.field("cold_nodes", pa.list_(pa.int64()))])


def index_record_batch(epoch: int, batch: int, offset: int, nbytes: int, padded_nbytes: int, n_cold: int,
                       tier: np.ndarray, slot: np.ndarray, cold_nodes: np.ndarray, *, n_table: int = 0,
                       table_nodes: np.ndarray | None = None) -> pa.RecordBatch:
    """One minibatch's index row as the packer writes it (format :data:`PACK_VERSION`: its checksum first,
    ``cold_nodes`` last)."""
    table = np.zeros(0, np.int64) if table_nodes is None else np.asarray(table_nodes, np.int64)
    cols = [np.array([epoch], np.int32), np.array([batch], np.int32), np.array([offset], np.int64),
            np.array([nbytes], np.int64), np.array([padded_nbytes], np.int64), np.array([n_cold], np.int32),
            np.array([n_table], np.int32), np.asarray(tier, np.int8), np.asarray(slot, np.int32), table,
            np.asarray(cold_nodes, np.int64)]
    return checksummed_record_batch(cols, index_schema())


def cold_chunk_path(pack_dir: str | os.PathLike, split: str) -> Path:
    """The single chunk file holding ``split``'s extents."""
    return Path(pack_dir) / "cold" / split / "c" / "0"


@dataclass
class PackEntry:
    """One minibatch's index row; arrays are zero-copy views of the memory-mapped index.

    Attributes:
        epoch, batch: the plan row.
        offset, nbytes, padded_nbytes, n_cold: the extent (bytes in ``cold/{split}``).
        tier: int8 [n_inputs], 0 cold / 1 host / 2 gpu / 3 table.
        slot: int32 [n_inputs], row in the tier, in the extent, or rank in ``table_nodes``.
        cold_nodes: int64 [n_cold], ascending global ids of the extent's rows.
        n_table: rows read from the dataset's feature table (0 in a version-2 pack).
        table_nodes: int64 [n_table], ascending distinct global ids of those rows.
    """

    epoch: int
    batch: int
    offset: int
    nbytes: int
    padded_nbytes: int
    n_cold: int
    tier: np.ndarray
    slot: np.ndarray
    cold_nodes: np.ndarray
    n_table: int = 0
    table_nodes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def num_inputs(self) -> int:
        """Input nodes of the minibatch."""
        return int(self.tier.shape[0])


def read_entry(reader: pa.ipc.RecordBatchFileReader, i: int, path: Path) -> PackEntry:
    """Row ``i`` of the pack index file ``path`` (open as ``reader``), checked against its checksum.

    Raises:
        FormatError: the row cannot be decoded or does not match its checksum.
    """
    c = decode_row(reader, i, f"pack index {path}", REPACK)
    if len(c) == 9:  # format version 2: no table rows
        return PackEntry(*(int(x[0]) for x in c[:6]), tier=c[6], slot=c[7], cold_nodes=c[8])
    return PackEntry(*(int(x[0]) for x in c[:6]), tier=c[7], slot=c[8], cold_nodes=c[10], n_table=int(c[6][0]),
                     table_nodes=c[9])


class Pack:
    """A pack directory, opened read-only.

    Attributes:
        path, manifest: the directory and its parsed manifest.
        splits: the packed splits.
        feature_dim, dtype, storage_dtype, row_bytes: the feature rows' shape and type.
        alignment: extent alignment in bytes (4096).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.manifest = read_manifest(self.path, PACK_FORMAT, PACK_VERSION, min_version=MIN_PACK_VERSION,
                                      checksum_since=MIN_PACK_VERSION)
        m = self.manifest
        self.format_version = int(m["format_version"])
        try:
            ds = m["dataset"]
            self.feature_dim = int(ds["feature_dim"])
            self.dtype = str(ds["feature_dtype"])
            self.row_bytes = int(ds["row_bytes"])
            self.num_nodes = int(ds["num_nodes"])
            self.alignment = int(m["alignment"])
            self.split_info: dict[str, dict] = m["splits"]
            self.tier_info: dict[str, dict] = m["tiers"]
            self.splits = list(self.split_info)
            self.storage_dtype = np.dtype(np.uint16) if self.dtype == "bfloat16" else np.dtype(self.dtype)
            if (self.alignment != ALIGNMENT or self.feature_dim < 1
                    or self.row_bytes != self.feature_dim * self.storage_dtype.itemsize):
                raise ValueError("inconsistent row layout")
            # every split is opened now (memory maps): a pack replaced while a run reads it does not change under it
            self._indexes = {s: open_ipc_file(self.path / "index" / f"{s}.arrow", int(info["minibatches"]),
                                              "pack index", REPACK, index_schema(self.format_version),
                                              int(info["index_bytes"]))
                             for s, info in self.split_info.items()}
            self._extent_checksums = {s: self._load_checksums(s, info) for s, info in self.split_info.items()}
            self._table_checksums = {s: self._load_checksums(s, info, "table_checksums")
                                     for s, info in self.split_info.items()}
            self.table_rows = int(m.get("table_rows", 0))
            for s, info in self.split_info.items():
                size = self.cold_path(s).stat().st_size if self.cold_path(s).exists() else -1
                if size != int(info["padded_bytes"]):
                    raise FormatError(f"{self.cold_path(s)} holds {size} bytes, the manifest {info['padded_bytes']}; "
                                      f"the file is truncated or damaged, {REPACK}")
        except (KeyError, TypeError, ValueError, AttributeError):
            raise FormatError(f"{self.path / 'manifest.json'} lacks required fields or they disagree; the pack is "
                              f"damaged, {REPACK}") from None
        self._readers: dict[tuple[str, bool], DirectReader] = {}
        self._tiers: dict[str, np.ndarray] | None = None

    def _load_checksums(self, split: str, info: dict, kind: str = "checksums") -> np.ndarray:
        n = int(info["minibatches"])
        if kind == "table_checksums" and self.format_version < 3:
            return np.full(n, data_checksum(b""), dtype=np.uint64)  # version 2: no table rows
        key = "extent_checksums_sha256" if kind == "checksums" else "table_checksums_sha256"
        try:
            arr = RawArray(self.path / kind / split)
            values = np.array(arr.memmap(), dtype=np.uint64) if arr.shape[0] else np.zeros(0, np.uint64)
        except FormatError:
            values, arr = None, None
        if (arr is None or arr.dtype != "uint64" or values.shape != (n,) or array_sha256(values) != info[key]):
            raise FormatError(f"{self.path / kind / split} does not match the manifest's {key}; the pack is damaged, "
                              f"{REPACK}")
        return values

    def __repr__(self) -> str:
        return f"Pack({str(self.path)!r}, splits={self.splits}, blowup={self.manifest.get('blowup')})"

    # -- tiers ------------------------------------------------------------------------------------

    def _check_tier(self, name: str) -> None:
        if name not in TIERS:
            raise InputError(f"unknown tier {name!r}; the tiers are {', '.join(TIERS)}")

    def tier_nodes(self, name: str) -> np.ndarray:
        """int64 sorted global ids of tier ``name`` (``gpu`` or ``host``); slot = position (memory map)."""
        self._check_tier(name)
        return RawArray(self.path / "tiers" / name / "nodes").memmap()

    def tier_features(self, name: str) -> RawArray:
        """The ``[n, F]`` rows of tier ``name`` (read with ``read_rows``)."""
        self._check_tier(name)
        return RawArray(self.path / "tiers" / name / "features")

    def read_tier(self, name: str, out: np.ndarray, slice_rows: int | None = None):
        """Read tier ``name``'s rows in order, in slices of ``slice_rows`` rows (default: all at once) into
        ``out`` (``[slice_rows, F]`` or larger, of the storage dtype; reused for every slice), yielding
        ``(start, rows)`` per slice; after the last slice the rows' checksum is checked against the manifest's.

        Raises:
            FormatError: the tier's files are missing, truncated, of another shape, or do not match the checksum.
        """
        self._check_tier(name)
        arr = self.tier_features(name)
        info = self.tier_info.get(name, {})
        n = int(info.get("rows", -1))
        if arr.shape != (n, self.feature_dim) or arr.dtype != self.dtype:
            raise FormatError(f"tier {name} of pack {self.path} holds {arr.shape} {arr.dtype} rows, the manifest {n} "
                              f"rows of {self.feature_dim} {self.dtype}; the pack is damaged, {REPACK}")
        step = max(1, int(slice_rows or n or 1))
        h = new_data_hasher()
        for start in range(0, n, step):
            stop = min(n, start + step)
            rows = arr.read_rows(start, stop, out=out[: stop - start])
            h.update(memoryview(np.ascontiguousarray(rows).reshape(-1).view(np.uint8)))
            yield start, rows
        if read_checks() and h.intdigest() != int(info.get(DATA_CHECKSUM, -1)):
            raise FormatError(f"tier {name} of pack {self.path} ({arr.path}) does not match its checksum "
                              f"(tiers.{name}.{DATA_CHECKSUM}); the pack is damaged, {REPACK}")

    def load_tiers(self) -> dict[str, np.ndarray]:
        """Both tiers' rows read into memory (cached, checksums verified): ``{"gpu": [n_gpu, F], "host": [n_host, F]}``."""
        if self._tiers is None:
            out = {}
            for name in TIERS:
                rows = int(self.tier_info.get(name, {}).get("rows", 0))
                out[name] = np.empty((rows, self.feature_dim), self.storage_dtype)
                for _ in self.read_tier(name, out[name]):
                    pass
            self._tiers = out
        return self._tiers

    # -- index ------------------------------------------------------------------------------------

    def _index(self, split: str) -> pa.ipc.RecordBatchFileReader:
        if split not in self.split_info:
            raise InputError(f"pack {self.path} has no {split!r} split (it has {', '.join(self.splits)})")
        return self._indexes[split]

    def index_reader(self, split: str) -> pa.ipc.RecordBatchFileReader:
        """The memory-mapped index file of ``split`` (for reading whole columns; rows: :meth:`entry`)."""
        return self._index(split)

    def num_minibatches(self, split: str) -> int:
        """Minibatches of ``split`` (all presampled epochs)."""
        return int(self._index(split).num_record_batches)

    def max_padded_nbytes(self, split: str) -> int:
        """The largest extent of ``split`` in bytes (size a reusable buffer with it)."""
        return int(self.split_info[split]["max_padded_nbytes"])

    def max_table_rows(self, split: str) -> int:
        """The most table rows (``n_table``) of any minibatch of ``split`` (0 in a version-2 pack)."""
        return int(self.split_info[split].get("max_table_rows", 0))

    def table_checksum(self, split: str, i: int) -> int:
        """The recorded checksum of minibatch ``i``'s table rows (that of empty bytes when it has none)."""
        return int(self._table_checksums[split][i])

    def check_table_rows(self, split: str, i: int, entry: PackEntry, rows_bytes: np.ndarray) -> None:
        """Check minibatch ``i``'s table rows, read from the dataset's feature table in ``entry.table_nodes`` order
        (``rows_bytes``: uint8, exactly ``n_table * row_bytes`` bytes as stored), against ``table_checksums/{split}``.

        Raises:
            FormatError: the bytes differ from the rows the packer saw (the feature table changed or is damaged),
                naming the feature table, the minibatch and the fix.
        """
        data = np.ascontiguousarray(rows_bytes).reshape(-1).view(np.uint8)
        size = int(data.size)
        if (size != entry.n_table * self.row_bytes
                or (read_checks() and data_checksum(data) != int(self._table_checksums[split][i]))):
            raise FormatError(f"{self.path.parent.parent / 'features'}: the {entry.n_table} feature-table rows of "
                              f"minibatch {i} of {split} ({size} bytes read) do not match the checksum pack {self.path} "
                              f"recorded for them (table_checksums/{split}); the dataset's feature table is damaged or "
                              f"not the one packed, restore it or {REPACK}")

    def entry(self, split: str, i: int) -> PackEntry:
        """Index row ``i`` of ``split`` (arrays zero-copy from the memory-mapped index)."""
        n = self.num_minibatches(split)
        if not 0 <= i < n:
            raise IndexError(f"minibatch {i} of {split} is out of range (0..{n - 1})")
        return read_entry(self._index(split), i, self.path / "index" / f"{split}.arrow")

    # -- extents ----------------------------------------------------------------------------------

    def cold_path(self, split: str) -> Path:
        """The file holding ``split``'s extents."""
        return cold_chunk_path(self.path, split)

    def reader(self, split: str, direct: bool = True) -> DirectReader:
        """The (cached) reader of ``split``'s extent file."""
        key = (split, bool(direct))
        r = self._readers.get(key)
        if r is None:
            r = self._readers[key] = DirectReader(self.cold_path(split), direct=direct)
        return r

    def extent_buffer(self, split: str) -> np.ndarray:
        """An aligned uint8 buffer that holds any extent of ``split`` (reuse it with ``read_extent(out=)``)."""
        return aligned_empty(max(self.max_padded_nbytes(split), ALIGNMENT))

    def read_extent(self, split: str, i: int, out: np.ndarray | None = None, direct: bool = True,
                    entry: PackEntry | None = None) -> np.ndarray:
        """Minibatch ``i``'s cold rows, ``[n_cold, F]`` of the storage dtype, in one read.

        Args:
            out: an aligned uint8 buffer of at least ``padded_nbytes`` (:meth:`extent_buffer`);
                the result is a view of it. Allocated when None.
            direct: read with O_DIRECT (falls back to buffered reads, with one warning, where refused).
            entry: the index row, when the caller already has it.
        """
        e = entry if entry is not None else self.entry(split, i)
        if out is None:
            out = aligned_empty(max(e.padded_nbytes, ALIGNMENT))
        if e.padded_nbytes:
            self.reader(split, direct).read_into(e.offset, e.padded_nbytes, out)
        self.check_extent(split, i, e, out)
        return out[: e.nbytes].view(self.storage_dtype).reshape(e.n_cold, self.feature_dim)

    def check_extent(self, split: str, i: int, entry: PackEntry, buf: np.ndarray) -> None:
        """Check minibatch ``i``'s extent, read into ``buf[:padded_nbytes]``, against ``checksums/{split}``.

        Raises:
            FormatError: the bytes differ from what was packed (the file is damaged), naming the file and minibatch.
        """
        if (entry.nbytes != entry.n_cold * self.row_bytes or entry.padded_nbytes != round_up(entry.nbytes, ALIGNMENT)
                or (read_checks() and data_checksum(buf[: entry.padded_nbytes]) != int(self._extent_checksums[split][i]))):
            raise FormatError(f"{self.cold_path(split)}: the extent of minibatch {i} of {split} (bytes {entry.offset} to "
                              f"{entry.offset + entry.padded_nbytes}) does not match its checksum; the pack is damaged, "
                              f"{REPACK}")

    def close(self) -> None:
        """Close the extent files."""
        for r in self._readers.values():
            r.close()
        self._readers.clear()

    def __enter__(self) -> "Pack":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- verification -----------------------------------------------------------------------------

    def plan_path(self) -> Path:
        """The plan directory this pack was built from (relative paths are under the dataset directory)."""
        p = Path(self.manifest["plan"]["path"])
        return p if p.is_absolute() else self.path.parent.parent / p

    def verify(self, plan=None, dataset=None, check_rows: int = 4) -> list[str]:
        """Re-check the whole pack; returns the problems found (empty when sound).

        Reads everything: every index row and every extent against its checksum, each tier against the
        manifest's checksum; checks the extents are aligned, contiguous and in order, the index rows
        consistent (lengths, sorted cold nodes, slots in range), the tiers' node lists (sorted, distinct,
        in range, disjoint); the index against the plan (same minibatches, every input node's tier/slot
        names that node); what the pack was made from (:mod:`~diskgraph.store.binding`); and, as a spot
        check of the packer itself, ``check_rows`` minibatches per split and a sample of tier rows against
        the dataset's features.

        Args:
            plan: the plan (default: opened from the manifest's path when it exists).
            dataset: the dataset (default: the directory two levels up, when it is one).
        """
        from .binding import pack_problem
        from .plan import open_plan

        problems: list[str] = []
        tiers: dict[str, np.ndarray] = {}
        rows_of: dict[str, np.ndarray] = {}
        for name in TIERS:
            try:
                nodes = np.asarray(self.tier_nodes(name))
                rows = int(self.tier_info.get(name, {}).get("rows", -1))
                step = max(1, min(max(rows, 0), (64 << 20) // self.row_bytes))
                first = None  # the tier's first rows, for the comparison with the dataset below
                for start, part in self.read_tier(name, np.empty((step, self.feature_dim), self.storage_dtype), step):
                    if start == 0:
                        first = part[:256].copy()
            except (FormatError, ValueError, KeyError) as e:
                problems.append(f"tiers/{name}: {e}")
                continue
            tiers[name] = nodes
            if nodes.shape[0] != rows or array_sha256(nodes) != self.tier_info[name].get("nodes_sha256"):
                problems.append(f"tiers/{name}/nodes: {nodes.shape[0]} ids, not the {rows} of the manifest's "
                                "nodes_sha256")
            elif nodes.size and (np.any(np.diff(nodes) <= 0) or nodes[0] < 0 or nodes[-1] >= self.num_nodes):
                problems.append(f"tiers/{name}/nodes: not sorted, distinct node ids in 0..N-1")
            elif first is not None:
                rows_of[name] = first  # a sound tier: its first rows are compared with the dataset's below
        if len(tiers) == 2 and np.intersect1d(tiers["gpu"], tiers["host"]).size:
            problems.append("tiers: gpu and host share nodes")

        if plan is None:
            try:
                pdir = self.plan_path()
                plan = open_plan(pdir) if pdir.exists() else None
                if plan is None:
                    problems.append(f"plan {pdir} not found; the index cannot be checked against it")
            except FormatError as e:
                problems.append(f"plan: {e}")
        if dataset is None:
            try:
                from .dataset import open_dataset

                dpath = self.path.parent.parent
                dataset = open_dataset(dpath) if (dpath / "manifest.json").exists() else None
            except FormatError:
                dataset = None
        bad = pack_problem(self, dataset, plan)
        if bad:
            problems.append(bad)
            dataset = plan = None

        bound = self.manifest.get("max_blowup")
        packed = sum(int(info.get("padded_bytes", 0)) for info in self.split_info.values())
        if bound is not None and packed > float(bound) * int(self.manifest.get("feature_bytes", 0)):
            problems.append(f"cold: {packed} bytes of extents, above max_blowup {bound} x the feature table's "
                            f"{self.manifest.get('feature_bytes')} bytes")
        for split in self.splits:
            problems += self._verify_split(split, tiers, plan, dataset, check_rows)
        if dataset is not None:
            for name, rows in rows_of.items():
                nodes = tiers[name]
                for s in range(rows.shape[0]):
                    if not np.array_equal(rows[s], dataset.features.read_rows(int(nodes[s]), int(nodes[s]) + 1)[0]):
                        problems.append(f"tiers/{name}: row {s} differs from node {nodes[s]}'s features")
                        break
        return problems

    def _verify_split(self, split: str, tiers: dict[str, np.ndarray], plan, dataset, check_rows: int) -> list[str]:
        problems: list[str] = []
        if plan is not None and split in plan.splits and plan.num_minibatches(split) != self.num_minibatches(split):
            problems.append(f"index/{split}: {self.num_minibatches(split)} minibatches, the plan "
                            f"{plan.num_minibatches(split)}")
            plan = None
        elif plan is not None and split not in plan.splits:
            problems.append(f"index/{split}: the plan has no {split} split")
            plan = None
        n = self.num_minibatches(split)
        checks = set(np.linspace(0, n - 1, min(n, check_rows)).astype(int).tolist()) if n and dataset is not None else set()
        buf = self.extent_buffer(split)
        pos = 0
        table_total = table_max = 0
        for i in range(n):
            where = f"index/{split} minibatch {i}"
            try:
                e = self.entry(split, i)
                bad = self._check_entry(e, pos, tiers)
                if bad is None and plan is not None:
                    bad = _check_against_plan(e, plan.input_nodes(split, i), tiers)
                if bad is None:
                    ext = self.read_extent(split, i, out=buf, entry=e)
                    if i in checks:
                        for j in np.unique(np.linspace(0, e.n_cold - 1, min(e.n_cold, 16)).astype(np.int64)):
                            v = int(e.cold_nodes[j])
                            if not np.array_equal(ext[j], dataset.features.read_rows(v, v + 1)[0]):
                                bad = f"extent row {j} differs from node {v}'s features"
                                break
                        if bad is None:  # the table rows against the checksum the packer recorded
                            self.check_table_rows(split, i, e, table_rows(dataset.features, e.table_nodes))
            except FormatError as err:
                bad = str(err)
            if bad is not None:
                problems.append(f"{where}: {bad}")
                if len(problems) >= 10:
                    problems.append(f"index/{split}: further minibatches not checked")
                    return problems
                continue
            pos = e.offset + e.padded_nbytes
            table_total += e.n_table
            table_max = max(table_max, e.n_table)
        if not problems and (table_total, table_max) != (int(self.split_info[split].get("table_rows", 0)),
                                                         self.max_table_rows(split)):
            problems.append(f"index/{split}: {table_total} table rows (at most {table_max} per minibatch), the manifest "
                            f"{self.split_info[split].get('table_rows', 0)} (at most {self.max_table_rows(split)})")
        return problems

    def _check_entry(self, e: PackEntry, pos: int, tiers: dict[str, np.ndarray]) -> str | None:
        """The first broken invariant of one index row (``pos``: where its extent must start), or None."""
        if e.offset != pos or e.offset % self.alignment:
            return f"extent at {e.offset}, expected {pos} (aligned to {self.alignment}, in order)"
        if e.nbytes != e.n_cold * self.row_bytes or e.padded_nbytes != round_up(e.nbytes, self.alignment):
            return f"nbytes {e.nbytes} / padded {e.padded_nbytes} do not match {e.n_cold} rows"
        if e.cold_nodes.shape[0] != e.n_cold or e.tier.shape != e.slot.shape:
            return "column lengths disagree"
        if e.n_cold > 1 and np.any(np.diff(e.cold_nodes) < 0):
            return "cold nodes are not sorted"
        if int((e.tier == COLD).sum()) != e.n_cold:
            return f"{int((e.tier == COLD).sum())} inputs are cold but the extent holds {e.n_cold} rows"
        top = TABLE if self.format_version >= 3 else GPU
        if e.tier.size and (e.tier.min() < 0 or e.tier.max() > top):
            return f"tier values outside 0..{top}"
        if e.table_nodes.shape[0] != e.n_table:
            return f"{e.table_nodes.shape[0]} table nodes but n_table {e.n_table}"
        if e.n_table > 1 and np.any(np.diff(e.table_nodes) <= 0):
            return "table nodes are not ascending and distinct"
        if e.n_table and (e.table_nodes[0] < 0 or e.table_nodes[-1] >= self.num_nodes):
            return f"table nodes outside 0..{self.num_nodes - 1}"
        at = e.tier == TABLE
        if e.n_table and not np.array_equal(np.unique(e.slot[at]), np.arange(e.n_table)):
            return "the table slots do not name every table node"
        if e.n_table and e.n_cold and np.intersect1d(e.table_nodes, e.cold_nodes).size:
            return "a table node is also in the extent"
        for name in TIERS:
            if e.n_table and name in tiers and np.intersect1d(e.table_nodes, tiers[name], assume_unique=True).size:
                return f"a table node is in the {name} tier"
        limits = {COLD: e.n_cold, HOST: tiers.get("host", np.zeros(0)).shape[0], GPU: tiers.get("gpu", np.zeros(0)).shape[0],
                  TABLE: e.n_table}
        for code, lim in limits.items():
            s = e.slot[e.tier == code]
            if s.size and (s.min() < 0 or s.max() >= lim):
                return f"slots of tier {code} outside 0..{lim - 1}"
        return None


def _check_against_plan(e: PackEntry, nodes: np.ndarray, tiers: dict[str, np.ndarray]) -> str | None:
    """Whether every input node's tier and slot name the plan's node (None when they do)."""
    if nodes.shape[0] != e.num_inputs:
        return f"{e.num_inputs} inputs, the plan {nodes.shape[0]}"
    for code, name in ((GPU, "gpu"), (HOST, "host")):
        at = e.tier == code
        if at.any() and name in tiers and not np.array_equal(tiers[name][e.slot[at]], nodes[at]):
            return f"{name} slots do not name the plan's input nodes"
    at = e.tier == COLD
    if at.any() and not np.array_equal(e.cold_nodes[e.slot[at]], nodes[at]):
        return "cold slots do not name the plan's input nodes"
    at = e.tier == TABLE
    if at.any() and not np.array_equal(e.table_nodes[e.slot[at]], nodes[at]):
        return "table slots do not name the plan's input nodes"
    return None


def table_rows(features: RawArray, ids: np.ndarray) -> np.ndarray:
    """The stored bytes (uint8, ``len(ids) * row_bytes``, in ``ids`` order) of rows ``ids`` of a row-chunked
    feature array: what :meth:`Pack.check_table_rows` checks (a reference gather, through memory maps)."""
    ids = np.asarray(ids, dtype=np.int64)
    rb = features.row_bytes
    out = np.empty((ids.shape[0], rb), dtype=np.uint8)
    if not ids.shape[0]:
        return out.reshape(-1)
    cr = features.chunk_shape[0]
    chunk = ids // cr
    for c in np.unique(chunk).tolist():
        at = np.flatnonzero(chunk == c)
        mm = np.memmap(features.chunk_path(c), dtype=np.uint8, mode="r", shape=(cr, rb))
        out[at] = mm[ids[at] - c * cr]
        del mm
    return out.reshape(-1)


def open_pack(path: str | os.PathLike) -> Pack:
    """Open the pack directory at ``path``.

    Raises:
        FormatError: not a pack, damaged, or of a newer format version.
    """
    return Pack(path)
