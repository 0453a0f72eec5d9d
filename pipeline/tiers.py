"""Feature tiers: where a minibatch's input rows come from, each behind one protocol (GraphBolt's ``Feature`` idea).

A pack's index gives every input row of a minibatch a tier code and a slot (:mod:`diskgraph.store.packed`):
``GPU`` (2) and ``HOST`` (1) rows are slots of the pack's hot tiers, ``COLD`` (0) rows are rows of the minibatch's
own packed extent, ``TABLE`` (3) rows — in a pack bounded by ``--max-blowup`` — rows the packer left in the dataset's
feature table. Each tier implements :class:`FeatureTier`, split the way the loader's stages are:

* :meth:`FeatureTier.stage` — in the **read** thread: fetch what the minibatch needs from this tier that is not
  resident yet (the cold tier: read its extent, check it; the hot tiers: nothing);
* :meth:`FeatureTier.assemble_into` — in the **assemble** thread: write the rows into ``x`` at their positions
  (on CUDA on the assembler's side stream), by default ``x[positions] = gather(slots)``;
* :meth:`FeatureTier.release` — when the minibatch is assembled: give back what ``stage`` took.

Implementations:

* :class:`DeviceTier` (``gpu``): rows resident on the compute device (a CPU tensor on CPU runs); ``index_select``.
* :class:`HostTier` (``host``): rows in page-aligned host memory. On CUDA registered in place (``cudaHostRegister``,
  mapped) and read by the GPU itself over PCIe (``mode == "uva"``, :mod:`diskgraph.pipeline.uva`); if mapping is
  refused, page-locked in place and gathered on the CPU into pinned memory that goes up with a non-blocking copy
  (``pinned-copy``; a second, pinned copy of the rows only when even locking in place is refused); ``cpu`` on CPU.
* :class:`ColdExtentTier` (``cold``): the minibatch's packed extent, read in one aligned read by an
  :class:`ExtentReader` (today's ``O_DIRECT`` :class:`~diskgraph.store.direct_io.DirectReader`) into a
  :class:`~diskgraph.pipeline.staging.StagingRing` slot, checked against its checksum, copied up (CUDA) and scattered
  as a whole.
* :class:`TableTier` (``table``): the minibatch's unpacked rows, read from the feature table's chunk files in
  coalesced aligned page runs (:class:`~diskgraph.store.table_reader.FeatureTableReader`) into a staging slot,
  checked against the pack's checksum of those rows, then handled as the cold tier handles an extent.

Every tier passes one conformance class (``tests/pipeline/tier_conformance.py``): rows bit-exact against
``features[nodes]``, every storage dtype, minibatches with no row of the tier, close and reopen. Rows stay in the
stored dtype (float16 and bfloat16 halve a tier's footprint); the loader converts to float32 after assembly.
"""

from __future__ import annotations

import os
import queue
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from ..store.direct_io import ALIGNMENT, aligned_empty, round_up
from ..store.errors import FormatError, InputError
from ..store.packed import COLD, GPU, HOST, TABLE, Pack, PackEntry
from ..store.progress import log
from ..store.table_reader import FeatureTableReader
from .staging import Slot, StagingRing
from .uva import RegisteredHostTensor, UVAError

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
"""Logical feature dtype → the torch dtype tiers hold rows in."""

UVA_ENV = "DISKGRAPH_UVA"
"""Set to ``0`` to skip the zero-copy host tier (use the pinned-copy path) on CUDA."""

_warned = {"uva": False}


def torch_dtype(dtype: str) -> torch.dtype:
    """The torch dtype of stored features of logical dtype ``dtype``."""
    try:
        return TORCH_DTYPES[dtype]
    except KeyError:
        raise InputError(f"features of dtype {dtype} cannot be loaded for training; re-import them as float32, "
                         "float16 or bfloat16") from None


def storage_tensor(rows: np.ndarray, dtype: str) -> torch.Tensor:
    """A zero-copy torch view of stored rows (bfloat16 ``uint16`` bit patterns become ``torch.bfloat16``)."""
    if dtype == "bfloat16":
        return torch.from_numpy(rows.view(np.int16)).view(torch.bfloat16)
    torch_dtype(dtype)
    return torch.from_numpy(rows)


