"""Evaluation of a model on a split: its loss and every metric, over all ranks of a data-parallel run."""

from __future__ import annotations

import torch

from ..store.progress import Progress
from . import distributed as _dist
from .device_sums import DeviceSums
from .epoch_record import flatten_sums, metric_values, unflatten_sums
from .model_call import model_outputs
from .tasks import WholeMetric


@torch.no_grad()
def evaluate(trainer, split: str) -> dict:
    """``SPLIT_loss`` and ``SPLIT_NAME`` for each metric of ``trainer``'s current model on ``split`` (on every rank,
    over the minibatches of all ranks). Additive metrics are summed on the device and read once at the end; whole
    metrics (ROC-AUC, yours) see the split's outputs at once (kept on the host)."""
    loader = trainer.loaders[split]
    trainer.model.eval()
    sums = DeviceSums(trainer.device)
    total = 0
    keep = any(isinstance(m, WholeMetric) for m in trainer.metrics)
    outs, ys = [], []
    order = trainer.order(split, trainer.epoch)
    with Progress(f"evaluating {split}", len(order) if order is not None else None, "minibatches") as bar:
        for batch in loader.epoch(order):
            out = model_outputs(trainer.model, batch)
            n = batch.num_seeds
            sums.add(trainer.loss_fn(out, batch.y), n, trainer.metrics, out, batch.y)
            total += n
            if keep:
                outs.append(out.float().cpu())
                ys.append(batch.y.cpu())
            bar.update(1)
    loss_sum, metric_sums = sums.read()
    flat = flatten_sums(metric_sums)
    if trainer.dist is not None:
        keys = sorted(set().union(*_dist.all_gather(sorted(flat))))
        values = _dist.all_sum([loss_sum, total] + [flat.get(k, 0.0) for k in keys])
        loss_sum, total, flat = values[0], int(values[1]), dict(zip(keys, values[2:]))
        if keep:
            outs, ys = (sum(parts, []) for parts in zip(*_dist.all_gather((outs, ys))))
    out = {f"{split}_loss": loss_sum / max(total, 1), **metric_values(trainer.metrics, unflatten_sums(flat), split)}
    if keep and outs:
        all_out, all_y = torch.cat(outs), torch.cat(ys)
        for m in trainer.metrics:
            if isinstance(m, WholeMetric):
                out[f"{split}_{m.name}"] = m.value_of(all_out, all_y)
    return out
