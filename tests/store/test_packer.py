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
from diskgraph.store.packer import EXTENT_HASHER_BYTES, pack_features
from diskgraph.store.plan import open_plan

from packing_helpers import all_features, assemble_oracle, check_all_minibatches as _check_all_minibatches, identity_dataset, neighborhood_plan, random_plan

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
    per_mb = EXTENT_HASHER_BYTES * (sum(plan.num_minibatches(s) for s in plan.splits) + 1)  # the extents' checksums
    small = pack_features(ds, plan, tmp_path / "small", tiers=tiers, memory_budget=20_000 + 5 * ds.num_nodes + per_mb)
    serial = pack_features(ds, plan, tmp_path / "serial", tiers=tiers, memory_budget=30_000 + per_mb, threads=False)
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


def test_max_blowup_is_enforced_not_warned(world, tmp_path, caplog):
    """--max-blowup holds (the rows over it are table rows, tests/store/test_max_blowup.py); no warning either way."""
    ds, plan, feats = world
    with caplog.at_level(logging.INFO, logger="diskgraph"):
        out = pack_features(ds, plan, ds.path / "packs" / "enforced", tiers={}, memory_budget=1 << 20, max_blowup=0.5,
                            overwrite=True)  # (under the dataset: the oracle reads the table rows from it)
    m = open_pack(out).manifest
    assert m["blowup"] <= 0.5 and m["packed_bytes"] <= 0.5 * m["feature_bytes"] and m["table_rows"] > 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("gpu tier" in r.getMessage() and "MB/s" in r.getMessage() for r in caplog.records)
    _check_all_minibatches(open_pack(out), plan, feats)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="diskgraph"):
        big = pack_features(ds, plan, tmp_path / "pack2", tiers={}, memory_budget=1 << 20, max_blowup=1000)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    assert open_pack(big).manifest["table_rows"] == 0


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
        assert np.array_equal(assemble_oracle(pack, "val", i), feats[plan.input_nodes("val", i)])


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


# -- the O_DIRECT writer: whole pages, carries, fallback ---------------------------------------------

