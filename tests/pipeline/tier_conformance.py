"""The conformance class every feature tier passes (zarr-python's ``StoreTests`` idea).

A subclass names the tier (``make_tier(pack, split, device)``) and the device; it inherits every test:

* the rows a tier writes for a minibatch (``stage`` → ``assemble_into`` → ``release``) and the rows ``gather``
  returns equal ``features[input_nodes[positions]]`` bit for bit, for every minibatch of every split;
* every storage dtype (float32, float16, bfloat16) comes back in that dtype;
* a minibatch with no row of the tier (a pack where it holds nothing) is a no-op, and ``gather`` of no slot is
  ``[0, F]``;
* ``close`` is idempotent, and a tier made again over the same pack gives the same rows.

The datasets hold identity features (row ``i`` holds ``i``), packed with the real code paths.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diskgraph.pipeline.tiers import FeatureTier, split_positions, tier_positions, torch_dtype
from diskgraph.store.dataset import open_dataset
from diskgraph.store.packed import COLD, TABLE, open_pack
from diskgraph.store.plan import open_plan

from loader_helpers import build_identity

PACKS = {"some": (0.05, 0.1, 0.5), "none": (0.0, 0.0), "everything": (0.5, 1.0)}
"""Caches (fractions of the nodes on the GPU and host tiers) and bounds: every tier used (``some`` is bounded by
``--max-blowup 0.5``, so it packs part of its cold rows and leaves the rest in the feature table); no hot rows and no
bound (no table rows); no cold rows."""
_BUILT: dict = {}


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint8)


class FeatureTierTests:
    """Inherit, set :attr:`device`, and implement :meth:`make_tier`."""

    device = "cpu"

    def make_tier(self, pack, split: str, device: torch.device) -> FeatureTier:
        raise NotImplementedError

    # -- fixtures -----------------------------------------------------------------------------------

    @pytest.fixture(scope="class", params=["float32", "float16", "bfloat16"])
    def data(self, request, tmp_path_factory):
        """(dataset, plan, {pack name: directory}, stored features) for one storage dtype."""
        dtype = request.param
        if dtype not in _BUILT:  # one dataset per dtype for every tier class of the session
            _BUILT[dtype] = build_identity(tmp_path_factory.mktemp(f"tiers-{dtype}"), dtype=dtype, num_nodes=1200,
                                           dim=8, caches=PACKS)
        ds_dir = _BUILT[dtype]
        ds = open_dataset(ds_dir)
        plan = open_plan(ds_dir / "plans" / "default")
        return ds, plan, {name: ds_dir / "packs" / name for name in PACKS}, ds.features.read_rows(0, ds.num_nodes)

    @pytest.fixture
    def dev(self):
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            pytest.skip("needs a CUDA GPU")
        return torch.device(self.device)

    # -- the checks -----------------------------------------------------------------------------------

    def _check_split(self, tier: FeatureTier, pack, plan, split: str, feats: np.ndarray, dev) -> int:
        """Every minibatch of ``split`` through ``tier``; returns the rows checked."""
        tier.prepare()
        checked = 0
        for i in range(pack.num_minibatches(split)):
            e = pack.entry(split, i)
            idx, counts = tier_positions(e)
            pos, slots = split_positions(torch.from_numpy(idx), counts)[tier.code]
            want = feats[plan.input_nodes(split, i)[pos.numpy()]]
            x = torch.zeros((e.num_inputs, pack.feature_dim), dtype=tier.dtype, device=dev)
            staged = tier.stage(split, i, e)
            try:
                tier.assemble_into(x, pos.to(dev), slots.to(tier.index_device), staged)
                if tier.code not in (COLD, TABLE):
                    got = tier.gather(slots.to(tier.index_device), staged)
                else:  # the cold (table) tier's slots are its extent (table) rows in order: gather them too
                    got = tier.gather(torch.from_numpy(e.slot[e.tier == tier.code].astype(np.int64)), staged)
                    want_g = feats[plan.input_nodes(split, i)[np.flatnonzero(e.tier == tier.code)]]
                    assert np.array_equal(_bits(_numpy(got)), _bits(want_g))
                    got = None
            finally:
                tier.release(staged)
            rows = _numpy(x[pos.to(dev)])
            assert rows.dtype == feats.dtype and rows.shape == want.shape
            assert np.array_equal(_bits(rows), _bits(want)), f"{split} minibatch {i}"
            if got is not None:
                assert got.dtype == tier.dtype and np.array_equal(_bits(_numpy(got)), _bits(want))
            checked += int(pos.numel())
        return checked

    def test_rows_are_the_features_bit_for_bit(self, data, dev):
        ds, plan, packs, feats = data
        pack = open_pack(packs["some"])
        try:
            total = 0
            for split in pack.splits:
                tier = self.make_tier(pack, split, dev)
                try:
                    assert tier.dtype == torch_dtype(ds.feature_dtype) and tier.feature_dim == ds.feature_dim
                    total += self._check_split(tier, pack, plan, split, feats, dev)
                finally:
                    tier.close()
            assert total > 0  # the "some" pack gives every tier rows
        finally:
            pack.close()

    def test_a_pack_without_rows_of_the_tier(self, data, dev):
        ds, plan, packs, feats = data
        for name in ("none", "everything"):
            pack = open_pack(packs[name])
            try:
                tier = self.make_tier(pack, "train", dev)
                try:
                    self._check_split(tier, pack, plan, "train", feats, dev)
                    empty = tier.gather(torch.empty(0, dtype=torch.int64, device=tier.index_device))
                    assert tuple(empty.shape) == (0, ds.feature_dim) and empty.dtype == tier.dtype
                finally:
                    tier.close()
            finally:
                pack.close()

    def test_close_is_idempotent_and_a_new_tier_reads_the_same(self, data, dev):
        ds, plan, packs, feats = data
        pack = open_pack(packs["some"])
        try:
            first = self.make_tier(pack, "val", dev)
            n = self._check_split(first, pack, plan, "val", feats, dev)
            first.close()
            first.close()
            again = self.make_tier(pack, "val", dev)
            try:
                assert self._check_split(again, pack, plan, "val", feats, dev) == n
                assert isinstance(again.describe(), dict)
            finally:
                again.close()
        finally:
            pack.close()


def _numpy(t: torch.Tensor) -> np.ndarray:
    """A tensor's stored bits as numpy (bfloat16 as uint16 bit patterns, as the dataset stores them)."""
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()
