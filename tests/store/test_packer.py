"""Batched packing: every minibatch assembled from the tiers and its extent equals an in-memory gather.

Datasets carry identity features (row i holds i), so ``features[input_nodes]``
is known without a reference implementation; plans are handmade with
``PlanSplitWriter`` (random minibatches, several epochs, all splits) until the
sampler exists, plus a real-sampler end-to-end test that runs once it does.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from diskgraph.sampler.hot_set import expected_reads_per_epoch, select_hot_sets
from diskgraph.store.dataset import open_dataset
from diskgraph.store.errors import InputError
from diskgraph.store.packed import COLD, GPU, HOST, open_pack
from diskgraph.store.packer import pack_features
from diskgraph.store.plan import open_plan

from packing_helpers import all_features, check_all_minibatches as _check_all_minibatches, identity_dataset, neighborhood_plan, random_plan

REPO = Path(__file__).resolve().parents[2]
CORA = REPO / ".." / "shared" / "datasets" / "cora" / "data.npz"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """An identity-feature dataset (float32, F=16) with a random 2-epoch plan under DATASET/plans/p."""
    root = tmp_path_factory.mktemp("packer")
    ds_path = identity_dataset(root / "ds", 2000, dim=16, dtype="float32")
    ds = open_dataset(ds_path)
    (ds_path / "plans").mkdir()
    (ds_path / "packs").mkdir()
    plan = open_plan(random_plan(ds, ds_path / "plans" / "p", train_epochs=3,
                                 per_epoch={"train": 6, "val": 3, "test": 3}, inputs=(1, 400), seed=1))
    yield ds, plan, all_features(ds)
    shutil.rmtree(root, ignore_errors=True)


def _read_nodes(plan) -> np.ndarray:
    return np.unique(np.concatenate([plan.input_nodes(s, i) for s in plan.splits
                                     for i in range(plan.num_minibatches(s))]))


CACHES = {
    "zero": lambda plan, rb: (0, 0),
    "few_rows": lambda plan, rb: (3 * rb, 0),
    "gpu_and_host": lambda plan, rb: (40 * rb, 100 * rb + rb // 2),
    "everything": lambda plan, rb: (50 * rb, (len(_read_nodes(plan)) - 50) * rb),
}


@pytest.mark.parametrize("cache", list(CACHES))
def test_assemble_equals_gather_for_every_minibatch(world, cache, tmp_path):
    ds, plan, feats = world
    rb = ds.features.row_bytes
    gpu, host = CACHES[cache](plan, rb)
    tiers = select_hot_sets(expected_reads_per_epoch(plan), rb, gpu, host)
    out = pack_features(ds, plan, tmp_path / "pack", tiers=tiers, memory_budget=1 << 20, gpu_cache_bytes=gpu,
                        host_cache_bytes=host, score="expected_reads_per_epoch")
    pack = open_pack(out)
    assert _check_all_minibatches(pack, plan, feats) == sum(plan.num_minibatches(s) for s in plan.splits)
    m = pack.manifest
    assert m["tiers"]["gpu"]["rows"] == gpu // rb and m["gpu_cache_bytes"] == gpu
    assert m["host_cache_bytes"] == host and m["score"] == "expected_reads_per_epoch"
    total_padded = sum(s["padded_bytes"] for s in m["splits"].values())
    assert m["packed_bytes"] == total_padded
    assert m["blowup"] == pytest.approx(total_padded / (ds.num_nodes * rb), rel=1e-3)
    if cache == "zero":
        assert m["tiers"]["gpu"]["rows"] == m["tiers"]["host"]["rows"] == 0
    if cache == "everything":
        # every read node is hot: all extents are empty and the cold files hold nothing
        assert m["packed_bytes"] == 0 and m["blowup"] == 0
        for s in pack.splits:
            assert pack.cold_path(s).stat().st_size == 0
            e = pack.entry(s, 0)
            assert e.n_cold == 0 and not (e.tier == COLD).any()
            assert pack.read_extent(s, 0).shape == (0, 16)
    assert pack.verify() == []


@pytest.mark.parametrize("dtype,dim", [("float16", 4), ("bfloat16", 8), ("float32", 3), ("float32", 1024)])
def test_dtypes_and_row_sizes(tmp_path, dtype, dim):
    """float16 (exact ids ≤ 2048), bfloat16 bit patterns, 12-byte rows (not a word multiple of 8), 4 KiB rows."""
    n = 600 if dim < 1024 else 300
    ds = open_dataset(identity_dataset(tmp_path / "ds", n, dim=dim, dtype=dtype))
    plan = open_plan(random_plan(ds, tmp_path / "plan", train_epochs=2, inputs=(1, 120), seed=3))
    feats = all_features(ds)
    if dtype == "bfloat16":
        assert feats.dtype == np.uint16 and np.array_equal(feats[:, 0], np.arange(n))
    else:
        assert np.array_equal(feats[:, 0], np.arange(n).astype(dtype))
    rb = ds.features.row_bytes
    tiers = select_hot_sets(expected_reads_per_epoch(plan), rb, 5 * rb, 7 * rb)
    pack = open_pack(pack_features(ds, plan, tmp_path / "pack", tiers=tiers, memory_budget=256 << 10))
    _check_all_minibatches(pack, plan, feats)
    assert pack.verify() == []


def test_extents_aligned_and_file_sizes(world, tmp_path):
    ds, plan, _ = world
    rb = ds.features.row_bytes
    tiers = select_hot_sets(expected_reads_per_epoch(plan), rb, 10 * rb, 10 * rb)
    pack = open_pack(pack_features(ds, plan, tmp_path / "pack", tiers=tiers, memory_budget=1 << 20))
    for s in pack.splits:
        pos = 0
        for i in range(pack.num_minibatches(s)):
            e = pack.entry(s, i)
            assert e.offset % 4096 == 0 and e.padded_nbytes % 4096 == 0
            assert e.offset == pos  # in plan order, back to back
            assert e.nbytes == e.n_cold * rb and e.padded_nbytes - e.nbytes < 4096
            assert np.all(np.diff(e.cold_nodes) > 0)
            # padding is zero
            raw = pack.reader(s).read(e.offset, e.padded_nbytes) if e.padded_nbytes else np.zeros(0, np.uint8)
            assert not raw[e.nbytes:].any()
            pos += e.padded_nbytes
        assert pack.cold_path(s).stat().st_size == pos == pack.manifest["splits"][s]["padded_bytes"]


def test_index_matches_plan_and_tiers(world, tmp_path):
    ds, plan, feats = world
    rb = ds.features.row_bytes
    tiers = select_hot_sets(expected_reads_per_epoch(plan), rb, 8 * rb, 30 * rb)
    pack = open_pack(pack_features(ds, plan, tmp_path / "pack", tiers=tiers, memory_budget=1 << 20))
    for name in ("gpu", "host"):
        nodes = np.asarray(pack.tier_nodes(name))
        assert np.array_equal(nodes, tiers[name])
        rows = pack.tier_features(name).read_rows(0, nodes.size)
        assert np.array_equal(rows, feats[nodes])  # tier rows = feature rows of their nodes
    for s in plan.splits:
        for i in range(plan.num_minibatches(s)):
            mb, e = plan.minibatch(s, i), pack.entry(s, i)
            assert (e.epoch, e.batch) == (mb.epoch, mb.batch)
            nodes = mb.input_nodes
            for code, name in ((GPU, "gpu"), (HOST, "host")):
                at = e.tier == code
                assert np.array_equal(at, np.isin(nodes, tiers[name]))
                assert np.array_equal(tiers[name][e.slot[at]], nodes[at])
            at = e.tier == COLD
            assert np.array_equal(e.cold_nodes, np.sort(nodes[at]))
            assert np.array_equal(e.cold_nodes[e.slot[at]], nodes[at])


def test_small_memory_budget_gives_identical_output(world, tmp_path):
    """Many slices and tiny gather buffers (and no helper threads) write the same bytes as one big slice."""
    ds, plan, _ = world
    rb = ds.features.row_bytes
    tiers = select_hot_sets(expected_reads_per_epoch(plan), rb, 7 * rb, 13 * rb)
    big = pack_features(ds, plan, tmp_path / "big", tiers=tiers, memory_budget=64 << 20)
    small = pack_features(ds, plan, tmp_path / "small", tiers=tiers, memory_budget=20_000 + 5 * ds.num_nodes)
    serial = pack_features(ds, plan, tmp_path / "serial", tiers=tiers, memory_budget=30_000, threads=False)
    cfg_small = open_pack(small).manifest["config"]
    assert cfg_small["slice_rows"] < ds.num_nodes // 4, cfg_small  # really many slices
    for other in (small, serial):
        for rel in sorted(p.relative_to(big) for p in big.rglob("*") if p.is_file()):
            if rel.name == "manifest.json":
                continue
            assert (big / rel).read_bytes() == (other / rel).read_bytes(), rel
        mb, mo = open_pack(big).manifest, open_pack(other).manifest
        assert mb["splits"] == mo["splits"] and mb["tiers"] == mo["tiers"]


def test_zarr_opens_the_pack(world, tmp_path):
    zarr = pytest.importorskip("zarr")
    ds, plan, feats = world
    rb = ds.features.row_bytes
    tiers = select_hot_sets(expected_reads_per_epoch(plan), rb, 4 * rb, 4 * rb)
    pack = open_pack(pack_features(ds, plan, tmp_path / "pack", tiers=tiers, memory_budget=1 << 20))
    cold = zarr.open_array(str(pack.path / "cold" / "train"), mode="r")
    assert cold.dtype == np.uint8 and cold.shape == (pack.manifest["splits"]["train"]["padded_bytes"],)
    e = pack.entry("train", 1)
    rows = np.asarray(cold[e.offset:e.offset + e.nbytes]).view(np.float32).reshape(e.n_cold, -1)
    assert np.array_equal(rows, feats[e.cold_nodes])
    gpu = zarr.open_array(str(pack.path / "tiers" / "gpu" / "features"), mode="r")
    assert np.array_equal(gpu[:], feats[tiers["gpu"]])


def test_blowup_warning(world, tmp_path, caplog):
    ds, plan, _ = world
    with caplog.at_level(logging.INFO, logger="diskgraph"):
        out = pack_features(ds, plan, tmp_path / "pack", tiers={}, memory_budget=1 << 20, max_blowup=0.5)
    blowup = open_pack(out).manifest["blowup"]
    assert blowup > 0.5
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "blow-up" in r.getMessage()]
    assert len(warnings) == 1 and "--max-blowup" in warnings[0].getMessage()
    assert any("gpu tier" in r.getMessage() and "MB/s" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="diskgraph"):
        pack_features(ds, plan, tmp_path / "pack2", tiers={}, memory_budget=1 << 20, max_blowup=blowup + 1)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_overwrite_and_atomic(world, tmp_path):
    ds, plan, _ = world
    out = tmp_path / "pack"
    pack_features(ds, plan, out, tiers={}, memory_budget=1 << 20)
    with pytest.raises(InputError, match="already exists"):
        pack_features(ds, plan, out, tiers={}, memory_budget=1 << 20)
    pack_features(ds, plan, out, tiers={"gpu": [0, 1]}, memory_budget=1 << 20, overwrite=True)
    assert open_pack(out).manifest["tiers"]["gpu"]["rows"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["pack"]  # no temporary leftovers


def test_splits_subset(world, tmp_path):
    ds, plan, feats = world
    pack = open_pack(pack_features(ds, plan, tmp_path / "pack", tiers={}, memory_budget=1 << 20, splits=["val"]))
    assert pack.splits == ["val"]
    for i in range(pack.num_minibatches("val")):
        assert np.array_equal(pack.assemble("val", i), feats[plan.input_nodes("val", i)])


# -- refusals ---------------------------------------------------------------------------------------

def _refused(out: Path, fn, *needles):
    with pytest.raises(InputError) as ei:
        fn()
    msg = str(ei.value)
    assert "\n" not in msg and "Traceback" not in msg
    for n in needles:
        assert n in msg, msg
    assert not out.exists() and not list(out.parent.glob(f".{out.name}.diskgraph-tmp-*"))
    return msg


def test_refuses_plan_of_another_dataset(world, tmp_path):
    ds, plan, _ = world
    other = open_dataset(identity_dataset(tmp_path / "other", 500, dim=16))
    out = tmp_path / "pack"
    _refused(out, lambda: pack_features(other, plan, out, tiers={}, memory_budget=1 << 20), "500", "2000", "sample")
    # same node count, other topology: caught by the indptr checksum the plan records
    same_n = open_dataset(identity_dataset(tmp_path / "same_n", 2000, dim=16, seed=7))
    _refused(out, lambda: pack_features(same_n, plan, out, tiers={}, memory_budget=1 << 20), "another graph")


def test_refuses_bad_requests(world, tmp_path):
    ds, plan, _ = world
    out = tmp_path / "pack"
    kw = dict(memory_budget=1 << 20)
    _refused(out, lambda: pack_features(ds, plan, out, tiers={}, gpu_cache_bytes=-1, **kw), "negative")
    _refused(out, lambda: pack_features(ds, plan, out, tiers={}, host_cache_bytes=-5, **kw), "negative")
    _refused(out, lambda: pack_features(ds, plan, out, tiers={"gpu": [1, 2], "host": [2]}, **kw), "share")
    _refused(out, lambda: pack_features(ds, plan, out, tiers={"gpu": [5000]}, **kw), "5000")
    _refused(out, lambda: pack_features(ds, plan, out, tiers={"gpu": [1, 1]}, **kw), "repeats")
    _refused(out, lambda: pack_features(ds, plan, out, tiers={"disk": [1]}, **kw), "disk")
    _refused(out, lambda: pack_features(ds, plan, out, tiers={}, splits=["nope"], **kw), "nope")
    _refused(out, lambda: pack_features(ds, plan, out, tiers={}, memory_budget=100), "--memory-budget")
    with pytest.raises(InputError):
        select_hot_sets(expected_reads_per_epoch(plan), 64, -1, 0)


# -- real data and the real sampler -------------------------------------------------------------------

def test_cora(tmp_path):
    if not CORA.is_file():
        pytest.skip(f"shared dataset cora not found at {CORA}")
    from diskgraph.cli import main

    ds_path = tmp_path / "cora"
    assert main(["preprocess", "import", "--npz", str(CORA), "--out", str(ds_path), "-q"]) == 0
    ds = open_dataset(ds_path)
    (ds_path / "plans").mkdir()
    (ds_path / "packs").mkdir()
    plan = open_plan(neighborhood_plan(ds, ds_path / "plans" / "hand", batch_size=128, train_epochs=2))
    feats = all_features(ds)
    with np.load(CORA) as z:
        assert np.array_equal(feats, z["features"].astype(feats.dtype))
    rb = ds.features.row_bytes
    for gpu, host in ((0, 0), (64 * rb, 256 * rb), (ds.num_nodes * rb, 0)):
        tiers = select_hot_sets(expected_reads_per_epoch(plan), rb, gpu, host)
        out = pack_features(ds, plan, ds_path / "packs" / f"g{gpu}h{host}", tiers=tiers, memory_budget=1 << 20)
        pack = open_pack(out)
        assert pack.manifest["plan"]["path"] == "plans/hand"
        _check_all_minibatches(pack, plan, feats)
        assert pack.verify() == []


def test_end_to_end_with_sampler(tmp_path):
    sampler = pytest.importorskip("diskgraph.sampler.neighbor_sampler", reason="the sampler is not there yet")
    if not hasattr(sampler, "sample_plan"):
        pytest.skip("diskgraph.sampler.neighbor_sampler.sample_plan is not there yet")
    ds = open_dataset(identity_dataset(tmp_path / "ds", 1500, dim=8))
    (tmp_path / "ds" / "plans").mkdir()
    plan = open_plan(sampler.sample_plan(ds, tmp_path / "ds" / "plans" / "s", fanouts=[4, 3], batch_size=64, seed=0,
                                         epochs=2))
    feats = all_features(ds)
    rb = ds.features.row_bytes
    for gpu, host in ((0, 0), (20 * rb, 50 * rb)):
        tiers = select_hot_sets(expected_reads_per_epoch(plan), rb, gpu, host)
        pack = open_pack(pack_features(ds, plan, tmp_path / f"pack{gpu}", tiers=tiers, memory_budget=256 << 10))
        _check_all_minibatches(pack, plan, feats)
        assert pack.verify() == []
