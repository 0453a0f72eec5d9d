"""The files a training run leaves in its run directory: the checkpoint's format (torch serialization inside a
checksummed envelope) and the model card beside the best model.

Names: ``checkpoint.pt`` (the full training state, :func:`write_checkpoint_file` / :func:`read_checkpoint_file`),
``checkpoint.json`` (epoch and position, readable without torch), ``best_model.pt`` (the best model's
``state_dict``) and ``best_model.json`` (:func:`write_model_card`), ``metrics.jsonl`` (one line per epoch).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from ..store.checksums import DATA_CHECKSUM, data_checksum
from ..store.errors import InputError
from ..store.files import write_atomic

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_INFO_NAME = "checkpoint.json"
BEST_MODEL_NAME = "best_model.pt"
MODEL_CARD_NAME = "best_model.json"
"""Beside ``best_model.pt``: what makes the model again and what it was trained on (:func:`write_model_card`)."""
MODEL_CARD_FORMAT, MODEL_CARD_VERSION = "diskgraph.model", 1
METRICS_NAME = "metrics.jsonl"
CHECKPOINT_VERSION = 3
"""2: checkpoints record the run's identity (what it trains on and the model's options), resumes compare it, and the
file carries a checksum of its contents. 3: the partial epoch's metric sums are per metric (any task), and callbacks'
states are kept."""


def json_value(v):
    """``v`` as JSON would give it back (tuples as lists), so a recorded identity compares equal to a fresh one."""
    return json.loads(json.dumps(v))


def atomic_torch_save(obj, path: Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically (a temporary file renamed over it, the directory synced)."""
    write_atomic(path, lambda f: torch.save(obj, f), sync_dir=True)


def write_checkpoint_file(state: dict, path: Path) -> None:
    """Write ``state`` as a checkpoint: torch's serialization of it, with its checksum around it (torch's own format
    reads a damaged tensor back without a word, so the checksum is what catches one)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    atomic_torch_save({"format": "diskgraph.checkpoint", "version": CHECKPOINT_VERSION,
                       DATA_CHECKSUM: data_checksum(payload), "payload": payload}, path)


def read_checkpoint_file(path: Path) -> dict:
    """The state :func:`write_checkpoint_file` wrote to ``path``.

    Raises:
        InputError: the file cannot be read, is not a checkpoint of this version, or does not match its checksum.
    """
    def damaged(why) -> InputError:
        if isinstance(why, BaseException):
            why = f"{type(why).__name__}: {(str(why).splitlines() or [''])[0][:200]}"
        return InputError(f"checkpoint {path} cannot be read ({why}); it is damaged or was written by another version of "
                          "diskgraph, start a new run directory")

    try:
        envelope = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a damaged file fails inside torch's unpickler or zip reader in many ways
        raise damaged(e) from None
    if not isinstance(envelope, dict) or envelope.get("format") != "diskgraph.checkpoint":
        raise damaged("no diskgraph checkpoint envelope")
    if envelope.get("version") != CHECKPOINT_VERSION:
        raise InputError(f"checkpoint {path} has version {envelope.get('version')}, this diskgraph reads "
                         f"{CHECKPOINT_VERSION}; start a new run directory")
    payload = envelope.get("payload")
    if not isinstance(payload, bytes) or data_checksum(payload) != envelope.get(DATA_CHECKSUM):
        raise damaged(f"its contents do not match its {DATA_CHECKSUM} checksum")
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)
    except Exception as e:
        raise damaged(e) from None


def write_model_card(run_dir: Path, model: torch.nn.Module, identity: dict, info: dict, epoch: int,
                     monitor: str, value: float, task) -> None:
    """Write ``RUN_DIR/best_model.json`` for the ``best_model.pt`` just saved: the model's :func:`build_model` arguments
    (``model.config``), the run's identity (dataset contents, pack, options), the task (kind, output width), the epoch
    and the value of the metric that chose it (``best``; also ``val_acc`` for classification), and the XXH3 of the
    weights file, so inference rebuilds the model and refuses other weights or another dataset. The card carries a
    checksum of its own fields (as manifests do)."""
    from ..store.checksums import MANIFEST_CHECKSUM_FIELD, manifest_checksum

    weights = (run_dir / BEST_MODEL_NAME).read_bytes()
    card = {"format": MODEL_CARD_FORMAT, "format_version": MODEL_CARD_VERSION,
            "model": getattr(model, "_diskgraph_config", None) or getattr(model, "config", None),
            "identity": json_value(identity), "info": json_value(info),
            "task": {"kind": task.kind, "num_outputs": task.num_outputs},
            "epoch": int(epoch), "best": {"metric": monitor, "value": float(value)},
            **({"val_acc": float(value)} if monitor == "val_acc" else {}),
            "weights": {"file": BEST_MODEL_NAME, "bytes": len(weights), DATA_CHECKSUM: data_checksum(weights)}}
    card[MANIFEST_CHECKSUM_FIELD] = manifest_checksum(card)
    write_atomic(run_dir / MODEL_CARD_NAME, lambda f: json.dump(card, f, indent=2), binary=False)
