"""GNN models on sampled blocks, in plain torch (no PyG or DGL needed).

A model takes the blocks of one minibatch in GNN-layer order and the input
features of the first block's sources, and returns the logits of the last
block's destinations (the seeds)::

    model = build_model("sage", in_dim=128, hidden=256, num_classes=47, num_layers=2)
    logits = model(blocks, x)        # x: [blocks[0].num_src, 128] -> [blocks[-1].num_dst, 47]

Layer ``l`` maps block ``l``'s sources to its destinations; the destinations
are the first ``num_dst`` sources, so ``h[:block.num_dst]`` are their own
features. Between layers: activation (ReLU; ELU for GAT) then dropout; none
after the last layer.

The layers, for a destination ``v`` with sampled in-neighbors ``N(v)`` (a
multiset: an edge sampled twice counts twice), ``x`` the layer's input:

* **sage** (GraphSAGE, mean aggregator; PyG ``SAGEConv`` / DGL ``SAGEConv('mean')``)::

      h_v = W_self x_v + W_neigh mean_{u in N(v)} x_u + b

  A destination with no sampled neighbor gets a zero neighbor term.

* **gcn** (DGL ``GraphConv(norm='both')`` on the block with one self loop
  ``v -> v`` added for every destination)::

      h_v = sum_{u in N(v) + {v}} x_u W / sqrt(d_out(u) * d_in(v)) + b
      d_in(v)  = |N(v)| + 1                       (sampled in-degree + the self loop)
      d_out(u) = #{edges of the block with source u} + (1 if u < num_dst else 0)

  Both degrees are of the sampled block with its self loops (as DGL computes
  them on a block), not of the full graph; every degree that occurs is >= 1.
  A neighbor sampled that is ``v`` itself stays an ordinary edge, next to the
  added self loop (what ``dgl.add_self_loop`` would give).

* **gat** (multi-head GAT, Veličković et al.; DGL ``GATConv`` / PyG ``GATConv``
  with ``add_self_loops``), per head ``k``::

      z_u = W^k x_u
      e_uv = LeakyReLU(a_src^k . z_u + a_dst^k . z_v, slope 0.2)
      alpha_uv = softmax of e_uv over u in N(v) + {v}     (one self loop per destination)
      h_v^k = sum_u dropout(alpha_uv) z_u

  Hidden layers concatenate the heads (each head has ``hidden // heads``
  channels, so a hidden layer is ``hidden`` wide, as PyG's ``models.GAT``;
  ``hidden`` must be divisible by ``heads``) and add a bias of ``hidden``; the
  output layer averages its ``heads`` heads of ``num_classes`` channels and
  adds a bias of ``num_classes``. The softmax subtracts the per-destination
  maximum (``scatter_reduce`` amax, detached) before ``exp``; attention dropout
  (probability = ``dropout``) drops normalized coefficients in training.

Aggregation is :meth:`Block.sum_neighbors <diskgraph.pipeline.blocks.Block.sum_neighbors>`:
on the CPU a CSR × dense product forward (no ``[E, F]`` message tensor) and
``index_select`` + ``index_add`` backward; on CUDA ``index_select`` over the
block's ``indices`` then ``index_add`` over its ``dst_index``. No Python loop
over nodes or edges. Nothing that depends on parameters is computed outside
``forward``.

Determinism: on the CPU each destination's sum runs over its edges in index
order for any thread count (checked with 1-8 threads in
``tests/diskgraph/test_models.py``), so the same inputs and parameters give
bit-identical logits and gradients run to run. On CUDA ``index_add`` uses
atomic adds, so float sums may differ in the last bits between runs (they
agree with the CPU to rounding).
"""

from __future__ import annotations

import operator
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .pipeline.blocks import Block
from .store.errors import InputError

MODELS = ("sage", "gcn", "gat")
"""The model names :func:`build_model` accepts (each with its cost terms in :data:`COSTS`)."""


def _gather_sum(block: Block, h: torch.Tensor) -> torch.Tensor:
    """``out[v] = sum_{u in N(v)} h[u]`` for the block's destinations (any trailing shape)."""
    return block.sum_neighbors(h)


