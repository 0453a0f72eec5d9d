"""`diskgraph plan --max-blowup B` and `--disk-budget SIZE` (issue 17): the planner's prediction of a bounded pack —
blow-up, rows left in the feature table and their page reads — against what `preprocess pack --max-blowup B` writes;
the epoch time with the table reads; the disk budget's choice of B (and that the pack made with it fits); refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diskgraph.capacity import compute, probes
from diskgraph.capacity.bounded import largest_fitting_blowup
from diskgraph.capacity.estimate import estimate_plan
from diskgraph.capacity.profile import PROFILE_FORMAT, PROFILE_VERSION, Hardware, apply_overrides, load_profile, save_profile
from diskgraph.capacity.workload import sample_workload
from diskgraph.generate import generate_dataset
from diskgraph.preprocess import run_pack, run_sample

MiB = 1 << 20
FANOUTS, BATCH = [5, 5], 64


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


@pytest.fixture(scope="module")
def profile(tmp_path_factory) -> Path:
    """A rough profile of this machine from the calibration's cheap probes (as in test_plan.py), with the queued
    random-read figure the table reads are timed with."""
    import torch

    tmp = tmp_path_factory.mktemp("hw")
    dev = torch.device("cpu")
    prof = {"format": PROFILE_FORMAT, "version": PROFILE_VERSION, "machine": probes.measure_machine("cpu"),
            "disk": probes.measure_disk(tmp, 16 * MiB, random_reads=64), "memory": probes.measure_memory(8 * MiB),
            "gather": probes.measure_gather(dev, rows=2000, table_rows=4000),
            "read_stage": probes.measure_read_stage(quick=True),
            "compute": compute.measure_compute(dev, models=("sage",), quick=True),
            "process": {"base_anon_bytes": 200 * MiB, "bytes_per_activation_element": 4.0}}
    return save_profile(Hardware(prof), tmp / "hardware.json")


@pytest.fixture(scope="module")
def graph(tmp_path_factory) -> Path:
    """The planner tests' graph (test_plan.py), sampled once with the plan every test here packs."""
    out = tmp_path_factory.mktemp("bounded") / "g"
    ds = generate_dataset(out, nodes=6000, edges=60000, feature_dim=24, classes=4, split="random:0.5,0.2,0.2")
    run_sample(ds, name="p", fanouts=FANOUTS, batch_size=BATCH)
    return ds


def _pack(ds: Path, b, host: int = 0) -> dict:
    run_pack(ds, plan="p", name="p", host_cache=host, memory_budget=64 * MiB, max_blowup=b, overwrite=True)
    m = json.loads((ds / "packs" / "p" / "manifest.json").read_text())
    m["dir_bytes"] = dir_bytes(ds / "packs" / "p")
    m["cold_rows_all"] = sum(s["cold_rows"] + s["table_rows"] for s in m["splits"].values())
    return m


def test_queued_random_reads_and_the_table_reader_are_measured(profile):
    disk = load_profile(profile).get("disk")
    assert disk["rand_read_depth"] == 8 and disk["rand_read_iops_qd"] > 0 and disk["table_read_rps"] > 0
    assert not list(Path(disk["path"]).glob(".diskgraph-probe-*"))  # the probe file and its table view are removed


@pytest.mark.parametrize("b", [2.0, 0.5, 0.0])
def test_every_minibatch_sampled_predicts_the_bounded_pack_exactly(graph, profile, b):
    w = sample_workload(graph, fanouts=FANOUTS, batch_size=BATCH, sample_minibatches=1000)
    assert w.exhaustive
    est = estimate_plan(w, load_profile(profile), max_blowup=b, alternatives=False, time_steps=False)
    got = _pack(graph, b)
    assert got["table_rows"] > 0  # the bound binds (the unbounded pack is about 9x here)
    assert est["packed_bytes"] == got["packed_bytes"]  # the packer's two passes, replayed on every minibatch
    assert est["blowup"] == pytest.approx(got["blowup"], abs=1e-4)
    assert est["table_rows"] == got["table_rows"]
    assert est["table_page_reads"] == got["table_page_reads"]
    assert est["bounded"]["exact"] and est["bounded"]["unbounded"]["packed_bytes"] == got["unbounded_packed_bytes"]
    for split, s in got["splits"].items():  # the slack goes to the splits in plan order, as the packer spends it
        mine = est["bounded"]["splits"][split]
        assert (mine["table_rows"], mine["table_page_reads"], mine["padded_bytes"]) == \
            (s["table_rows"], s["table_page_reads"], s["padded_bytes"])
    assert est["footprint"]["pack_bytes"] == pytest.approx(got["dir_bytes"], rel=0.02)


