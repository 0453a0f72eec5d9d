"""``--max-blowup B`` holds: the packed extents never exceed B x the feature table; the cold rows over the budget are
table rows (tier 3), read from the dataset's feature table and checked against the pack's table checksums.

Datasets carry identity features (row i holds i), so every minibatch's assembled rows are one comparison away.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diskgraph.store.arrow_files import checksummed_record_batch
from diskgraph.store.checksums import array_sha256, data_checksum, manifest_checksum
from diskgraph.store.dataset import open_dataset
from diskgraph.store.errors import FormatError, InputError
from diskgraph.store.packed import COLD, GPU, HOST, PACK_VERSION, TABLE, index_schema, open_pack, table_rows
from diskgraph.store.packer import pack_features
from diskgraph.store.plan import open_plan

from packing_helpers import _one_hop, _write_plan, all_features, check_all_minibatches, identity_dataset

EMPTY = data_checksum(b"")


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """Identity datasets: 64-byte rows (64 a page), 12-byte rows (some straddle two pages), 4400-byte rows (every row
    longer than a page)."""
    root = tmp_path_factory.mktemp("blowup")
    out = {}
    for dim, n in ((16, 3000), (3, 5000), (1100, 300)):
        p = identity_dataset(root / f"d{dim}", n, dim=dim)
        (p / "plans").mkdir()
        (p / "packs").mkdir()
        out[dim] = open_dataset(p)
    yield out
    shutil.rmtree(root, ignore_errors=True)


def _plan(ds, name: str, seed: int, sizes: list[int], epochs: int = 2):
    """A plan of minibatches of random distinct inputs: half drawn near a random centre (rows sharing pages), half
    anywhere (isolated rows)."""
    rng = np.random.default_rng(seed)
    n = ds.num_nodes
    mbs = {"train": [], "val": []}
    for split, e_count in (("train", epochs), ("val", 1)):
        for e in range(e_count):
            for b, size in enumerate(sizes):
                size = min(size, n)
                centre = int(rng.integers(0, n))
                near = (centre + rng.integers(-size, size + 1, size)) % n
                far = rng.integers(0, n, size)
                nodes = np.unique(np.concatenate([near, far]))[: max(1, size)]
                nodes = rng.permutation(nodes)
                mbs[split].append(_one_hop(e, b, nodes, max(1, nodes.size // 4), rng))
    return open_plan(_write_plan(ds, ds.path / "plans" / name, mbs, {"train": len(sizes), "val": len(sizes)},
                                 {"train": epochs, "val": 1},
                                 {"fanouts": [2], "batch_size": 0, "seed": seed, "epochs": epochs, "handmade": True}))


def _check_pack(pack, plan, feats: np.ndarray, bound: float | None) -> dict:
    """Every invariant of a bounded pack; returns totals."""
    m = pack.manifest
    fb = m["feature_bytes"]
    padded = sum(pack.cold_path(s).stat().st_size for s in pack.splits)
    assert padded == m["packed_bytes"]
    if bound is not None:
        assert padded <= bound * fb, (padded, bound, fb)
        assert m["blowup"] <= bound and m["max_blowup"] == bound
    hot = {name: np.asarray(pack.tier_nodes(name)) for name in ("gpu", "host")}
    totals = {"table": 0, "cold": 0}
    for s in pack.splits:
        tsum = tmax = 0
        for i in range(pack.num_minibatches(s)):
            e = pack.entry(s, i)
            nodes = plan.input_nodes(s, i)
            assert set(np.unique(e.tier).tolist()) <= {COLD, HOST, GPU, TABLE}
            assert e.n_table == e.table_nodes.size and e.table_nodes.dtype == np.int64
            assert np.all(np.diff(e.table_nodes) > 0)
            # every input row in exactly one tier, and the tiers' rows are the input nodes
            assert np.array_equal(e.table_nodes[e.slot[e.tier == TABLE]], nodes[e.tier == TABLE])
            assert np.array_equal(e.cold_nodes[e.slot[e.tier == COLD]], nodes[e.tier == COLD])
            assert np.array_equal(hot["gpu"][e.slot[e.tier == GPU]], nodes[e.tier == GPU])
            assert np.array_equal(hot["host"][e.slot[e.tier == HOST]], nodes[e.tier == HOST])
            parts = [e.table_nodes, e.cold_nodes, nodes[e.tier == GPU], nodes[e.tier == HOST]]
            assert sum(p.size for p in parts) == nodes.size  # disjoint (the inputs are distinct)
            assert np.array_equal(np.sort(np.concatenate(parts)), np.sort(nodes))
            assert not np.isin(e.table_nodes, np.concatenate([hot["gpu"], hot["host"]])).any()
            # the table checksum, from the dataset's feature array (the oracle)
            assert pack.table_checksum(s, i) == data_checksum(np.ascontiguousarray(feats[e.table_nodes]))
            tsum += e.n_table
            tmax = max(tmax, e.n_table)
            totals["cold"] += e.n_cold
        assert m["splits"][s]["table_rows"] == tsum and pack.max_table_rows(s) == tmax
        totals["table"] += tsum
    assert m["table_rows"] == totals["table"]
    check_all_minibatches(pack, plan, feats)  # assembled (table rows from the feature table) == features[inputs]
    return totals


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dim=st.sampled_from([16, 3, 1100]), seed=st.integers(0, 10_000),
       sizes=st.lists(st.integers(1, 400), min_size=1, max_size=5), epochs=st.integers(1, 3),
       gpu_rows=st.integers(0, 60), host_rows=st.integers(0, 200), bound=st.floats(0, 12))
def test_bound_holds_and_every_row_is_in_one_tier(datasets, tmp_path_factory, dim, seed, sizes, epochs, gpu_rows,
                                                  host_rows, bound):
    from diskgraph.sampler.hot_set import expected_reads_per_epoch, select_hot_sets

    ds = datasets[dim]
    tmp = tmp_path_factory.mktemp("h")
    name = tmp.name
    plan = _plan(ds, name, seed, sizes, epochs)
    try:
        rb = ds.features.row_bytes
        tiers = select_hot_sets(expected_reads_per_epoch(plan), rb, gpu_rows * rb, host_rows * rb)
        pack = open_pack(pack_features(ds, plan, ds.path / "packs" / name, tiers=tiers, memory_budget=4 << 20,
                                       max_blowup=bound, threads=bool(seed % 2)))
        _check_pack(pack, plan, all_features(ds), bound)
        assert pack.verify(check_rows=3) == []
    finally:
        shutil.rmtree(ds.path / "packs" / name, ignore_errors=True)
        shutil.rmtree(ds.path / "plans" / name, ignore_errors=True)


def test_zero_packs_nothing(datasets):
    ds = datasets[16]
    plan = _plan(ds, "zero", 1, [50, 300, 1, 2, 200])
    feats = all_features(ds)
    rb = ds.features.row_bytes
    tiers = {"gpu": np.arange(0, 3000, 97), "host": np.arange(1, 3000, 89)}
    pack = open_pack(pack_features(ds, plan, ds.path / "packs" / "zero", tiers=tiers, memory_budget=1 << 20,
                                   max_blowup=0))
    m = pack.manifest
    assert m["packed_bytes"] == 0 and m["blowup"] == 0 and m["max_blowup"] == 0.0
    hot = np.concatenate([tiers["gpu"], tiers["host"]])
    for s in pack.splits:
        assert pack.cold_path(s).stat().st_size == 0
        for i in range(pack.num_minibatches(s)):
            e = pack.entry(s, i)
            nodes = plan.input_nodes(s, i)
            assert e.n_cold == 0 and not (e.tier == COLD).any()
            assert np.array_equal(e.table_nodes, np.setdiff1d(nodes, hot))
    assert _check_pack(pack, plan, feats, 0.0)["table"] > 0
    assert pack.verify(check_rows=100) == []
    assert rb == 64


def _oracle_cold_file(pack, plan, feats: np.ndarray, split: str) -> bytes:
    """What a version-2 packer wrote: per minibatch, its non-hot rows in ascending id, zero-padded to 4 KiB."""
    hot = np.concatenate([np.asarray(pack.tier_nodes(n)) for n in ("gpu", "host")])
    out = bytearray()
    for i in range(plan.num_minibatches(split)):
        ids = np.sort(np.setdiff1d(plan.input_nodes(split, i), hot))
        raw = np.ascontiguousarray(feats[ids]).tobytes()
        out += raw + bytes(-len(raw) % 4096)
    return bytes(out)


def test_unbounded_is_the_pack_of_before(datasets):
    """inf, None and a bound that every row fits pack every cold row: the same cold files and extent checksums as a
    version-2 packer wrote (rebuilt here from the features), and no table rows."""
    ds = datasets[3]
    plan = _plan(ds, "unbounded", 2, [120, 400, 7], epochs=3)
    feats = all_features(ds)
    rb = ds.features.row_bytes
    tiers = {"host": np.arange(0, 5000, 11)}
    packs = {}
    for label, bound in (("none", None), ("inf", float("inf")), ("large", 1e9)):
        packs[label] = open_pack(pack_features(ds, plan, ds.path / "packs" / f"u-{label}", tiers=tiers,
                                               memory_budget=1 << 20, max_blowup=bound))
    for label, pack in packs.items():
        m = pack.manifest
        assert m["format_version"] == PACK_VERSION == 3 and m["table_rows"] == 0
        assert m["max_blowup"] == (1e9 if label == "large" else None)
        for s in pack.splits:
            assert pack.cold_path(s).read_bytes() == _oracle_cold_file(pack, plan, feats, s)
            assert (pack.path / "checksums" / s / "c" / "0").read_bytes() == \
                (packs["none"].path / "checksums" / s / "c" / "0").read_bytes()
            assert m["splits"][s]["extent_checksums_sha256"] == packs["none"].manifest["splits"][s]["extent_checksums_sha256"]
            assert m["splits"][s]["max_table_rows"] == 0
            for i in range(pack.num_minibatches(s)):
                e = pack.entry(s, i)
                assert e.n_table == 0 and e.table_nodes.size == 0 and not (e.tier == TABLE).any()
                assert pack.table_checksum(s, i) == EMPTY
        assert m["blowup"] > 1 and m["packed_bytes"] > 0 and rb == 12
        assert pack.verify() == []


def test_enforced_without_warning_and_logged(datasets, caplog):
    ds = datasets[16]
    plan = _plan(ds, "logged", 3, [300, 300, 300])
    with caplog.at_level(logging.INFO, logger="diskgraph"):
        pack = open_pack(pack_features(ds, plan, ds.path / "packs" / "logged", tiers={}, memory_budget=1 << 20,
                                       max_blowup=0.5))
    m = pack.manifest
    assert m["blowup"] <= 0.5 and m["table_rows"] > 0 and m["table_page_reads"] > 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    lines = [r.getMessage() for r in caplog.records if "read from the feature table at training time" in r.getMessage()]
    assert len(lines) == 1 and f"{m['table_rows']} cold rows" in lines[0] and "page reads" in lines[0], lines


def test_rows_sharing_a_page_go_to_the_table_first(datasets):
    """A minibatch with one dense run (64 rows a page) and scattered rows: under a bound that fits the scattered rows,
    the dense run is read from the table and the scattered rows are packed."""
    ds = datasets[16]
    rng = np.random.default_rng(0)
    dense = np.arange(640, 640 + 256)  # 4 pages, 64 rows each
    scattered = np.arange(1000, 3000, 64)[:20]  # each alone on its page
    nodes = rng.permutation(np.concatenate([dense, scattered]))
    plan = open_plan(_write_plan(ds, ds.path / "plans" / "dense", {"train": [_one_hop(0, 0, nodes, 4, rng)]},
                                 {"train": 1}, {"train": 1},
                                 {"fanouts": [2], "batch_size": 0, "seed": 0, "epochs": 1, "handmade": True}))
    fb = ds.num_nodes * ds.features.row_bytes
    pack = open_pack(pack_features(ds, plan, ds.path / "packs" / "dense", tiers={}, memory_budget=1 << 20,
                                   max_blowup=4096 / fb))
    e = pack.entry("train", 0)
    assert np.array_equal(e.cold_nodes, scattered) and np.array_equal(e.table_nodes, dense)
    assert pack.manifest["table_page_reads"] == 4


def test_check_table_rows_refuses_other_bytes(datasets):
    ds = datasets[16]
    plan = _plan(ds, "damaged", 4, [200, 300])
    pack = open_pack(pack_features(ds, plan, ds.path / "packs" / "damaged", tiers={}, memory_budget=1 << 20,
                                   max_blowup=0.1))
    i = next(i for i in range(pack.num_minibatches("train")) if pack.entry("train", i).n_table)
    e = pack.entry("train", i)
    raw = table_rows(ds.features, e.table_nodes)
    pack.check_table_rows("train", i, e, raw)
    bad = raw.copy()
    bad[5] ^= 1
    for data in (bad, raw[:-1]):
        with pytest.raises(FormatError) as ei:
            pack.check_table_rows("train", i, e, data)
        msg = str(ei.value)
        assert "\n" not in msg and f"minibatch {i} of train" in msg and "features" in msg and "pack the plan again" in msg


def _as_version_2(src: Path, dst: Path) -> None:
    """Rewrite a pack without table rows as a version-2 packer wrote it: the index without n_table/table_nodes, no
    table_checksums, the manifest of version 2."""
    shutil.copytree(src, dst)
    shutil.rmtree(dst / "table_checksums")
    m = json.loads((dst / "manifest.json").read_text())
    schema = index_schema(2)
    for s in m["splits"]:
        path = dst / "index" / f"{s}.arrow"
        r = pa.ipc.open_file(pa.memory_map(str(src / "index" / f"{s}.arrow")))
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as w:
            for i in range(r.num_record_batches):
                b = r.get_batch(i)
                assert b.column("n_table").to_numpy()[0] == 0
                cols = [(b.column(f.name).values if pa.types.is_list(f.type) else b.column(f.name)).to_numpy()
                        for f in list(schema)[1:]]
                w.write_batch(checksummed_record_batch(cols, schema))
        info = m["splits"][s]
        info["index_bytes"] = path.stat().st_size
        for key in ("table_rows", "max_table_rows", "table_page_reads", "table_checksums_sha256"):
            info.pop(key)
    for key in ("max_blowup", "table_rows", "table_page_reads", "unbounded_packed_bytes"):
        m.pop(key)
    m["format_version"] = 2
    m["checksum"] = manifest_checksum(m)
    (dst / "manifest.json").write_text(json.dumps(m))


def test_version_2_pack_reads_and_version_4_is_refused(datasets):
    ds = datasets[16]
    plan = _plan(ds, "v2", 5, [100, 250])
    feats = all_features(ds)
    v3 = pack_features(ds, plan, ds.path / "packs" / "v3", tiers={"gpu": np.arange(10)}, memory_budget=1 << 20)
    v2 = ds.path / "packs" / "v2"
    _as_version_2(v3, v2)
    pack = open_pack(v2)
    assert pack.format_version == 2 and pack.table_rows == 0 and pack.max_table_rows("train") == 0
    e = pack.entry("train", 1)
    assert e.n_table == 0 and e.table_nodes.dtype == np.int64 and e.table_nodes.size == 0
    assert pack.table_checksum("train", 1) == EMPTY
    pack.check_table_rows("train", 1, e, np.zeros(0, np.uint8))
    check_all_minibatches(pack, plan, feats)
    assert pack.verify() == []
    from diskgraph.preprocess import pack_difference

    assert "--max-blowup" in pack_difference(v2, ds, plan.path, gpu_cache=640, max_blowup=10)
    assert pack_difference(v2, ds, plan.path, gpu_cache=640, max_blowup=None) is None
    newer = ds.path / "packs" / "v4"
    shutil.copytree(v3, newer)
    m = json.loads((newer / "manifest.json").read_text())
    m["format_version"] = 4
    m["checksum"] = manifest_checksum(m)
    (newer / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(FormatError) as ei:
        open_pack(newer)
    msg = str(ei.value)
    assert "\n" not in msg and "format_version 4" in msg and "upgrade" in msg


def test_pack_difference_sees_another_bound(datasets):
    from diskgraph.preprocess import pack_difference

    ds = datasets[16]
    plan = _plan(ds, "diff", 6, [100])
    out = pack_features(ds, plan, ds.path / "packs" / "diff", tiers={}, memory_budget=1 << 20, max_blowup=2)
    assert pack_difference(out, ds, plan.path, max_blowup=2) is None
    assert pack_difference(out, ds, plan.path, max_blowup=2.0) is None
    assert pack_difference(out, ds, plan.path, max_blowup=3) == "--max-blowup 2.0 there, 3.0 in this run"
    assert "inf in this run" in pack_difference(out, ds, plan.path, max_blowup=float("inf"))
    with pytest.raises(InputError, match=">= 0"):
        pack_features(ds, plan, ds.path / "packs" / "neg", tiers={}, memory_budget=1 << 20, max_blowup=-1)


def test_verify_finds_a_broken_table_invariant(datasets):
    ds = datasets[16]
    plan = _plan(ds, "verify", 7, [300, 300])
    out = pack_features(ds, plan, ds.path / "packs" / "verify", tiers={}, memory_budget=1 << 20, max_blowup=0.2)
    assert open_pack(out).verify(check_rows=100) == []
    # another table checksum array, under a manifest rewritten to match
    bad = ds.path / "packs" / "verify-bad"
    shutil.copytree(out, bad)
    arr = bad / "table_checksums" / "train" / "c" / "0"
    values = np.fromfile(arr, dtype=np.uint64)
    values[0] ^= 1
    values.tofile(arr)
    m = json.loads((bad / "manifest.json").read_text())
    m["splits"]["train"]["table_checksums_sha256"] = array_sha256(values)
    m["checksum"] = manifest_checksum(m)
    (bad / "manifest.json").write_text(json.dumps(m))
    problems = open_pack(bad).verify(check_rows=100)
    assert any("minibatch 0 of train" in p and "table_checksums/train" in p for p in problems), problems


def test_cli_preprocess_all_cora_max_blowup_2(shared_dataset, tmp_path, cli):
    out = tmp_path / "cora"
    r = cli.run("preprocess", "all", "--npz", shared_dataset("cora"), "--out", out, "--fanouts", "15,10",
                "--batch-size", "1024", "--seed", "0", "--max-blowup", "2", "-q")
    assert r.rc == 0, r.err
    r = cli.run("inspect", out, "--json")
    assert r.rc == 0, r.err
    pack = json.loads(r.out)["packs"]["default"]
    assert pack["blowup"] <= 2 and pack["max_blowup"] == 2.0 and "table_rows" in pack
    assert pack["packed_bytes"] <= 2 * pack["feature_bytes"]
    r = cli.run("preprocess", "pack", out, "--max-blowup", "-1", "-q")
    assert r.rc == 2 and "--max-blowup" in r.err
