"""The feature cache: tiers hold the pack's rows, gather by slot, share per pack; UVA host tier on CUDA.

The CUDA tests run wherever torch sees a GPU and are skipped with a reason elsewhere: they
register host memory in place, read it from the GPU through its device address (zero-copy,
so a write on the host is seen by the next GPU read), check the pinned-copy fallback and
that closing unregisters the memory.
"""

from __future__ import annotations

import gc
import logging

import numpy as np
import pytest
import torch
from loader_helpers import build_identity

from diskgraph.pipeline import cache as cache_mod
from diskgraph.pipeline import uva
from diskgraph.pipeline.cache import FeatureCache, shared_cache
from diskgraph.pipeline.tiers import storage_tensor
from diskgraph.pipeline.uva import RegisteredHostTensor, UVAError
from diskgraph.store.dataset import open_dataset
from diskgraph.store.direct_io import aligned_empty, round_up
from diskgraph.store.errors import InputError
from diskgraph.store.packed import open_pack

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")


def page_aligned(t: torch.Tensor) -> torch.Tensor:
    """A copy of ``t`` in page-aligned memory of its own (what the cache registers)."""
    nbytes = t.numel() * t.element_size()
    buf = aligned_empty(round_up(nbytes))[:nbytes]
    out = torch.from_numpy(buf).view(t.dtype).view(t.shape)
    out.copy_(t)
    return out


@pytest.fixture(scope="module")
def ident(tmp_path_factory):
    path = build_identity(tmp_path_factory.mktemp("cache"), num_nodes=2000, dim=8,
                          caches={"some": (0.05, 0.1), "none": (0.0, 0.0)})
    return path


def _tier_nodes(pack, name):
    return np.asarray(pack.tier_nodes(name))


