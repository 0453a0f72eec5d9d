"""diskgraph: train graph neural networks on graphs larger than memory.

Public API (more arrives with the sampler, packer and trainer):

* :func:`open_dataset` — open a dataset directory (:class:`diskgraph.store.dataset.Dataset`).
* :func:`import_dataset`, :class:`ImportOptions` — build one from raw inputs.
* :func:`generate_dataset` — a synthetic power-law graph with a planted signal.
* :func:`load_model`, :func:`predict`, :func:`embed` — a trained run's model, and its output for the graph's nodes
  (out of core; :mod:`diskgraph.inference`); :func:`score_pairs` — a link-prediction run's scores of node pairs
  (:mod:`diskgraph.link_scoring`).
* :class:`PackedLoader`, :class:`InMemoryLoader` — iterate a split's minibatches in your own loop
  (:mod:`diskgraph.loaders`; ``batch.to_pyg()`` for PyG models).
* :func:`fit`, :class:`Trainer` — diskgraph's training loop (pipelined, checkpointed, resumable mid-epoch) around your
  model, optimizer, loss, metrics and callbacks (:mod:`diskgraph.fitting`, :mod:`diskgraph.callbacks`);
  :class:`SumMetric`, :class:`WholeMetric` — your own metrics (:mod:`diskgraph.pipeline.tasks`).
* :func:`from_pyg`, :func:`from_ogb` — import a PyG ``Data`` or an OGB node-property-prediction directory.
* :class:`InputError` — bad input, reported as one sentence.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .store.dataset import Dataset, open_dataset
from .store.errors import FormatError, InputError
from .store.importer import ImportOptions, import_dataset

__all__ = ["Dataset", "FormatError", "ImportOptions", "InputError", "embed", "generate_dataset", "import_dataset",
           "load_model", "open_dataset", "predict", "__version__"]
__all__ += ["from_ogb", "from_pyg"]
__all__ += ["InMemoryLoader", "PackedLoader"]
__all__ += ["SumMetric", "Trainer", "WholeMetric", "callbacks", "fit"]
__all__ += ["score_pairs"]


def generate_dataset(*args, **kwargs):
    """Write a synthetic dataset; see :func:`diskgraph.generate.generate_dataset`."""
    from .generate import generate_dataset as _generate

    return _generate(*args, **kwargs)


def load_model(*args, **kwargs):
    """A training run's best model; see :func:`diskgraph.inference.load_model`."""
    from .inference import load_model as _load

    return _load(*args, **kwargs)


def predict(*args, **kwargs):
    """Logits and predictions for the graph's nodes; see :func:`diskgraph.inference.predict`."""
    from .inference import predict as _predict

    return _predict(*args, **kwargs)


def embed(*args, **kwargs):
    """One layer's node embeddings; see :func:`diskgraph.inference.embed`."""
    from .inference import embed as _embed

    return _embed(*args, **kwargs)


def score_pairs(*args, **kwargs):
    """A link-prediction run's scores (decoder logits, float32 [P]) of node pairs; see
    :func:`diskgraph.link_scoring.score_pairs`."""
    from .link_scoring import score_pairs as _score_pairs

    return _score_pairs(*args, **kwargs)


def from_pyg(*args, **kwargs):
    """Import a PyG ``Data`` as a dataset; see :func:`diskgraph.interop.from_pyg`."""
    from .interop import from_pyg as _from_pyg

    return _from_pyg(*args, **kwargs)


def from_ogb(*args, **kwargs):
    """Import an OGB node-property-prediction directory as a dataset; see :func:`diskgraph.interop.from_ogb`."""
    from .interop import from_ogb as _from_ogb

    return _from_ogb(*args, **kwargs)


def fit(*args, **kwargs):
    """Train your model with diskgraph's loop; see :func:`diskgraph.fitting.fit`."""
    from .fitting import fit as _fit

    return _fit(*args, **kwargs)


def __getattr__(name: str):
    """Lazy exports: the loaders, the trainer and metrics (they import torch)."""
    if name in ("PackedLoader", "InMemoryLoader"):
        from . import loaders

        return getattr(loaders, name)
    if name == "Trainer":
        from .fitting import Trainer

        return Trainer
    if name == "callbacks":
        import importlib

        return importlib.import_module(".callbacks", __name__)
    if name in ("SumMetric", "WholeMetric"):
        from .pipeline import tasks

        return getattr(tasks, name)
    raise AttributeError(f"module 'diskgraph' has no attribute {name!r}")
