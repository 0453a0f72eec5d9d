"""The out-of-core loader: read → assemble → compute, three overlapped stages.

>>> loader = PackedLoader(dataset, pack, plan, "train", device="cuda")
>>> for batch in loader.epoch(loader.order(epoch, seed)):
...     logits = model(batch.blocks, batch.x)         # Batch: blocks, x float32, y int64, stats
>>> loader.epoch_stats()                              # stage times, waits, bytes, hit rates

Stages, each in its own thread, joined by bounded queues (``queue_depth``):

1. **read** (thread ``diskgraph-read``): the minibatch's pack index row, its
   plan row (→ :class:`~diskgraph.pipeline.blocks.Block` s) and its seeds'
   labels, each row checked against its checksum; the per-tier positions of its
   input rows (numpy, once per minibatch); and one ``O_DIRECT`` read of its
   packed extent of cold rows, checked against the extent's checksum, into
   a staging buffer taken from a small ring (``ring`` buffers, 4 KiB aligned,
   each as large as the split's largest extent; page-locked on CUDA so the copy
   up is asynchronous). Buffered reads, with one logged warning, where the
   filesystem refuses ``O_DIRECT``. On CUDA it also pins the blocks, labels and
   indices so they go up without a CPU-side copy.
2. **assemble** (thread ``diskgraph-assemble``): fills the input features ``x``
   ``[num_inputs, F]`` by the index's tier/slot arrays. On CUDA, on a side
   stream: the staged cold rows go up with one non-blocking copy and are
   scattered into ``x``; GPU-tier rows are gathered on the device; host-tier
   rows are gathered by the GPU straight out of registered host memory (UVA,
   :mod:`diskgraph.pipeline.cache`); blocks and labels go up non-blocking; an
   event marks the batch ready. The staging buffer returns to the ring once the
   event has completed (its copy is done). On CPU: the same gathers and
   scatters into a reused tensor. Rows stored as float16/bfloat16 are gathered
   in that dtype and converted to float32 at the end.
3. **compute**: the consumer iterating :meth:`PackedLoader.epoch`. On CUDA the
   iterator makes the consumer's current stream wait for the batch's event
   before handing it over (and records the batch's tensors on that stream), so
   the batch is ready to use on whatever stream is current.

``x`` lives in a pool of ``queue_depth + 2`` reused buffers (on the CPU the pool
and the staging ring are freed when an epoch's iteration ends): a batch's ``x`` is
valid until the iterator is asked for the next batch (its buffer then returns
to the pool; on CUDA after the work queued on the consumer's stream so far).
Clone it to keep it, or build the loader with ``reuse_buffers=False``.
``blocks``, ``y`` and ``input_nodes`` are fresh for every batch.

An exception in a stage thread is re-raised in the iterating thread, and the
threads stop and are joined — also when the consumer stops early (``break``,
``close()`` of the generator, or garbage collection of it).

Every batch carries ``stats`` (seconds unless noted):

================================ =============================================================
``read_s``                       read stage busy time (index, plan row, labels, the read itself)
``io_s``                         of which the extent read
``verify_s``                     of which the check of the extent against its checksum
``assemble_s``                   assemble stage busy time (on CUDA until the batch's event completed)
``read_buffer_wait_s``           read stage waiting for a free staging buffer
``assemble_input_wait_s``        assemble stage waiting for a read minibatch
``assemble_buffer_wait_s``       assemble stage waiting for a free ``x`` buffer (consumer behind)
``consumer_wait_s``              consumer waiting for an assembled batch
``bytes_read``                   bytes read from disk (the padded extent)
``rows_gpu/rows_host/rows_cold`` input rows served by each tier; ``inputs``, ``seeds``
================================ =============================================================

and :meth:`PackedLoader.epoch_stats` sums them per epoch, with hit rates,
throughput and the overlap ratio (epoch time ÷ slowest stage).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from ..store.dataset import Dataset, open_dataset
from ..store.label_kinds import gather_targets
from ..store.direct_io import ALIGNMENT, aligned_empty
from ..store.errors import FormatError, InputError
from ..store.binding import check_pack, check_plan
from ..store.packed import COLD, GPU, HOST, Pack, PackEntry, open_pack
from ..store.plan import Plan, open_plan
from ..store.progress import log
from .blocks import Batch, Block, blocks_from_minibatch
from .cache import FeatureCache, shared_cache
from .uva import RegisteredHostTensor, UVAError
from .schedule import epoch_order

_END = object()
_warned = {"staging": False}
POLL_S = 0.05
"""How often a waiting stage looks at the stop flag (waits themselves wake at once on new items)."""
JOIN_TIMEOUT_S = 60.0
GROWTH = 1.25
"""Reused buffers are sized to the split's largest minibatch; should one not fit, they grow by 1.25x."""