def dropout(h: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``F.dropout``; on the CPU from a uniform mask, which is about 4x faster than torch's CPU ``bernoulli_``
    (5 vs 20 ms for a 7000 x 256 float32 tensor on 2 vCPUs). Seeded by the torch RNG like ``F.dropout``."""
    if not training or p == 0.0:
        return h
    if h.device.type != "cpu":
        return F.dropout(h, p, True)
    keep = (torch.rand_like(h) >= p).to(h.dtype)
    return h * keep * (1.0 / (1.0 - p))


def _check_device(block: Block, x: torch.Tensor) -> None:
    if block.indices.device != x.device:
        raise ValueError(f"the block is on {block.indices.device} but the features are on {x.device}; "
                         f"move the blocks with block.to(device)")


class SAGEConv(nn.Module):
    """GraphSAGE layer with the mean aggregator: ``W_self x_v + W_neigh mean_{u in N(v)} x_u + b``."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.lin_self = nn.Linear(in_dim, out_dim, bias=False)
        self.lin_neigh = nn.Linear(in_dim, out_dim, bias=False)
        self.bias = nn.Parameter(torch.empty(out_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        gain = nn.init.calculate_gain("relu")
        nn.init.xavier_uniform_(self.lin_self.weight, gain=gain)
        nn.init.xavier_uniform_(self.lin_neigh.weight, gain=gain)
        nn.init.zeros_(self.bias)

    def forward(self, block: Block, h: torch.Tensor) -> torch.Tensor:
        # Mean and projection commute: project first when that shrinks the messages.
        if self.in_dim > self.out_dim:
            neigh = _gather_sum(block, self.lin_neigh(h))
        else:
            neigh = self.lin_neigh(_gather_sum(block, h))
        deg = block.in_degree.to(neigh.dtype).clamp(min=1).unsqueeze(-1)
        return self.lin_self(h[: block.num_dst]) + neigh / deg + self.bias


class GCNConv(nn.Module):
    """Graph convolution with symmetric normalization on the block plus self loops (see the module docstring)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.weight = nn.Parameter(torch.empty(in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(out_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.weight)
        nn.init.zeros_(self.bias)

    @staticmethod
    def degrees(block: Block, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """``(d_out [num_src], d_in [num_dst])`` of the block with one self loop per destination."""
        # index_add_ into a tensor of the known size, not bincount: on CUDA bincount reads the largest index back to
        # size its output (a wait on the device). Integer counts, so the same values as bincount.
        idx = block.indices
        d_out = torch.zeros(block.num_src, dtype=idx.dtype, device=idx.device).index_add_(
            0, idx, torch.ones_like(idx)).to(dtype)
        d_out[: block.num_dst] += 1
        d_in = block.in_degree.to(dtype) + 1
        return d_out, d_in

    def forward(self, block: Block, h: torch.Tensor) -> torch.Tensor:
        nd = block.num_dst
        d_out, d_in = self.degrees(block, h.dtype)
        # Every source that sends a message has d_out >= 1; clamp only guards sources that send none.
        h = h * d_out.clamp(min=1).rsqrt().unsqueeze(-1)
        if self.in_dim > self.out_dim:
            h = h @ self.weight
            out = _gather_sum(block, h) + h[:nd]
        else:
            out = (_gather_sum(block, h) + h[:nd]) @ self.weight
        return out * d_in.rsqrt().unsqueeze(-1) + self.bias


class GATConv(nn.Module):
    """Multi-head graph attention over the sampled in-neighbors plus a self loop (see the module docstring).

    Output: ``[num_dst, heads * out_dim]`` when ``concat``, else ``[num_dst, out_dim]`` (mean of the heads).
    """

    def __init__(self, in_dim: int, out_dim: int, heads: int, concat: bool, attn_dropout: float = 0.0,
                 negative_slope: float = 0.2):
        super().__init__()
        self.in_dim, self.out_dim, self.heads, self.concat = in_dim, out_dim, heads, concat
        self.attn_dropout, self.negative_slope = attn_dropout, negative_slope
        self.lin = nn.Linear(in_dim, heads * out_dim, bias=False)
        self.att_src = nn.Parameter(torch.empty(1, heads, out_dim))
        self.att_dst = nn.Parameter(torch.empty(1, heads, out_dim))
        self.bias = nn.Parameter(torch.empty(heads * out_dim if concat else out_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        gain = nn.init.calculate_gain("relu")
        nn.init.xavier_normal_(self.lin.weight, gain=gain)
        nn.init.xavier_normal_(self.att_src, gain=gain)
        nn.init.xavier_normal_(self.att_dst, gain=gain)
        nn.init.zeros_(self.bias)

    def forward(self, block: Block, h: torch.Tensor) -> torch.Tensor:
        nd, H, C = block.num_dst, self.heads, self.out_dim
        z = self.lin(h).view(-1, H, C)                       # [num_src, H, C]
        z_dst = z[:nd]
        s_src = (z * self.att_src).sum(-1)                   # [num_src, H]
        s_dst = (z_dst * self.att_dst).sum(-1)               # [num_dst, H]
        e = F.leaky_relu(s_src.index_select(0, block.indices) + s_dst.index_select(0, block.dst_index),
                         self.negative_slope)               # [E, H]
        e_self = F.leaky_relu(s_src[:nd] + s_dst, self.negative_slope)  # [num_dst, H]
        # Segment softmax over N(v) + {v}; the self loop makes every segment non-empty.
        with torch.no_grad():
            m = e_self.detach().clone()
            m.scatter_reduce_(0, block.dst_index.unsqueeze(-1).expand(-1, H), e.detach(), "amax")
        p = torch.exp(e - m.index_select(0, block.dst_index))
        p_self = torch.exp(e_self - m)
        denom = p_self + p.new_zeros((nd, H)).index_add(0, block.dst_index, p)
        alpha = p / denom.index_select(0, block.dst_index)
        alpha_self = p_self / denom
        if self.training and self.attn_dropout > 0:
            alpha = dropout(alpha, self.attn_dropout, True)
            alpha_self = dropout(alpha_self, self.attn_dropout, True)
        msg = z.index_select(0, block.indices) * alpha.unsqueeze(-1)  # [E, H, C]
        out = z.new_zeros((nd, H, C)).index_add(0, block.dst_index, msg) + z_dst * alpha_self.unsqueeze(-1)
        out = out.reshape(nd, H * C) if self.concat else out.mean(dim=1)
        return out + self.bias


class BlockGNN(nn.Module):
    """A stack of block layers with activation and dropout in between (none after the last).

    Attributes:
        name: the model name (``sage``, ``gcn`` or ``gat``).
        layers: one layer per block.
        num_layers: how many blocks :meth:`forward` expects.
        config: the :func:`build_model` arguments that make this model again (``None`` when built directly).
    """

    diskgraph_input = "blocks"
    """The trainer calls it as ``model(batch.blocks, batch.x)`` (:func:`diskgraph.custom_models.call_style`)."""

    def __init__(self, name: str, layers: list[nn.Module], dropout: float, activation):
        super().__init__()
        self.name = name
        self.layers = nn.ModuleList(layers)
        self.dropout = dropout
        self.activation = activation
        self.config: dict | None = None

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def reset_parameters(self) -> None:
        for layer in self.layers:
            layer.reset_parameters()

    def forward(self, blocks: list[Block], x: torch.Tensor) -> torch.Tensor:
        """Logits ``[blocks[-1].num_dst, num_classes]`` from input features ``x [blocks[0].num_src, in_dim]``."""
        return self._run(blocks, x, len(self.layers))

    def _run(self, blocks: list[Block], x: torch.Tensor, upto: int) -> torch.Tensor:
        """Layers ``1..upto`` on blocks ``0..upto-1``: activation (and dropout in training) after every layer but the
        model's last; no dropout after layer ``upto`` (its output is returned)."""
        if len(blocks) != len(self.layers):
            raise ValueError(f"this {self.name} model has {len(self.layers)} layers but got {len(blocks)} blocks; "
                             f"sample with as many hops as layers")
        if x.dim() != 2 or x.shape[0] != blocks[0].num_src:
            raise ValueError(f"x has shape {tuple(x.shape)} but the first block has {blocks[0].num_src} source "
                             f"nodes; x must be [num_src, in_dim]")
        h = x
        last = len(self.layers) - 1
        for i in range(upto):
            block = blocks[i]
            if h.shape[0] != block.num_src:
                raise ValueError(f"block {i} has {block.num_src} source nodes but the previous block has "
                                 f"{h.shape[0]} destinations; the blocks must chain")
            _check_device(block, h)
            h = self.layers[i](block, h)
            if i != last:
                h = self.activation(h)
                if i != upto - 1:
                    h = dropout(h, self.dropout, self.training)
        return h

    def embed(self, blocks: list[Block], x: torch.Tensor, layer: int) -> torch.Tensor:
        """The output of GNN layer ``layer`` (1-based) for the seeds: ``[blocks[-1].num_dst, width of that layer]``.

        Layers ``1..layer`` run on blocks ``0..layer-1`` as in :meth:`forward` (dropout only in training); the
        result is after the layer's activation when ``layer < num_layers`` (a hidden representation), the logits
        when ``layer == num_layers`` (then it equals :meth:`forward`). The seeds are the first
        ``blocks[-1].num_dst`` destinations of every block, so their rows are the first ones of layer ``layer``'s
        output.
        """
        n = len(self.layers)
        try:
            k = -1 if isinstance(layer, bool) else operator.index(layer)
        except TypeError:
            k = -1
        if not 1 <= k <= n:
            raise ValueError(f"layer {layer!r} is outside 1..{n} of this {self.name} model; pick one of its layers")
        return self._run(blocks, x, k)[: blocks[-1].num_dst]


def build_model(name: str, in_dim: int, hidden: int, num_classes: int, num_layers: int, dropout: float = 0.5,
                heads: int = 4) -> nn.Module:
    """A GNN of ``num_layers`` layers over sampled blocks.

    Args:
        name: ``sage`` (GraphSAGE, mean), ``gcn`` (GraphConv, symmetric norm with self loops) or ``gat``.
        in_dim: input feature width.
        hidden: width of every hidden layer (for ``gat``: all heads together, ``hidden // heads`` per head).
        num_classes: output width (logits).
        num_layers: GNN layers = blocks per minibatch (the plan's hops).
        dropout: dropout between layers; for ``gat`` also the attention dropout.
        heads: attention heads of every ``gat`` layer (ignored by the others).

    Raises:
        InputError: unknown name, or sizes that cannot make a model.
    """
    key = str(name).lower()
    if key not in MODELS:
        raise InputError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    for what, v in (("in_dim", in_dim), ("hidden", hidden), ("num_classes", num_classes),
                    ("num_layers", num_layers), ("heads", heads)):
        if int(v) < 1:
            raise InputError(f"model option {what} is {v}; it must be a positive integer")
    if not 0.0 <= float(dropout) < 1.0:
        raise InputError(f"model option dropout is {dropout}; it must be in [0, 1)")
    dims = [in_dim] + [hidden] * (num_layers - 1) + [num_classes]
    if key == "sage":
        layers = [SAGEConv(dims[i], dims[i + 1]) for i in range(num_layers)]
        act = F.relu
    elif key == "gcn":
        layers = [GCNConv(dims[i], dims[i + 1]) for i in range(num_layers)]
        act = F.relu
    else:
        if num_layers > 1 and hidden % heads:
            raise InputError(f"model option hidden ({hidden}) must be divisible by heads ({heads}) for gat")
        layers = []
        for i in range(num_layers):
            out_layer = i == num_layers - 1
            layers.append(GATConv(dims[i], num_classes if out_layer else hidden // heads, heads,
                                  concat=not out_layer, attn_dropout=dropout))
        act = F.elu
    model = BlockGNN(key, layers, float(dropout), act)
    model.config = {"name": key, "in_dim": int(in_dim), "hidden": int(hidden), "num_classes": int(num_classes),
                    "num_layers": int(num_layers), "dropout": float(dropout), "heads": int(heads)}
    return model


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (elements of every parameter that requires a gradient)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# -- what each model costs ---------------------------------------------------------------------------
# The capacity planner (:mod:`diskgraph.capacity`) prices a model step from these terms and its calibrated fit; a
# model in MODELS needs an entry in COSTS.

class LayerCost(NamedTuple):
    """How one model's layers are sized and what they cost, for the capacity planner.

    Attributes:
        out_width: ``(width, last, heads) -> int``, a layer's output width as :func:`build_model` makes it from the
            nominal width (``hidden``, or ``num_classes`` for the ``last`` layer).
        work: ``(ns, nd, e, din, dout, heads) -> (dense, edge_width, source_elements)`` of one layer over a block of
            ``ns`` sources, ``nd`` destinations and ``e`` sampled edges: multiply-adds of its dense products,
            elements per edge it moves, and elements of source-side tensors it makes.
        weight_matrices: weight matrices (each with a bias, as the planner counts) per layer.
    """

    out_width: Callable[[int, bool, int], int]
    work: Callable[[float, float, float, int, int, int], tuple[float, float, float]]
    weight_matrices: int = 1


def _same_width(width: int, last: bool, heads: int) -> int:
    return width


def _sage_work(ns, nd, e, din, dout, heads):
    # W_self on the destinations; W_neigh on the sources before the mean when that shrinks them, else after it
    return nd * din * dout + (ns if din > dout else nd) * din * dout, min(din, dout), ns * dout if din > dout else 0.0


def _gcn_work(ns, nd, e, din, dout, heads):
    # the normalised sources, then one product before or after the sum (whichever is narrower)
    return (ns if din > dout else nd) * din * dout, min(din, dout), ns * din + (ns * dout if din > dout else 0.0)


def _gat_width(width: int, last: bool, heads: int) -> int:
    return width * heads if last else (width // heads) * heads


def _gat_work(ns, nd, e, din, dout, heads):
    # z = W x on every source; per edge the message and its attention scores, softmax and dropout
    return ns * din * dout, dout + 6 * heads, ns * (dout + 2 * heads)


COSTS = {"sage": LayerCost(_same_width, _sage_work, weight_matrices=2), "gcn": LayerCost(_same_width, _gcn_work),
         "gat": LayerCost(_gat_width, _gat_work)}
"""Model name → its :class:`LayerCost`."""


def layer_dims(model: str, in_dim: int, hidden: int, classes: int, layers: int, heads: int = 4) -> list[tuple[int, int]]:
    """(input width, output width) of every layer as :func:`build_model` builds them."""
    dims = [in_dim] + [hidden] * (layers - 1) + [classes]
    width = COSTS[model].out_width
    return [(dims[i], width(dims[i + 1], i == layers - 1, heads)) for i in range(layers)]


def work_terms(model: str, sizes, edges, in_dim: int, hidden: int, classes: int, heads: int = 4) -> list[float]:
    """``[1, dense_flops, edge_elements, node_elements, activation_elements]`` of one minibatch of ``model``.

    ``sizes`` = ``[n_0, …, n_L]`` (seeds … inputs), ``edges`` = sampled edges per hop ``[e_1, …, e_L]``.
    GNN layer ``l`` (0-based) runs hop ``L - l``: sources ``n_{L-l}``, destinations ``n_{L-l-1}``. Node elements
    are the layer's source elements (:class:`LayerCost`) + ``4 × destinations × output width``.
    """
    L = len(edges)
    work = COSTS[model].work
    dense = edge_el = node_el = 0.0
    for l_, (din, dout) in enumerate(layer_dims(model, in_dim, hidden, classes, L, heads)):
        h = L - l_
        ns, nd, e = float(sizes[h]), float(sizes[h - 1]), float(edges[h - 1])
        d, w, src_el = work(ns, nd, e, din, dout, heads)
        dense += d
        edge_el += e * w
        node_el += src_el + 4 * nd * dout
    return [1.0, 2.0 * dense, edge_el, node_el, edge_el + node_el]


def parameter_estimate(model: str, in_dim: int, hidden: int, classes: int, layers: int, heads: int = 4) -> int:
    """Parameters of ``model`` as the planner counts them: per layer its weight matrices, each with a bias."""
    return sum(a * b + b for a, b in layer_dims(model, in_dim, hidden, classes, layers, heads)) * \
        COSTS[model].weight_matrices
