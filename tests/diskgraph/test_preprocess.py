"""`diskgraph preprocess sample/pack/all` and `inspect` on plans and packs, end to end.

The central check of issue 3: for every minibatch of a packed plan (real
sampler, every split, several cache sizes from zero to "everything"),
assembling its input features from the tiers and its packed extent gives
exactly ``features[input_nodes]`` — on shared datasets and on a synthetic
graph with identity features (row i holds i).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from diskgraph.preprocess import run_pack, run_sample
from diskgraph.store.dataset import open_dataset
from diskgraph.store.packed import open_pack
from diskgraph.store.plan import open_plan

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "store"))
from packing_helpers import all_features, check_all_minibatches, identity_dataset  # noqa: E402


def _check_every_minibatch(ds_dir: Path, pack_name: str) -> int:
    """assemble == features[input_nodes] for every minibatch of every split; returns minibatches checked."""
    ds = open_dataset(ds_dir)
    pack = open_pack(ds_dir / "packs" / pack_name)
    try:
        return check_all_minibatches(pack, open_plan(pack.plan_path()), all_features(ds))
    finally:
        pack.close()


def _cache_sizes(ds) -> dict[str, tuple[int, int]]:
    row = ds.features.row_bytes
    n = ds.num_nodes
    return {"none": (0, 0), "some": (n // 20 * row, n // 10 * row), "host-only": (0, n // 4 * row),
            "everything": (n // 2 * row, n * row)}


@pytest.mark.parametrize("name", ["cora", "citeseer", "amazon-photo"])
def test_shared_datasets_every_minibatch_assembles_exactly(name, shared_dataset, tmp_path, cli):
    ds_dir = tmp_path / name
    assert cli.run("preprocess", "import", "--npz", shared_dataset(name), "--out", ds_dir, "-q").rc == 0
    run_sample(ds_dir, fanouts=[10, 5], batch_size=256, seed=0, epochs=2)
    ds = open_dataset(ds_dir)
    for label, (gpu, host) in _cache_sizes(ds).items():
        run_pack(ds_dir, name=label, gpu_cache=gpu, host_cache=host)
        assert _check_every_minibatch(ds_dir, label) > 0
    everything = open_pack(ds_dir / "packs" / "everything").manifest
    assert everything["cold_bytes"] == 0


def test_identity_features_synthetic_graph(tmp_path):
    ds_dir = identity_dataset(tmp_path / "ident", 5000, dim=8, avg_degree=6)
    run_sample(ds_dir, fanouts=[5, 3, 2], batch_size=128, seed=3, epochs=3)
    ds = open_dataset(ds_dir)
    feats = all_features(ds)
    np.testing.assert_array_equal(feats[:, 0], np.arange(ds.num_nodes, dtype=np.float32))
    for label, (gpu, host) in _cache_sizes(ds).items():
        run_pack(ds_dir, name=label, gpu_cache=gpu, host_cache=host, memory_budget=32 << 20)
        assert _check_every_minibatch(ds_dir, label) > 0


def test_preprocess_all_from_npz_and_inspect_reports_plan_and_pack(shared_dataset, tmp_path, cli):
    out = tmp_path / "cora"
    r = cli.run("preprocess", "all", "--npz", shared_dataset("cora"), "--out", out, "--fanouts", "10,5",
                "--batch-size", "512", "--seed", "0", "--host-cache", "1M", "--gpu-cache", "256K", "-q")
    assert r.rc == 0, r.err
    r = cli.run("inspect", out, "--json")
    assert r.rc == 0, r.err
    info = json.loads(r.out)
    assert info["num_nodes"] == 2708 and info["feature_dim"] == 1433 and info["num_classes"] == 7
    assert info["plan"] == "default" and info["pack"] == "default"
    plan, pack = info["plans"]["default"], info["packs"]["default"]
    assert plan["config"]["fanouts"] == [10, 5] and plan["config"]["batch_size"] == 512
    assert plan["minibatches"] == {"train": 1, "val": 1, "test": 2}
    assert pack["host_cache_bytes"] == 1 << 20 and pack["gpu_cache_bytes"] == 256 << 10
    assert pack["packed_bytes"] > 0 and pack["blowup"] > 0
    assert set(info["plans"]) == {"default"} and set(info["packs"]) == {"default"}
    r = cli.run("inspect", out, "--verify", "--json")
    assert r.rc == 0, r.out
    assert json.loads(r.out)["verify"]["ok"]
    assert _check_every_minibatch(out, "default") == 4
    # the table form names both
    r = cli.run("inspect", out)
    assert "plan default" in r.out and "pack default" in r.out and "blow-up" in r.out


def test_preprocess_all_on_existing_dataset_adds_plan_and_pack(shared_dataset, tmp_path, cli, refused):
    out = tmp_path / "cora"
    assert cli.run("preprocess", "import", "--npz", shared_dataset("cora"), "--out", out, "-q").rc == 0
    r = cli.run("preprocess", "all", out, "--fanouts", "4", "--batch-size", "100", "--name", "small", "-q")
    assert r.rc == 0, r.err
    info = json.loads(cli.run("inspect", out, "--json").out)
    assert info["plan"] == "small" and info["plans"]["small"]["config"]["fanouts"] == [4]
    assert info["packs"]["small"]["blowup"] > 0
    # the same command again keeps what is there; other options are refused with the option and --overwrite
    before = (out / "packs" / "small" / "manifest.json").stat().st_ino
    assert cli.run("preprocess", "all", out, "--fanouts", "4", "--batch-size", "100", "--name", "small").rc == 0
    assert (out / "packs" / "small" / "manifest.json").stat().st_ino == before
    refused(cli.run("preprocess", "all", out, "--fanouts", "5", "--batch-size", "100", "--name", "small"),
            "--fanouts 4 there, 5 in this run", str(out / "plans" / "small"), "--overwrite")
    assert cli.run("preprocess", "all", out, "--fanouts", "5", "--batch-size", "100", "--name", "small",
                   "--overwrite", "-q").rc == 0
    assert open_plan(out / "plans" / "small").config["fanouts"] == [5]
    assert open_pack(out / "packs" / "small").plan_path() == out / "plans" / "small"
    refused(cli.run("preprocess", "all", out, "--fanouts", "5", "--batch-size", "100", "--name", "small",
                    "--host-cache", "64K"), "--host-cache 0 there, 65536 in this run", "--overwrite")
    refused(cli.run("preprocess", "all", out, "--name", "a/b"), "--name", "bare name")


def test_inspect_json_names_the_default_plan_and_pack_once(shared_dataset, tmp_path, cli):
    out = tmp_path / "cora"
    assert cli.run("preprocess", "all", "--npz", shared_dataset("cora"), "--out", out, "--fanouts", "4",
                   "--batch-size", "300", "-q").rc == 0
    text = cli.run("inspect", out, "--json").out
    info = json.loads(text)
    assert info["plan"] == "default" and info["pack"] == "default"
    assert text.count('"packed_bytes"') == 1 and text.count('"mean_layer_sizes"') == 1


# -- preprocess all continues from the stages a killed run finished -------------------------------------

RESUME_GRAPH = dict(nodes=50_000, edges=600_000, feature_dim=16, classes=4, seed=0)
RESUME_OPTIONS = ["--fanouts", "10,10", "--batch-size", "128", "--epochs", "3", "--threads", "1", "--host-cache", "1M"]
_VOLATILE = {"created_at", "checksum", "seconds", "timing", "path"}


def _all_command(raw: Path, out: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "diskgraph", "preprocess", "all", "--edges", str(raw / "edges.npy"),
            "--features", str(raw / "features.npy"), "--labels", str(raw / "labels.npy"), "--out", str(out),
            *RESUME_OPTIONS, *extra]


def _stable(value):
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in _VOLATILE}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def _contents(root: Path) -> dict:
    """Every file under ``root``: its bytes' sha256, or for a manifest its fields without times, paths and checksums."""
    import hashlib

    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            rel = str(p.relative_to(root))
            out[rel] = (_stable(json.loads(p.read_text())) if p.name == "manifest.json"
                        else hashlib.sha256(p.read_bytes()).hexdigest())
    return out