READ_THREAD = "diskgraph-read"
ASSEMBLE_THREAD = "diskgraph-assemble"

STAT_KEYS = ("read_s", "io_s", "verify_s", "assemble_s", "read_buffer_wait_s", "assemble_input_wait_s", "assemble_buffer_wait_s",
             "consumer_wait_s", "bytes_read", "rows_gpu", "rows_host", "rows_cold", "inputs", "seeds")
"""Keys of ``Batch.stats``."""


def _now() -> float:
    return time.perf_counter()


@dataclass
class _Slot:
    """One staging buffer of the ring: an aligned numpy view (for the reader) and a tensor of the same bytes."""

    array: np.ndarray
    tensor: torch.Tensor
    pin: RegisteredHostTensor | None = None  # its page-lock (CUDA), released with the ring


@dataclass
class _OutBuffer:
    """A reusable ``x`` buffer; ``released`` is the event after which its last consumer was done (CUDA)."""

    x: torch.Tensor | None = None
    released: object = None


@dataclass
class _Staged:
    """A read minibatch on its way to the assembler."""

    position: int
    index: int
    input_nodes: np.ndarray
    blocks: list[Block]
    y: torch.Tensor
    idx: torch.Tensor  # int64 [pos_gpu, slot_gpu, pos_host, slot_host, cold_to_position]
    counts: tuple[int, int, int]  # gpu, host, cold rows
    nbytes: int  # payload bytes of the extent
    slot: _Slot | None
    stats: dict = field(default_factory=dict)


def max_inputs(pack: Pack, split: str) -> int:
    """The most input nodes any minibatch of ``split`` has (from the index's list offsets; no values are read)."""
    r = pack.index_reader(split)
    if r.num_record_batches == 0:
        return 0
    try:
        m = pc.max(pc.list_value_length(r.read_all().column("tier"))).as_py()
    except (pa.ArrowException, OSError) as e:
        raise FormatError(f"pack index {pack.path / 'index' / (split + '.arrow')} cannot be read ({e}); the pack is "
                          "damaged, pack the plan again") from None
    return int(m or 0)