def _simulate_pages(rb: int, extents: list[np.ndarray], n: int, slice_rows: int, buf_bytes: int, max_runs: int,
                    seed: int = 0):
    """Drive ``gather_pages`` over slices like the packer does; returns (files, expected files, writes per page)."""
    from diskgraph.native.packing import gather_pages, word_dtype
    from diskgraph.store.direct_io import aligned_empty

    rng = np.random.default_rng(seed)
    table = rng.integers(0, 256, (n, rb), dtype=np.uint8)
    word = word_dtype(rb)
    width, page_words = rb // word.itemsize, 4096 // word.itemsize
    # two "files": extents alternate between them, each extent page aligned and zero-padded
    file_of = np.array([i % 2 for i in range(len(extents))], dtype=np.int8)
    ext_off = np.zeros(len(extents), np.int64)
    sizes = [0, 0]
    for i, ids in enumerate(extents):
        ext_off[i] = sizes[file_of[i]]
        sizes[file_of[i]] += -(-ids.size * rb // 4096) * 4096
    want = [np.zeros(s, np.uint8) for s in sizes]
    for i, ids in enumerate(extents):
        want[file_of[i]][ext_off[i]:ext_off[i] + ids.size * rb] = table[np.sort(ids)].reshape(-1)
    flat = np.concatenate([np.zeros(3, np.int64)] + [np.sort(ids) for ids in extents])  # a little offset
    counts = np.array([ids.size for ids in extents], np.int64)
    start = 3 + np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    end = start + counts
    cursor = start.copy()
    carry = np.full((len(extents), page_words), 0xAB, dtype=word)  # garbage: must never reach the file
    buf = aligned_empty(buf_bytes).view(word)
    runs = np.empty((max_runs, 4), np.int64)
    got = [np.full(s, 0xEE, np.uint8) for s in sizes]  # unwritten bytes show
    writes = [np.zeros(s // 4096, np.int64) for s in sizes]
    for lo in range(0, n, slice_rows):
        hi = min(lo + slice_rows, n)
        block = table[lo:hi].view(word).reshape(hi - lo, width)
        m = 0
        while m < len(extents):
            buf[:] = 0x77  # stale bytes from an earlier fill must not leak
            m, fill, nr = gather_pages(block, lo, hi, flat, start, end, cursor, m, len(extents), ext_off, file_of,
                                       carry, page_words, buf, runs)
            raw = buf.view(np.uint8)
            pos = 0
            for f, off, at, length in runs[:nr].tolist():
                assert off % 4096 == 0 and at % 4096 == 0 and length % 4096 == 0 and length > 0
                assert at == pos  # runs lie back to back in the buffer
                got[f][off:off + length] = raw[at:at + length]
                writes[f][off // 4096:(off + length) // 4096] += 1
                pos += length
            assert pos == fill * word.itemsize
    assert np.array_equal(cursor, end)
    return got, want, writes


@pytest.mark.parametrize("rb", [12, 8, 520, 4096])
@pytest.mark.parametrize("buf_pages,max_runs", [(None, 1), (None, 3), (64, 64)])
def test_gather_pages_carry_logic(rb, buf_pages, max_runs):
    """Whole pages only, every page written once, carries and zero padding right: tiny, empty, page-sized,
    large extents; many slices; the smallest buffer (two pages and a row) and one-run batches."""
    n = 2100
    rng = np.random.default_rng(rb)
    extents = [np.zeros(0, np.int64), np.array([5]), np.array([n - 1]), rng.choice(n, 3, replace=False),
               np.arange(0, n, 2), rng.choice(n, 400, replace=False), np.zeros(0, np.int64),
               np.arange(4096 // np.gcd(rb, 4096)) * (n // (4096 // np.gcd(rb, 4096))),  # exactly whole pages
               rng.choice(n, 97, replace=False), np.array([0, 1, 2, 3, 699])]
    buf_bytes = (2 * 4096 + -(-rb // 4096) * 4096) if buf_pages is None else buf_pages * 4096
    for slice_rows in (n, 150, 7, 1):
        got, want, writes = _simulate_pages(rb, extents, n, slice_rows, buf_bytes, max_runs)
        for g, w, c in zip(got, want, writes):
            assert np.array_equal(g, w), slice_rows
            assert (c == 1).all(), "every page is written exactly once"


def _tree_bytes(root: Path) -> dict:
    """Every file of a pack but the manifest (which holds timings), by relative path."""
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "manifest.json"}


def _direct_supported(path: Path) -> bool:
    import os

    from diskgraph.store.direct_io import O_DIRECT

    if not O_DIRECT:
        return False
    try:
        os.close(os.open(path / ".direct-probe", os.O_RDWR | os.O_CREAT | O_DIRECT, 0o644))
        return True
    except OSError:
        return False
    finally:
        (path / ".direct-probe").unlink(missing_ok=True)


def _odd_extents_plan(ds, out: Path, seed: int = 0) -> Path:
    """Minibatches with 0 cold rows (all hot: nodes 0..3), 1 row, a few rows, page multiples and large ones."""
    from packing_helpers import _one_hop, _write_plan

    rng = np.random.default_rng(seed)
    n = ds.num_nodes
    sizes = [4, 1, 2, 3, 1024, 5, n // 2, 340, 341, 1, n - 10]
    mbs = []
    for b, size in enumerate(sizes):
        nodes = np.arange(4) if b == 0 else rng.choice(np.arange(4, n), size=min(size, n - 4), replace=False)
        mbs.append(_one_hop(0, b, nodes, max(1, len(nodes) // 4), rng))
    per = {"train": len(mbs), "val": 2, "test": 1}
    split_mbs = {"train": mbs, "val": [_one_hop(0, 0, np.arange(4), 1, rng), _one_hop(0, 1, np.array([n - 1]), 1, rng)],
                 "test": [_one_hop(0, 0, rng.choice(n, 50, replace=False), 5, rng)]}
    return _write_plan(ds, out, split_mbs, per, {"train": 1, "val": 1, "test": 1},
                       {"fanouts": [2], "batch_size": 0, "seed": seed, "epochs": 1, "handmade": True})


@pytest.mark.parametrize("dtype,dim,n", [("float32", 3, 60_000), ("float32", 1024, 600), ("bfloat16", 8, 30_000)])
def test_direct_and_buffered_packs_are_identical(tmp_path, dtype, dim, n):
    """O_DIRECT (whole pages + carries) and buffered writes give byte-identical packs, for 12-byte and
    4 KiB rows, empty, one-row and page-multiple extents, one slice or many."""
    if not _direct_supported(tmp_path):
        pytest.skip(f"{tmp_path} refuses O_DIRECT")
    ds = open_dataset(identity_dataset(tmp_path / "ds", n, dim=dim, dtype=dtype))
    plan = open_plan(_odd_extents_plan(ds, tmp_path / "plan"))
    feats = all_features(ds)
    tiers = {"gpu": np.array([0, 1]), "host": np.array([2, 3])}
    ref = pack_features(ds, plan, tmp_path / "buffered", tiers=tiers, memory_budget=64 << 20, direct_io=False)
    assert open_pack(ref).manifest["timing"]["write_mode"] == "buffered"
    want = _tree_bytes(ref)
    assert open_pack(ref).entry("train", 0).n_cold == 0 and open_pack(ref).entry("val", 0).n_cold == 0
    small = 5 * n + 6 * 14 * 4096 + (1 << 16)  # room for the 14 carry pages, many slices
    for name, kw in (("one-slice", dict(memory_budget=64 << 20)),
                     ("many-slices", dict(memory_budget=small)),
                     ("serial", dict(memory_budget=small, threads=False))):
        out = pack_features(ds, plan, tmp_path / name, tiers=tiers, **kw)
        pack = open_pack(out)
        assert pack.manifest["timing"]["write_mode"] == "O_DIRECT", name
        if name != "one-slice":
            assert pack.manifest["config"]["slice_rows"] < n // 2, pack.manifest["config"]  # three slices or more
        assert _tree_bytes(out) == want, name
        _check_all_minibatches(pack, plan, feats)
        assert pack.verify() == []


def test_carries_that_do_not_fit_the_budget_use_buffered_writes(world, tmp_path, caplog):
    ds, plan, _ = world
    with caplog.at_level(logging.INFO, logger="diskgraph"):
        out = pack_features(ds, plan, tmp_path / "pack", tiers={}, memory_budget=5 * ds.num_nodes + 60_000)
    assert open_pack(out).manifest["timing"]["write_mode"] == "buffered"
    assert any("carry page" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("refuse_at", ["open", "write"])
def test_o_direct_refused_falls_back_to_buffered(world, tmp_path, monkeypatch, caplog, refuse_at):
    """EINVAL for O_DIRECT at open or at the first write: one warning, and the same bytes as a direct pack."""
    import errno
    import fcntl
    import os

    from diskgraph.store.direct_io import O_DIRECT

    if not _direct_supported(tmp_path):
        pytest.skip(f"{tmp_path} refuses O_DIRECT")
    ds, plan, feats = world
    rb = ds.features.row_bytes
    tiers = select_hot_sets(expected_reads_per_epoch(plan), rb, 6 * rb, 9 * rb)
    direct = pack_features(ds, plan, tmp_path / "direct", tiers=tiers, memory_budget=1 << 20)
    assert open_pack(direct).manifest["timing"]["write_mode"] == "O_DIRECT"

    refused = []
    if refuse_at == "open":
        real_open = os.open

        def fake_open(path, flags, *args, **kw):
            if flags & O_DIRECT:
                refused.append(path)
                raise OSError(errno.EINVAL, "Invalid argument")
            return real_open(path, flags, *args, **kw)

        monkeypatch.setattr(os, "open", fake_open)
    else:
        real_pwrite = os.pwrite

        def fake_pwrite(fd, data, offset):
            if fcntl.fcntl(fd, fcntl.F_GETFL) & O_DIRECT:
                refused.append(fd)
                raise OSError(errno.EINVAL, "Invalid argument")
            return real_pwrite(fd, data, offset)

        monkeypatch.setattr(os, "pwrite", fake_pwrite)
    with caplog.at_level(logging.INFO, logger="diskgraph"):
        out = pack_features(ds, plan, tmp_path / "fallback", tiers=tiers, memory_budget=1 << 20)
    monkeypatch.undo()
    assert refused
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "O_DIRECT is refused" in warnings[0] and "buffered" in warnings[0], warnings
    assert open_pack(out).manifest["timing"]["write_mode"] == "buffered"
    assert _tree_bytes(out) == _tree_bytes(direct)
    _check_all_minibatches(open_pack(out), plan, feats)


def test_cold_ids_read_back_when_the_ipc_layout_differs(world, tmp_path, monkeypatch):
    """The packer finds each minibatch's cold ids at the end of its Arrow message; if a pyarrow laid the
    message out otherwise, it reads the offsets back from the file and the pack is the same."""
    import diskgraph.store.packer as packer

    ds, plan, _ = world
    tiers = {"host": np.arange(0, 2000, 7)}
    fast = pack_features(ds, plan, tmp_path / "fast", tiers=tiers, memory_budget=1 << 20)
    for s in plan.splits:
        counts = np.array([open_pack(fast).entry(s, i).n_cold for i in range(plan.num_minibatches(s))])
        starts = packer._cold_id_starts(fast / "index" / f"{s}.arrow", counts)
        flat = np.fromfile(fast / "index" / f"{s}.arrow", dtype=np.uint8)
        flat = flat[: flat.size // 8 * 8].view(np.int64)
        for i, (a, k) in enumerate(zip(starts.tolist(), counts.tolist())):
            assert np.array_equal(flat[a:a + k], open_pack(fast).entry(s, i).cold_nodes)
    real_write = packer._IndexWriter._write

    def write_and_forget_layout(self, *row):
        real_write(self, *row)
        self._layout_ok = False

    monkeypatch.setattr(packer._IndexWriter, "_write", write_and_forget_layout)
    slow = pack_features(ds, plan, tmp_path / "slow", tiers=tiers, memory_budget=1 << 20)
    assert _tree_bytes(slow) == _tree_bytes(fast)


def test_refuses_a_plan_naming_a_node_outside_the_graph(world, tmp_path):
    from diskgraph.store.errors import FormatError
    from packing_helpers import _one_hop, _write_plan

    ds, _, _ = world
    rng = np.random.default_rng(0)
    mbs = [_one_hop(0, 0, np.array([3, 1, 2]), 1, rng), _one_hop(0, 1, np.array([5, -1, 7]), 1, rng)]
    plan = open_plan(_write_plan(ds, tmp_path / "bad", {"train": mbs}, {"train": 2}, {"train": 1},
                                 {"fanouts": [2], "batch_size": 0, "seed": 0, "epochs": 1, "handmade": True}))
    out = tmp_path / "pack"
    with pytest.raises(FormatError) as ei:
        pack_features(ds, plan, out, tiers={}, memory_budget=1 << 20)
    msg = str(ei.value)
    assert "minibatch 1 of train names node -1, outside 0..1999" in msg and "sample it again" in msg
    assert not out.exists() and not list(tmp_path.glob(".pack.diskgraph-tmp-*"))


@pytest.mark.parametrize("n,size,hot", [(1, 1, 0.0), (100, 0, 0.5), (5000, 64, 0.3), (5000, 65, 0.3),
                                        (2_000_000, 5000, 0.0), (2_000_000, 5000, 0.5), (3_000_000, 3000, 1.0)])
def test_index_kernel_equals_numpy(n, size, hot):
    """The index kernel (radix sort) gives numpy's answer: stable order, repeated ids included."""
    from diskgraph.native.packing import index_minibatch

    rng = np.random.default_rng(size)
    tier_of = np.where(rng.random(n) < hot, rng.integers(1, 3, n), 0).astype(np.int8)
    slot_of = rng.integers(0, 1000, n).astype(np.int32)
    nodes = rng.integers(0, n, size).astype(np.int64)  # repeats allowed
    t, slot, cold = np.empty(size, np.int8), np.empty(size, np.int32), np.empty(size, np.int64)
    k, n_gpu, bad = index_minibatch(nodes, tier_of, slot_of, t, slot, cold, np.empty(size, np.int64),
                                    np.empty(size, np.int64))
    want_t, want_slot = tier_of[nodes], slot_of[nodes].copy()
    at = np.flatnonzero(want_t == 0)
    order = np.argsort(nodes[at], kind="stable")
    want_slot[at[order]] = np.arange(at.size)
    assert bad == -1 and k == at.size and n_gpu == int((want_t == 2).sum())
    assert np.array_equal(t, want_t) and np.array_equal(slot, want_slot)
    assert np.array_equal(cold[:k], nodes[at][order])
    if size:
        nodes[size // 2] = n  # out of range: its position comes back
        assert index_minibatch(nodes, tier_of, slot_of, t, slot, cold, np.empty(size, np.int64),
                               np.empty(size, np.int64))[2] == size // 2
