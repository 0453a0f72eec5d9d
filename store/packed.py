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
    index/{split}.arrow        Arrow IPC file, one record batch (one row) per minibatch, plan order

Index row (one per minibatch)::

    epoch, batch     int32         the plan row it packs
    offset           int64         byte offset of the extent in cold/{split} (multiple of 4096)
    nbytes           int64         n_cold * row_bytes (payload)
    padded_nbytes    int64         nbytes rounded up to 4096 (0 for an empty extent)
    n_cold           int32         rows in the extent
    tier             list<int8>    per input node (plan order): 0 cold, 1 host, 2 gpu
    slot             list<int32>   per input node: row in that tier, or row within the extent when cold
    cold_nodes       list<int64>   global ids of the extent's rows, ascending

So assembling a minibatch is ``out[tier == 2] = gpu[slot]``, ``out[tier == 1] = host[slot]``,
``out[tier == 0] = extent[slot]`` — nothing is looked up at training time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from .arrow_files import open_ipc_file
from .direct_io import ALIGNMENT, DirectReader, aligned_empty, round_up
from .errors import FormatError, InputError
from .manifest import read_manifest
from .zarr_arrays import RawArray

PACK_FORMAT = "diskgraph.pack"
PACK_VERSION = 1
"""The pack format version this diskgraph writes and the newest it reads."""

TIERS = ("gpu", "host")
COLD, HOST, GPU = 0, 1, 2
"""Values of the index's ``tier`` column."""


def index_schema() -> pa.Schema:
    """The Arrow schema of ``index/{split}.arrow``."""
    return pa.schema([
        pa.field("epoch", pa.int32()), pa.field("batch", pa.int32()),
        pa.field("offset", pa.int64()), pa.field("nbytes", pa.int64()), pa.field("padded_nbytes", pa.int64()),
        pa.field("n_cold", pa.int32()),
        pa.field("tier", pa.list_(pa.int8())), pa.field("slot", pa.list_(pa.int32())),
        pa.field("cold_nodes", pa.list_(pa.int64())),
    ])


def cold_chunk_path(pack_dir: str | os.PathLike, split: str) -> Path:
    """The single chunk file holding ``split``'s extents."""
    return Path(pack_dir) / "cold" / split / "c" / "0"


