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
        y: the seeds' targets on the compute device, as :meth:`~diskgraph.store.dataset.Dataset.targets` gives them:
            int64 [num_seeds] class ids (-1: unlabelled), float32 [num_seeds, C] of 0/1 (multilabel) or float32
            [num_seeds] / [num_seeds, T] (regression; NaN: unlabelled).
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

    @property
    def batch_size(self) -> int:
        """Seeds of the minibatch (PyG's name): the first ``batch_size`` output rows of a model are theirs."""
        if self.blocks:
            return int(self.blocks[-1].num_dst)
        return int(self.y.shape[0])

    def to_pyg(self):
        """The minibatch as the ``torch_geometric.data.Data`` PyG's ``NeighborLoader`` yields.

        Rows are ``(node, hop)`` pairs laid out in PyG's hop order: hop 0 = the seeds (local ids
        ``0..n_0-1``), then for each hop ``h = 1..L`` the ``n_h`` nodes within ``h`` hops (local ids
        ``0..n_h-1`` again). Hop ``h``'s edges (the block of hop ``h``, i.e. ``blocks[L-h]``) run from the
        hop-``h`` rows of their sources to the hop-``h-1`` rows of their destinations and are listed hop by
        hop (edges into the seeds first, grouped by destination), so every row has in-edges from one hop
        only, every sampled edge of every block is there once, and ``trim_to_layer`` is exact: a stock
        ``torch_geometric.nn`` model gives the seeds the same outputs with and without
        ``num_sampled_nodes_per_hop``/``num_sampled_edges_per_hop``.

        Returns a ``Data`` with ``x`` ``[sum n_h, F]`` (row features, ``batch.x`` gathered by row),
        ``edge_index`` int64 ``[2, E]`` (row 0 source, row 1 destination), ``y`` — the seeds' labels
        ``[batch_size]`` only (PyG gives labels of every sampled node; take ``out[:data.batch_size]``) —,
        ``n_id`` (global id of each row; a node reached at several hops appears once per hop),
        ``batch_size``, ``num_sampled_nodes`` ``[n_0, ..., n_L]`` and ``num_sampled_edges`` ``[e_1, ..., e_L]``.
        All tensors are on the batch's device and fresh (they stay valid after the loader moves on).

        Raises:
            InputError: torch_geometric is not installed.
        """
        try:
            from torch_geometric.data import Data
        except ImportError:
            from ..store.errors import InputError

            raise InputError('Batch.to_pyg() needs torch_geometric, which is not installed; install it with '
                             'pip install "diskgraph[pyg]"') from None
        hops = self.blocks[::-1]  # hop 1 (into the seeds) first
        device = self.x.device
        sizes = [int(hops[0].num_dst)] + [int(b.num_src) for b in hops]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        rows = torch.cat([torch.arange(n, dtype=torch.int64) for n in sizes])
        src = [b.indices.to(device) + offsets[h] for h, b in enumerate(hops, 1)]
        dst = [b.dst_index.to(device) + offsets[h - 1] for h, b in enumerate(hops, 1)]
        edge_index = torch.stack([torch.cat(src), torch.cat(dst)])
        x = self.x.index_select(0, rows.to(device))
        n_id = torch.from_numpy(np.asarray(self.input_nodes, dtype=np.int64)[rows.numpy()]).to(device)
        return Data(x=x, edge_index=edge_index, y=self.y, n_id=n_id, batch_size=self.batch_size,
                    num_sampled_nodes=sizes, num_sampled_edges=[b.num_edges for b in hops])
