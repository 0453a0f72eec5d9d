"""The layers of :mod:`diskgraph.models`, split for layer-wise inference over the full graph
(:mod:`diskgraph.pipeline.layerwise`).

Each trained layer becomes a program of four steps — ``prepare`` (node-wise: the rows the layer gathers, ``G``,
and the rows a destination reads of itself, ``S``), ``init_state``, ``add`` (combine one source slice's edges into
the destinations' accumulators) and ``finish`` — that compute, on the full graph, exactly what the layer computes on
a block holding every in-neighbor (fanout -1): the tests compare them with the layer's own ``forward`` on such a
block in float64. Which rows a layer gathers is chosen to keep ``G`` narrow, as ``forward`` chooses when to project:

* **sage**: ``G = x`` and ``out = W_self x_v + W_neigh (sum G / deg) + b`` when ``in <= out``; otherwise
  ``G = W_neigh x``, ``S = W_self x + b`` and ``out = S_v + sum G / deg``.
* **gcn**: ``G = x / sqrt(d_out)`` (times ``W`` when ``in > out``), ``d_out`` = out-degree + 1 (the self loop);
  ``out = (sum G + G_v) / sqrt(d_in) (times W when in <= out) + b``, ``d_in`` = in-degree + 1.
* **gat**: ``G = [z, a_src . z]`` with ``z = W x`` per head, ``S = a_dst . z``; the attention softmax over
  ``N(v) + {v}`` is accumulated slice by slice as an online softmax (a running maximum per destination and head,
  the sums rescaled when it grows), the self loop added at ``finish``.

All arithmetic is float32 (the model's); sums run in a different order than ``forward``'s, so outputs agree to
float32 rounding.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .models import BlockGNN, GATConv, GCNConv, SAGEConv
from .native import layerwise as kernels

GAT_EDGE_CHUNK = 1 << 18
"""Edges of one GAT combine step, at most (their gathered rows and messages are held at once)."""


class _SumProgram:
    """Shared by SAGE and GCN: the accumulator is the sum of the gathered rows over the in-neighbors."""

    self_in_state = False

    def init_state(self, n: int, s_dst: torch.Tensor | None) -> torch.Tensor:
        return torch.zeros((n, self.gather_width), dtype=torch.float32)

    def add(self, state: torch.Tensor, dst: np.ndarray, src: np.ndarray, g, threads: int) -> None:
        if isinstance(g, np.ndarray):
            kernels.sum_rows_into(state.numpy(), dst, src, g, threads)
        else:  # the memory-mapped baseline's chunks
            kernels.sum_rows_into_chunked(state.numpy(), dst, src, g.chunks, g.chunk_rows, threads)


class SAGEProgram(_SumProgram):
    """GraphSAGE (mean) on the full graph; see the module docstring."""

    needs_out_degree = False

    def __init__(self, conv: SAGEConv):
        self.conv = conv
        self.project = conv.in_dim > conv.out_dim
        self.identity_prepare = not self.project
        self.needs_gather_dst = not self.project  # W_self x_v from the gathered input; else S holds it
        self.gather_width = conv.out_dim if self.project else conv.in_dim
        self.self_width = conv.out_dim if self.project else 0
        self.state_width = self.gather_width
        self.out_width = conv.out_dim

    @torch.no_grad()
    def prepare(self, h, out_degree):
        if not self.project:
            return h, None
        return self.conv.lin_neigh(h), self.conv.lin_self(h) + self.conv.bias

    @torch.no_grad()
    def finish(self, state, g_dst, s_dst, in_degree):
        mean = state / in_degree.clamp(min=1).unsqueeze(-1)
        if self.project:
            return s_dst + mean
        return self.conv.lin_self(g_dst) + self.conv.lin_neigh(mean) + self.conv.bias


class GCNProgram(_SumProgram):
    """GCN (symmetric normalisation with self loops) on the full graph; see the module docstring."""

    needs_out_degree = True
    needs_gather_dst = True
    identity_prepare = False
    self_width = 0

    def __init__(self, conv: GCNConv):
        self.conv = conv
        self.project = conv.in_dim > conv.out_dim
        self.gather_width = conv.out_dim if self.project else conv.in_dim
        self.state_width = self.gather_width
        self.out_width = conv.out_dim

    @torch.no_grad()
    def prepare(self, h, out_degree):
        g = h * (out_degree.to(h.dtype) + 1).rsqrt().unsqueeze(-1)
        return (g @ self.conv.weight if self.project else g), None

    @torch.no_grad()
    def finish(self, state, g_dst, s_dst, in_degree):
        out = state + g_dst
        if not self.project:
            out = out @ self.conv.weight
        return out * (in_degree + 1).rsqrt().unsqueeze(-1) + self.conv.bias


class GATProgram:
    """Multi-head GAT on the full graph with an online softmax; see the module docstring.

    State columns: ``[m (H) | den (H) | num (H*C) | s_dst (H)]``.
    """

    needs_out_degree = False
    needs_gather_dst = True
    identity_prepare = False
    self_in_state = True

    def __init__(self, conv: GATConv):
        self.conv = conv
        self.heads, self.channels = conv.heads, conv.out_dim
        hc = self.heads * self.channels
        self.gather_width = hc + self.heads
        self.self_width = self.heads
        self.state_width = 3 * self.heads + hc
        self.out_width = hc if conv.concat else self.channels

    def _cols(self, state):
        H, hc = self.heads, self.heads * self.channels
        return state[:, :H], state[:, H:2 * H], state[:, 2 * H:2 * H + hc], state[:, 2 * H + hc:]

    @torch.no_grad()
    def prepare(self, h, out_degree):
        c = self.conv
        z = c.lin(h).view(-1, self.heads, self.channels)
        s_src = (z * c.att_src).sum(-1)
        s_dst = (z * c.att_dst).sum(-1)
        return torch.cat([z.reshape(len(h), -1), s_src], dim=1), s_dst

    def init_state(self, n, s_dst):
        state = torch.zeros((n, self.state_width), dtype=torch.float32)
        m, _den, _num, sd = self._cols(state)
        m.fill_(-torch.inf)
        sd.copy_(s_dst)
        return state

    @torch.no_grad()
    def add(self, state, dst, src, g, threads):
        H, C = self.heads, self.channels
        hc = H * C
        m, den, num, s_dst = self._cols(state)
        for a in range(0, len(dst), GAT_EDGE_CHUNK):
            d = torch.from_numpy(dst[a:a + GAT_EDGE_CHUNK].astype(np.int64))
            idx = src[a:a + GAT_EDGE_CHUNK]
            rows = torch.from_numpy(np.ascontiguousarray(g[idx]) if isinstance(g, np.ndarray) else g.take(idx))
            z = rows[:, :hc].view(-1, H, C)
            e = F.leaky_relu(rows[:, hc:] + s_dst.index_select(0, d), self.conv.negative_slope)
            uniq, inv = torch.unique_consecutive(d, return_inverse=True)
            u = len(uniq)
            m_grp = torch.full((u, H), -torch.inf).scatter_reduce(0, inv.unsqueeze(-1).expand(-1, H), e, "amax")
            m_old = m.index_select(0, uniq)
            m_new = torch.maximum(m_old, m_grp)
            scale = torch.exp(m_old - m_new)                      # 0 where nothing was added yet
            p = torch.exp(e - m_new.index_select(0, inv))
            den_new = den.index_select(0, uniq) * scale + torch.zeros((u, H)).index_add_(0, inv, p)
            msg = torch.zeros((u, H, C)).index_add_(0, inv, z * p.unsqueeze(-1))
            num_new = num.index_select(0, uniq).view(u, H, C) * scale.unsqueeze(-1) + msg
            m.index_copy_(0, uniq, m_new)
            den.index_copy_(0, uniq, den_new)
            num.index_copy_(0, uniq, num_new.reshape(u, hc))

    @torch.no_grad()
    def finish(self, state, g_dst, s_dst, in_degree):
        H, C = self.heads, self.channels
        hc = H * C
        m, den, num, sd = self._cols(state)
        n = len(state)
        z = g_dst[:, :hc].view(n, H, C)
        e_self = F.leaky_relu(g_dst[:, hc:] + sd, self.conv.negative_slope)
        m_new = torch.maximum(m, e_self)
        scale = torch.exp(m - m_new)
        p_self = torch.exp(e_self - m_new)
        den_all = den * scale + p_self
        out = (num.view(n, H, C) * scale.unsqueeze(-1) + z * p_self.unsqueeze(-1)) / den_all.unsqueeze(-1)
        out = out.reshape(n, hc) if self.conv.concat else out.mean(dim=1)
        return out + self.conv.bias


def layer_programs(model: BlockGNN) -> list:
    """One program per layer of ``model`` (in layer order).

    Raises:
        TypeError: a layer of a kind this module does not know.
    """
    programs = []
    for layer in model.layers:
        if isinstance(layer, SAGEConv):
            programs.append(SAGEProgram(layer))
        elif isinstance(layer, GCNConv):
            programs.append(GCNProgram(layer))
        elif isinstance(layer, GATConv):
            programs.append(GATProgram(layer))
        else:
            raise TypeError(f"layer-wise inference does not know layers of type {type(layer).__name__}")
    return programs
