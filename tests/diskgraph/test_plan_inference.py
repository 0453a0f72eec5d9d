"""`diskgraph plan --inference`: the exact-inference estimate against what `predict` / `embed` and the layer-wise
engine actually do — the output's arrays and the scratch tables to the byte, the partitions and slice reads of every
layer — and the CLI's section, JSON fields and refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from diskgraph.capacity.profile import PROFILE_FORMAT, PROFILE_VERSION, Hardware, save_profile
from diskgraph.capacity.inference import estimate_inference, estimate_inference_for_dataset
from diskgraph.generate import generate_dataset
from diskgraph.store.dataset import open_dataset

IN_DIM, CLASSES = 24, 4


def _files(path: Path) -> dict[str, int]:
    return {str(f.relative_to(path)): f.stat().st_size for f in Path(path).rglob("*") if f.is_file()}


@pytest.fixture(scope="module")
def profile(tmp_path_factory) -> Path:
    """A complete, made-up profile of another machine (no calibration: the estimate's arithmetic is what is tested)."""
    coef = [1e-4, 1e-11, 1e-9, 1e-9]
    prof = {"format": PROFILE_FORMAT, "version": PROFILE_VERSION,
            "machine": {"hostname": "elsewhere", "cores": 2, "device": "cpu", "host_memory_bytes": 8 << 30},
            "disk": {"seq_read_Bps": 2e9, "write_Bps": 1e9, "rand_read_iops": 20000, "read_latency_s": 5e-5},
            "memory": {"copy_Bps": 5e9},
            "gather": {"hot_row_s": 2e-7, "hot_byte_s": 1e-9, "cold_row_s": 1e-7, "cold_byte_s": 3e-10},
            "read_stage": {"per_minibatch_s": 1e-4, "per_node_s": 1e-8, "per_edge_s": 1e-8},
            "compute": {"models": {m: {"train": coef, "eval": coef} for m in ("sage", "gcn", "gat")},
                        "thread_speedup": 1.5},
            "process": {"base_anon_bytes": 250 << 20, "bytes_per_activation_element": 4.0},
            "pipeline": {"epoch_factor": 1.0}}
    return save_profile(Hardware(prof), tmp_path_factory.mktemp("hw") / "hardware.json")


@pytest.fixture(scope="module")
def graph(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plan-inference") / "g"
    return generate_dataset(out, nodes=3000, edges=30000, feature_dim=IN_DIM, classes=CLASSES,
                            split="random:0.5,0.2,0.2")


@pytest.fixture(scope="module")
def run(graph, tmp_path_factory) -> Path:
    """A trained 2-layer SAGE whose first layer projects (hidden 16 < 24 inputs): layer 1 and layer 2 tables."""
    from diskgraph.cli import main

    r = tmp_path_factory.mktemp("run") / "r"
    assert main(["train", str(graph), "--reference", "--fanouts", "5,5", "--batch-size", "256", "--epochs", "1",
                 "--hidden", "16", "--run-dir", str(r), "--device", "cpu", "-q"]) == 0
    return r


def _predict(monkeypatch, graph, run, out: Path, **options) -> tuple[dict, dict, dict]:
    """Run inference; returns (its summary, the output's files, the scratch files at their largest: when a layer's
    state is written, its input tables and the next layer's are both there)."""
    from diskgraph.inference import run_inference, scratch_dir
    from diskgraph.inference_options import InferenceOptions
    from diskgraph.pipeline import layerwise

    real_rmtree, real_state = shutil.rmtree, layerwise._write_state
    scratch: dict[str, int] = {}

    def record(path: Path) -> None:
        now = _files(path)
        if sum(now.values()) > sum(scratch.values()):
            scratch.clear()
            scratch.update(now)

    def recording(path, *a, **k):
        path = Path(path)
        if path.name.endswith(".diskgraph-inference") and path.is_dir():
            record(path)
        return real_rmtree(path, *a, **k)

    def state_written(path, *a, **k):
        real_state(path, *a, **k)
        record(scratch_dir(out))

    monkeypatch.setattr(shutil, "rmtree", recording)
    monkeypatch.setattr(layerwise, "_write_state", state_written)
    summary = run_inference(graph, InferenceOptions(run=str(run), out=str(out), **options))
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    monkeypatch.setattr(layerwise, "_write_state", real_state)
    return summary, _files(out), scratch


def _check(est: dict, summary: dict, out_files: dict, scratch: dict) -> None:
    arrays = {k: v for k, v in out_files.items() if "/" in k}
    assert est["output"]["arrays_bytes"] == sum(arrays.values())  # every array, chunk padding and zarr.json: exact
    for name, rec in est["output"]["arrays"].items():
        assert rec["bytes"] == sum(v for k, v in arrays.items() if k.startswith(name + "/")), name
    assert est["output"]["group_bytes"] == out_files["zarr.json"]
    assert abs(est["output_bytes"] - sum(out_files.values())) <= 1024  # the manifest: about 2 KiB
    assert est["scratch_bytes"] == sum(scratch.values())  # tables, their metadata and the state file: exact
    assert est["scratch"]["peak_bytes"] - est["scratch"]["state_bytes"] == sum(v for k, v in scratch.items() if "/" in k)
    layers = [s for s in summary["layers"] if s["layer"] >= 1]  # (layer 0: the pass over the features, if any)
    assert est["partitions"] == [s["partitions"] for s in layers]
    got = [p for p in est["passes"] if "layer" in p]
    assert [p["slices_read"] for p in got] == [s["slices_read"] for s in layers]
    assert [p["resident_slices"] for p in got] == [s["resident_slices"] for s in layers]
    assert [p["slice_rows"] for p in got] == [s["slice_rows"] for s in layers]
    assert [p["edges"] for p in got] == [s["edges"] for s in layers]
    assert [p["partition_order"] for p in got] == [bool(s.get("partition_order")) for s in layers]
    assert est["partition_order"] == [p["partition_order"] for p in got]
    assert [p["destinations"] for p in got] == [s["destinations"] for s in layers]
    assert est["seconds"] > 0 and est["peak_host_bytes"] > 250 << 20 and est["read_bytes"] > 0


@pytest.mark.parametrize("budget", [256 << 20, 400_000, 200_000])
def test_predict_footprint_and_partitions_match_the_run(monkeypatch, graph, run, profile, tmp_path, budget):
    """At 200 KB layer 1's table (the projected features) is written in partition order: one unpadded file, read by
    runs; the state file records it."""
    from diskgraph.capacity.profile import load_profile

    summary, out_files, scratch = _predict(monkeypatch, graph, run, tmp_path / "pred", memory_budget=budget)
    est = estimate_inference_for_dataset(graph, load_profile(profile), model="sage", hidden=16, layers=2,
                                         kind="predict", memory_budget=budget)
    _check(est, summary, out_files, scratch)
    assert set(est["scratch"]["tables"]) == {"layer1", "layer2"}
    if budget < 1 << 20:
        assert max(est["partitions"]) > 1  # the small budget cuts the layers
    if budget == 200_000:
        assert est["partition_order"] == [True, False]  # the final layer's table is the run's own (node order)
        assert summary["layers"][0]["pass"] == "layer 1 inputs (partition order)"
        gather = est["scratch"]["tables"]["layer1"]["gather"]
        assert gather["partition_order"] and gather["data_bytes"] == open_dataset(graph).num_nodes * 16 * 4
        assert "layer1/gather-dst/zarr.json" not in scratch  # SAGE that projects reads no destination G rows
        assert est["passes"][1]["read_bytes"] < est["passes"][1]["gather_bytes"] * est["partitions"][0]


def test_embed_of_a_node_set_matches_the_run(monkeypatch, graph, run, profile, tmp_path):
    from diskgraph.capacity.profile import load_profile

    opts = dict(kind="embed", layer=1, dtype="float16", nodes="train", memory_budget=300_000)
    summary, out_files, scratch = _predict(monkeypatch, graph, run, tmp_path / "emb", **opts)
    est = estimate_inference_for_dataset(graph, load_profile(profile), model="sage", hidden=16, layers=2,
                                         **{k: v for k, v in opts.items() if k != "nodes"}, nodes="train")
    _check(est, summary, out_files, scratch)
    assert est["nodes"] == len(open_dataset(graph).splits["train"]) and est["dtype"] == "float16"
    assert set(est["scratch"]["tables"]) == {"layer1"}  # layer 1 projects the features: its tables only


@pytest.mark.parametrize("model,hidden,layers,budget,ordered", [
    ("gcn", 32, 2, 600_000, [False, False]), ("gat", 16, 3, 600_000, [False] * 3),
    ("sage", 32, 3, 600_000, [False] * 3),
    # partition-ordered tables: GCN's layer 1 (projected features, with its gather-dst copy); GAT's every layer;
    # SAGE's layer 1 as a copy of the features (identity prepare, the features read for the destinations) and
    # layer 2 (with gather-dst), layer 3 projecting (no gather-dst)
    ("gcn", 32, 2, 250_000, [True, False]), ("gat", 16, 3, 250_000, [True] * 3),
    ("sage", 32, 3, 200_000, [True, True, False])])
def test_engine_partitions_and_scratch_for_every_model(graph, profile, tmp_path, monkeypatch, model, hidden, layers,
                                                       budget, ordered):
    """The estimate against the layer-wise engine itself, run on an untrained model of each kind (scratch: at its
    largest, when a layer's state is written), with tables in node order and in partition order."""
    from diskgraph.capacity.profile import load_profile
    from diskgraph.layer_programs import layer_programs
    from diskgraph.models import build_model
    from diskgraph.pipeline import layerwise
    from diskgraph.pipeline.layerwise import Table, Topology, run_layerwise

    peak = [0]
    real_state = layerwise._write_state

    def state_written(path, *a, **k):
        real_state(path, *a, **k)
        peak[0] = max(peak[0], sum(_files(path.parent).values()))

    monkeypatch.setattr(layerwise, "_write_state", state_written)

    ds = open_dataset(graph)
    torch.manual_seed(0)
    net = build_model(model, IN_DIM, hidden, CLASSES, layers, heads=4).eval()
    rows = []
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    features = Table.on_disk(ds.features)
    topo = Topology(ds.array("topology/indptr"), ds.array("topology/indices"), ds.num_nodes)
    result = run_layerwise(layer_programs(net), features, topo, final_layer=layers, selected=None,
                           activation=net.activation, emit=lambda ids, out: rows.append(len(ids)), budget=budget,
                           scratch=scratch, identity={"dataset": "sha256:" + "0" * 64, "model": "sha256:" + "1" * 64,
                                                      "final_layer": layers, "mode": "exact", "storage": "disk",
                                                      "memory_budget": budget},  # as run_inference's
                           stop=lambda: None)
    features.close()
    assert sum(rows) == ds.num_nodes
    est = estimate_inference_for_dataset(graph, load_profile(profile), model=model, hidden=hidden, layers=layers,
                                         heads=4, kind="predict", memory_budget=budget)
    layers = [s for s in result.layers if s.layer >= 1]
    assert est["partitions"] == [s.partitions for s in layers]
    assert [p["slices_read"] for p in est["passes"] if "layer" in p] == [s.slices_read for s in layers]
    assert est["scratch_bytes"] == peak[0]
    assert max(est["partitions"]) > 1
    assert [bool(s.extra["partition_order"]) for s in layers] == ordered
    assert est["partition_order"] == ordered
    got = [p for p in est["passes"] if "layer" in p]
    for p, s in zip(got, layers):
        assert p["resident_slices"] == s.extra["resident_slices"] and p["slice_rows"] == s.extra["slice_rows"]
        if p["partition_order"]:  # only the runs' rows: less than a pass of G per partition
            assert p["needed_rows"] < p["partitions"] * ds.num_nodes
    inputs = [p for p in est["passes"] if p["pass"] == "inputs"]
    assert bool(inputs) == any(s.layer == 0 for s in result.layers)  # the pass over the features, when it runs
    if inputs:
        assert inputs[0]["partition_order"] == ordered[0]
    tables = est["scratch"]["tables"]
    for lyr, prog in enumerate(layer_programs(net), start=1):
        if f"layer{lyr}" in tables:
            dst_copy = ordered[lyr - 1] and prog.needs_gather_dst and not (lyr == 1 and prog.identity_prepare)
            assert ("gather-dst" in tables[f"layer{lyr}"]) == dst_copy, lyr


def test_summary_graph_uses_even_in_degrees(profile):
    from diskgraph.capacity.profile import load_profile

    hw = load_profile(profile)
    est = estimate_inference(num_nodes=1_000_000, num_edges=15_000_000, feature_dim=128, feature_row_bytes=512,
                             num_classes=16, hw=hw, model="sage", hidden=256, layers=2, kind="embed",
                             memory_budget=64 << 20)
    assert est["layer"] == 1 and est["width"] == 256 and est["nodes"] == 1_000_000
    assert est["output"]["arrays"]["embeddings"]["logical_bytes"] == 1_000_000 * 256 * 4
    assert est["scratch_bytes"] == 0  # layer 1 gathers the features themselves; nothing is written before it
    # the partitions are those of the budget over the even degrees: more budget, never more partitions
    more = estimate_inference(num_nodes=1_000_000, num_edges=15_000_000, feature_dim=128, feature_row_bytes=512,
                              num_classes=16, hw=hw, model="sage", hidden=256, layers=2, kind="embed",
                              memory_budget=1 << 30)
    assert more["partitions"][0] <= est["partitions"][0] and est["partitions"][0] > 1
    assert more["read_bytes"] <= est["read_bytes"]


def test_cli_prints_the_section_and_json_has_the_fields(cli, graph, profile):
    base = ["plan", graph, "--fanouts", "5,5", "--batch-size", "256", "--hidden", "16", "--profile", profile,
            "--no-alternatives", "--no-time-steps"]
    r = cli.run(*base, "--inference", "predict", "--inference-budget", "400K")
    assert r.rc == 0, r.err
    assert "inference (exact, layer-wise)" in r.out
    for word in ("output", "scratch (peak)", "layer 1", "layer 2", "partition", "peak memory"):
        assert word in r.out, word
    r = cli.run(*base, "--inference", "embed", "--inference-layer", "1", "--inference-dtype", "float16",
                "--inference-nodes", "test", "--json")
    assert r.rc == 0, r.err
    est = json.loads(r.out)
    inf = est["inference"]
    for key in ("output_bytes", "scratch_bytes", "partitions", "read_bytes", "seconds", "peak_host_bytes", "passes",
                "disk_peak_bytes", "output", "scratch", "how"):
        assert key in inf, key
    assert inf["kind"] == "embed" and inf["layer"] == 1 and inf["dtype"] == "float16"
    assert inf["nodes"] == len(open_dataset(graph).splits["test"])
    assert inf["memory_budget"] == 1 << 30  # the plan's --memory-budget
    assert "inference" not in json.loads(cli.run(*base, "--json").out)  # only when asked for


def test_cli_summary_graph(cli, profile):
    r = cli.run("plan", "--nodes", "40000", "--edges", "400000", "--feature-dim", "32", "--fanouts", "5,5",
                "--batch-size", "256", "--profile", profile, "--sample-minibatches", "4", "--no-alternatives",
                "--no-time-steps", "--json", "--inference", "predict", "--inference-nodes", "test")
    assert r.rc == 0, r.err
    inf = json.loads(r.out)["inference"]
    assert inf["nodes"] == 8000 and inf["width"] == 16 and len(inf["partitions"]) == 2
    assert "evenly" in inf["topology"]


def test_cli_refusals(cli, refused, graph, profile):
    base = ["plan", graph, "--fanouts", "5,5", "--batch-size", "256", "--profile", profile, "--no-alternatives",
            "--no-time-steps"]
    refused(cli.run(*base, "--inference-layer", "1"), "--inference")
    refused(cli.run(*base, "--inference", "embed", "--inference-layer", "3"), "--inference-layer")
    refused(cli.run(*base, "--inference", "predict", "--inference-layer", "1"), "--inference-layer")
    refused(cli.run(*base, "--inference", "predict", "--inference-budget", "10K"), "--inference-budget")
    refused(cli.run("plan", "--nodes", "4000", "--edges", "40000", "--feature-dim", "8", "--fanouts", "5",
                    "--profile", profile, "--no-alternatives", "--no-time-steps", "--inference", "predict",
                    "--inference-nodes", "unlabelled"), "--inference-nodes")
