"""Callbacks for :func:`diskgraph.fit` / :class:`diskgraph.Trainer` (defined in :mod:`diskgraph.pipeline.callbacks`,
which says when each hook runs and how their state is checkpointed)."""

from .pipeline.callbacks import Callback, Checkpoint, EarlyStopping, LambdaCallback, TensorBoard

__all__ = ["Callback", "Checkpoint", "EarlyStopping", "LambdaCallback", "TensorBoard"]