@pytest.fixture(scope="module")
def resume_inputs(tmp_path_factory):
    """Raw inputs of a graph whose sampling and packing take a fraction of a second each, and the dataset an
    uninterrupted `preprocess all` makes of them."""
    import subprocess

    from diskgraph.generate import write_raw_inputs

    root = tmp_path_factory.mktemp("resume")
    write_raw_inputs(root / "raw", **RESUME_GRAPH)
    r = subprocess.run(_all_command(root / "raw", root / "reference", "-q"), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return root / "raw", root / "reference"


@pytest.mark.parametrize("killed_after, finished, unfinished", [
    ("diskgraph: imported ", "manifest.json", "plans/default"),
    ("diskgraph: sampled ", "plans/default", "packs/default"),
], ids=["after-import", "after-sample"])
def test_preprocess_all_killed_then_rerun_finishes_like_an_uninterrupted_run(resume_inputs, tmp_path, killed_after,
                                                                             finished, unfinished):
    import signal
    import subprocess

    raw, reference = resume_inputs
    out = tmp_path / "ds"
    proc = subprocess.Popen(_all_command(raw, out), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stderr:
            if line.startswith(killed_after):
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.stderr.close()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert (out / finished).exists() and not (out / unfinished).exists()
    stale = [p for p in out.rglob("*") if ".diskgraph-tmp-" in p.name]  # the killed stage's, if it had begun

    r = subprocess.run(_all_command(raw, out), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "preprocess all: import skipped" in r.stderr
    assert ("sample skipped" in r.stderr) == (finished == "plans/default")
    assert not stale or "left by an interrupted run" in r.stderr
    assert _contents(out) == _contents(reference)
    assert not [p for p in tmp_path.rglob("*") if ".diskgraph-tmp-" in p.name]

    # once more: every stage is kept
    r = subprocess.run(_all_command(raw, out), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and all(f"{s} skipped" in r.stderr for s in ("import", "sample", "pack")), r.stderr


def test_preprocess_all_refuses_a_dataset_imported_differently(tmp_path, cli, refused):
    from diskgraph.generate import write_raw_inputs

    write_raw_inputs(tmp_path / "raw", nodes=600, edges=4000, feature_dim=8, classes=3, seed=1)
    raw, out = tmp_path / "raw", tmp_path / "ds"
    base = ["preprocess", "all", "--edges", raw / "edges.npy", "--features", raw / "features.npy", "--labels",
            raw / "labels.npy", "--out", out, "--fanouts", "3", "--batch-size", "64", "-q"]
    assert cli.run(*base).rc == 0
    refused(cli.run(*base, "--dedup"), f"dataset {out}", "--dedup off there, on in this run", "--overwrite")
    refused(cli.run(*base[:-1], "--seed", "1"), "--seed 0 there, 1 in this run", "--overwrite")
    refused(cli.run(*base, "--task", "regression"), "--task not given there, regression in this run", "--overwrite")
    os.utime(raw / "labels.npy", ns=(1, 1))
    refused(cli.run(*base), "--labels", "changed", "--overwrite")
    assert cli.run(*base, "--overwrite").rc == 0  # imported again (and sampled and packed into it)
    assert cli.run(*base).rc == 0
    # made by `preprocess import`: the same import options are recognized, the sample and pack added
    other = tmp_path / "imported"
    assert cli.run("preprocess", "import", "--edges", raw / "edges.npy", "--features", raw / "features.npy",
                   "--labels", raw / "labels.npy", "--out", other, "-q").rc == 0
    assert cli.run(*[other if a == out else a for a in base]).rc == 0
    assert (other / "packs" / "default").is_dir()
    # a dataset that records no import options (made by generate) is refused, naming both ways on
    gen = tmp_path / "gen"
    assert cli.run("generate", "--nodes", "600", "--edges", "4000", "--out", gen, "-q").rc == 0
    refused(cli.run(*[gen if a == out else a for a in base]), "does not record", "--overwrite",
            f"diskgraph preprocess all {gen}")


def test_sample_then_pack_commands_and_refusals(shared_dataset, tmp_path, cli, refused):
    out = tmp_path / "cora"
    assert cli.run("preprocess", "import", "--npz", shared_dataset("cora"), "--out", out, "-q").rc == 0
    refused(cli.run("preprocess", "pack", out, "--plan", "nope"), "nope", "preprocess sample")
    refused(cli.run("preprocess", "sample", out, "--fanouts", "10,0"), "--fanouts")
    refused(cli.run("preprocess", "sample"), "dataset")
    refused(cli.run("preprocess", "all", out, "--npz", shared_dataset("cora")), "--npz")
    refused(cli.run("preprocess", "all"), "--out")
    assert cli.run("preprocess", "sample", out, "--fanouts", "5,5", "--batch-size", "64", "--epochs", "2", "-q").rc == 0
    plan = open_plan(out / "plans" / "default")
    assert plan.num_epochs("train") == 2 and plan.minibatches_per_epoch("train") == 3
    assert cli.run("preprocess", "pack", out, "--host-cache", "64K", "-q").rc == 0
    assert _check_every_minibatch(out, "default") > 0
    # --splits leaves out a split (a large test split need not be sampled or packed)
    refused(cli.run("preprocess", "sample", out, "--splits", "train,nope", "--name", "tv"), "'nope'", "--splits")
    assert cli.run("preprocess", "all", out, "--splits", "train,val", "--fanouts", "5,5", "--batch-size", "64",
                   "--name", "tv", "-q").rc == 0
    assert open_plan(out / "plans" / "tv").splits == ["train", "val"]
    assert _check_every_minibatch(out, "tv") > 0


def test_config_file_sections_for_the_new_stages(tmp_path, cli):
    cfg = tmp_path / "run.toml"
    cfg.write_text('[sample]\nfanouts = [10, 5]\nbatch_size = 256\n\n[pack]\nhost_cache = "4M"\n')
    r = cli.run("preprocess", "sample", "DIR", "--config", cfg, "--print-config")
    assert r.rc == 0 and 'fanouts = "10,5"' in r.out and "batch_size = 256" in r.out
    r = cli.run("preprocess", "pack", "DIR", "--config", cfg, "--print-config")
    assert r.rc == 0 and f"host_cache = {4 << 20}" in r.out
    r = cli.run("preprocess", "sample", "DIR", "--config", cfg, "--batch-size", "32", "--print-config")
    assert "batch_size = 32" in r.out
