"""Sampled inference: the training-time sampler, packer and loader applied to the nodes to infer.

:func:`run_sampled` is the ``sampled`` mode of ``diskgraph predict`` / ``embed`` (the orchestration, node
selection and output writer live in :mod:`diskgraph.inference`). For the requested nodes it

1. samples a plan with the training fanouts and batch size
   (:func:`~diskgraph.sampler.neighbor_sampler.sample_plan` with ``seed_nodes``: one split named
   ``nodes``, the ids cut into minibatches in ascending order, bound to the dataset's graph) into
   ``SCRATCH/plan``;
2. picks a host tier of the most-read rows (a quarter of the memory budget) and packs every other row the
   plan reads into per-minibatch extents (:func:`~diskgraph.store.packer.pack_features`, within the memory
   budget) into ``SCRATCH/pack``;
3. reads the minibatches in plan order through the pipelined
   :class:`~diskgraph.pipeline.loader.PackedLoader` (read, assemble and compute overlap as in training)
   and runs :meth:`~diskgraph.models.BlockGNN.embed` under ``torch.no_grad()``.

Rows reach ``emit`` in ascending node id, each node once: minibatch ``b`` holds the ids
``nodes[b * batch_size:(b + 1) * batch_size]``; a minibatch whose seeds come out of order is sorted and
minibatches arriving out of plan order wait in :class:`InOrder` until their predecessors are out.

With fanouts of -1 (every neighbor) the result equals a full-graph forward for models whose layers depend
only on each destination's in-neighbors (SAGE, GAT); GCN normalizes by the sampled block's out-degrees,
as in training, so it does not.
"""

from __future__ import annotations

import pathlib
import time
from typing import Callable

import numpy as np
import torch

from .pipeline.loader import PackedLoader
from .pipeline.metrics import peak_rss_bytes, process_read_bytes
from .pipeline.trainer import StopRequested
from .sampler.hot_set import SCORE_NAME, hot_sets_for_plan
from .sampler.neighbor_sampler import SEED_NODES_SPLIT, sample_plan
from .store.errors import InputError
from .store.packer import pack_features
from .store.plan import open_plan
from .store.progress import Progress, format_bytes, log

PLAN_DIR = "plan"
PACK_DIR = "pack"
HOST_CACHE_SHARE = 4
"""The host tier of the inference pack holds the most-read rows, up to ``memory_budget // HOST_CACHE_SHARE`` bytes."""