def _to_position(entry: PackEntry, tier: np.ndarray, slot: np.ndarray, code: int, count: int, what: str) -> np.ndarray:
    """``to_pos`` (int64 [count]) of a tier whose rows arrive as a whole, in slot order: row ``j`` → ``x[to_pos[j]]``.

    Raises:
        FormatError: the tier's slots are not a permutation of ``0..count-1``.
    """
    pos = np.flatnonzero(tier == code)
    n = pos.shape[0]
    where = f"pack index row of minibatch ({entry.epoch}, {entry.batch})"
    if n != count:
        raise FormatError(f"{where} has {n} {what} inputs but {count} {what} rows; the pack is damaged, pack the plan "
                          "again")
    to_pos = np.full(n, -1, dtype=np.int64)
    if n:
        s = slot[pos]
        if s.min() < 0 or s.max() >= n:
            raise FormatError(f"{where} names {what} rows outside 0..{n - 1}; the pack is damaged, pack the plan again")
        to_pos[s] = pos
        if to_pos.min() < 0:
            raise FormatError(f"{where} names a {what} row twice; the pack is damaged, pack the plan again")
    return to_pos


def tier_positions(entry: PackEntry) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The gather/scatter indices of one minibatch, computed once from its tier and slot arrays.

    Returns ``(idx, (n_gpu, n_host, n_cold, n_table))`` where ``idx`` (int64) concatenates
    ``pos_gpu, slot_gpu, pos_host, slot_host, cold_to_position, table_to_position``: ``x[pos_t] = tier_t[slot_t]``,
    extent row ``j`` goes to ``x[cold_to_position[j]]`` (the extent is scattered as a whole) and table row ``j``
    (``table_nodes[j]``) to ``x[table_to_position[j]]``.

    Raises:
        FormatError: the cold (table) slots are not a permutation of the extent's (table's) rows.
    """
    tier, slot = entry.tier, entry.slot
    pos_g = np.flatnonzero(tier == GPU)
    pos_h = np.flatnonzero(tier == HOST)
    cold = _to_position(entry, tier, slot, COLD, int(entry.n_cold), "extent")
    table = _to_position(entry, tier, slot, TABLE, int(getattr(entry, "n_table", 0)), "table")
    idx = np.concatenate([pos_g, slot[pos_g], pos_h, slot[pos_h], cold, table]).astype(np.int64, copy=False)
    return idx, (int(pos_g.shape[0]), int(pos_h.shape[0]), int(cold.shape[0]), int(table.shape[0]))


def split_positions(idx: torch.Tensor,
                    counts: tuple[int, int, int, int]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """``{tier code: (positions in x, slots)}`` from :func:`tier_positions`' ``idx`` (a tensor, on any device); the
    cold and table tiers' slots are their rows in order (``positions``: ``cold_to_position``, ``table_to_position``)."""
    ng, nh, nc, nt = counts
    pos_g, slot_g, pos_h, slot_h, cold_pos, table_pos = torch.split(idx, [ng, ng, nh, nh, nc, nt])
    return {GPU: (pos_g, slot_g), HOST: (pos_h, slot_h), COLD: (cold_pos, cold_pos), TABLE: (table_pos, table_pos)}


class FeatureTier:
    """One source of input rows (see the module).

    Attributes:
        name: ``gpu``, ``host`` or ``cold``; code: the pack index's tier code.
        rows: resident rows (0 for the cold tier); nbytes: their size; feature_dim; dtype (torch storage dtype).
        device: where ``gather`` returns rows; index_device: where it wants its slot indices.
        mode: how the rows are held (``device``, ``uva``, ``pinned-copy``, ``cpu``, ``empty``, ``extents``).
    """

    name = ""
    code = -1

    def __init__(self, feature_dim: int, dtype: torch.dtype, device: torch.device, rows: int = 0, row_bytes: int = 0):
        self.feature_dim, self.dtype, self.device = int(feature_dim), dtype, device
        self.rows = int(rows)
        self.nbytes = self.rows * int(row_bytes)
        self.index_device = device
        self.mode = "cpu"

    def prepare(self) -> None:
        """Make the tier ready for an epoch (buffers allocated, once); called before the first :meth:`stage`."""

    def stage(self, split: str, index: int, entry: PackEntry, stop=None):
        """Read-thread part for minibatch ``index`` of ``split``: what :meth:`assemble_into` will need from this tier
        (None when the rows are resident). ``stop``: an event; a tier that waits returns None once it is set."""
        return None

    def gather(self, slots: torch.Tensor, staged=None) -> torch.Tensor:
        """Rows at ``slots`` (int64 on :attr:`index_device`), ``[k, F]`` of :attr:`dtype` on :attr:`device`."""
        raise NotImplementedError

    def assemble_into(self, x: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor, staged=None) -> None:
        """Assemble-thread part: ``x[positions] = rows at slots`` (``x`` of :attr:`dtype` on :attr:`device`)."""
        x.index_copy_(0, positions, self.gather(slots, staged))

    def release(self, staged) -> None:
        """The minibatch that ``staged`` came from is assembled (its copies are queued): give back what it holds."""

    def close(self) -> None:
        """Release the tier's memory (idempotent)."""

    def describe(self) -> dict:
        """Rows, bytes and mode (JSON-ready)."""
        return {"rows": self.rows, "bytes": self.nbytes, "mode": self.mode, "device": str(self.device)}