def test_cpu_tiers_hold_the_packs_rows_and_gather_by_slot(ident):
    pack = open_pack(ident / "packs" / "some")
    feats = open_dataset(ident).features.read_rows(0, 2000)
    with FeatureCache(pack, "cpu") as cache:
        for name, tier in cache.tiers.items():
            nodes = _tier_nodes(pack, name)
            assert tier.rows == nodes.shape[0] > 0 and tier.mode == "cpu"
            slots = torch.tensor([tier.rows - 1, 0, tier.rows // 2, 0], dtype=torch.int64)
            got = tier.gather(slots)
            assert got.dtype == torch.float32 and got.device.type == "cpu"
            assert np.array_equal(got.numpy(), feats[nodes[slots.numpy()]])
        d = cache.describe()
        assert d["gpu"]["bytes"] == cache.gpu.rows * pack.row_bytes and d["host"]["mode"] == "cpu"
    assert cache.host.host.shape[0] == 0  # closed


def test_empty_tiers(ident):
    pack = open_pack(ident / "packs" / "none")
    cache = FeatureCache(pack)
    for tier in cache.tiers.values():
        assert tier.rows == 0
        assert tier.gather(torch.zeros(0, dtype=torch.int64)).shape == (0, 8)


def test_shared_cache_is_one_per_pack_and_device(ident):
    pack = open_pack(ident / "packs" / "some")
    a = shared_cache(pack, "cpu")
    assert shared_cache(pack, torch.device("cpu")) is a
    other = open_pack(ident / "packs" / "some")
    assert shared_cache(other, "cpu") is not a
    a.close()
    assert shared_cache(pack, "cpu") is not a  # a closed cache is rebuilt


def test_storage_tensor_views_bfloat16_bits():
    bits = np.array([[0x3F80, 0x4000], [0xC040, 0x0000]], dtype=np.uint16)  # 1, 2, -3, 0
    t = storage_tensor(bits, "bfloat16")
    assert t.dtype == torch.bfloat16 and t.float().tolist() == [[1.0, 2.0], [-3.0, 0.0]]
    with pytest.raises(InputError, match="float32, float16 or bfloat16"):
        storage_tensor(np.zeros((1, 1), np.float64), "float64")


def test_registering_is_refused_cleanly_where_it_cannot_work():
    with pytest.raises(UVAError, match="empty"):
        RegisteredHostTensor(torch.zeros(0), "cuda:0")
    with pytest.raises(UVAError, match="CUDA device"):
        RegisteredHostTensor(page_aligned(torch.zeros(4)), "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UVAError, match="cannot register"):
            RegisteredHostTensor(page_aligned(torch.zeros(4)), "cuda:0")
    # looking for the CUDA libraries never raises (None where there are none)
    for lib in (uva.runtime_library(), uva.driver_library()):
        assert lib is None or hasattr(lib, "_name")


# -- CUDA ---------------------------------------------------------------------------------------------


@needs_gpu
@pytest.mark.cuda
def test_registered_host_tensor_is_read_in_place_by_the_gpu():
    host = page_aligned(torch.arange(4096 * 8, dtype=torch.float32).reshape(4096, 8))
    reg = RegisteredHostTensor(host, "cuda")
    assert reg.registered and reg.cuda.is_cuda and reg.cuda.shape == host.shape and reg.cuda.dtype == host.dtype
    idx = torch.tensor([4095, 0, 17, 17], device="cuda")
    assert torch.equal(reg.cuda.index_select(0, idx).cpu(), host[idx.cpu()])
    host[17] = -1.0  # zero-copy: the GPU sees the host's write, no copy was made
    torch.cuda.synchronize()
    assert reg.cuda[17].cpu().tolist() == [-1.0] * 8
    reg.close()
    assert not reg.registered and reg.cuda is None
    # unregistered for real: registering the same memory again succeeds
    again = RegisteredHostTensor(host, "cuda")
    again.close()


@needs_gpu
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_registered_host_tensor_half_precision(dtype):
    host = page_aligned(torch.arange(1024 * 4).reshape(1024, 4).to(dtype))
    reg = RegisteredHostTensor(host, torch.device("cuda", torch.cuda.current_device()))
    idx = torch.randint(0, 1024, (300,), device="cuda")
    assert torch.equal(reg.cuda.index_select(0, idx).cpu(), host[idx.cpu()])
    reg.close()


@needs_gpu
@pytest.mark.cuda
def test_cuda_cache_uses_the_gpu_and_uva_tiers(ident):
    pack = open_pack(ident / "packs" / "some")
    feats = torch.from_numpy(open_dataset(ident).features.read_rows(0, 2000))
    cache = FeatureCache(pack, "cuda")
    assert cache.gpu.mode == "device" and cache.gpu.data.is_cuda
    assert cache.host.mode == "uva" and cache.host.registered is not None and cache.host.view.is_cuda
    assert cache.host.view.data_ptr() == cache.host.registered.device_ptr
    for name, tier in cache.tiers.items():
        nodes = torch.from_numpy(_tier_nodes(pack, name))
        slots = torch.randint(0, tier.rows, (500,))
        got = tier.gather(slots.to(tier.index_device))
        assert got.is_cuda and torch.equal(got.cpu(), feats[nodes[slots]])
    reg = cache.host.registered
    cache.close()
    assert not reg.registered
    gc.collect()


@needs_gpu
@pytest.mark.cuda
def test_uva_failure_falls_back_to_pinned_copies_with_one_warning(ident, monkeypatch, caplog):
    def refuse(host, device):
        raise UVAError("cudaHostRegister failed: refused for the test")

    monkeypatch.setattr(cache_mod, "RegisteredHostTensor", refuse)
    monkeypatch.setitem(cache_mod._warned, "uva", False)
    pack = open_pack(ident / "packs" / "some")
    feats = torch.from_numpy(open_dataset(ident).features.read_rows(0, 2000))
    with caplog.at_level(logging.WARNING, logger="diskgraph"):
        caches = [FeatureCache(pack, "cuda") for _ in range(2)]
    assert sum("cannot be read by the GPU in place" in r.getMessage() for r in caplog.records) == 1
    for cache in caches:
        host = cache.host
        assert host.mode == "pinned-copy" and host.pinned.is_pinned() and host.index_device.type == "cpu"
        nodes = torch.from_numpy(_tier_nodes(pack, "host"))
        slots = torch.randint(0, host.rows, (300,))
        got = host.gather(slots)
        torch.cuda.synchronize()
        assert got.is_cuda and torch.equal(got.cpu(), feats[nodes[slots]])
        cache.close()
