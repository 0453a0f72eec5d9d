"""Zero-copy host memory for the GPU (UVA): register a host tensor in place and view it as a CUDA tensor.

PyTorch-Direct's idea: instead of gathering rows on the CPU and copying them
up, let GPU threads read the rows straight out of page-locked host memory over
PCIe. With unified virtual addressing every registered host page has a device
address, so a CUDA kernel such as ``index_select`` can gather from it directly.

How it is done here, with no compiled code of our own:

1. ``cudaHostRegister(ptr, nbytes, Portable | Mapped)`` page-locks the host
   tensor's memory *in place* (no copy; it stays where the CPU wrote it). It is
   called through ``torch.cuda.cudart()`` and its return code is checked.
2. ``cudaHostGetDevicePointer`` gives the device address of the mapping (equal
   to the host address on UVA systems, but asked for, not assumed). torch does
   not bind it, so it is called through ctypes on the ``libcudart`` torch has
   loaded (found in ``/proc/self/maps``), or on the driver's
   ``cuMemHostGetDevicePointer`` when no shared libcudart is loaded.
3. The address is wrapped as a CUDA tensor through ``__cuda_array_interface__``
   (``torch.as_tensor(obj, device=...)``): torch asks the CUDA runtime which
   device the pointer belongs to (registered host memory reports the device it
   was registered on) and makes a tensor that does not own the memory.

The registration steps run in a short-lived helper thread: a failed CUDA
runtime call leaves a per-thread "last error" that a later kernel-launch check
in the same thread would raise, so failures must not happen on the caller's
thread. Callers fall back to a pinned copy (see :mod:`diskgraph.pipeline.tiers`)
when :class:`UVAError` is raised.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

import torch

CUDA_HOST_REGISTER_PORTABLE = 0x01
CUDA_HOST_REGISTER_MAPPED = 0x02
REGISTER_FLAGS = CUDA_HOST_REGISTER_PORTABLE | CUDA_HOST_REGISTER_MAPPED
"""``cudaHostRegisterPortable | cudaHostRegisterMapped``: pinned for every context, mapped into the device's
address space."""


class UVAError(RuntimeError):
    """Host memory could not be registered or mapped for zero-copy GPU access."""


_libs: dict[str, ctypes.CDLL | None] = {}


def _loaded_library(fragment: str) -> str | None:
    """Path of an already loaded shared library whose file name contains ``fragment`` (Linux)."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.rsplit(None, 1)[-1] if "/" in line else ""
                name = path.rsplit("/", 1)[-1]
                if fragment in name and ".so" in name:
                    return path
    except OSError:
        pass
    return None


def runtime_library() -> ctypes.CDLL | None:
    """The CUDA runtime torch uses (``libcudart``), opened with ctypes; None when it is not a shared library."""
    if "cudart" not in _libs:
        lib = None
        path = _loaded_library("libcudart")
        for candidate in ([path] if path else []) + [ctypes.util.find_library("cudart")]:
            if not candidate:
                continue
            try:
                lib = ctypes.CDLL(candidate)
                lib.cudaHostGetDevicePointer.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p, ctypes.c_uint]
                lib.cudaHostGetDevicePointer.restype = ctypes.c_int
                lib.cudaGetLastError.argtypes = []
                lib.cudaGetLastError.restype = ctypes.c_int
                break
            except (OSError, AttributeError):
                lib = None
        _libs["cudart"] = lib
    return _libs["cudart"]


def driver_library() -> ctypes.CDLL | None:
    """The CUDA driver (``libcuda.so.1``) opened with ctypes, or None."""
    if "cuda" not in _libs:
        lib = None
        for candidate in ("libcuda.so.1", _loaded_library("libcuda.so"), ctypes.util.find_library("cuda")):
            if not candidate:
                continue
            try:
                lib = ctypes.CDLL(candidate)
                fn = getattr(lib, "cuMemHostGetDevicePointer_v2", None) or lib.cuMemHostGetDevicePointer
                fn.argtypes = [ctypes.POINTER(ctypes.c_uint64), ctypes.c_void_p, ctypes.c_uint]
                fn.restype = ctypes.c_int
                break
            except (OSError, AttributeError):
                lib = None
        _libs["cuda"] = lib
    return _libs["cuda"]


def _error_string(code: int) -> str:
    try:
        return str(torch.cuda.cudart().cudaGetErrorString(torch.cuda.cudart().cudaError(code)))
    except Exception:  # pragma: no cover - depends on the binding
        return f"cudaError {code}"


def _device_pointer(host_ptr: int) -> int:
    """The device address of registered, mapped host memory at ``host_ptr``."""
    why = []
    rt = runtime_library()
    if rt is not None:
        out = ctypes.c_void_p()
        err = rt.cudaHostGetDevicePointer(ctypes.byref(out), ctypes.c_void_p(host_ptr), 0)
        if err == 0 and out.value:
            return int(out.value)
        rt.cudaGetLastError()
        why.append(f"cudaHostGetDevicePointer returned {err}")
    drv = driver_library()
    if drv is not None:
        fn = getattr(drv, "cuMemHostGetDevicePointer_v2", None) or drv.cuMemHostGetDevicePointer
        out64 = ctypes.c_uint64()
        err = fn(ctypes.byref(out64), ctypes.c_void_p(host_ptr), 0)
        if err == 0 and out64.value:
            return int(out64.value)
        why.append(f"cuMemHostGetDevicePointer returned {err}")
    if not why:
        why.append("neither libcudart nor libcuda could be opened with ctypes")
    raise UVAError("no device address for the registered host memory (" + "; ".join(why) + ")")


