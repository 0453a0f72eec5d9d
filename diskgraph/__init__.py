"""diskgraph: train graph neural networks on graphs larger than memory.

Public API (more arrives with the sampler, packer and trainer):

* :func:`open_dataset` — open a dataset directory (:class:`diskgraph.store.dataset.Dataset`).
* :func:`import_dataset`, :class:`ImportOptions` — build one from raw inputs.
* :func:`generate_dataset` — a synthetic power-law graph with a planted signal.
* :class:`InputError` — bad input, reported as one sentence.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .store.dataset import Dataset, open_dataset
from .store.errors import FormatError, InputError
from .store.importer import ImportOptions, import_dataset

__all__ = ["Dataset", "FormatError", "ImportOptions", "InputError", "generate_dataset", "import_dataset",
           "open_dataset", "__version__"]


def generate_dataset(*args, **kwargs):
    """Write a synthetic dataset; see :func:`diskgraph.generate.generate_dataset`."""
    from .generate import generate_dataset as _generate

    return _generate(*args, **kwargs)
