"""Link prediction models: a node encoder (any model ``train`` takes) and a decoder that scores node pairs.

A link minibatch's ``batch.y`` is int64 ``[P, 2 + K]``: for each of its P positive edges, the positions (in the
minibatch's seeds) of its source, its destination and its K negative destinations. :class:`LinkModel` runs the
encoder on the minibatch (as ``train`` calls it: blocks, or ``to_pyg()`` for a PyG model), takes the seeds'
embeddings ``[num_seeds, H]`` and returns the scores ``[P, 1 + K]`` — column 0 the positive edge, columns 1..K its
negatives — which the loss and the ranking metrics (:mod:`diskgraph.pipeline.link_task`) use.

Decoders (``--decoder``):

* ``dot``: ``<h_u, h_v>``;
* ``distmult``: ``<h_u, r ⊙ h_v>`` with a learned diagonal relation ``r`` ``[H]`` (DistMult's bilinear form);
* ``mlp``: an MLP on the pair ``h_u ⊙ h_v`` (Hadamard), ``H → H → 1`` with ReLU.
"""

from __future__ import annotations

import torch
from torch import nn

from .store.errors import InputError

DECODERS = ("dot", "distmult", "mlp")


class PairDecoder(nn.Module):
    """Scores pairs of embeddings: ``forward(h_u [..., H], h_v [..., H]) -> [...]``."""

    def __init__(self, kind: str, dim: int):
        super().__init__()
        if kind not in DECODERS:
            raise InputError(f"--decoder {kind!r} is not one of {', '.join(DECODERS)}")
        self.kind = kind
        if kind == "distmult":
            self.relation = nn.Parameter(torch.ones(dim))
        elif kind == "mlp":
            self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 1))

    def forward(self, hu: torch.Tensor, hv: torch.Tensor) -> torch.Tensor:
        if self.kind == "dot":
            return (hu * hv).sum(-1)
        if self.kind == "distmult":
            return (hu * self.relation * hv).sum(-1)
        return self.mlp(hu * hv).squeeze(-1)


class LinkModel(nn.Module):
    """An encoder of nodes and a :class:`PairDecoder`; ``forward(batch)`` gives the scores ``[P, 1 + K]``.

    Args:
        encoder: a node model (built-in, or your own as ``--model`` builds it) with output width ``dim``.
        decoder: ``dot``, ``distmult`` or ``mlp``.
        dim: the embedding width (the encoder's output width).

    Attributes:
        config: what makes the model again (the encoder's config and the decoder).
    """

    link_model = True
    """The trainer calls it as ``model(batch)`` (:func:`diskgraph.pipeline.model_call.model_outputs`)."""

    def __init__(self, encoder: nn.Module, decoder: str, dim: int):
        super().__init__()
        self.encoder = encoder
        self.decoder = PairDecoder(decoder, dim)
        enc = getattr(encoder, "_diskgraph_config", None) or getattr(encoder, "config", None)
        self.config = {"link": {"decoder": decoder, "dim": int(dim)}, "encoder": enc}

    def embed(self, batch) -> torch.Tensor:
        """The seeds' embeddings ``[num_seeds, H]``."""
        from .pipeline.model_call import model_outputs

        return model_outputs(self.encoder, batch)

    def forward(self, batch) -> torch.Tensor:
        y = batch.y
        h = self.embed(batch)
        src, dst, neg = h[y[:, 0]], h[y[:, 1]], h[y[:, 2:]]
        pos = self.decoder(src, dst).unsqueeze(1)
        negs = self.decoder(src.unsqueeze(1).expand_as(neg), neg)
        return torch.cat([pos, negs], dim=1)
