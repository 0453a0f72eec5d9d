"""The multi-level feature cache: a pack's hot tiers, resident where the compute stage reads them.

:class:`FeatureCache` holds the pack's hot tiers on a device — :class:`~diskgraph.pipeline.tiers.DeviceTier`
(``gpu``) and :class:`~diskgraph.pipeline.tiers.HostTier` (``host``, read in place by the GPU over UVA on CUDA);
each is a :class:`~diskgraph.pipeline.tiers.FeatureTier`. Cold rows are not cached: each loader reads them with its
own :class:`~diskgraph.pipeline.tiers.ColdExtentTier`. :func:`shared_cache` returns one cache per (pack, device), so
a run's train, val and test loaders share the tiers instead of loading them three times.
"""

from __future__ import annotations

import threading
import weakref

import torch

from ..store.packed import Pack
from .tiers import DeviceTier, FeatureTier, HostTier, torch_dtype


class FeatureCache:
    """The GPU and host tiers of a pack, on ``device``.

    Args:
        pack: the open pack.
        device: the compute device (``cpu`` or ``cuda[:i]``).
        uva: read the host tier in place from the GPU (CUDA only; falls back to a pinned copy when refused).

    Attributes:
        gpu, host: the tiers (:class:`~diskgraph.pipeline.tiers.DeviceTier`, :class:`~diskgraph.pipeline.tiers.HostTier`).
        feature_dim, dtype (logical name), storage_dtype (torch), row_bytes: the rows.
    """

    def __init__(self, pack: Pack, device: torch.device | str = "cpu", *, uva: bool = True):
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.feature_dim = pack.feature_dim
        self.dtype = pack.dtype
        self.storage_dtype = torch_dtype(pack.dtype)
        self.row_bytes = pack.row_bytes
        self.pack_path = pack.path
        self.gpu = DeviceTier(pack, self.device)
        self.host = HostTier(pack, self.device, uva=uva)
        self._closed = False

    @property
    def tiers(self) -> dict[str, FeatureTier]:
        """``{"gpu": ..., "host": ...}``."""
        return {"gpu": self.gpu, "host": self.host}

    def describe(self) -> dict:
        """Each tier's rows, bytes and mode (JSON-ready)."""
        return {name: t.describe() for name, t in self.tiers.items()}

    def close(self) -> None:
        """Release both tiers (unregisters the host tier's memory). Idempotent."""
        if not self._closed:
            self._closed = True
            self.host.close()
            self.gpu.close()

    def __enter__(self) -> "FeatureCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


_shared: "weakref.WeakKeyDictionary[Pack, dict[tuple[str, bool], FeatureCache]]" = weakref.WeakKeyDictionary()
_shared_lock = threading.Lock()


def shared_cache(pack: Pack, device: torch.device | str = "cpu", *, uva: bool = True) -> FeatureCache:
    """The one :class:`FeatureCache` of ``pack`` on ``device`` (built on first use, freed with the pack)."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    key = (str(dev), bool(uva))
    with _shared_lock:
        per_pack = _shared.setdefault(pack, {})
        cache = per_pack.get(key)
        if cache is None or cache._closed:
            cache = per_pack[key] = FeatureCache(pack, dev, uva=uva)
        return cache