def _in_helper_thread(fn):
    """Run ``fn()`` in a fresh thread (so a failed CUDA call's per-thread error state dies with it)."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:  # re-raised below, in the caller's thread
            box["error"] = e

    t = threading.Thread(target=run, name="diskgraph-uva-register", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


class _CudaArray:
    """A minimal ``__cuda_array_interface__`` (v3) exporter for a device address.

    The CUDA tensor torch builds from it holds it, and it holds ``owner`` (the host tensor), so the host
    memory outlives every view of it.
    """

    def __init__(self, ptr: int, nbytes: int, owner):
        self.__cuda_array_interface__ = {"shape": (int(nbytes),), "typestr": "|u1", "data": (int(ptr), False),
                                         "version": 3, "strides": None}
        self._owner = owner


class RegisteredHostTensor:
    """A contiguous CPU tensor page-locked in place and exposed as a CUDA tensor (zero-copy).

    With ``mapped=False`` the memory is only page-locked (``cudaHostRegisterPortable``): copies from it
    with ``non_blocking=True`` are then real asynchronous DMA (the loader's staging buffers), and
    ``cuda`` stays None.

    Attributes:
        host: the CPU tensor (kept alive while registered).
        device: the CUDA device it is mapped into.
        cuda: a CUDA tensor of the same shape and dtype aliasing ``host`` (kernels read host memory over PCIe).
        device_ptr: the device address of ``host`` (0 when not mapped).

    Pass page-aligned memory whose pages hold nothing else (CUDA locks whole pages; a page registered
    twice is refused).

    Raises:
        UVAError: registration, the device-address lookup, the wrap or the read-back check failed (nothing
            stays registered then).
    """

    def __init__(self, host: torch.Tensor, device: torch.device | str | int, mapped: bool = True):
        if host.device.type != "cpu" or not host.is_contiguous():
            raise UVAError("only contiguous CPU tensors can be registered")
        if host.numel() == 0:
            raise UVAError("an empty tensor cannot be registered")
        self.host = host
        self.device = torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
        if self.device.type != "cuda":
            raise UVAError(f"host memory is registered for a CUDA device, not {self.device}")
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.mapped = bool(mapped)
        self.nbytes = host.numel() * host.element_size()
        self._ptr = host.data_ptr()
        self._registered = False
        self.cuda: torch.Tensor | None = None
        try:
            self.device_ptr = _in_helper_thread(self._register)
        except UVAError:
            raise
        except Exception as e:  # no CUDA runtime binding, no device, …
            raise UVAError(f"cannot register host memory with CUDA: {e}") from e
        self._registered = True
        if not self.mapped:
            return
        try:
            flat = torch.as_tensor(_CudaArray(self.device_ptr, self.nbytes, host), device=self.device)
            if flat.device != self.device or flat.data_ptr() != self.device_ptr:
                raise UVAError(f"the wrapped tensor landed on {flat.device} at {flat.data_ptr():#x}, expected "
                               f"{self.device} at {self.device_ptr:#x}")
            self.cuda = flat.view(host.dtype).view(host.shape)
            # read a few bytes back through the mapping: a broken mapping fails here, not in training
            n = min(self.nbytes, 4096)
            if not torch.equal(flat[:n].cpu(), host.reshape(-1).view(torch.uint8)[:n]):
                raise UVAError("reading the registered memory through its device address gave other bytes")
        except Exception as e:
            self.cuda = None
            self.close()
            if isinstance(e, UVAError):
                raise
            raise UVAError(f"wrapping the registered memory as a CUDA tensor failed: {e}") from e

    def _register(self) -> int:
        flags = REGISTER_FLAGS if self.mapped else CUDA_HOST_REGISTER_PORTABLE
        with torch.cuda.device(self.device):
            err = int(torch.cuda.cudart().cudaHostRegister(self._ptr, self.nbytes, flags))
            if err != 0:
                rt = runtime_library()
                if rt is not None:
                    rt.cudaGetLastError()
                raise UVAError(f"cudaHostRegister of {self.nbytes} bytes failed: {_error_string(err)} ({err})")
            if not self.mapped:
                return 0
            try:
                return _device_pointer(self._ptr)
            except BaseException:
                torch.cuda.cudart().cudaHostUnregister(self._ptr)
                raise

    def close(self) -> None:
        """Unregister the memory (idempotent). Waits for the device first; drop every view of ``cuda`` before."""
        if not self._registered:
            return
        self._registered = False
        self.cuda = None
        torch.cuda.synchronize(self.device)

        def unregister():
            with torch.cuda.device(self.device):
                return int(torch.cuda.cudart().cudaHostUnregister(self._ptr))

        err = _in_helper_thread(unregister)
        if err != 0:
            raise UVAError(f"cudaHostUnregister failed: {_error_string(err)} ({err})")

    @property
    def registered(self) -> bool:
        """Whether the memory is still registered."""
        return self._registered

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