def tier_positions(entry: PackEntry) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The gather/scatter indices of one minibatch, computed once from its tier and slot arrays.

    Returns ``(idx, (n_gpu, n_host, n_cold))`` where ``idx`` (int64) concatenates
    ``pos_gpu, slot_gpu, pos_host, slot_host, cold_to_position``: ``x[pos_t] = tier_t[slot_t]``,
    and extent row ``j`` goes to ``x[cold_to_position[j]]`` (the extent is scattered as a whole).

    Raises:
        FormatError: the cold slots are not a permutation of the extent's rows.
    """
    tier, slot = entry.tier, entry.slot
    pos_g = np.flatnonzero(tier == GPU)
    pos_h = np.flatnonzero(tier == HOST)
    pos_c = np.flatnonzero(tier == COLD)
    n_c = pos_c.shape[0]
    if n_c != entry.n_cold:
        raise FormatError(f"pack index row of minibatch ({entry.epoch}, {entry.batch}) has {n_c} cold inputs but an "
                          f"extent of {entry.n_cold} rows; the pack is damaged, pack the plan again")
    to_pos = np.full(n_c, -1, dtype=np.int64)
    if n_c:
        cs = slot[pos_c]
        if cs.min() < 0 or cs.max() >= n_c:
            raise FormatError(f"pack index row of minibatch ({entry.epoch}, {entry.batch}) names extent rows outside "
                              f"0..{n_c - 1}; the pack is damaged, pack the plan again")
        to_pos[cs] = pos_c
        if n_c and to_pos.min() < 0:
            raise FormatError(f"pack index row of minibatch ({entry.epoch}, {entry.batch}) names an extent row twice; "
                              "the pack is damaged, pack the plan again")
    idx = np.concatenate([pos_g, slot[pos_g], pos_h, slot[pos_h], to_pos]).astype(np.int64, copy=False)
    return idx, (int(pos_g.shape[0]), int(pos_h.shape[0]), int(n_c))


class _Run:
    """One epoch's stage threads, queues, stop flag and first error."""

    def __init__(self, loader: "PackedLoader", order: np.ndarray, start: int):
        self.loader = loader
        self.order = order
        self.start = start
        depth = loader.queue_depth
        self.q_read: queue.Queue = queue.Queue(maxsize=depth)
        self.q_out: queue.Queue = queue.Queue(maxsize=depth)
        self.free_slots: queue.Queue = queue.Queue()
        self.free_out: queue.Queue = queue.Queue()
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.read_totals = dict.fromkeys(("busy_s", "io_s", "verify_s", "buffer_wait_s", "put_wait_s", "bytes",
                                          "minibatches"), 0)
        self.asm_totals = dict.fromkeys(("busy_s", "input_wait_s", "buffer_wait_s", "put_wait_s", "minibatches"), 0)
        self.use_totals = dict.fromkeys(("compute_s", "wait_s", "minibatches", "inputs", "seeds", "rows_gpu",
                                         "rows_host", "rows_cold", "bytes_read"), 0)
        self.t_start = self.t_end = 0.0

    # -- coordination -----------------------------------------------------------------------------

    def fail(self, e: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = e
        self.stop.set()

    def put(self, q: queue.Queue, item) -> bool:
        while not self.stop.is_set():
            try:
                q.put(item, timeout=POLL_S)
                return True
            except queue.Full:
                pass
        return False

    def get(self, q: queue.Queue):
        while not self.stop.is_set():
            try:
                return q.get(timeout=POLL_S)
            except queue.Empty:
                pass
        return None

    def get_output(self):
        """The next assembled item or ``_END``; raises a stage's error."""
        while True:
            if self.error is not None:
                raise self.error
            if self.stop.is_set():
                raise RuntimeError("this epoch was stopped (another epoch of the loader started, or it was closed); "
                                   "its remaining batches are gone")
            try:
                return self.q_out.get(timeout=POLL_S)
            except queue.Empty:
                if not any(t.is_alive() for t in self.threads) and self.q_out.empty() and self.error is None:
                    raise RuntimeError("the loader's stage threads stopped without finishing the epoch")

    def begin(self) -> None:
        ld = self.loader
        for s in ld._slots:
            self.free_slots.put(s)
        for b in ld._out_pool:
            self.free_out.put(b)
        self.t_start = _now()
        self.threads = [threading.Thread(target=ld._read_stage, args=(self,), name=READ_THREAD, daemon=True),
                        threading.Thread(target=ld._assemble_stage, args=(self,), name=ASSEMBLE_THREAD, daemon=True)]
        for t in self.threads:
            t.start()

    def shutdown(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(JOIN_TIMEOUT_S)
            if t.is_alive():  # pragma: no cover - a read stuck in the kernel
                log.warning("loader thread %s did not stop within %.0f s", t.name, JOIN_TIMEOUT_S)
        self.t_end = _now()

    def stats(self) -> dict:
        r, a, u = self.read_totals, self.asm_totals, self.use_totals
        epoch_s = max((self.t_end or _now()) - self.t_start, 0.0) if self.t_start else 0.0
        inputs = u["inputs"]
        stages = {"read": float(r["busy_s"]), "assemble": float(a["busy_s"]), "compute": float(u["compute_s"])}
        slowest = max(stages, key=stages.get)
        out = {
            "minibatches": int(u["minibatches"]), "epoch_s": epoch_s,
            "read_busy_s": stages["read"], "io_s": float(r["io_s"]), "verify_s": float(r["verify_s"]),
            "assemble_busy_s": stages["assemble"],
            "compute_s": stages["compute"],
            "read_buffer_wait_s": float(r["buffer_wait_s"]), "read_put_wait_s": float(r["put_wait_s"]),
            "assemble_input_wait_s": float(a["input_wait_s"]), "assemble_buffer_wait_s": float(a["buffer_wait_s"]),
            "assemble_put_wait_s": float(a["put_wait_s"]), "consumer_wait_s": float(u["wait_s"]),
            "bytes_read": int(r["bytes"]), "minibatches_read": int(r["minibatches"]),
            "minibatches_assembled": int(a["minibatches"]),
            "inputs": int(inputs), "seeds": int(u["seeds"]),
            "rows_gpu": int(u["rows_gpu"]), "rows_host": int(u["rows_host"]), "rows_cold": int(u["rows_cold"]),
            "gpu_hit_rate": u["rows_gpu"] / inputs if inputs else 0.0,
            "host_hit_rate": u["rows_host"] / inputs if inputs else 0.0,
            "cold_rate": u["rows_cold"] / inputs if inputs else 0.0,
            "minibatches_per_s": u["minibatches"] / epoch_s if epoch_s > 0 else 0.0,
            "read_gb_per_s": r["bytes"] / epoch_s / 1e9 if epoch_s > 0 else 0.0,
            "slowest_stage": slowest, "slowest_stage_s": stages[slowest],
            "overlap": epoch_s / stages[slowest] if stages[slowest] > 0 else None,
        }
        return out


class PackedLoader:
    """Minibatches of one split of a packed plan, read, assembled and handed over by a 3-stage pipeline.

    Args:
        dataset: the dataset (directory or open :class:`~diskgraph.store.dataset.Dataset`): labels.
        pack: the pack (directory or open :class:`~diskgraph.store.packed.Pack`).
        plan: the plan the pack was built from (directory or open :class:`~diskgraph.store.plan.Plan`):
            blocks and seeds.
        split: ``train``, ``val`` or ``test``.
        device: the compute device; ``cuda`` runs the CUDA path (pinned staging, side stream, UVA host tier).
        queue_depth: capacity of each queue between stages (≥ 1).
        direct: read extents with ``O_DIRECT``.
        ring: staging buffers (default ``queue_depth + 2``: the reader can run a full queue ahead).
        cache: the feature cache to use (default: :func:`~diskgraph.pipeline.cache.shared_cache` of the pack).
        reuse_buffers: assemble ``x`` into pooled buffers (see the module docstring); False allocates each ``x``.
        uva: let the GPU read the host tier in place (CUDA; when ``cache`` is not given).

    Raises:
        InputError: bad options, a split missing from the pack or plan, a pack of another plan, no labels.
    """

    def __init__(self, dataset: Dataset | str | os.PathLike, pack: Pack | str | os.PathLike,
                 plan: Plan | str | os.PathLike, split: str, *, device: torch.device | str = "cpu",
                 queue_depth: int = 2, direct: bool = True, ring: int | None = None,
                 cache: FeatureCache | None = None, reuse_buffers: bool = True, uva: bool = True):
        if isinstance(queue_depth, bool) or not isinstance(queue_depth, (int, np.integer)) or queue_depth < 1:
            raise InputError(f"queue depth {queue_depth!r} must be a whole number of at least 1")
        ring = int(queue_depth) + 2 if ring is None else ring
        if isinstance(ring, bool) or not isinstance(ring, (int, np.integer)) or ring < 1:
            raise InputError(f"ring size {ring!r} must be a whole number of at least 1 (staging buffers)")
        self._own_pack = not isinstance(pack, Pack)
        self.dataset = dataset if isinstance(dataset, Dataset) else open_dataset(dataset)
        self.pack = pack if isinstance(pack, Pack) else open_pack(pack)
        self.plan = plan if isinstance(plan, Plan) else open_plan(plan)
        self.split = split
        for what, obj in (("pack", self.pack), ("plan", self.plan)):
            if split not in obj.splits:
                raise InputError(f"{what} {obj.path} has no {split!r} split (it has {', '.join(obj.splits)})")
        check_plan(self.plan, self.dataset)
        check_pack(self.pack, self.dataset, self.plan)
        if self.pack.num_minibatches(split) != self.plan.num_minibatches(split):
            raise InputError(f"pack {self.pack.path} holds {self.pack.num_minibatches(split)} {split} minibatches, plan "
                             f"{self.plan.path} {self.plan.num_minibatches(split)}; give the plan the pack was built from")
        if self.dataset.labels is None:
            raise InputError(f"dataset {self.dataset.path} has no labels; import it with --labels to train on it")
        self.labels = self.dataset.verified_labels()
        self.task = self.dataset.task
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            if not torch.cuda.is_available():
                raise InputError(f"device {device} was asked for but torch sees no CUDA GPU; use --device cpu")
            if self.device.index is None:
                self.device = torch.device("cuda", torch.cuda.current_device())
            self._side = torch.cuda.Stream(device=self.device)
        self.queue_depth = int(queue_depth)
        self.ring_size = int(ring)
        self.direct = bool(direct)
        self.reuse_buffers = bool(reuse_buffers)
        self._own_cache = cache is None and self._own_pack
        self.cache = cache if cache is not None else shared_cache(self.pack, self.device, uva=uva)
        self.feature_dim = self.pack.feature_dim
        self.storage_dtype = self.cache.storage_dtype
        self._max_extent = self.pack.max_padded_nbytes(split)
        self.max_inputs = max_inputs(self.pack, split)
        self._reader = self.pack.reader(split, self.direct)  # opened now: a repack during the run does not reach it
        self._slots: list[_Slot] = []
        self._out_pool = [_OutBuffer() for _ in range(self.queue_depth + 2)] if self.reuse_buffers else []
        self._raw: torch.Tensor | None = None  # storage-dtype x (float16/bfloat16 runs), assembler only
        self._cold_dev: torch.Tensor | None = None  # device copy of the staged extent (CUDA), side stream only
        self._active: _Run | None = None
        self._last: _Run | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"PackedLoader({str(self.pack.path)!r}, split={self.split!r}, device={self.device})"

    # -- order --------------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Minibatches in one epoch of the split."""
        return self.plan.minibatches_per_epoch(self.split)

    @property
    def num_minibatches(self) -> int:
        """Plan rows of the split (all presampled epochs)."""
        return self.pack.num_minibatches(self.split)

    def order(self, epoch: int, seed: int = 0) -> np.ndarray:
        """The plan rows epoch ``epoch`` reads (:func:`~diskgraph.pipeline.schedule.epoch_order`)."""
        return epoch_order(self.plan, self.split, epoch, seed)

    def _check_order(self, order) -> np.ndarray:
        n = self.num_minibatches
        if order is None:
            return np.arange(n, dtype=np.int64)
        arr = np.asarray(order)
        if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
            raise InputError("an epoch order must be a 1-D sequence of plan row numbers")
        arr = arr.astype(np.int64, copy=False)
        if arr.size and (arr.min() < 0 or arr.max() >= n):
            raise InputError(f"epoch order names plan rows outside 0..{n - 1} of the {self.split} split")
        return arr

    # -- the pipeline ---------------------------------------------------------------------------------

    def epoch(self, order=None, start: int = 0):
        """Iterate the minibatches ``order[start:]`` as :class:`~diskgraph.pipeline.blocks.Batch` objects.

        Args:
            order: plan rows in reading order (:meth:`order`); None = every row of the split in plan order.
            start: position in ``order`` to begin at (resume); ``Batch.position`` counts from 0 at ``order[0]``.

        The stage threads start with the first ``next()`` and are joined when the
        iteration ends, fails or is abandoned. One epoch runs at a time per loader:
        starting another stops the running one.
        """
        if self._closed:
            raise InputError("the loader is closed")
        order = self._check_order(order)
        if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or not 0 <= start <= len(order):
            raise InputError(f"start position {start!r} is outside 0..{len(order)}")
        return self._iterate(order, int(start))

    def _iterate(self, order: np.ndarray, start: int):
        if self._active is not None:
            self._active.shutdown()
        run = _Run(self, order, start)
        self._active = run
        held: _OutBuffer | None = None
        try:
            self._prepare()
            run.begin()
            u = run.use_totals
            while True:
                if held is not None:
                    self._release(held, run)
                    held = None
                t0 = _now()
                item = run.get_output()
                wait = _now() - t0
                u["wait_s"] += wait
                if item is _END:
                    break
                batch, held, event = item
                if self.cuda:
                    stream = torch.cuda.current_stream(self.device)
                    stream.wait_event(event)
                    for t in self._batch_tensors(batch, pooled=held is not None):
                        t.record_stream(stream)
                s = batch.stats
                s["consumer_wait_s"] = wait
                u["minibatches"] += 1
                for k in ("inputs", "seeds", "rows_gpu", "rows_host", "rows_cold", "bytes_read"):
                    u[k] += s[k]
                t1 = _now()
                yield batch
                u["compute_s"] += _now() - t1
        finally:
            if held is not None:
                self._release(held, run)
            run.shutdown()
            if self._active is run:  # (not when another epoch superseded this one)
                self._active = None
                self._last = run
                if not self.cuda:
                    self._free_buffers()

    def _free_buffers(self) -> None:
        """Drop the staging ring and the ``x`` pool between epochs (CPU): they are re-made by the next epoch in
        microseconds, and the train, val and test loaders then do not each hold theirs at the same time. (On CUDA
        they stay: page-locking them again would cost more.)"""
        for slot in self._slots:
            if slot.pin is not None:
                slot.pin.close()
        self._slots = []
        for buf in self._out_pool:
            buf.x = None
            buf.released = None
        self._raw = self._cold_dev = None

    def _batch_tensors(self, batch: Batch, pooled: bool) -> list[torch.Tensor]:
        out = [batch.y] + ([] if pooled else [batch.x])
        for b in batch.blocks:
            out += [b.indptr, b.indices, b.dst_index, b.in_degree]
        return out

    def _release(self, buf: _OutBuffer, run: _Run) -> None:
        """Return an ``x`` buffer to ``run``'s pool once the consumer's queued work on it is done."""
        if self.cuda:
            ev = torch.cuda.Event()
            ev.record(torch.cuda.current_stream(self.device))
            buf.released = ev
        run.free_out.put(buf)

    def _prepare(self) -> None:
        """Allocate the staging ring on first use (page-locked on CUDA)."""
        if self._slots or self._max_extent <= 0:
            return
        size = max(self._max_extent, ALIGNMENT)
        for _ in range(self.ring_size):
            arr = aligned_empty(size)
            t = torch.from_numpy(arr)
            pin = None
            if self.cuda:
                try:  # lock the aligned buffer in place: exactly `size` bytes
                    pin = RegisteredHostTensor(t, self.device, mapped=False)
                except UVAError as e:  # a pinned tensor instead (the allocator rounds its size up)
                    if not _warned["staging"]:
                        _warned["staging"] = True
                        log.warning("cannot page-lock the staging buffers in place (%s); using pinned tensors", e)
                    raw = torch.empty(size + ALIGNMENT, dtype=torch.uint8, pin_memory=True)
                    off = (-raw.data_ptr()) % ALIGNMENT
                    t = raw[off:off + size]
                    arr = t.numpy()
                if arr.ctypes.data % ALIGNMENT:  # pragma: no cover - guarded by the offset above
                    raise RuntimeError("pinned staging buffer is not 4096-byte aligned")
            self._slots.append(_Slot(arr, t, pin))

    # -- stage 1: read --------------------------------------------------------------------------------

    def _read_stage(self, run: _Run) -> None:
        try:
            if self.cuda:
                with torch.cuda.device(self.device):
                    self._read_loop(run)
            else:
                self._read_loop(run)
        except BaseException as ex:
            run.fail(ex)

    def _read_loop(self, run: _Run) -> None:
        tot = run.read_totals
        pack, plan, split = self.pack, self.plan, self.split
        for pos in range(run.start, len(run.order)):
            if run.stop.is_set():
                return
            t0 = _now()
            i = int(run.order[pos])
            e = pack.entry(split, i)
            mb = plan.minibatch(split, i)
            if mb.input_nodes.shape[0] != e.num_inputs:
                raise FormatError(f"pack {pack.path} minibatch {i} of {split} has {e.num_inputs} inputs, the plan "
                                  f"{mb.input_nodes.shape[0]}; give the plan the pack was built from")
            blocks = blocks_from_minibatch(mb)
            y = torch.from_numpy(gather_targets(self.labels, mb.seeds, self.task))
            idx, counts = tier_positions(e)
            idx_t = torch.from_numpy(idx)
            busy = _now() - t0
            slot, io, verify, wait_buf = None, 0.0, 0.0, 0.0
            if e.padded_nbytes:
                t1 = _now()
                slot = run.get(run.free_slots)
                wait_buf = _now() - t1
                if slot is None:
                    return
                t2 = _now()
                self._reader.read_into(e.offset, e.padded_nbytes, slot.array)
                t_check = _now()
                io = t_check - t2
                pack.check_extent(split, i, e, slot.array)
                verify = _now() - t_check
            t3 = _now()
            if self.cuda:
                blocks = [b.pin_memory() for b in blocks]
                y, idx_t = y.pin_memory(), idx_t.pin_memory()
            busy += io + verify + (_now() - t3)
            stats = {"read_s": busy, "io_s": io, "verify_s": verify, "read_buffer_wait_s": wait_buf,
                     "bytes_read": int(e.padded_nbytes),
                     "rows_gpu": counts[0], "rows_host": counts[1], "rows_cold": counts[2],
                     "inputs": int(e.num_inputs), "seeds": int(y.shape[0])}
            item = _Staged(pos, i, mb.input_nodes, blocks, y, idx_t, counts, int(e.nbytes), slot, stats)
            tot["busy_s"] += busy
            tot["io_s"] += io
            tot["verify_s"] += verify
            tot["buffer_wait_s"] += wait_buf
            tot["bytes"] += int(e.padded_nbytes)
            tot["minibatches"] += 1
            t4 = _now()
            ok = run.put(run.q_read, item)
            tot["put_wait_s"] += _now() - t4
            if not ok:
                return
        run.put(run.q_read, _END)

    # -- stage 2: assemble ----------------------------------------------------------------------------

    def _assemble_stage(self, run: _Run) -> None:
        try:
            if self.cuda:
                with torch.cuda.device(self.device), torch.cuda.stream(self._side):
                    self._assemble_loop(run)
            else:
                self._assemble_loop(run)
        except BaseException as ex:
            run.fail(ex)

    def _assemble_loop(self, run: _Run) -> None:
        tot = run.asm_totals
        while True:
            t0 = _now()
            st = run.get(run.q_read)
            wait_in = _now() - t0
            tot["input_wait_s"] += wait_in
            if st is None:
                return
            if st is _END:
                run.put(run.q_out, _END)
                return
            n = int(st.input_nodes.shape[0])
            t1 = _now()
            buf = None
            if self.reuse_buffers:
                buf = run.get(run.free_out)
                if buf is None:
                    return
            wait_buf = _now() - t1
            t2 = _now()
            x = self._out_tensor(buf, n)
            batch_blocks, y, event = self._assemble(st, x)
            busy = _now() - t2
            if st.slot is not None:
                run.free_slots.put(st.slot)
            st.stats.update(assemble_s=busy, assemble_input_wait_s=wait_in, assemble_buffer_wait_s=wait_buf)
            tot["busy_s"] += busy
            tot["buffer_wait_s"] += wait_buf
            tot["minibatches"] += 1
            batch = Batch(split=self.split, position=st.position, index=st.index, blocks=batch_blocks, x=x, y=y,
                          input_nodes=st.input_nodes, stats=st.stats)
            t3 = _now()
            ok = run.put(run.q_out, (batch, buf, event))
            tot["put_wait_s"] += _now() - t3
            if not ok:
                return

    def _out_tensor(self, buf: _OutBuffer | None, n: int) -> torch.Tensor:
        """``x`` [n, F] float32 on the device: a view of a pooled buffer (grown when too small) or a new tensor."""
        f = self.feature_dim
        if buf is None:
            return torch.empty((n, f), dtype=torch.float32, device=self.device)
        if self.cuda and buf.released is not None:
            torch.cuda.current_stream(self.device).wait_event(buf.released)
        if buf.x is None or buf.x.shape[0] < n:
            rows = max(n, self.max_inputs) if buf.x is None else max(n, int(buf.x.shape[0] * GROWTH))
            buf.x = None
            buf.x = torch.empty((rows, f), dtype=torch.float32, device=self.device)
        return buf.x[:n]

    def _raw_tensor(self, n: int) -> torch.Tensor:
        if self._raw is None or self._raw.shape[0] < n:
            rows = max(n, self.max_inputs) if self._raw is None else max(n, int(self._raw.shape[0] * GROWTH))
            self._raw = None
            self._raw = torch.empty((rows, self.feature_dim), dtype=self.storage_dtype, device=self.device)
        return self._raw[:n]

    def _assemble(self, st: _Staged, x: torch.Tensor):
        """Fill ``x`` for one staged minibatch; returns (blocks, y, ready event or None) on the device."""
        n = x.shape[0]
        ng, nh, nc = st.counts
        raw = x if self.storage_dtype == torch.float32 else self._raw_tensor(n)
        cache = self.cache
        if self.cuda:
            idx = st.idx.to(self.device, non_blocking=True)
        else:
            idx = st.idx
        pos_g, slot_g, pos_h, slot_h, cold_pos = torch.split(idx, [ng, ng, nh, nh, nc])
        if ng:
            raw.index_copy_(0, pos_g, cache.gpu.gather(slot_g))
        if nh:
            host_slots = slot_h if cache.host.index_device == self.device else st.idx[2 * ng + nh:2 * ng + 2 * nh]
            raw.index_copy_(0, pos_h, cache.host.gather(host_slots))
        if nc:
            if st.slot is None:  # pragma: no cover - an extent always has a buffer
                raise RuntimeError("cold rows without a staged extent")
            staged = st.slot.tensor[:st.nbytes]
            if self.cuda:
                if self._cold_dev is None or self._cold_dev.shape[0] < st.nbytes:
                    self._cold_dev = None
                    self._cold_dev = torch.empty(max(self._max_extent, st.nbytes), dtype=torch.uint8,
                                                 device=self.device)
                dev = self._cold_dev[:st.nbytes]
                dev.copy_(staged, non_blocking=True)
                staged = dev
            raw.index_copy_(0, cold_pos, staged.view(self.storage_dtype).view(nc, self.feature_dim))
        if raw is not x:
            x.copy_(raw)
        if not self.cuda:
            return st.blocks, st.y, None
        blocks = [b.to(self.device, non_blocking=True) for b in st.blocks]
        y = st.y.to(self.device, non_blocking=True)
        event = torch.cuda.Event(blocking=True)  # synchronize() sleeps instead of spinning a core
        event.record(torch.cuda.current_stream(self.device))
        # wait here (in the assembler only): the staging buffer is then free to reuse, and assemble_s is the real
        # time of the copies and gathers, not of queuing them; the consumer's stream still waits on the event
        event.synchronize()
        return blocks, y, event

    # -- results and cleanup --------------------------------------------------------------------------

    def epoch_stats(self) -> dict:
        """Sums over the running (or last) epoch: stage busy times, waits, bytes, rows per tier, hit rates,
        minibatches/s, read GB/s and the overlap ratio ``epoch_s / slowest stage``."""
        run = self._active or self._last
        return run.stats() if run is not None else {}

    def describe(self) -> dict:
        """The loader's configuration and its cache's tiers (JSON-ready)."""
        return {"split": self.split, "device": str(self.device), "queue_depth": self.queue_depth,
                "ring": self.ring_size, "direct": self.direct, "staging_bytes": len(self._slots) * max(self._max_extent, 0),
                "cache": self.cache.describe()}

    def close(self) -> None:
        """Stop a running epoch and free the staging ring and buffers (and the cache and pack it opened)."""
        if self._active is not None:
            self._active.shutdown()
            self._active = None
        self._free_buffers()
        self._out_pool = []
        if self._own_cache:
            self.cache.close()
        if self._own_pack:
            self.pack.close()
        self._closed = True

    def __enter__(self) -> "PackedLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
