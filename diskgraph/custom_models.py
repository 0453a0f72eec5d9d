"""Your own model from the CLI and the daemon: ``--model package.module:Class`` or ``--model path/to/file.py:Class``.

A value without ``:`` names a built-in model (:data:`~diskgraph.models.MODELS`). With ``:``, the part before the
last ``:`` is a module to import (``torch_geometric.nn``) or, when it ends in ``.py`` or contains ``/``, a Python
file (imported with ``importlib.util.spec_from_file_location``; the daemon requires it inside its allowed roots);
the part after it is the class (``Outer.Inner`` allowed). The class is built as::

    Class(in_channels=F, hidden_channels=H, out_channels=C, num_layers=L, [dropout=D], [heads=K])

(PyG's argument names: ``F`` the feature width, ``H`` ``--hidden``, ``C`` the classes, ``L`` the plan's hops);
``dropout`` (``--dropout``) and ``heads`` (``--heads``) are passed only when the constructor names them as
parameters. It must be a ``torch.nn.Module``.

How it is called (:func:`diskgraph.pipeline.trainer.model_outputs`):

* by default as a PyG model on ``batch.to_pyg()``: ``model(x, edge_index)[:batch_size]`` are the seeds' logits;
  when ``forward`` takes ``num_sampled_nodes_per_hop`` and ``num_sampled_edges_per_hop`` (PyG's ``BasicGNN``
  models do) they are passed too, so ``trim_to_layer`` skips the rows a layer does not need (exact);
* a class with the attribute ``diskgraph_input = "blocks"`` is called as the built-in models are,
  ``model(batch.blocks, batch.x)``, and returns the seeds' logits.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys

from .store.errors import InputError

BLOCKS, PYG, PYG_TRIM = "blocks", "pyg", "pyg-trim"
"""How the trainer calls a model (its ``_diskgraph_call`` attribute): on blocks, on ``to_pyg()``, and on ``to_pyg()``
with the per-hop sizes for ``trim_to_layer``."""
EXTRA_ARGS = ("dropout", "heads")
"""Constructor arguments passed besides the four PyG ones, when the constructor names them."""
_TRIM_ARGS = ("num_sampled_nodes_per_hop", "num_sampled_edges_per_hop")


def is_custom(model: str) -> bool:
    """True for ``module:Class`` / ``file.py:Class``, False for a built-in name."""
    return ":" in str(model)


def split_spec(model: str) -> tuple[str, str, bool]:
    """``(module or file, class path, is_file)`` of a ``module:Class`` / ``file.py:Class`` value.

    Raises:
        InputError: the value is not of that form.
    """
    where, _, cls = str(model).rpartition(":")
    if not where or not cls or not all(part.isidentifier() for part in cls.split(".")):
        raise InputError(f"--model {model!r} is neither a built-in model (sage, gcn, gat) nor of the form "
                         "package.module:Class or path/to/file.py:Class")
    is_file = where.endswith(".py") or "/" in where or os.sep in where
    if not is_file and not all(part.isidentifier() for part in where.split(".")):
        raise InputError(f"--model {model!r}: {where!r} is not a module name (package.module) or a .py file path")
    return where, cls, is_file


def check_model_name(model: str) -> str:
    """``model`` when it is a built-in name or of the custom form (syntax only; nothing is imported).

    Raises:
        InputError: anything else.
    """
    from .models import MODELS

    if is_custom(model):
        split_spec(model)
        return model
    if str(model).lower() not in MODELS:
        raise InputError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}, or give your own as "
                         "package.module:Class or path/to/file.py:Class")
    return model


def model_label(model: str) -> str:
    """A name for run directories: the built-in name, or the class name of a custom model."""
    return str(model).rpartition(":")[2].rpartition(".")[2] if is_custom(model) else str(model)


def load_class(model: str):
    """Import the class ``model`` names.

    Raises:
        InputError: no such module or file, no such class, or not a ``torch.nn.Module`` subclass.
    """
    from torch import nn

    where, cls_path, is_file = split_spec(model)
    if is_file:
        path = os.path.abspath(where)
        if not os.path.isfile(path):
            raise InputError(f"--model {model!r}: the file {where} does not exist; check the path")
        name = "diskgraph_user_model_" + hashlib.sha1(path.encode()).hexdigest()[:12]
        try:
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        except Exception as e:  # noqa: BLE001 - a user's file can raise anything
            sys.modules.pop(name, None)
            raise InputError(f"--model {model!r}: importing {where} failed ({_first_line(e)}); fix the file") from None
    else:
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as e:
            raise InputError(f"--model {model!r}: no module named {e.name or where!r} can be imported; install it or "
                             "check the name") from None
        except Exception as e:  # noqa: BLE001
            raise InputError(f"--model {model!r}: importing {where} failed ({_first_line(e)})") from None
    obj = module
    for part in cls_path.split("."):
        if not hasattr(obj, part):
            raise InputError(f"--model {model!r}: {where} has no class {cls_path!r}; check the name after ':'")
        obj = getattr(obj, part)
    if not (inspect.isclass(obj) and issubclass(obj, nn.Module)):
        raise InputError(f"--model {model!r}: {cls_path} is not a torch.nn.Module subclass; name a model class")
    return obj


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def _parameters(fn) -> set[str]:
    try:
        return {p.name for p in inspect.signature(fn).parameters.values()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    except (TypeError, ValueError):
        return set()


def call_style(model) -> str:
    """How the trainer calls ``model``: :data:`BLOCKS` when its class says ``diskgraph_input = "blocks"`` (the
    built-in models do), else as a PyG model, :data:`PYG_TRIM` when ``forward`` takes the per-hop sizes, :data:`PYG`
    otherwise."""
    if getattr(type(model), "diskgraph_input", None) == BLOCKS:
        return BLOCKS
    return PYG_TRIM if set(_TRIM_ARGS) <= _parameters(model.forward) else PYG


def build_custom_model(model: str, in_channels: int, hidden_channels: int, out_channels: int, num_layers: int,
                       dropout: float = 0.5, heads: int = 4):
    """Build the class ``model`` names (see the module docstring); returns the module with ``_diskgraph_call``
    (how the trainer calls it) and ``_diskgraph_config`` (what ``best_model.json`` records) set.

    Raises:
        InputError: see :func:`load_class`, or the constructor failed.
    """
    cls = load_class(model)
    kwargs = {"in_channels": int(in_channels), "hidden_channels": int(hidden_channels),
              "out_channels": int(out_channels), "num_layers": int(num_layers)}
    named = _parameters(cls.__init__)
    extras = {"dropout": float(dropout), "heads": int(heads)}
    kwargs.update({k: v for k, v in extras.items() if k in named})
    try:
        net = cls(**kwargs)
    except Exception as e:  # noqa: BLE001 - a user's constructor can raise anything
        shown = ", ".join(f"{k}={v}" for k, v in kwargs.items())
        raise InputError(f"--model {model!r}: {cls.__name__}({shown}) failed ({_first_line(e)}); the class must take "
                         "these keyword arguments") from None
    call = net._diskgraph_call = call_style(net)
    net._diskgraph_config = {"custom": str(model), "input": call, **kwargs}
    return net