class _PackTier(FeatureTier):
    """A hot tier of a pack (rows and shape from the pack's manifest)."""

    def __init__(self, pack: Pack, device: torch.device):
        super().__init__(pack.feature_dim, torch_dtype(pack.dtype), device,
                         rows=int(pack.tier_info.get(self.name, {}).get("rows", 0)), row_bytes=pack.row_bytes)


class DeviceTier(_PackTier):
    """The GPU tier: rows resident on the compute device (a CPU tensor on CPU runs)."""

    name = "gpu"
    code = GPU

    def __init__(self, pack: Pack, device: torch.device, slice_bytes: int = 64 << 20):
        super().__init__(pack, device)
        n, f = self.rows, self.feature_dim
        store = pack.storage_dtype
        if device.type == "cpu":
            host = aligned_empty(self.nbytes).view(store).reshape(n, f)
            for _ in pack.read_tier(self.name, host):  # (checked against the tier's checksum)
                pass
            self.data = storage_tensor(host, pack.dtype)
        else:
            self.mode = "device"
            self.data = torch.empty((n, f), dtype=self.dtype, device=device)
            step = max(1, slice_bytes // max(pack.row_bytes, 1))
            stage = aligned_empty(min(n, step) * pack.row_bytes).view(store).reshape(-1, f)
            for s, part in pack.read_tier(self.name, stage, step):
                self.data[s:s + part.shape[0]].copy_(storage_tensor(part, pack.dtype))
            if device.type == "cuda":
                torch.cuda.synchronize(device)

    def gather(self, slots: torch.Tensor, staged=None) -> torch.Tensor:
        return self.data.index_select(0, slots)

    def close(self) -> None:
        self.data = torch.empty((0, self.feature_dim), dtype=self.dtype, device=self.data.device)


def _warn_uva(why: str) -> None:
    if not _warned["uva"]:
        _warned["uva"] = True
        log.warning("the host feature cache cannot be read by the GPU in place (%s); gathering its rows on the CPU "
                    "into pinned memory and copying them up instead (correct, but slower and uses CPU time)", why)


class HostTier(_PackTier):
    """The host tier: rows in page-aligned host memory, read by the GPU in place (UVA) on CUDA runs."""

    name = "host"
    code = HOST

    def __init__(self, pack: Pack, device: torch.device, uva: bool = True):
        super().__init__(pack, device)
        n, f = self.rows, self.feature_dim
        # whole pages of its own (registration locks whole pages; none is shared with another allocation)
        self._buffer = aligned_empty(round_up(self.nbytes, ALIGNMENT))[:self.nbytes].view(pack.storage_dtype).reshape(n, f)
        for _ in pack.read_tier(self.name, self._buffer):  # (checked against the tier's checksum)
            pass
        self.host = storage_tensor(self._buffer, pack.dtype)
        self.registered: RegisteredHostTensor | None = None
        self.view: torch.Tensor | None = None  # the rows as a CUDA tensor (UVA)
        if device.type != "cuda":
            return
        if n == 0:
            self.mode = "empty"
            self.view = torch.empty((0, f), dtype=self.dtype, device=device)
            return
        why = None
        if not uva or os.environ.get(UVA_ENV, "1") == "0":
            why = f"disabled ({UVA_ENV}=0)" if uva else "disabled by the caller"
        else:
            try:
                self.registered = RegisteredHostTensor(self.host, device)
            except UVAError as e:
                why = str(e)
        if self.registered is not None:
            self.mode = "uva"
            self.view = self.registered.cuda
            return
        _warn_uva(why)
        self.mode = "pinned-copy"
        self.index_device = torch.device("cpu")
        try:  # page-lock the rows where they are (no second copy of the tier)
            self.registered = RegisteredHostTensor(self.host, device, mapped=False)
        except UVAError:  # a pinned copy, then (the allocator rounds its size up to a power of two)
            self.host = self.host.pin_memory()
            self._buffer = None

    def gather(self, slots: torch.Tensor, staged=None) -> torch.Tensor:
        if self.view is not None:  # uva (or an empty tier on CUDA)
            return self.view.index_select(0, slots)
        if self.mode == "pinned-copy":
            out = torch.empty((slots.shape[0], self.feature_dim), dtype=self.dtype, pin_memory=True)
            torch.index_select(self.host, 0, slots, out=out)
            return out.to(self.device, non_blocking=True)
        return self.host.index_select(0, slots)

    def close(self) -> None:
        self.view = None
        if self.registered is not None:
            reg, self.registered = self.registered, None
            reg.close()
        self.host = torch.empty((0, self.feature_dim), dtype=self.dtype)
        self._buffer = None


class ExtentReader(Protocol):
    """Reads byte ranges of a pack's extent file into aligned buffers (O_DIRECT where it can)."""

    def read_into(self, offset: int, length: int, buf) -> int:
        """Read ``length`` bytes at ``offset`` (both 4 KiB-aligned) into ``buf``; returns the bytes read."""
        ...

    def close(self) -> None:
        ...


@dataclass
class StagedExtent:
    """Rows staged in a slot (a cold extent, or a minibatch's table rows): their payload bytes, the bytes read from
    disk for them (``bytes_read``: the padded extent, or every page of the table runs) and how long reading and
    checking took (seconds)."""

    slot: Slot
    nbytes: int
    rows: int
    wait_s: float = 0.0
    io_s: float = 0.0
    verify_s: float = 0.0
    bytes_read: int = 0


class ColdExtentTier(FeatureTier):
    """The cold rows of one split of a pack: each minibatch's packed extent, read whole in the read stage.

    Args:
        pack: the open pack (extent sizes, checksums).
        split: the split whose extents it reads.
        device: the compute device (CUDA: the staged extent goes up with one non-blocking copy).
        reader: the :class:`ExtentReader` (default: ``pack.reader(split, direct)``, opened now, so a repack during the
            run does not reach it).
        direct: read with ``O_DIRECT`` (the default reader).
        ring: staging buffers (the reader can run ``ring - 1`` extents ahead of the assembler).
    """

    name = "cold"
    code = COLD

    def __init__(self, pack: Pack, split: str, device: torch.device, *, reader: ExtentReader | None = None,
                 direct: bool = True, ring: int = 4):
        super().__init__(pack.feature_dim, torch_dtype(pack.dtype), device)
        self.mode = "extents"
        self.pack, self.split = pack, split
        self.reader = reader if reader is not None else pack.reader(split, direct)
        self.max_extent = pack.max_padded_nbytes(split)
        self.ring = StagingRing(self.max_extent, ring, device)
        self._dev: torch.Tensor | None = None  # device copy of the staged extent (CUDA; assembler's stream only)

    def prepare(self) -> None:
        """Make the staging ring ready for an epoch (allocated once)."""
        self.ring.prepare()

    def stage(self, split: str, index: int, entry: PackEntry, stop=None) -> StagedExtent | None:
        if not entry.padded_nbytes:
            return None
        slot, waited = self._free_slot(split, stop)
        if slot is None:
            return None
        t1 = time.perf_counter()
        self.reader.read_into(entry.offset, entry.padded_nbytes, slot.array)
        t2 = time.perf_counter()
        self.pack.check_extent(split, index, entry, slot.array)
        return StagedExtent(slot, int(entry.nbytes), int(entry.n_cold), waited, t2 - t1, time.perf_counter() - t2,
                            int(entry.padded_nbytes))

    def _free_slot(self, split: str, stop) -> tuple[Slot | None, float]:
        """A staging slot free for the next minibatch of ``split`` (None once ``stop`` is set) and the seconds waited
        for it."""
        if split != self.split:
            raise InputError(f"the {self.name} tier of split {self.split} was asked for a minibatch of {split}")
        t0 = time.perf_counter()
        slot = None
        while slot is None:
            if stop is not None and stop.is_set():
                return None, time.perf_counter() - t0
            try:
                slot = self.ring.free_slots.get(timeout=0.05)
            except queue.Empty:
                slot = None
        slot.wait_copied()  # the GPU has finished reading what the slot held before
        return slot, time.perf_counter() - t0

    def _rows(self, staged: StagedExtent) -> torch.Tensor:
        """The staged extent's rows ``[n, F]`` on the device (one non-blocking copy up on CUDA)."""
        host = staged.slot.tensor[:staged.nbytes]
        if self.device.type == "cuda":
            if self._dev is None or self._dev.shape[0] < staged.nbytes:
                self._dev = None
                self._dev = torch.empty(max(self.max_extent, staged.nbytes), dtype=torch.uint8, device=self.device)
            dev = self._dev[:staged.nbytes]
            dev.copy_(host, non_blocking=True)
            ev = torch.cuda.Event(blocking=True)  # synchronize() sleeps instead of spinning a core
            ev.record(torch.cuda.current_stream(self.device))
            staged.slot.copied = ev  # the reader waits for it before reusing the slot
            host = dev
        return host.view(self.dtype).view(staged.rows, self.feature_dim)

    def gather(self, slots: torch.Tensor, staged: StagedExtent | None = None) -> torch.Tensor:
        if staged is None:
            if slots.numel():
                raise RuntimeError("cold rows without a staged extent")  # pragma: no cover
            return torch.empty((0, self.feature_dim), dtype=self.dtype, device=self.device)
        return self._rows(staged).index_select(0, slots.to(self.device))

    def assemble_into(self, x, positions, slots, staged=None) -> None:
        """Scatter the whole extent: its row ``j`` to ``x[positions[j]]`` (``positions``: cold_to_position)."""
        if staged is None:
            if positions.numel():
                raise RuntimeError("cold rows without a staged extent")  # pragma: no cover
            return
        x.index_copy_(0, positions, self._rows(staged))

    def release(self, staged: StagedExtent | None) -> None:
        if staged is not None:
            self.ring.free_slots.put(staged.slot)

    def free_buffers(self) -> None:
        """Drop the staging ring and the device copy (re-made by the next epoch)."""
        self.ring.free()
        self._dev = None

    def close(self) -> None:
        """Free the buffers (the reader stays open: the pack, or whoever passed it, owns it)."""
        self.free_buffers()

    def describe(self) -> dict:
        return {"rows": 0, "bytes": 0, "mode": self.mode, "device": str(self.device),
                "staging_bytes": self.ring.allocated_bytes, "max_extent_bytes": self.max_extent}


class TableTier(ColdExtentTier):
    """The rows a bounded pack left in the dataset's feature table (``table_nodes`` of each minibatch), read in the
    read stage with coalesced aligned page runs, checked against the pack's checksum of those rows, and scattered as
    a whole like an extent.

    Args:
        pack: the open pack (the largest number of table rows of a minibatch, the rows' checksums).
        split: the split whose minibatches it reads.
        device: the compute device.
        features: the dataset's feature table directory (``DATASET/features``).
        reader: the :class:`~diskgraph.store.table_reader.FeatureTableReader` (default: one opened on ``features``,
            closed with the tier).
        direct: read with ``O_DIRECT`` (the default reader).
        ring: staging buffers.
    """

    name = "table"
    code = TABLE

    def __init__(self, pack: Pack, split: str, device: torch.device, features, *,
                 reader: FeatureTableReader | None = None, direct: bool = True, ring: int = 4):
        FeatureTier.__init__(self, pack.feature_dim, torch_dtype(pack.dtype), device)
        self.mode = "table"
        self.pack, self.split = pack, split
        self._own_reader = reader is None
        self.reader = reader if reader is not None else FeatureTableReader(features, direct=direct)
        if self.reader.row_bytes != pack.row_bytes:
            raise FormatError(f"feature table {features} holds rows of {self.reader.row_bytes} bytes but pack "
                              f"{pack.path} was made from rows of {pack.row_bytes}; pack the plan again")
        self.max_extent = round_up(pack.max_table_rows(split) * pack.row_bytes, ALIGNMENT)
        self.ring = StagingRing(self.max_extent, ring, device)
        self._dev = None

    def stage(self, split: str, index: int, entry: PackEntry, stop=None) -> StagedExtent | None:
        n = int(getattr(entry, "n_table", 0))
        if not n:
            return None
        slot, waited = self._free_slot(split, stop)
        if slot is None:
            return None
        nbytes = n * self.pack.row_bytes
        t1 = time.perf_counter()
        got = self.reader.read_rows(entry.table_nodes, slot.array[:nbytes])
        t2 = time.perf_counter()
        self.pack.check_table_rows(split, index, entry, slot.array[:nbytes])
        return StagedExtent(slot, nbytes, n, waited, t2 - t1, time.perf_counter() - t2, int(got.bytes_read))

    def close(self) -> None:
        """Free the buffers and close the reader it opened."""
        self.free_buffers()
        if self._own_reader:
            self.reader.close()

    def describe(self) -> dict:
        return {**super().describe(), "max_table_bytes": self.max_extent}
