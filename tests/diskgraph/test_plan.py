"""`diskgraph plan`: the estimator against actual packing, the JSON interface, the summary path and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from diskgraph.capacity import hardware as hwmod
from diskgraph.capacity.estimate import estimate_plan
from diskgraph.capacity.hardware import Hardware, apply_overrides, load_profile, nnls, save_profile
from diskgraph.capacity.workload import sample_workload
from diskgraph.generate import generate_dataset
from diskgraph.preprocess import run_pack, run_sample
from diskgraph.store.errors import InputError

MiB = 1 << 20


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


@pytest.fixture(scope="module")
def profile(tmp_path_factory) -> Path:
    """A real (if rough) profile of this machine, from the calibration's cheap measurements; the process baseline is
    this test process's own memory (the full baseline run is exercised by the slow test below)."""
    import torch

    tmp = tmp_path_factory.mktemp("hw")
    dev = torch.device("cpu")
    rss = int(open("/proc/self/status").read().split("RssAnon:")[1].split()[0]) * 1024
    prof = {"format": hwmod.PROFILE_FORMAT, "version": hwmod.PROFILE_VERSION, "machine": hwmod._machine("cpu"),
            "disk": hwmod.measure_disk(tmp, 16 * MiB, random_reads=50), "memory": hwmod.measure_memory(8 * MiB),
            "gather": hwmod.measure_gather(dev, rows=2000, table_rows=4000),
            "read_stage": hwmod.measure_read_stage(quick=True),
            "compute": hwmod.measure_compute(dev, models=("sage",), quick=True),
            "process": {"base_anon_bytes": rss, "bytes_per_activation_element": 4.0}}
    return save_profile(Hardware(prof), tmp / "hardware.json")