class InOrder:
    """Hands minibatches of seed rows to ``emit`` in ascending node id, each node once.

    Minibatch ``b`` must hold exactly ``nodes[b * batch_size:(b + 1) * batch_size]`` (in any order); one that
    arrives before its predecessors waits until they are out.
    """

    def __init__(self, nodes: np.ndarray, batch_size: int, emit: Callable[[np.ndarray, torch.Tensor], None]):
        self.nodes, self.batch_size, self.emit = nodes, int(batch_size), emit
        self.next = 0
        self.waiting: dict[int, tuple[np.ndarray, torch.Tensor]] = {}
        self.emitted = 0

    @property
    def num_minibatches(self) -> int:
        return -(-len(self.nodes) // self.batch_size)

    def add(self, b: int, seeds: np.ndarray, rows: torch.Tensor) -> None:
        """Minibatch ``b``'s seed ids and their rows (same order); emits every minibatch now in turn."""
        if not 0 <= b < self.num_minibatches or b < self.next or b in self.waiting:
            raise RuntimeError(f"minibatch {b} arrived twice or is not one of the {self.num_minibatches} of the plan")
        seeds = np.asarray(seeds, dtype=np.int64)
        if seeds.size > 1 and not (seeds[1:] > seeds[:-1]).all():
            perm = np.argsort(seeds, kind="stable")
            seeds, rows = seeds[perm], rows[torch.from_numpy(perm)]
        want = self.nodes[b * self.batch_size:(b + 1) * self.batch_size]
        if not np.array_equal(seeds, want) or rows.shape[0] != seeds.shape[0]:
            raise RuntimeError(f"minibatch {b} of the inference plan holds other seeds than nodes "
                               f"{b * self.batch_size}..{b * self.batch_size + len(want) - 1} asked for")
        self.waiting[b] = (seeds, rows)
        while self.next in self.waiting:
            ids, out = self.waiting.pop(self.next)
            self.emit(ids, out)
            self.emitted += ids.shape[0]
            self.next += 1

    def done(self) -> bool:
        """Every node was emitted."""
        return self.next == self.num_minibatches and not self.waiting


def _check(ds, model, nodes: np.ndarray, layer: int, fanouts: list[int]) -> np.ndarray:
    nodes = np.asarray(nodes)
    if nodes.ndim != 1 or (nodes.size and nodes.dtype.kind not in "iu"):
        raise InputError(f"the nodes to infer must be a 1-D array of integer node ids, got shape {nodes.shape} "
                         f"dtype {nodes.dtype}")
    nodes = np.ascontiguousarray(nodes, dtype=np.int64)
    if nodes.size > 1 and not (nodes[1:] > nodes[:-1]).all():
        raise InputError("the nodes to infer must be sorted ascending without repeats; pass np.unique(ids)")
    if nodes.size and (nodes[0] < 0 or nodes[-1] >= ds.num_nodes):
        raise InputError(f"node id {nodes[0] if nodes[0] < 0 else nodes[-1]} is outside the dataset's "
                         f"0..{ds.num_nodes - 1}; pass ids of this dataset's nodes")
    if len(fanouts) != model.num_layers:
        raise InputError(f"fanouts {','.join(map(str, fanouts))} have {len(fanouts)} hops but the model has "
                         f"{model.num_layers} layers; give one fanout per layer")
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 1 <= layer <= model.num_layers:
        raise InputError(f"--layer {layer!r} is outside 1..{model.num_layers} of the model; pick one of its layers")
    if ds.features is None:
        raise InputError(f"dataset {ds.path} has no features to infer from; import it with --features")
    if ds.labels is None:
        raise InputError(f"dataset {ds.path} has no labels, which the sampled mode's loader reads; use the exact "
                         "mode or import the labels the model was trained with")
    return nodes


def run_sampled(ds, model, nodes: np.ndarray, *, layer: int, fanouts: list[int], batch_size: int, seed: int,
                scratch: pathlib.Path, memory_budget: int, device: torch.device, direct: bool,
                emit: Callable[[np.ndarray, torch.Tensor], None], stop=None) -> dict:
    """Layer ``layer``'s output of ``model`` for ``nodes``, sampled as in training (see the module docstring).

    Args:
        ds: the open dataset.
        model: a :class:`~diskgraph.models.BlockGNN` on ``device`` (in eval mode).
        nodes: sorted, distinct int64 node ids.
        layer: 1..``model.num_layers`` (the last: logits).
        fanouts, batch_size, seed: sampling options (one fanout per layer, -1 = all neighbors).
        scratch: an existing directory for the plan and pack (the caller removes it).
        memory_budget: bytes the packer may hold; a quarter of it is the loader's host tier.
        device: the compute device.
        direct: read the packed extents with ``O_DIRECT``.
        emit: called with ``(node ids int64 [m], rows float32 [m, width] on the CPU)``, ascending over the call.
        stop: an event; when set, the run stops after the current minibatch and raises
            :class:`~diskgraph.pipeline.trainer.StopRequested`.

    Returns:
        ``{"minibatches", "seconds", "sample_s", "pack_s", "read_bytes", "read_amplification",
        "peak_rss_bytes"}``: ``read_bytes`` is what the process read from storage during the loading pass,
        ``read_amplification`` that over the cold rows' bytes (None when no row was cold).
    """
    t_start = time.perf_counter()
    nodes = _check(ds, model, nodes, layer, list(fanouts))
    layer = int(layer)
    stats = {"minibatches": 0, "seconds": 0.0, "sample_s": 0.0, "pack_s": 0.0, "read_bytes": 0,
             "read_amplification": None, "peak_rss_bytes": peak_rss_bytes()}

    def check_stop() -> None:
        if stop is not None and stop.is_set():
            raise StopRequested()

    if nodes.size == 0:
        stats["seconds"] = time.perf_counter() - t_start
        return stats
    check_stop()
    scratch = pathlib.Path(scratch)
    plan_dir, pack_dir = scratch / PLAN_DIR, scratch / PACK_DIR

    t0 = time.perf_counter()
    sample_plan(ds, plan_dir, fanouts=list(fanouts), batch_size=batch_size, seed=seed, seed_nodes=nodes,
                overwrite=True)
    plan = open_plan(plan_dir)
    stats["sample_s"] = time.perf_counter() - t0
    check_stop()

    t0 = time.perf_counter()
    row_bytes = ds.features.row_bytes
    host_bytes = int(memory_budget) // HOST_CACHE_SHARE
    tiers = hot_sets_for_plan(plan, row_bytes, 0, host_bytes)
    pack_features(ds, plan, pack_dir, tiers=tiers, memory_budget=int(memory_budget), max_blowup=None,
                  overwrite=True, gpu_cache_bytes=0, host_cache_bytes=host_bytes, score=SCORE_NAME)
    del tiers
    stats["pack_s"] = time.perf_counter() - t0
    check_stop()

    dtype = next(iter(model.parameters()), torch.empty(0)).dtype
    order = InOrder(nodes, batch_size, emit)
    loader = PackedLoader(ds, pack_dir, plan, SEED_NODES_SPLIT, device=device, direct=direct)
    rb_start = process_read_bytes()
    try:
        it = loader.epoch()
        try:
            with torch.no_grad(), Progress(f"inference (sampled, layer {layer})", order.num_minibatches,
                                           "minibatches") as bar:
                for batch in it:
                    x = batch.x if batch.x.dtype == dtype else batch.x.to(dtype)
                    out = model.embed(batch.blocks, x, layer)
                    rows = out.to("cpu", torch.float32)
                    if rows.untyped_storage().nbytes() > rows.numel() * rows.element_size():
                        rows = rows.clone()  # (a view of the whole layer's output: keep the seeds' rows only)
                    nd = int(batch.blocks[-1].num_dst)
                    order.add(int(batch.index), np.array(batch.input_nodes[:nd], dtype=np.int64), rows)
                    stats["minibatches"] += 1
                    bar.update(1)
                    check_stop()
        finally:
            it.close()
        loaded = loader.epoch_stats()
    finally:
        stats["read_bytes"] = process_read_bytes() - rb_start
        loader.close()
    if not order.done():
        raise RuntimeError(f"the loader ended after {stats['minibatches']} of {order.num_minibatches} minibatches")
    cold_bytes = (int(loaded.get("rows_cold", 0)) + int(loaded.get("rows_table", 0))) * row_bytes
    stats["read_amplification"] = stats["read_bytes"] / cold_bytes if cold_bytes else None
    stats["peak_rss_bytes"] = peak_rss_bytes()
    stats["seconds"] = time.perf_counter() - t_start
    log.info("sampled inference of %d nodes (layer %d): %d minibatches in %.1f s (sample %.1f s, pack %.1f s), "
             "read %s%s", nodes.size, layer, stats["minibatches"], stats["seconds"], stats["sample_s"],
             stats["pack_s"], format_bytes(stats["read_bytes"]),
             f" (amplification {stats['read_amplification']:.3f})" if stats["read_amplification"] else "")
    return stats
