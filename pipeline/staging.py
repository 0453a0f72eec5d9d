"""Reusable buffers between the loader's stages: the staging ring of cold extents and the pool of ``x`` buffers.

* :class:`StagingRing` — ``size`` aligned host buffers (4 KiB, for ``O_DIRECT``), each as large as the split's
  largest packed extent; page-locked in place on CUDA so the copy up is asynchronous. Each slot carries an event
  (CUDA): the assembler records it after queuing the slot's copy to the GPU, and the reader waits for it before
  reading the next extent into the slot — so the assembler never waits for the GPU, and a slot is reused only once
  its bytes are on the device.
* :class:`OutPool` — ``x`` buffers handed to the consumer, each with the event after which the consumer's queued
  work on it was done.
"""

from __future__ import annotations

import queue
from dataclasses import dataclass

import numpy as np
import torch

from ..store.direct_io import ALIGNMENT, aligned_empty
from ..store.progress import log
from .uva import RegisteredHostTensor, UVAError

GROWTH = 1.25
"""Reused buffers are sized to the split's largest minibatch; should one not fit, they grow by 1.25x."""

_warned = {"staging": False}


@dataclass
class Slot:
    """One staging buffer: an aligned numpy view (for the reader), a tensor of the same bytes, its page-lock (CUDA),
    and the event after which the GPU no longer reads it (None: free now)."""

    array: np.ndarray
    tensor: torch.Tensor
    pin: RegisteredHostTensor | None = None
    copied: object = None

    def wait_copied(self) -> None:
        """Block until the GPU has finished reading this buffer (the last copy queued from it)."""
        if self.copied is not None:
            self.copied.synchronize()
            self.copied = None


class StagingRing:
    """The cold extents' staging buffers of one loader (allocated on first use, freed by :meth:`free`).

    Args:
        nbytes: bytes of the largest extent (0: the split has no cold rows; no buffers are made).
        size: buffers in the ring.
        device: the compute device (CUDA: buffers are page-locked).
    """

    def __init__(self, nbytes: int, size: int, device: torch.device):
        self.nbytes, self.size, self.device = int(nbytes), int(size), device
        self.slots: list[Slot] = []
        self.free_slots: queue.Queue = queue.Queue()

    def prepare(self) -> None:
        """Allocate the buffers (once) and put every one in the free queue (at each epoch's start)."""
        if not self.slots and self.nbytes > 0:
            self.slots = [self._slot(max(self.nbytes, ALIGNMENT)) for _ in range(self.size)]
        self.free_slots = queue.Queue()
        for s in self.slots:
            self.free_slots.put(s)

    def _slot(self, size: int) -> Slot:
        arr = aligned_empty(size)
        t = torch.from_numpy(arr)
        pin = None
        if self.device.type == "cuda":
            try:  # lock the aligned buffer in place: exactly `size` bytes
                pin = RegisteredHostTensor(t, self.device, mapped=False)
            except UVAError as e:  # a pinned tensor instead (the allocator rounds its size up)
                if not _warned["staging"]:
                    _warned["staging"] = True
                    log.warning("cannot page-lock the staging buffers in place (%s); using pinned tensors", e)
                raw = torch.empty(size + ALIGNMENT, dtype=torch.uint8, pin_memory=True)
                off = (-raw.data_ptr()) % ALIGNMENT
                t = raw[off:off + size]
                arr = t.numpy()
            if arr.ctypes.data % ALIGNMENT:  # pragma: no cover - guarded by the offset above
                raise RuntimeError("pinned staging buffer is not 4096-byte aligned")
        return Slot(arr, t, pin)

    def free(self) -> None:
        """Release the buffers (and their page-locks)."""
        for s in self.slots:
            s.wait_copied()
            if s.pin is not None:
                s.pin.close()
        self.slots = []
        self.free_slots = queue.Queue()

    @property
    def allocated_bytes(self) -> int:
        return len(self.slots) * max(self.nbytes, 0)


@dataclass
class OutBuffer:
    """A reusable ``x`` buffer; ``released`` is the event after which its last consumer was done (CUDA)."""

    x: torch.Tensor | None = None
    released: object = None


class OutPool:
    """``count`` reusable ``[rows, F]`` float32 buffers on ``device`` (allocated on first use, grown when a batch does
    not fit)."""

    def __init__(self, count: int, feature_dim: int, device: torch.device, min_rows: int):
        self.buffers = [OutBuffer() for _ in range(count)]
        self.feature_dim, self.device, self.min_rows = int(feature_dim), device, int(min_rows)
        self.free: queue.Queue = queue.Queue()

    def prepare(self) -> None:
        self.free = queue.Queue()
        for b in self.buffers:
            self.free.put(b)

    def view(self, buf: OutBuffer, n: int) -> torch.Tensor:
        """``x`` ``[n, F]``: a view of ``buf`` (grown when too small), after its last consumer's work (CUDA)."""
        if self.device.type == "cuda" and buf.released is not None:
            torch.cuda.current_stream(self.device).wait_event(buf.released)
        if buf.x is None or buf.x.shape[0] < n:
            rows = max(n, self.min_rows) if buf.x is None else max(n, int(buf.x.shape[0] * GROWTH))
            buf.x = None
            buf.x = torch.empty((rows, self.feature_dim), dtype=torch.float32, device=self.device)
        return buf.x[:n]

    def release(self, buf: OutBuffer) -> None:
        """Return ``buf`` once the consumer's work queued on the current stream so far is done."""
        if self.device.type == "cuda":
            ev = torch.cuda.Event()
            ev.record(torch.cuda.current_stream(self.device))
            buf.released = ev
        self.free.put(buf)

    def drop(self) -> None:
        """Free the buffers' memory (they are re-made on next use)."""
        for b in self.buffers:
            b.x = None
            b.released = None


def grown(t: torch.Tensor | None, n: int, min_rows: int, feature_dim: int, dtype: torch.dtype,
          device: torch.device) -> torch.Tensor:
    """A ``[≥ n, F]`` tensor: ``t`` when large enough, else a new one (``min_rows`` at first, then 1.25x)."""
    if t is not None and t.shape[0] >= n:
        return t
    rows = max(n, min_rows) if t is None else max(n, int(t.shape[0] * GROWTH))
    return torch.empty((rows, feature_dim), dtype=dtype, device=device)
