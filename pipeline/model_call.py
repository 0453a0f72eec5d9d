"""How the trainer calls a model on a minibatch: the built-in models on the blocks, a PyG model on an edge index."""

from __future__ import annotations

import torch


def model_outputs(net: torch.nn.Module, batch) -> torch.Tensor:
    """The seeds' outputs ``[batch_size, C]`` of ``net`` (or its ``DistributedDataParallel`` wrapper) on ``batch``.

    A model whose class has ``diskgraph_input = "blocks"`` (the built-in models do) is called on the blocks,
    ``net(batch.blocks, batch.x)``, and returns the seeds' outputs. Any other module is a PyG model: it is called on
    ``batch.to_pyg()`` as ``net(x, edge_index)`` (plus ``num_sampled_nodes_per_hop`` / ``num_sampled_edges_per_hop``
    when its ``forward`` takes them) and its first ``batch_size`` rows are returned
    (:func:`diskgraph.custom_models.call_style`). A link-prediction model
    (:class:`~diskgraph.link_models.LinkModel`) is called as ``net(batch)`` and returns its pairs' scores.
    """
    inner = net.module if isinstance(net, torch.nn.parallel.DistributedDataParallel) else net
    if getattr(inner, "link_model", False):  # diskgraph.link_models.LinkModel: the pairs' scores [P, 1 + K]
        return net(batch)
    call = getattr(inner, "_diskgraph_call", None)
    if call is None:
        from ..custom_models import call_style

        call = inner._diskgraph_call = call_style(inner)
    if call == "blocks":
        return net(batch.blocks, batch.x)
    data = batch.to_pyg()
    if call == "pyg-trim":
        out = net(data.x, data.edge_index, num_sampled_nodes_per_hop=data.num_sampled_nodes,
                  num_sampled_edges_per_hop=data.num_sampled_edges)
    else:
        out = net(data.x, data.edge_index)
    return out[: data.batch_size]