@pytest.fixture(scope="module")
def graph(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plan") / "g"
    return generate_dataset(out, nodes=6000, edges=60000, feature_dim=24, classes=4, split="random:0.5,0.2,0.2")


def _actual(ds: Path, name: str, fanouts, batch, host, gpu=0) -> dict:
    run_sample(ds, name=name, fanouts=fanouts, batch_size=batch, overwrite=True)
    run_pack(ds, plan=name, name=name, host_cache=host, gpu_cache=gpu, memory_budget=64 * MiB, overwrite=True)
    m = json.loads((ds / "packs" / name / "manifest.json").read_text())
    return {"packed": m["packed_bytes"], "blowup": m["blowup"], "plan": dir_bytes(ds / "plans" / name),
            "pack": dir_bytes(ds / "packs" / name), "index": {s: v["index_bytes"] for s, v in m["splits"].items()},
            "host_hit": m["splits"]["train"]["host_rows"] / m["splits"]["train"]["input_rows"]}


@pytest.mark.parametrize("fanouts,batch,host,gpu", [([5, 5], 256, 64 << 10, 0), ([10, 5, 2], 500, 0, 32 << 10)])
def test_exhaustive_sample_predicts_the_pack_exactly(graph, profile, fanouts, batch, host, gpu):
    hw = load_profile(profile)
    w = sample_workload(graph, fanouts=fanouts, batch_size=batch, sample_minibatches=1000)
    assert w.exhaustive
    est = estimate_plan(w, hw, gpu_cache=gpu, host_cache=host, alternatives=False, time_steps=False)
    got = _actual(graph, "exact", fanouts, batch, host, gpu)
    assert est["packed_bytes"] == got["packed"]  # every extent is sized from the packer's own kernel
    assert est["blowup"] == pytest.approx(got["blowup"], abs=1e-4)
    fp = est["footprint"]
    assert fp["plan_bytes"] == pytest.approx(got["plan"], rel=0.02)
    assert fp["pack_bytes"] == pytest.approx(got["pack"], rel=0.02)
    for split, size in got["index"].items():
        assert fp["index_bytes"][split] == pytest.approx(size, rel=0.01)


def test_partial_sample_footprint_within_ten_percent(graph, profile):
    hw = load_profile(profile)
    w = sample_workload(graph, fanouts=[5, 5], batch_size=64, sample_minibatches=12)
    assert not w.exhaustive and w.splits["train"].total > 3 * w.splits["train"].k
    est = estimate_plan(w, hw, host_cache=24 * 1000 * 4, alternatives=False, time_steps=False)
    got = _actual(graph, "partial", [5, 5], 64, 24 * 1000 * 4)
    assert est["packed_bytes"] == pytest.approx(got["packed"], rel=0.10)
    assert est["footprint"]["plan_bytes"] + est["footprint"]["pack_bytes"] == pytest.approx(got["plan"] + got["pack"], rel=0.10)
    assert est["hit_rate"]["host"] == pytest.approx(got["host_hit"], abs=0.05)


def test_json_interface(cli, graph, profile):
    r = cli.run("plan", graph, "--fanouts", "10,5", "--batch-size", "512", "--host-cache", "64K", "--json",
                "--profile", profile)
    assert r.rc == 0, r.err
    est = json.loads(r.out)  # exactly one JSON object on stdout
    for key in ("packed_bytes", "blowup", "peak_host_bytes", "epoch_s", "bottleneck"):
        assert key in est
    assert est["packed_bytes"] > 0 and est["blowup"] > 0 and est["peak_host_bytes"] > 0 and est["epoch_s"] > 0
    assert est["bottleneck"] in ("read", "assemble", "compute")
    stages = est["epoch"]["stage_s"]
    assert est["epoch_s"] >= max(stages.values())  # the pipeline is never faster than its slowest stage
    assert est["config"]["host_cache_bytes"] == 64 << 10 and est["config"]["fanouts"] == [10, 5]
    alts = est["alternatives"]
    assert alts and [a["host_cache_bytes"] for a in alts] == sorted(a["host_cache_bytes"] for a in alts)
    assert alts[0]["blowup"] >= alts[-1]["blowup"]  # more cache, fewer cold rows
    assert est["recommended"] in alts
    assert est["compute_scale"] is not None  # this host calibrated the profile: steps were timed here


def test_table_and_summary_graph(cli, profile):
    r = cli.run("plan", "--nodes", "40000", "--edges", "400000", "--feature-dim", "32", "--fanouts", "5,5",
                "--batch-size", "256", "--host-cache", "1M", "--profile", profile, "--sample-minibatches", "8",
                "--no-alternatives")
    assert r.rc == 0, r.err
    assert "blow-up" in r.out and "bottleneck" in r.out and "synthetic R-MAT graph" in r.out
    r = cli.run("plan", "--nodes", "40000", "--edges", "400000", "--feature-dim", "32", "--fanouts", "5,5",
                "--batch-size", "256", "--profile", profile, "--sample-minibatches", "8", "--no-alternatives", "--json",
                "--disk-read-bw", "100MB")
    est = json.loads(r.out)
    assert est["footprint"]["dataset_parts"]["features"] == 40000 * 32 * 4
    assert est["hardware"]["flags"] == ["disk.seq_read_Bps"] and est["hardware"]["disk_read_Bps"] == 100e6
    assert "import" in est["preprocess"]


def test_slower_disk_makes_reading_slower(graph, profile):
    w = sample_workload(graph, fanouts=[5, 5], batch_size=256, sample_minibatches=1000)
    fast = estimate_plan(w, load_profile(profile), alternatives=False, time_steps=False)
    slow_hw = apply_overrides(load_profile(profile), {"disk_read_bw": 1e6})
    slow = estimate_plan(w, slow_hw, alternatives=False, time_steps=False)
    assert slow["epoch"]["stage_s"]["read"] > 10 * fast["epoch"]["stage_s"]["read"]
    assert slow["bottleneck"] == "read"


def test_refusals(cli, refused, graph, profile, tmp_path):
    refused(cli.run("plan", "--profile", profile), "nothing to plan")
    refused(cli.run("plan", graph, "--nodes", "10", "--profile", profile), "--nodes")
    refused(cli.run("plan", "--nodes", "10", "--edges", "20", "--profile", profile), "--feature-dim")
    refused(cli.run("plan", graph, "--fanouts", "0,5", "--profile", profile), "fanout")
    refused(cli.run("plan", tmp_path / "missing", "--profile", profile), "missing")
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    refused(cli.run("plan", graph, "--profile", bad), "--profile")
    refused(cli.run("plan", graph, "--profile", profile, "--disk-read-bw", "0"), "--disk-read-bw")
    refused(cli.run("plan", graph, "--profile", profile, "--plot", tmp_path / "p.png", "--no-alternatives"), "--plot")


def test_plot(cli, graph, profile, tmp_path):
    out = tmp_path / "plan.png"
    r = cli.run("plan", graph, "--fanouts", "5,5", "--batch-size", "256", "--profile", profile, "--plot", out,
                "--no-time-steps")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert r.rc == 2 and "matplotlib" in r.err and not out.exists()
        return
    assert r.rc == 0, r.err
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_profile_files(tmp_path):
    p = tmp_path / "hw.json"
    with pytest.raises(InputError, match="does not exist"):
        load_profile(p)
    save_profile(Hardware({"format": hwmod.PROFILE_FORMAT, "version": hwmod.PROFILE_VERSION + 1}), p)
    with pytest.raises(InputError, match="newer"):
        load_profile(p)


def test_nnls_keeps_coefficients_non_negative():
    rng = np.random.default_rng(0)
    x = np.column_stack([np.ones(20), rng.random(20), rng.random(20)])
    y = 2.0 + 3.0 * x[:, 1] - 0.5 * x[:, 2]  # the true third coefficient is negative
    c = nnls(x, y)
    assert (c >= 0).all() and c[2] == 0
    assert c[1] == pytest.approx(3.0, rel=0.2)


@pytest.mark.slow
def test_calibrate_command(cli, tmp_path):
    prof = tmp_path / "hw.json"
    r = cli.run("plan", "--calibrate", "--quick-calibration", "--profile", prof, "--probe-dir", tmp_path)
    assert r.rc == 0, r.err
    hw = load_profile(prof)
    assert hw.get("disk.seq_read_Bps") > 0 and hw.get("process.base_anon_bytes") > 50 * MiB
    assert set(hw.get("compute.models")) == {"sage", "gcn", "gat"}