@pytest.mark.parametrize("host", [0, 96_000])
def test_a_sample_predicts_the_bounded_pack_within_tolerance(graph, profile, host):
    """12 of 47 training minibatches sampled (and 12 of 19 val and test ones). Measured on this graph at B = 1 and 0.5
    (docs/planning.md): blow-up within 0.5 %, table rows within 3.1 %, page reads within 5 %, the training split's
    within 3.9 % and 4.3 %; closer to the unbounded blow-up, where few rows stay in the table, the relative error of those few is larger."""
    w = sample_workload(graph, fanouts=FANOUTS, batch_size=BATCH, sample_minibatches=12)
    assert not w.exhaustive
    hw = load_profile(profile)
    for b in (1.0, 0.5):
        est = estimate_plan(w, hw, host_cache=host, max_blowup=b, alternatives=False, time_steps=False)
        got = _pack(graph, b, host)
        assert est["blowup"] <= b and got["blowup"] <= b
        assert est["blowup"] == pytest.approx(got["blowup"], rel=0.02)
        assert est["table_rows"] == pytest.approx(got["table_rows"], rel=0.08)
        assert est["table_page_reads"] == pytest.approx(got["table_page_reads"], rel=0.12)
        train, mine = got["splits"]["train"], est["bounded"]["splits"]["train"]
        assert mine["table_rows"] == pytest.approx(train["table_rows"], rel=0.08)
        assert mine["table_page_reads"] == pytest.approx(train["table_page_reads"], rel=0.12)
        print(f"host {host} B {b}: blow-up {est['blowup']:.4f}/{got['blowup']:.4f}, table rows {est['table_rows']}/"
              f"{got['table_rows']}, pages {est['table_page_reads']}/{got['table_page_reads']}, train rows "
              f"{mine['table_rows']}/{train['table_rows']}, pages {mine['table_page_reads']}/{train['table_page_reads']}")
        assert not est["bounded"]["exact"]


def test_table_reads_cost_read_time(graph, profile):
    w = sample_workload(graph, fanouts=FANOUTS, batch_size=BATCH, sample_minibatches=1000)
    hw = apply_overrides(load_profile(profile), {"disk_queue_iops": 200})  # a slow disk: 5 ms per table request
    est = estimate_plan(w, hw, max_blowup=0.0, alternatives=False, time_steps=False)
    bd, ep = est["bounded"], est["epoch"]
    assert bd["binding"] and ep["table_requests"] > 0 and ep["table_page_reads"] >= ep["table_requests"]
    # each request at the queued rate, the pages beyond its first at the sequential rate
    seq = hw.get("disk.seq_read_Bps")
    assert ep["table_io_s"] == pytest.approx(ep["table_requests"] / 200
                                             + (ep["table_bytes_read"] - 4096 * ep["table_requests"]) / seq, rel=0.01)
    assert bd["read_s"] > bd["unbounded"]["read_s"] + 0.9 * ep["table_io_s"]
    assert est["epoch_s"] > bd["unbounded"]["epoch_s"]
    assert est["bytes_read_per_epoch"] == ep["bytes_read"] and ep["table_bytes_read"] > 0
    # without the flag, the table reader's own rate from the calibration times the requests
    own = estimate_plan(w, load_profile(profile), max_blowup=0.0, alternatives=False, time_steps=False)
    assert "the table reader's rate" in own["epoch"]["how"]
    assert own["epoch"]["table_io_s"] == pytest.approx(
        own["epoch"]["table_requests"] / load_profile(profile).get("disk.table_read_rps")
        + (own["epoch"]["table_bytes_read"] - 4096 * own["epoch"]["table_requests"]) / seq, rel=0.01)
    # a bound above the unbounded blow-up changes nothing
    loose = estimate_plan(w, hw, max_blowup=100, alternatives=False, time_steps=False)
    free = estimate_plan(w, hw, max_blowup=None, alternatives=False, time_steps=False)
    assert loose["packed_bytes"] == free["packed_bytes"] and loose["table_rows"] == 0
    assert loose["epoch_s"] == pytest.approx(free["epoch_s"], rel=1e-9)


