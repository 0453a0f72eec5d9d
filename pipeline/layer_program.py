"""What layer-wise inference (:mod:`diskgraph.pipeline.layerwise`) runs: one GNN layer split into a gather, a
combine and a finish (:class:`LayerProgram`, implemented per model in :mod:`diskgraph.layer_programs`), and the stop
check called between slices (:class:`StopCheck`)."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch


class LayerProgram(Protocol):
    """One GNN layer, split for layer-wise inference (implemented per model in :mod:`diskgraph.layer_programs`).

    Attributes:
        gather_width: floats per row of the gather table G.
        self_width: floats per row of the self table S (0: none).
        state_width: floats of accumulator per destination.
        out_width: floats per output row.
        needs_out_degree: whether :meth:`prepare` needs the nodes' out-degrees.
        needs_gather_dst: whether :meth:`finish` reads the destinations' own G rows (else it gets None).
        self_in_state: whether the destinations' S rows are needed while combining (GAT's destination scores):
            they are read with the partition and handed to :meth:`init_state`, not to :meth:`finish`.
        identity_prepare: whether :meth:`prepare` returns its input as G and no S (then the input table is
            gathered from directly, with no copy written).
    """

    gather_width: int
    self_width: int
    state_width: int
    out_width: int
    needs_out_degree: bool
    needs_gather_dst: bool
    self_in_state: bool
    identity_prepare: bool

    def prepare(self, h: torch.Tensor, out_degree: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(G rows, S rows or None)`` of the nodes whose layer input is ``h`` [n, in]."""

    def init_state(self, n: int, s_dst: torch.Tensor | None) -> torch.Tensor:
        """The accumulators of ``n`` destinations, ``[n, state_width]`` (``s_dst``: their S rows when
        ``self_in_state``)."""

    def add(self, state: torch.Tensor, dst: np.ndarray, src: np.ndarray, g: np.ndarray, threads: int) -> None:
        """Combine the edges ``src → dst`` (int32, local to the slice / partition, ``dst`` non-decreasing) of one
        slice ``g`` (float32 ``[rows, gather_width]``) into ``state``."""

    def finish(self, state: torch.Tensor, g_dst: torch.Tensor | None, s_dst: torch.Tensor | None,
               in_degree: torch.Tensor) -> torch.Tensor:
        """The layer's output ``[n, out_width]`` (before the activation) of ``n`` destinations."""


class StopCheck(Protocol):
    def __call__(self) -> None: ...
