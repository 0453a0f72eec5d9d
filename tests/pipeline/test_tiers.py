"""Every feature tier (diskgraph.pipeline.tiers) passes the conformance class, on the CPU and (skipped without one)
on a CUDA GPU; plus a user-supplied ExtentReader."""

from __future__ import annotations

import os

import pytest
import torch

from diskgraph.pipeline.tiers import ColdExtentTier, DeviceTier, HostTier, TableTier
from diskgraph.store.direct_io import ALIGNMENT

from tier_conformance import FeatureTierTests


class TestDeviceTier(FeatureTierTests):
    def make_tier(self, pack, split, device):
        return DeviceTier(pack, device)


class TestHostTier(FeatureTierTests):
    def make_tier(self, pack, split, device):
        return HostTier(pack, device)


class TestColdExtentTier(FeatureTierTests):
    def make_tier(self, pack, split, device):
        return ColdExtentTier(pack, split, device, direct=True, ring=2)


class TestTableTier(FeatureTierTests):
    """The rows a bounded pack left in the feature table (``--max-blowup``), read with O_DIRECT page runs."""

    def make_tier(self, pack, split, device):
        return TableTier(pack, split, device, pack.path.parent.parent / "features", direct=True, ring=2)


class TestTableTierBuffered(FeatureTierTests):
    def make_tier(self, pack, split, device):
        return TableTier(pack, split, device, pack.path.parent.parent / "features", direct=False, ring=1)


class TestColdExtentTierBuffered(FeatureTierTests):
    def make_tier(self, pack, split, device):
        return ColdExtentTier(pack, split, device, direct=False, ring=1)


class PreadReader:
    """An ExtentReader of our own: plain buffered ``os.pread`` of the extent file (no O_DIRECT)."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_RDONLY)
        self.reads = 0

    def read_into(self, offset, length, buf):
        assert offset % ALIGNMENT == 0 and length % ALIGNMENT == 0
        data = os.pread(self.fd, length, offset)
        buf[:len(data)] = memoryview(data)
        self.reads += 1
        return len(data)

    def close(self):
        os.close(self.fd)


class TestColdExtentTierOwnReader(FeatureTierTests):
    def make_tier(self, pack, split, device):
        reader = PreadReader(pack.cold_path(split))
        tier = ColdExtentTier(pack, split, device, reader=reader)
        close = tier.close

        def close_both():
            close()
            if reader.fd >= 0:
                assert reader.reads or not pack.max_padded_nbytes(split)
                reader.close()
                reader.fd = -1
        tier.close = close_both
        return tier


_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@_cuda
class TestDeviceTierCuda(TestDeviceTier):
    device = "cuda"


@_cuda
class TestHostTierCuda(TestHostTier):
    device = "cuda"


@_cuda
class TestHostTierPinnedCopyCuda(FeatureTierTests):
    device = "cuda"

    def make_tier(self, pack, split, device):
        tier = HostTier(pack, device, uva=False)
        assert tier.mode in ("pinned-copy", "empty")
        return tier


@_cuda
class TestColdExtentTierCuda(TestColdExtentTier):
    device = "cuda"


@_cuda
class TestTableTierCuda(TestTableTier):
    device = "cuda"
