"""The multi-level feature cache: the pack's hot tiers, resident where the compute stage reads them.

One object per tier (GraphBolt style), each answering ``gather(slots)`` with
the rows at those slots on the compute device, in the storage dtype:

* :class:`DeviceTier` (``gpu``): the pack's GPU-tier rows as a device tensor;
  ``index_select`` with device indices. On a CPU run it is a plain CPU tensor.
* :class:`HostTier` (``host``): the pack's host-tier rows in page-aligned host
  memory. On CUDA the memory is registered in place (``cudaHostRegister``,
  mapped) and exposed as a CUDA tensor (:mod:`diskgraph.pipeline.uva`), so the
  GPU gathers the rows itself over PCIe with device indices — no CPU gather, no
  staging copy (``mode == "uva"``). If registration fails, the rows move to
  pinned memory and are gathered on the CPU into a pinned buffer that goes up
  with a non-blocking copy (``mode == "pinned-copy"``, one logged warning). On a
  CPU run the rows are a plain tensor gathered with ``index_select``
  (``mode == "cpu"``).

Cold rows are not cached: they come with each minibatch's packed extent (see
:mod:`diskgraph.pipeline.loader`). Rows stay in the stored dtype (float16 and
bfloat16 halve the cache's footprint); the loader converts to float32 after
assembly.

:func:`shared_cache` returns one cache per (pack, device), so a run's train,
val and test loaders share the tiers instead of loading them three times.
"""

from __future__ import annotations

import os
import threading
import weakref

import numpy as np
import torch

from ..store.direct_io import ALIGNMENT, aligned_empty, round_up
from ..store.errors import InputError
from ..store.packed import GPU, HOST, Pack
from ..store.progress import log
from .uva import RegisteredHostTensor, UVAError

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
"""Logical feature dtype → the torch dtype the cache holds rows in."""

UVA_ENV = "DISKGRAPH_UVA"
"""Set to ``0`` to skip the zero-copy host tier (use the pinned-copy path) on CUDA."""

_warned = {"uva": False}


def torch_dtype(dtype: str) -> torch.dtype:
    """The torch dtype of stored features of logical dtype ``dtype``."""
    try:
        return TORCH_DTYPES[dtype]
    except KeyError:
        raise InputError(f"features of dtype {dtype} cannot be loaded for training; re-import them as float32, "
                         "float16 or bfloat16") from None


def storage_tensor(rows: np.ndarray, dtype: str) -> torch.Tensor:
    """A zero-copy torch view of stored rows (bfloat16 ``uint16`` bit patterns become ``torch.bfloat16``)."""
    if dtype == "bfloat16":
        return torch.from_numpy(rows.view(np.int16)).view(torch.bfloat16)
    torch_dtype(dtype)
    return torch.from_numpy(rows)


def _warn_uva(why: str) -> None:
    if not _warned["uva"]:
        _warned["uva"] = True
        log.warning("the host feature cache cannot be read by the GPU in place (%s); gathering its rows on the CPU "
                    "into pinned memory and copying them up instead (correct, but slower and uses CPU time)", why)


class Tier:
    """One level of the cache.

    Attributes:
        name: ``gpu`` or ``host``; code: the pack index's tier code (2 or 1).
        rows, feature_dim: its shape; nbytes: its size.
        dtype: torch storage dtype of its rows.
        device: the compute device ``gather`` returns rows on.
        index_device: where ``gather`` wants its slot indices.
        mode: how it is held (``device``, ``uva``, ``pinned-copy``, ``cpu``; ``empty`` for a host tier of no
            rows on CUDA).
    """

    name = ""
    code = -1

    def __init__(self, pack: Pack, device: torch.device):
        self.device = device
        self.feature_dim = pack.feature_dim
        self.dtype = torch_dtype(pack.dtype)
        self.rows = int(pack.tier_info.get(self.name, {}).get("rows", 0))
        self.nbytes = self.rows * pack.row_bytes
        self.index_device = device
        self.mode = "cpu"

    def gather(self, slots: torch.Tensor) -> torch.Tensor:
        """Rows at ``slots`` (int64 on :attr:`index_device`), ``[k, F]`` of :attr:`dtype` on :attr:`device`."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the tier's memory."""

    def describe(self) -> dict:
        """Rows, bytes and mode (JSON-ready)."""
        return {"rows": self.rows, "bytes": self.nbytes, "mode": self.mode, "device": str(self.device)}


