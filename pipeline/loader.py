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
   ``[num_inputs, F]`` by the index's tier/slot arrays, each tier writing its own
   rows (:class:`~diskgraph.pipeline.tiers.FeatureTier`). On CUDA, on a side
   stream: the staged cold rows go up with one non-blocking copy and are
   scattered into ``x``; GPU-tier rows are gathered on the device; host-tier
   rows are gathered by the GPU straight out of registered host memory (UVA);
   blocks and labels go up non-blocking; an event marks the batch ready. The
   assembler only queues this work: the staging buffer goes back to the ring
   with an event of its copy, which the reader waits for before reusing it, so
   the next minibatch's copy queues while this one's gathers run. On CPU: the
   same gathers and scatters into a reused tensor. Rows stored as
   float16/bfloat16 are gathered in that dtype and converted to float32 at the end.
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

The threads, queues and error handling are :mod:`diskgraph.pipeline.stages`'
harness: an exception in a stage thread is re-raised in the iterating thread,
and the threads stop and are joined — also when the consumer stops early
(``break``, ``close()`` of the generator, or garbage collection of it).

Every batch carries ``stats`` (seconds unless noted):

================================ =============================================================
``read_s``                       read stage busy time (index, plan row, labels, the read itself)
``io_s``                         of which the extent read
``verify_s``                     of which the check of the extent against its checksum
``assemble_s``                   assemble stage busy time (on CUDA the time to queue the batch's work)
``read_buffer_wait_s``           read stage waiting for a free staging buffer
``assemble_input_wait_s``        assemble stage waiting for a read minibatch
``assemble_buffer_wait_s``       assemble stage waiting for a free ``x`` buffer (consumer behind)
``consumer_wait_s``              consumer waiting for an assembled batch
``bytes_read``                   bytes read from disk (the padded extent, and the pages of the table rows' runs)
``rows_gpu/rows_host/rows_cold`` input rows served by each tier (``rows_table``: read from the feature table, in a
                                 pack bounded by ``--max-blowup``); ``inputs``, ``seeds``
================================ =============================================================

and :meth:`PackedLoader.epoch_stats` sums them per epoch, with hit rates,
throughput and the overlap ratio (epoch time ÷ slowest stage).
"""


from __future__ import annotations

import os

import numpy as np
import torch

from ..store.binding import check_pack, check_plan
from ..store.dataset import Dataset, open_dataset
from ..store.errors import InputError
from ..store.packed import Pack, open_pack
from ..store.plan import Plan, open_plan
from .blocks import Batch
from .cache import FeatureCache, shared_cache
from .read_stage import Staged, max_inputs, read_minibatches
from .schedule import epoch_order
from .stages import END, Stage, StageRun, device_context, now, overlap_stats
from .staging import OutBuffer, OutPool, grown
from .tiers import ColdExtentTier, FeatureTier, TableTier, split_positions, tier_positions

READ_THREAD = "diskgraph-read"
ASSEMBLE_THREAD = "diskgraph-assemble"

STAT_KEYS = ("read_s", "io_s", "verify_s", "assemble_s", "read_buffer_wait_s", "assemble_input_wait_s", "assemble_buffer_wait_s",
             "consumer_wait_s", "bytes_read", "rows_gpu", "rows_host", "rows_cold", "rows_table", "inputs", "seeds")
"""Keys of ``Batch.stats``."""

__all__ = ["PackedLoader", "STAT_KEYS", "max_inputs", "tier_positions"]


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
        if self.dataset.labels is None and self.plan.task != "link":  # (link plans carry their own targets)
            raise InputError(f"dataset {self.dataset.path} has no labels; import it with --labels to train on it")
        self.labels = self.dataset.verified_labels() if self.dataset.labels is not None else None
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
        self.max_inputs = max_inputs(self.pack, split)
        self.cold = ColdExtentTier(self.pack, split, self.device, direct=self.direct, ring=self.ring_size)
        self.tiers: list[FeatureTier] = [self.cache.gpu, self.cache.host, self.cold]
        self.table: TableTier | None = None
        if self.pack.max_table_rows(split):  # a bounded pack left rows of this split in the feature table
            self.table = TableTier(self.pack, split, self.device, self.dataset.path / "features", direct=self.direct,
                                   ring=self.ring_size)
            self.tiers.append(self.table)
        """Every source of input rows, each a :class:`~diskgraph.pipeline.tiers.FeatureTier`."""
        self._pool = OutPool(self.queue_depth + 2 if self.reuse_buffers else 0, self.feature_dim, self.device,
                             self.max_inputs)
        self._raw: torch.Tensor | None = None  # storage-dtype x (float16/bfloat16 runs), assembler only
        self._active: StageRun | None = None
        self._last: StageRun | None = None
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

    def _stages(self, order: np.ndarray, start: int) -> list[Stage]:
        dev, side = (self.device, self._side) if self.cuda else (None, None)
        return [Stage("read", READ_THREAD, source=lambda run: read_minibatches(self, run, order, start),
                      context=lambda: device_context(dev)),
                Stage("assemble", ASSEMBLE_THREAD, transform=self._assemble_one,
                      context=lambda: device_context(dev, side))]

    def _iterate(self, order: np.ndarray, start: int):
        if self._active is not None:
            self._active.shutdown()
        run = StageRun(self._stages(order, start), self.queue_depth)
        run.totals["read"].update(io_s=0.0, verify_s=0.0, buffer_wait_s=0.0, bytes=0)
        run.totals["assemble"]["buffer_wait_s"] = 0.0
        use = run.totals["consume"] = dict.fromkeys(("compute_s", "wait_s", "minibatches", "inputs", "seeds",
                                                     "rows_gpu", "rows_host", "rows_cold", "rows_table",
                                                     "bytes_read"), 0)
        self._active = run
        held: OutBuffer | None = None
        try:
            for tier in self.tiers:
                tier.prepare()
            self._pool.prepare()
            run.begin()
            while True:
                if held is not None:
                    self._pool.release(held)
                    held = None
                t0 = now()
                item = run.get_output()
                wait = now() - t0
                use["wait_s"] += wait
                if item is END:
                    break
                batch, held, event = item
                if self.cuda:
                    stream = torch.cuda.current_stream(self.device)
                    stream.wait_event(event)
                    for t in self._batch_tensors(batch, pooled=held is not None):
                        t.record_stream(stream)
                s = batch.stats
                s["consumer_wait_s"] = wait
                use["minibatches"] += 1
                for k in ("inputs", "seeds", "rows_gpu", "rows_host", "rows_cold", "rows_table", "bytes_read"):
                    use[k] += s[k]
                t1 = now()
                yield batch
                use["compute_s"] += now() - t1
        finally:
            if held is not None:
                self._pool.release(held)
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
        self.cold.free_buffers()
        if self.table is not None:
            self.table.free_buffers()
        self._pool.drop()
        self._raw = None

    def _batch_tensors(self, batch: Batch, pooled: bool) -> list[torch.Tensor]:
        out = [batch.y] + ([] if pooled else [batch.x])
        for b in batch.blocks:
            out += [b.indptr, b.indices, b.dst_index, b.in_degree]
        return out

    # -- stage 2: assemble ----------------------------------------------------------------------------

    def _assemble_one(self, run: StageRun, st: Staged, wait_in: float):
        tot = run.totals["assemble"]
        n = int(st.input_nodes.shape[0])
        t1 = now()
        buf = None
        if self.reuse_buffers:
            buf = run.get(self._pool.free)
            if buf is None:
                return None
        wait_buf = now() - t1
        t2 = now()
        x = self._pool.view(buf, n) if buf is not None else \
            torch.empty((n, self.feature_dim), dtype=torch.float32, device=self.device)
        batch_blocks, y, event = self._assemble(st, x)
        busy = now() - t2
        st.stats.update(assemble_s=busy, assemble_input_wait_s=wait_in, assemble_buffer_wait_s=wait_buf)
        tot["busy_s"] += busy
        tot["buffer_wait_s"] += wait_buf
        batch = Batch(split=self.split, position=st.position, index=st.index, blocks=batch_blocks, x=x, y=y,
                      input_nodes=st.input_nodes, stats=st.stats)
        return batch, buf, event

    def _assemble(self, st: Staged, x: torch.Tensor):
        """Fill ``x`` for one staged minibatch, each tier writing its rows; returns (blocks, y, ready event or None)
        on the device."""
        n = x.shape[0]
        if self.storage_dtype == torch.float32:
            raw = x
        else:
            raw = self._raw = grown(self._raw, n, self.max_inputs, self.feature_dim, self.storage_dtype, self.device)
            raw = raw[:n]
        on_device = split_positions(st.idx.to(self.device, non_blocking=True) if self.cuda else st.idx, st.counts)
        on_host = split_positions(st.idx, st.counts) if self.cuda else on_device
        try:
            for tier in self.tiers:
                pos, slots = on_device[tier.code]
                if pos.numel():
                    if tier.index_device != self.device:
                        slots = on_host[tier.code][1]
                    tier.assemble_into(raw, pos, slots, st.staged.get(tier.code))
        finally:
            for tier in self.tiers:
                tier.release(st.staged.get(tier.code))
        if raw is not x:
            x.copy_(raw)
        if not self.cuda:
            return st.blocks, st.y, None
        blocks = [b.to(self.device, non_blocking=True) for b in st.blocks]
        y = st.y.to(self.device, non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        return blocks, y, event

    # -- results and cleanup --------------------------------------------------------------------------

    def epoch_stats(self) -> dict:
        """Sums over the running (or last) epoch: stage busy times, waits, bytes, rows per tier, hit rates,
        minibatches/s, read GB/s and the overlap ratio ``epoch_s / slowest stage``."""
        run = self._active or self._last
        if run is None:
            return {}
        r, a, u = run.totals["read"], run.totals["assemble"], run.totals["consume"]
        epoch_s = run.epoch_s
        inputs = u["inputs"]
        stages = {"read": float(r["busy_s"]), "assemble": float(a["busy_s"]), "compute": float(u["compute_s"])}
        return {
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
            "rows_table": int(u["rows_table"]),
            "gpu_hit_rate": u["rows_gpu"] / inputs if inputs else 0.0,
            "host_hit_rate": u["rows_host"] / inputs if inputs else 0.0,
            "cold_rate": u["rows_cold"] / inputs if inputs else 0.0,
            "table_rate": u["rows_table"] / inputs if inputs else 0.0,
            "minibatches_per_s": u["minibatches"] / epoch_s if epoch_s > 0 else 0.0,
            "read_gb_per_s": r["bytes"] / epoch_s / 1e9 if epoch_s > 0 else 0.0,
            **overlap_stats(epoch_s, stages),
        }

    def describe(self) -> dict:
        """The loader's configuration and its tiers (JSON-ready)."""
        return {"split": self.split, "device": str(self.device), "queue_depth": self.queue_depth,
                "ring": self.ring_size, "direct": self.direct, "staging_bytes": self.cold.ring.allocated_bytes,
                "cache": self.cache.describe(), "cold": self.cold.describe(),
                **({"table": self.table.describe()} if self.table is not None else {})}

    def close(self) -> None:
        """Stop a running epoch and free the staging ring and buffers (and the cache and pack it opened)."""
        if self._active is not None:
            self._active.shutdown()
            self._active = None
        self.cold.close()
        if self.table is not None:
            self.table.close()
        self._pool = OutPool(0, self.feature_dim, self.device, 0)
        self._raw = None
        if self._own_cache:
            self.cache.close()
        if self._own_pack:
            self.pack.close()
        self._closed = True

    def __enter__(self) -> "PackedLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