def test_disk_budget_picks_a_bound_whose_pack_fits(cli, graph, profile):
    base = ["plan", graph, "--fanouts", "5,5", "--batch-size", "64", "--profile", profile, "--no-time-steps", "--json"]
    free = json.loads(cli.run(*base, "--max-blowup", "inf", "--no-alternatives").out)
    size = int(free["footprint"]["pack_bytes"] * 0.4)
    r = cli.run(*base, "--disk-budget", str(size), "--host-cache", "64K")
    assert r.rc == 0, r.err
    est = json.loads(r.out)
    disk = est["disk_budget"]
    assert disk["fits"] and 0 < disk["max_blowup"] < free["blowup"]
    assert est["max_blowup"] == disk["max_blowup"] and est["footprint"]["pack_bytes"] <= size
    assert disk["epoch_s"] == est["epoch_s"] and disk["unbounded_epoch_s"] == est["bounded"]["unbounded"]["epoch_s"]
    got = _pack(graph, disk["max_blowup"], 64 << 10)
    assert got["dir_bytes"] <= size  # the pack written with that B fits
    # the cache splits compared are each packed at the bound that fits; the recommended one fits the disk too
    assert all(a["fits_disk"] is not None for a in est["alternatives"])
    assert est["recommended"]["fits_disk"] and est["recommended"]["pack_bytes"] <= size
    # enough disk for the unbounded pack: no bound needed
    big = json.loads(cli.run(*base, "--disk-budget", "1G", "--no-alternatives").out)
    assert big["disk_budget"]["fits"] and big["disk_budget"]["max_blowup"] is None and big["max_blowup"] is None
    # not even the hot tiers: said in one sentence, and the plan is made at B = 0
    r = cli.run(*base[:-1], "--disk-budget", "100K", "--host-cache", "128K", "--no-alternatives")
    assert r.rc == 0, r.err
    assert "even --max-blowup 0 does not fit --disk-budget 100.0 KiB" in r.out


def test_table_output(cli, graph, profile):
    r = cli.run("plan", graph, "--fanouts", "5,5", "--batch-size", "64", "--profile", profile, "--no-time-steps",
                "--max-blowup", "1", "--no-alternatives")
    assert r.rc == 0, r.err
    assert "--max-blowup" in r.out and "table rows" in r.out and "epoch, unbounded pack" in r.out


def test_largest_fitting_blowup():
    assert largest_fitting_blowup(1000, 200, 400, 10_000) == 2.0
    assert largest_fitting_blowup(1000, 200, 300, 10_000) == 2.666
    assert largest_fitting_blowup(1000, 200, 300, 700) is None
    assert largest_fitting_blowup(100, 200, 300, 700) is False
    assert largest_fitting_blowup(200, 200, 300, 700) == 0.0


def test_summary_graph_with_a_bound(cli, profile):
    r = cli.run("plan", "--nodes", "40000", "--edges", "400000", "--feature-dim", "32", "--fanouts", "5,5",
                "--batch-size", "256", "--profile", profile, "--sample-minibatches", "8", "--no-alternatives", "--json",
                "--no-time-steps", "--max-blowup", "0.5")
    assert r.rc == 0, r.err
    est = json.loads(r.out)
    assert est["blowup"] <= 0.5 and est["table_rows"] > 0 and est["table_page_reads"] > 0


def test_help_and_refusals(cli, refused, graph, profile):
    r = cli.run("plan", "--help")
    assert r.rc == 0 and "--max-blowup" in r.out and "--disk-budget" in r.out and "--disk-queue-iops" in r.out
    r = cli.run("plan", graph, "--print-config")
    assert r.rc == 0 and "max_blowup = 10.0" in r.out and "# disk_budget = (not set)" in r.out
    base = ["plan", graph, "--profile", profile]
    refused(cli.run(*base, "--max-blowup", "-1"), "--max-blowup")
    refused(cli.run(*base, "--max-blowup", "lots"), "--max-blowup")
    refused(cli.run(*base, "--max-blowup", "nan"), "--max-blowup")
    refused(cli.run(*base, "--disk-budget", "0"), "--disk-budget")
    refused(cli.run(*base, "--disk-budget", "big"), "--disk-budget")
    refused(cli.run(*base, "--disk-budget", "1G", "--max-blowup", "2"), "--disk-budget", "--max-blowup")
    refused(cli.run(*base, "--disk-queue-iops", "0"), "--disk-queue-iops")
