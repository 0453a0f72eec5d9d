"""The pack reader: index entries, direct and buffered extent reads, assembling, verification."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil

import numpy as np
import pytest

from diskgraph.sampler.hot_set import expected_reads_per_epoch, select_hot_sets
from diskgraph.store import direct_io
from diskgraph.store.checksums import manifest_checksum
from diskgraph.store.dataset import open_dataset
from diskgraph.store.errors import FormatError, InputError
from diskgraph.store.packed import PACK_FORMAT, open_pack
from diskgraph.store.packer import pack_features
from diskgraph.store.plan import open_plan

from packing_helpers import all_features, assemble_oracle, identity_dataset, random_plan


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    root = tmp_path_factory.mktemp("packed")
    ds_path = identity_dataset(root / "ds", 1200, dim=16)
    ds = open_dataset(ds_path)
    (ds_path / "plans").mkdir()
    (ds_path / "packs").mkdir()
    plan = open_plan(random_plan(ds, ds_path / "plans" / "p", train_epochs=2, inputs=(1, 600), seed=2))
    rb = ds.features.row_bytes
    tiers = select_hot_sets(expected_reads_per_epoch(plan), rb, 6 * rb, 20 * rb)
    out = pack_features(ds, plan, ds_path / "packs" / "p", tiers=tiers, memory_budget=1 << 20)
    yield ds, plan, out, all_features(ds)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(autouse=True)
def _reset_warning():
    direct_io._warned["fallback"] = False
    yield
    direct_io._warned["fallback"] = False


def test_entry_is_zero_copy_and_complete(packed):
    ds, plan, out, _ = packed
    pack = open_pack(out)
    e = pack.entry("train", 0)
    assert e.tier.dtype == np.int8 and e.slot.dtype == np.int32 and e.cold_nodes.dtype == np.int64
    assert not e.tier.flags.owndata and not e.tier.flags.writeable  # views of the memory-mapped index
    assert e.num_inputs == plan.input_nodes("train", 0).size
    with pytest.raises(IndexError):
        pack.entry("train", pack.num_minibatches("train"))
    with pytest.raises(InputError, match="no 'nope' split"):
        pack.entry("nope", 0)


def test_read_extent_direct_and_buffered_agree(packed):
    ds, plan, out, feats = packed
    pack = open_pack(out)
    buf = pack.extent_buffer("train")
    assert buf.ctypes.data % 4096 == 0 and buf.size >= pack.max_padded_nbytes("train")
    for i in range(pack.num_minibatches("train")):
        e = pack.entry("train", i)
        d = pack.read_extent("train", i, out=buf, direct=True).copy()
        b = pack.read_extent("train", i, direct=False)
        assert np.array_equal(d, b) and np.array_equal(d, feats[e.cold_nodes])
    assert pack.reader("train").direct or not direct_io.O_DIRECT or direct_io._warned["fallback"]
    pack.close()


def test_fallback_when_o_direct_is_refused(packed, monkeypatch, caplog):
    """A filesystem that refuses O_DIRECT (EINVAL): the same rows, with one warning."""
    ds, plan, out, feats = packed
    real_open = os.open

    def fake_open(path, flags, *a, **k):
        if flags & direct_io.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *a, **k)

    direct_pack = open_pack(out)
    want = [assemble_oracle(direct_pack, s, i) for s in direct_pack.splits for i in range(direct_pack.num_minibatches(s))]
    monkeypatch.setattr(os, "open", fake_open)
    pack = open_pack(out)
    with caplog.at_level(logging.WARNING, logger="diskgraph"):
        got = [assemble_oracle(pack, s, i) for s in pack.splits for i in range(pack.num_minibatches(s))]
    assert all(np.array_equal(a, b) for a, b in zip(got, want))
    assert not pack.reader("train").direct
    assert len([r for r in caplog.records if "O_DIRECT" in r.getMessage()]) == 1


def test_assemble_with_given_tiers_and_out(packed):
    ds, plan, out, feats = packed
    pack = open_pack(out)
    tiers = {name: pack.tier_features(name).read_rows(0, pack.tier_features(name).shape[0]) for name in ("gpu", "host")}
    nodes = plan.input_nodes("val", 1)
    dst = np.empty((nodes.size, 16), np.float32)
    res = assemble_oracle(pack, "val", 1, tiers_in_memory=tiers, out=dst)
    assert res is dst and np.array_equal(dst, feats[nodes])
    assert np.array_equal(dst[:, 0], nodes.astype(np.float32))  # identity features: row i holds i


def test_verify_finds_damage(packed, tmp_path):
    ds, plan, out, _ = packed
    assert open_pack(out).verify() == []
    # a damaged copy next to it (its relative plan path still resolves)
    bad = ds.path / "packs" / "bad"
    shutil.copytree(out, bad)
    try:
        cold = bad / "cold" / "train" / "c" / "0"
        size = cold.stat().st_size
        os.truncate(cold, size - 4096)
        with pytest.raises(FormatError, match="truncated"):
            open_pack(bad)  # refused when opened, not only by verify
        os.truncate(cold, size)  # back to size but the last extent's bytes are now zeros
        problems = open_pack(bad).verify(check_rows=10_000)
        assert any(f"{cold}: the extent of minibatch" in p and "does not match its checksum" in p
                   for p in problems), problems
        shutil.copy(out / "cold" / "train" / "c" / "0", cold)
        assert open_pack(bad).verify() == []
        # the index and extents of another split, under a manifest rewritten to match (checksum included)
        shutil.copy(out / "index" / "val.arrow", bad / "index" / "test.arrow")
        for part in ("cold", "checksums", "table_checksums"):
            shutil.rmtree(bad / part / "test")
            shutil.copytree(out / part / "val", bad / part / "test")
        m = json.loads((bad / "manifest.json").read_text())
        m["splits"]["test"] = m["splits"]["val"]
        m["checksum"] = manifest_checksum(m)
        (bad / "manifest.json").write_text(json.dumps(m))
        problems = open_pack(bad).verify()
        assert any("index/test" in p and "the plan" in p for p in problems), problems
    finally:
        shutil.rmtree(bad)


def test_open_refusals(packed, tmp_path):
    ds, plan, out, _ = packed
    with pytest.raises(FormatError, match="does not exist"):
        open_pack(tmp_path / "nothing")
    with pytest.raises(FormatError):
        open_pack(ds.path)  # a dataset, not a pack
    newer = tmp_path / "newer"
    shutil.copytree(out, newer)
    m = json.loads((newer / "manifest.json").read_text())
    assert m["format"] == PACK_FORMAT
    m["format_version"] = 99
    (newer / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(FormatError, match="upgrade"):
        open_pack(newer)
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "index" / "val.arrow").write_bytes(b"junk")
    with pytest.raises(FormatError, match="pack the plan again"):
        open_pack(broken).entry("val", 0)