@dataclass
class PackEntry:
    """One minibatch's index row; arrays are zero-copy views of the memory-mapped index.

    Attributes:
        epoch, batch: the plan row.
        offset, nbytes, padded_nbytes, n_cold: the extent (bytes in ``cold/{split}``).
        tier: int8 [n_inputs], 0 cold / 1 host / 2 gpu.
        slot: int32 [n_inputs], row in the tier or in the extent.
        cold_nodes: int64 [n_cold], ascending global ids of the extent's rows.
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

    @property
    def num_inputs(self) -> int:
        """Input nodes of the minibatch."""
        return int(self.tier.shape[0])


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
        self.manifest = read_manifest(self.path, PACK_FORMAT, PACK_VERSION)
        m = self.manifest
        try:
            ds = m["dataset"]
            self.feature_dim = int(ds["feature_dim"])
            self.dtype = str(ds["feature_dtype"])
            self.row_bytes = int(ds["row_bytes"])
            self.num_nodes = int(ds["num_nodes"])
            self.alignment = int(m["alignment"])
            self.split_info: dict[str, dict] = m["splits"]
            self.tier_info: dict[str, dict] = m["tiers"]
        except (KeyError, TypeError, ValueError):
            raise FormatError(f"{self.path / 'manifest.json'} lacks required fields; the pack is damaged, pack the plan again") from None
        self.splits = list(self.split_info)
        self.storage_dtype = np.dtype(np.uint16) if self.dtype == "bfloat16" else np.dtype(self.dtype)
        self._indexes: dict[str, pa.ipc.RecordBatchFileReader] = {}
        self._readers: dict[tuple[str, bool], DirectReader] = {}
        self._tiers: dict[str, np.ndarray] | None = None

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

    def load_tiers(self) -> dict[str, np.ndarray]:
        """Both tiers' rows read into memory (cached): ``{"gpu": [n_gpu, F], "host": [n_host, F]}``."""
        if self._tiers is None:
            out = {}
            for name in TIERS:
                a = self.tier_features(name)
                out[name] = a.read_rows(0, a.shape[0])
            self._tiers = out
        return self._tiers

    # -- index ------------------------------------------------------------------------------------

    def _index(self, split: str) -> pa.ipc.RecordBatchFileReader:
        if split not in self.split_info:
            raise InputError(f"pack {self.path} has no {split!r} split (it has {', '.join(self.splits)})")
        r = self._indexes.get(split)
        if r is None:
            r = open_ipc_file(self.path / "index" / f"{split}.arrow", int(self.split_info[split]["minibatches"]),
                              "pack index", "pack the plan again")
            self._indexes[split] = r
        return r

    def num_minibatches(self, split: str) -> int:
        """Minibatches of ``split`` (all presampled epochs)."""
        return int(self.split_info[split]["minibatches"]) if split in self.split_info else self._index(split).num_record_batches

    def max_padded_nbytes(self, split: str) -> int:
        """The largest extent of ``split`` in bytes (size a reusable buffer with it)."""
        return int(self.split_info[split]["max_padded_nbytes"])

    def entry(self, split: str, i: int) -> PackEntry:
        """Index row ``i`` of ``split`` (arrays zero-copy from the memory-mapped index)."""
        n = self.num_minibatches(split)
        if not 0 <= i < n:
            raise IndexError(f"minibatch {i} of {split} is out of range (0..{n - 1})")
        b = self._index(split).get_batch(i)

        def scalar(name: str) -> int:
            return int(b.column(name)[0].as_py())

        def values(name: str) -> np.ndarray:
            return b.column(name).values.to_numpy()

        return PackEntry(epoch=scalar("epoch"), batch=scalar("batch"), offset=scalar("offset"),
                         nbytes=scalar("nbytes"), padded_nbytes=scalar("padded_nbytes"), n_cold=scalar("n_cold"),
                         tier=values("tier"), slot=values("slot"), cold_nodes=values("cold_nodes"))

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
        return out[: e.nbytes].view(self.storage_dtype).reshape(e.n_cold, self.feature_dim)

    def assemble(self, split: str, i: int, tiers_in_memory: dict[str, np.ndarray] | None = None,
                 direct: bool = True, out: np.ndarray | None = None) -> np.ndarray:
        """Minibatch ``i``'s input features ``[n_inputs, F]`` (CPU reference path).

        Rows come from the tiers by slot and from the extent by slot, in the
        plan's input-node order; equal, bit for bit, to ``features[input_nodes]``.

        Args:
            tiers_in_memory: ``{"gpu": rows, "host": rows}`` (default: :meth:`load_tiers`).
        """
        e = self.entry(split, i)
        tiers = tiers_in_memory if tiers_in_memory is not None else self.load_tiers()
        if out is None:
            out = np.empty((e.num_inputs, self.feature_dim), dtype=self.storage_dtype)
        for name, code in (("gpu", GPU), ("host", HOST)):
            at = np.flatnonzero(e.tier == code)
            if at.size:
                out[at] = np.asarray(tiers[name])[e.slot[at]]
        at = np.flatnonzero(e.tier == COLD)
        if at.size:
            out[at] = self.read_extent(split, i, direct=direct, entry=e)[e.slot[at]]
        return out

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
        """Re-check the pack; returns the problems found (empty when sound).

        Checks file sizes against the index and manifest; extents aligned,
        contiguous and in order; index rows consistent (lengths, sorted cold
        nodes, slots in range); tiers (sorted, distinct, in range, disjoint);
        index ↔ plan (same minibatches, every input node's tier/slot names that
        node); and for ``check_rows`` minibatches per split and a sample of tier
        rows, the packed bytes against the dataset's features.

        Args:
            plan: the plan (default: opened from the manifest's path when it exists).
            dataset: the dataset (default: the directory two levels up, when it is one).
        """
        from .plan import open_plan

        problems: list[str] = []
        tiers: dict[str, np.ndarray] = {}
        for name in TIERS:
            try:
                nodes = np.asarray(self.tier_nodes(name))
                feats = self.tier_features(name)
                for c in range(feats.num_chunks):
                    feats._check_chunk(c)
            except (FormatError, ValueError, KeyError) as e:
                problems.append(f"tiers/{name}: {e}")
                continue
            rows = int(self.tier_info.get(name, {}).get("rows", -1))
            if nodes.shape[0] != rows or feats.shape != (rows, self.feature_dim):
                problems.append(f"tiers/{name}: {nodes.shape[0]} nodes and {feats.shape} rows, the manifest says {rows}")
            if nodes.size and (np.any(np.diff(nodes) <= 0) or nodes[0] < 0 or nodes[-1] >= self.num_nodes):
                problems.append(f"tiers/{name}/nodes: not sorted, distinct node ids in 0..N-1")
            tiers[name] = nodes
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
        if plan is not None:
            want = self.manifest["plan"]
            if plan.manifest.get("created_at") != want.get("created_at"):
                problems.append(f"plan {plan.path} was created at {plan.manifest.get('created_at')}, the pack was built "
                                f"from one created at {want.get('created_at')}; pack the plan again")
                plan = None
        if dataset is None:
            try:
                from .dataset import open_dataset

                dpath = self.path.parent.parent
                dataset = open_dataset(dpath) if (dpath / "manifest.json").exists() else None
            except FormatError:
                dataset = None
        if dataset is not None:
            rec = dataset.manifest.get("arrays", {}).get("features", {})
            if rec.get("sha256") != self.manifest["dataset"].get("feature_sha256"):
                problems.append(f"dataset {dataset.path} has other features than the pack was built from; pack again")
                dataset = None

        for split in self.splits:
            problems += self._verify_split(split, tiers, plan, dataset, check_rows)
        if dataset is not None:
            for name, nodes in tiers.items():
                k = min(nodes.shape[0], 256)
                if k:
                    sample = np.unique(np.linspace(0, nodes.shape[0] - 1, k).astype(np.int64))
                    got = self.tier_features(name).read_rows(0, nodes.shape[0]) if nodes.shape[0] <= 4096 else None
                    for s in sample:
                        row = got[s] if got is not None else self.tier_features(name).read_rows(int(s), int(s) + 1)[0]
                        if not np.array_equal(row, dataset.features.read_rows(int(nodes[s]), int(nodes[s]) + 1)[0]):
                            problems.append(f"tiers/{name}: row {s} differs from node {nodes[s]}'s features")
                            break
        return problems

    def _verify_split(self, split: str, tiers: dict[str, np.ndarray], plan, dataset, check_rows: int) -> list[str]:
        problems: list[str] = []
        info = self.split_info[split]
        try:
            idx = self._index(split)
        except FormatError as e:
            return [str(e)]
        path = self.cold_path(split)
        size = path.stat().st_size if path.exists() else -1
        if size != int(info["padded_bytes"]):
            problems.append(f"{path} holds {size} bytes, the manifest {info['padded_bytes']}; the file is truncated or "
                            "damaged, pack the plan again")
        if plan is not None and split in plan.splits and plan.num_minibatches(split) != idx.num_record_batches:
            problems.append(f"index/{split}: {idx.num_record_batches} minibatches, the plan {plan.num_minibatches(split)}")
            plan = None
        elif plan is not None and split not in plan.splits:
            problems.append(f"index/{split}: the plan has no {split} split")
            plan = None
        n = idx.num_record_batches
        checks = set(np.linspace(0, n - 1, min(n, check_rows)).astype(int).tolist()) if n and dataset is not None else set()
        pos = 0
        for i in range(n):
            e = self.entry(split, i)
            where = f"index/{split} minibatch {i}"
            bad = None
            if e.offset != pos or e.offset % self.alignment:
                bad = f"extent at {e.offset}, expected {pos} (aligned to {self.alignment}, in order)"
            elif e.nbytes != e.n_cold * self.row_bytes or e.padded_nbytes != round_up(e.nbytes, self.alignment):
                bad = f"nbytes {e.nbytes} / padded {e.padded_nbytes} do not match {e.n_cold} rows"
            elif e.cold_nodes.shape[0] != e.n_cold or e.tier.shape != e.slot.shape:
                bad = "column lengths disagree"
            elif e.n_cold > 1 and np.any(np.diff(e.cold_nodes) < 0):
                bad = "cold nodes are not sorted"
            elif int((e.tier == COLD).sum()) != e.n_cold:
                bad = f"{int((e.tier == COLD).sum())} inputs are cold but the extent holds {e.n_cold} rows"
            elif e.tier.size and (e.tier.min() < 0 or e.tier.max() > GPU):
                bad = "tier values outside 0..2"
            if bad is None:
                limits = {COLD: e.n_cold, HOST: tiers.get("host", np.zeros(0)).shape[0],
                          GPU: tiers.get("gpu", np.zeros(0)).shape[0]}
                for code, lim in limits.items():
                    s = e.slot[e.tier == code]
                    if s.size and (s.min() < 0 or s.max() >= lim):
                        bad = f"slots of tier {code} outside 0..{lim - 1}"
                        break
            if bad is None and plan is not None:
                nodes = plan.input_nodes(split, i)
                if nodes.shape[0] != e.num_inputs:
                    bad = f"{e.num_inputs} inputs, the plan {nodes.shape[0]}"
                else:
                    for code, name in ((GPU, "gpu"), (HOST, "host")):
                        at = e.tier == code
                        if at.any() and name in tiers and not np.array_equal(tiers[name][e.slot[at]], nodes[at]):
                            bad = f"{name} slots do not name the plan's input nodes"
                    at = e.tier == COLD
                    if bad is None and at.any() and not np.array_equal(e.cold_nodes[e.slot[at]], nodes[at]):
                        bad = "cold slots do not name the plan's input nodes"
            if bad is None and i in checks and e.n_cold and size == int(info["padded_bytes"]):
                try:
                    ext = self.read_extent(split, i, entry=e)
                except FormatError as err:
                    return problems + [f"{where}: {err}"]
                for j in np.unique(np.linspace(0, e.n_cold - 1, min(e.n_cold, 16)).astype(np.int64)):
                    v = int(e.cold_nodes[j])
                    if not np.array_equal(ext[j], dataset.features.read_rows(v, v + 1)[0]):
                        bad = f"extent row {j} differs from node {v}'s features"
                        break
            if bad is not None:
                problems.append(f"{where}: {bad}")
                if len(problems) >= 10:
                    problems.append(f"index/{split}: further minibatches not checked")
                    return problems
            pos = e.offset + e.padded_nbytes
        if pos != size and size >= 0 and not problems:
            problems.append(f"{path}: extents end at {pos} but the file holds {size} bytes")
        return problems


def open_pack(path: str | os.PathLike) -> Pack:
    """Open the pack directory at ``path``.

    Raises:
        FormatError: not a pack, damaged, or of a newer format version.
    """
    return Pack(path)