class DeviceTier(Tier):
    """The GPU tier: rows resident on the compute device (a CPU tensor on CPU runs)."""

    name = "gpu"
    code = GPU

    def __init__(self, pack: Pack, device: torch.device, slice_bytes: int = 64 << 20):
        super().__init__(pack, device)
        n, f = self.rows, self.feature_dim
        store = pack.storage_dtype
        if device.type == "cpu":
            host = aligned_empty(self.nbytes).view(store).reshape(n, f)
            for _ in pack.read_tier(self.name, host):  # (checked against the tier's checksum)
                pass
            self.data = storage_tensor(host, pack.dtype)
        else:
            self.mode = "device"
            self.data = torch.empty((n, f), dtype=self.dtype, device=device)
            step = max(1, slice_bytes // max(pack.row_bytes, 1))
            stage = aligned_empty(min(n, step) * pack.row_bytes).view(store).reshape(-1, f)
            for s, part in pack.read_tier(self.name, stage, step):
                self.data[s:s + part.shape[0]].copy_(storage_tensor(part, pack.dtype))
            if device.type == "cuda":
                torch.cuda.synchronize(device)

    def gather(self, slots: torch.Tensor) -> torch.Tensor:
        return self.data.index_select(0, slots)

    def close(self) -> None:
        self.data = torch.empty((0, self.feature_dim), dtype=self.dtype, device=self.data.device)


class HostTier(Tier):
    """The host tier: rows in page-aligned host memory, read by the GPU in place (UVA) on CUDA runs."""

    name = "host"
    code = HOST

    def __init__(self, pack: Pack, device: torch.device, uva: bool = True):
        super().__init__(pack, device)
        n, f = self.rows, self.feature_dim
        # whole pages of its own (registration locks whole pages; none is shared with another allocation)
        self._buffer = aligned_empty(round_up(self.nbytes, ALIGNMENT))[:self.nbytes].view(pack.storage_dtype).reshape(n, f)
        for _ in pack.read_tier(self.name, self._buffer):  # (checked against the tier's checksum)
            pass
        self.host = storage_tensor(self._buffer, pack.dtype)
        self.registered: RegisteredHostTensor | None = None
        self.pinned: torch.Tensor | None = None
        self.view: torch.Tensor | None = None  # the rows as a CUDA tensor (UVA)
        if device.type != "cuda":
            return
        if n == 0:
            self.mode = "empty"
            self.view = torch.empty((0, f), dtype=self.dtype, device=device)
            return
        why = None
        if not uva or os.environ.get(UVA_ENV, "1") == "0":
            why = f"disabled ({UVA_ENV}=0)" if uva else "disabled by the caller"
        else:
            try:
                self.registered = RegisteredHostTensor(self.host, device)
            except UVAError as e:
                why = str(e)
        if self.registered is not None:
            self.mode = "uva"
            self.view = self.registered.cuda
        else:
            _warn_uva(why)
            self.mode = "pinned-copy"
            self.index_device = torch.device("cpu")
            self.pinned = self.host.pin_memory()
            self.host = self.pinned
            self._buffer = None

    def gather(self, slots: torch.Tensor) -> torch.Tensor:
        if self.view is not None:  # uva (or an empty tier on CUDA)
            return self.view.index_select(0, slots)
        if self.mode == "pinned-copy":
            out = torch.empty((slots.shape[0], self.feature_dim), dtype=self.dtype, pin_memory=True)
            torch.index_select(self.pinned, 0, slots, out=out)
            return out.to(self.device, non_blocking=True)
        return self.host.index_select(0, slots)

    def close(self) -> None:
        self.view = None
        if self.registered is not None:
            reg, self.registered = self.registered, None
            reg.close()
        self.pinned = None
        self.host = torch.empty((0, self.feature_dim), dtype=self.dtype)
        self._buffer = None


class FeatureCache:
    """The GPU and host tiers of a pack, on ``device``.

    Args:
        pack: the open pack.
        device: the compute device (``cpu`` or ``cuda[:i]``).
        uva: read the host tier in place from the GPU (CUDA only; falls back to a pinned copy when refused).

    Attributes:
        gpu, host: the tiers (:class:`DeviceTier`, :class:`HostTier`).
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
    def tiers(self) -> dict[str, Tier]:
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
