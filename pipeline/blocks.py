"""Sampled blocks and minibatches as torch tensors: what a model consumes.

A :class:`Block` is one bipartite layer graph of a sampled minibatch: messages
flow from ``num_src`` source nodes to ``num_dst`` destination nodes, and the
destinations are the first ``num_dst`` sources (DGL's convention). A model
takes the blocks in layer order (the first block's sources are the input
nodes, the last block's destinations are the seeds) and the input features
``x`` ``[num_src of block 0, F]``.
"""

from __future__ import annotations

import warnings
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
    _csr: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def sum_neighbors(self, h: torch.Tensor) -> torch.Tensor:
        """``out[v] = sum_{u in N(v)} h[u]`` for the destinations: ``h`` [num_src, ...] → [num_dst, ...].

        On the CPU the forward pass is one CSR × dense product (MKL; each destination's row summed in
        edge order, so the result does not depend on the thread count) and no ``[E, ...]`` message
        tensor is built; the backward pass (``index_select`` of the gradient then ``index_add``
        over the sources) is deterministic too. Elsewhere (CUDA) it is ``index_select`` + ``index_add``.
        """
        if h.device.type != "cpu" or h.dtype not in (torch.float32, torch.float64):
            msg = h.index_select(0, self.indices)
            return h.new_zeros((self.num_dst,) + tuple(h.shape[1:])).index_add(0, self.dst_index, msg)
        if self._csr is None or self._csr.dtype != h.dtype:
            self._csr = self.csr(h.dtype)
        return _CSRSum.apply(h, self)

    def csr(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The block as a ``[num_dst, num_src]`` sparse CSR matrix of ones (CPU)."""
        with warnings.catch_warnings():  # "beta state", "invariant checks disabled": known, not the user's concern
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(self.indptr, self.indices, torch.ones(self.num_edges, dtype=dtype),
                                           size=(self.num_dst, self.num_src))

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



class _CSRSum(torch.autograd.Function):
    """Sum over in-neighbors with a CSR forward and an ``index_add`` backward (see :meth:`Block.sum_neighbors`)."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, block: Block) -> torch.Tensor:
        ctx.block = block
        flat = h.reshape(h.shape[0], -1)
        return torch.sparse.mm(block._csr, flat).reshape((block.num_dst,) + tuple(h.shape[1:]))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        block = ctx.block
        g = grad.index_select(0, block.dst_index)
        return grad.new_zeros((block.num_src,) + tuple(grad.shape[1:])).index_add_(0, block.indices, g), None


def make_block(num_src: int, num_dst: int, indptr: np.ndarray, indices: np.ndarray) -> Block:
    """A :class:`Block` on the CPU from a hop's CSC arrays (any integer dtype)."""
    ptr = torch.from_numpy(np.asarray(indptr, dtype=np.int64))
    deg = ptr[1:] - ptr[:-1]
    block = Block(int(num_src), int(num_dst), ptr, torch.from_numpy(np.asarray(indices, dtype=np.int64)),
                  torch.repeat_interleave(torch.arange(int(num_dst), dtype=torch.int64), deg),
                  deg.to(torch.float32))
    block._csr = block.csr()  # made here, in the loader's read stage, not in the compute step
    return block


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
