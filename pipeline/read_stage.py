"""The packed loader's read stage (thread ``diskgraph-read``): everything a minibatch needs before assembly.

For each plan row of the epoch's order: the pack's index row and the plan row (→ blocks), the seeds' targets, the
per-tier positions of the input rows (numpy, once per minibatch), and every tier's read-thread part
(:meth:`~diskgraph.pipeline.tiers.FeatureTier.stage`: the cold tier's one aligned read of the packed extent, checked
against its checksum). On CUDA the blocks, targets and positions are pinned, so they go up without a CPU-side copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from ..store.errors import FormatError
from ..store.label_kinds import gather_targets
from ..store.packed import Pack
from .blocks import Block, blocks_from_minibatch
from .stages import StageRun, now
from .tiers import tier_positions


@dataclass
class Staged:
    """A read minibatch on its way to the assembler."""

    position: int
    index: int
    input_nodes: np.ndarray
    blocks: list[Block]
    y: torch.Tensor
    idx: torch.Tensor  # int64 [pos_gpu, slot_gpu, pos_host, slot_host, cold_to_position]
    counts: tuple[int, int, int]  # gpu, host, cold rows
    staged: dict = field(default_factory=dict)  # tier code -> what its stage() returned
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


def read_minibatches(loader, run: StageRun, order: np.ndarray, start: int):
    """The read stage of ``loader`` (a :class:`~diskgraph.pipeline.loader.PackedLoader`): for each position of
    ``order`` from ``start``, a :class:`Staged` minibatch (blocks, targets, tier positions, every tier's staged part);
    stops early (returns) when ``run`` is stopped."""
    tot = run.totals["read"]
    pack, plan, split = loader.pack, loader.plan, loader.split
    for pos in range(start, len(order)):
        if run.stop.is_set():
            return
        t0 = now()
        i = int(order[pos])
        e = pack.entry(split, i)
        mb = plan.minibatch(split, i)
        if mb.input_nodes.shape[0] != e.num_inputs:
            raise FormatError(f"pack {pack.path} minibatch {i} of {split} has {e.num_inputs} inputs, the plan "
                              f"{mb.input_nodes.shape[0]}; give the plan the pack was built from")
        blocks = blocks_from_minibatch(mb)
        y = torch.from_numpy(mb.link.targets() if plan.task == "link" else gather_targets(loader.labels, mb.seeds, loader.task))
        idx, counts = tier_positions(e)
        idx_t = torch.from_numpy(idx)
        busy = now() - t0
        staged = {}
        wait_buf = io = verify = 0.0
        for tier in loader.tiers:
            part = tier.stage(split, i, e, run.stop)
            staged[tier.code] = part
            if part is not None:  # a staged part may say how long it waited, read and checked (the cold tier does)
                wait_buf += getattr(part, "wait_s", 0.0)
                io += getattr(part, "io_s", 0.0)
                verify += getattr(part, "verify_s", 0.0)
        if run.stop.is_set():  # (a tier waiting for a buffer gave up: the epoch is being stopped)
            return
        t3 = now()
        if loader.cuda:
            blocks = [b.pin_memory() for b in blocks]
            y, idx_t = y.pin_memory(), idx_t.pin_memory()
        busy += io + verify + (now() - t3)
        read = sum(int(getattr(part, "bytes_read", 0)) for part in staged.values() if part is not None)
        stats = {"read_s": busy, "io_s": io, "verify_s": verify, "read_buffer_wait_s": wait_buf,
                 "bytes_read": read, "rows_gpu": counts[0], "rows_host": counts[1], "rows_cold": counts[2],
                 "rows_table": counts[3], "inputs": int(e.num_inputs), "seeds": int(y.shape[0])}
        for k, v in (("busy_s", busy), ("io_s", io), ("verify_s", verify), ("buffer_wait_s", wait_buf),
                     ("bytes", read)):
            tot[k] += v
        yield Staged(pos, i, mb.input_nodes, blocks, y, idx_t, counts, staged, stats)
