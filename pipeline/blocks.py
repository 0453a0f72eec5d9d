"""Sampled blocks and minibatches as torch tensors: what a model consumes.

A :class:`Block` is one bipartite layer graph of a sampled minibatch: messages
flow from ``num_src`` source nodes to ``num_dst`` destination nodes, and the
destinations are the first ``num_dst`` sources (DGL's convention). A model
takes the blocks in layer order (the first block's sources are the input
nodes, the last block's destinations are the seeds) and the input features
``x`` ``[num_src of block 0, F]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..store.plan import SampledMinibatch


@dataclass
class Block:
    """One sampled layer graph in CSC over its destinations.

    Attributes:
        num_src: source nodes (local ids ``0..num_src-1``).
        num_dst: destination nodes (= the first ``num_dst`` sources).
        indptr: int64 [num_dst + 1]; the sources of destination v are ``indices[indptr[v]:indptr[v+1]]``.
        indices: int64 [E], local source ids.
        dst_index: int64 [E], the destination of each edge (``indptr`` expanded), for scatter ops.
        in_degree: float32 [num_dst], sampled in-degree of each destination.
    """

    num_src: int
    num_dst: int
    indptr: torch.Tensor
    indices: torch.Tensor
    dst_index: torch.Tensor
    in_degree: torch.Tensor

    @property
    def num_edges(self) -> int:
        """E, the sampled edges of this block."""
        return int(self.indices.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Block":
        """The same block on ``device``."""
        return Block(self.num_src, self.num_dst, self.indptr.to(device, non_blocking=non_blocking),
                     self.indices.to(device, non_blocking=non_blocking),
                     self.dst_index.to(device, non_blocking=non_blocking),
                     self.in_degree.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "Block":
        """The same block in pinned host memory (for non-blocking copies to a GPU)."""
        return Block(self.num_src, self.num_dst, self.indptr.pin_memory(), self.indices.pin_memory(),
                     self.dst_index.pin_memory(), self.in_degree.pin_memory())


def make_block(num_src: int, num_dst: int, indptr: np.ndarray, indices: np.ndarray) -> Block:
    """A :class:`Block` on the CPU from a hop's CSC arrays (any integer dtype)."""
    ptr = torch.from_numpy(np.asarray(indptr, dtype=np.int64))
    deg = ptr[1:] - ptr[:-1]
    return Block(int(num_src), int(num_dst), ptr, torch.from_numpy(np.asarray(indices, dtype=np.int64)),
                 torch.repeat_interleave(torch.arange(int(num_dst), dtype=torch.int64), deg),
                 deg.to(torch.float32))


def blocks_from_minibatch(mb: SampledMinibatch) -> list[Block]:
    """The minibatch's blocks in GNN-layer order (hop L first, hop 1 last), on the CPU."""
    return [make_block(ns, nd, ptr, idx) for ns, nd, ptr, idx in mb.blocks()]


@dataclass
class Batch:
    """One minibatch ready for the compute stage.

    Attributes:
        split: the split it belongs to.
        position: position in this epoch's order (0-based).
        index: row of the minibatch in the plan (and pack).
        blocks: in GNN-layer order, on the compute device.
        x: float32 [num_inputs, F] input features on the compute device (row i = input node i).
        y: int64 [num_seeds] labels of the seeds on the compute device.
        input_nodes: int64 [num_inputs] global ids (CPU numpy), for checks and debugging.
        stats: stage timings (seconds), queue waits (seconds), bytes and rows moved for this minibatch.
    """

    split: str
    position: int
    index: int
    blocks: list[Block]
    x: torch.Tensor
    y: torch.Tensor
    input_nodes: np.ndarray
    stats: dict = field(default_factory=dict)

    @property
    def num_seeds(self) -> int:
        """Seeds (the last block's destinations)."""
        return int(self.y.shape[0])
