"""`diskgraph predict` / `embed` and the Python API on the shared datasets: exact-mode logits equal a float64
full-graph forward of the trained model, predictions score at least the run's sampled test accuracy minus half a
point, outputs open with zarr alone, and bad input is refused in one sentence with nothing left behind."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import diskgraph
from diskgraph.inference import scratch_dir
from diskgraph.pipeline.blocks import make_block
from diskgraph.store.dataset import open_dataset


def _trained(tmp_path_factory, shared_dataset, name: str, model: str = "sage", epochs: int = 5, hidden: int = 64):
    """(dataset dir, run dir, the run's summary) for a small training run on a shared dataset."""
    from diskgraph.cli import main

    npz = shared_dataset(name)
    d = tmp_path_factory.mktemp(f"{name}-{model}")
    assert main(["preprocess", "all", "--npz", str(npz), "--out", str(d / "ds"), "--fanouts", "10,5",
                 "--batch-size", "512", "-q"]) == 0
    log = d / "train.jsonl"
    assert main(["train", str(d / "ds"), "--model", model, "--hidden", str(hidden), "--epochs", str(epochs),
                 "--run-dir", str(d / "run"), "--log-json", str(log), "--device", "cpu", "-q"]) == 0
    summary = json.loads(log.read_text().splitlines()[-1])
    return d / "ds", d / "run", summary


@pytest.fixture(scope="module")
def cora(tmp_path_factory, shared_dataset):
    return _trained(tmp_path_factory, shared_dataset, "cora")


def _oracle_logits(ds_dir, run) -> np.ndarray:
    """A plain in-memory full-graph forward of the run's model in float64."""
    ds = open_dataset(ds_dir)
    model = diskgraph.load_model(run).double()
    block = make_block(ds.num_nodes, ds.num_nodes, np.asarray(ds.indptr), np.asarray(ds.indices))
    x = torch.from_numpy(ds.features.read_rows(0, ds.num_nodes).astype(np.float64))
    with torch.no_grad():
        return model([block] * model.num_layers, x).numpy()


def _accuracy(ds_dir, out) -> float:
    import zarr

    ds = open_dataset(ds_dir)
    g = zarr.open_group(str(out), mode="r")
    test = np.asarray(ds.splits["test"])
    ids = g["node_ids"][:]
    pred = g["predictions"][:]
    assert (ids == np.arange(ds.num_nodes)).all()
    return float((pred[test] == np.asarray(ds.labels)[test]).mean())


def _check_exact(cli, ds, run, tmp_path, summary):
    import zarr

    out = tmp_path / "pred"
    r = cli.run("predict", ds, "--run", run, "--out", out, "--log-json", tmp_path / "p.jsonl", "-q")
    assert r.rc == 0, r.err
    g = zarr.open_group(str(out), mode="r")
    logits = g["logits"][:]
    ref = _oracle_logits(ds, run)
    assert logits.dtype == np.float32 and logits.shape == ref.shape
    rel = np.abs(logits - ref) / np.maximum(np.abs(ref), 1e-3 * np.abs(ref).max())
    assert rel.max() < 1e-4, rel.max()
    assert (g["predictions"][:] == logits.argmax(1)).all()
    acc = _accuracy(ds, out)
    assert acc >= summary["test_acc"] - 0.005, (acc, summary["test_acc"])
    line = json.loads((tmp_path / "p.jsonl").read_text().splitlines()[-1])
    for key in ("nodes", "seconds", "read_bytes", "read_amplification", "peak_rss_bytes", "layers"):
        assert key in line
    assert not scratch_dir(out).exists()
    return acc


def test_cora_exact_logits_and_accuracy(cli, cora, tmp_path):
    ds, run, summary = cora
    _check_exact(cli, ds, run, tmp_path, summary)


@pytest.mark.parametrize("model", ["gcn", "gat"])
def test_cora_other_models_are_exact(cli, tmp_path_factory, shared_dataset, tmp_path, model):
    ds, run, summary = _trained(tmp_path_factory, shared_dataset, "cora", model=model, epochs=3, hidden=32)
    _check_exact(cli, ds, run, tmp_path, summary)


def test_coauthor_cs_exact_logits_and_accuracy(cli, tmp_path_factory, shared_dataset, tmp_path):
    ds, run, summary = _trained(tmp_path_factory, shared_dataset, "coauthor-cs", epochs=2, hidden=64)
    acc = _check_exact(cli, ds, run, tmp_path, summary)
    print(f"coauthor-cs: exported predictions {acc:.4f}, sampled evaluation {summary['test_acc']:.4f}")


def test_embed_layer_1_under_a_small_budget_equals_ram(cli, cora, tmp_path):
    import zarr

    ds, run, _ = cora
    n = open_dataset(ds).num_nodes
    for storage, budget in (("disk", "3M"), ("ram", "1G")):
        r = cli.run("embed", ds, "--run", run, "--layer", "1", "--out", tmp_path / storage, "--storage", storage,
                    "--memory-budget", budget, "-q")
        assert r.rc == 0, r.err
    a = zarr.open_group(str(tmp_path / "disk"), mode="r")["embeddings"][:]
    b = zarr.open_group(str(tmp_path / "ram"), mode="r")["embeddings"][:]
    assert a.shape == (n, 64) and (a >= 0).all()  # after the ReLU
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    r = cli.run("embed", ds, "--run", run, "--layer", "1", "--dtype", "float16", "--out", tmp_path / "h",
                "--parquet", tmp_path / "h.parquet", "-q")
    assert r.rc == 0, r.err
    h = zarr.open_group(str(tmp_path / "h"), mode="r")["embeddings"][:]
    assert h.dtype == np.float16
    np.testing.assert_allclose(h.astype(np.float32), a, rtol=2e-3, atol=2e-3)
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "h.parquet").num_rows == n


def test_node_sets_and_files(cli, cora, tmp_path):
    import zarr

    ds, run, _ = cora
    d = open_dataset(ds)
    full = tmp_path / "all"
    assert cli.run("predict", ds, "--run", run, "--out", full, "-q").rc == 0
    logits = zarr.open_group(str(full), mode="r")["logits"][:]
    for spec, ids in (("test", np.asarray(d.splits["test"])), ("unlabelled", np.flatnonzero(d.labels < 0))):
        if not len(ids):
            continue
        out = tmp_path / spec
        assert cli.run("predict", ds, "--run", run, "--nodes", spec, "--out", out, "-q").rc == 0
        g = zarr.open_group(str(out), mode="r")
        assert (g["node_ids"][:] == np.unique(ids)).all()
        np.testing.assert_allclose(g["logits"][:], logits[np.unique(ids)], rtol=1e-5, atol=1e-5)
    pick = np.array([5, 3, 3, 2000], dtype=np.int64)
    np.save(tmp_path / "ids.npy", pick)
    api = diskgraph.predict(ds, run=run, out=tmp_path / "file", nodes=str(tmp_path / "ids.npy"), mode="sampled",
                            device="cpu")
    g = zarr.open_group(str(api), mode="r")
    assert (g["node_ids"][:] == [3, 5, 2000]).all() and g["logits"].shape == (3, logits.shape[1])


@pytest.mark.parametrize("case", ["other-dataset", "no-model", "layer", "exists", "ids", "node-set"])
def test_bad_input_is_refused_in_one_sentence(cli, cora, tmp_path, tmp_path_factory, shared_dataset, refused, case):
    ds, run, _ = cora
    out = tmp_path / "out"
    args = ["predict", ds, "--run", run, "--out", out]
    needles = []
    if case == "other-dataset":
        from diskgraph.cli import main

        other = tmp_path / "citeseer"
        assert main(["preprocess", "import", "--npz", str(shared_dataset("citeseer")), "--out", str(other), "-q"]) == 0
        args[1], needles = other, ["trained on another dataset", "identity.dataset"]
    elif case == "no-model":
        (tmp_path / "empty-run").mkdir()
        args[3], needles = tmp_path / "empty-run", ["no trained model", "best_model.pt"]
    elif case == "layer":
        args = ["embed", ds, "--run", run, "--out", out, "--layer", "3"]
        needles = ["--layer 3", "1..2"]
    elif case == "exists":
        out.mkdir()
        (out / "mine.txt").write_text("keep")
        args += ["--overwrite"]
        needles = ["refusing to replace"]
    elif case == "ids":
        np.save(tmp_path / "ids.npy", np.array([0, 99999]))
        args += ["--nodes", tmp_path / "ids.npy"]
        needles = ["99999", "outside 0..2707"]
    else:
        args += ["--nodes", "nowhere.txt"]
        needles = ["nowhere.txt", ".npy"]
    r = cli.run(*args)
    refused(r, *needles)
    if case == "exists":
        assert (out / "mine.txt").read_text() == "keep"
    else:
        assert not out.exists() and not scratch_dir(out).exists()


def test_an_existing_output_needs_overwrite(cli, cora, tmp_path, refused):
    ds, run, _ = cora
    out = tmp_path / "p"
    assert cli.run("predict", ds, "--run", run, "--out", out, "-q").rc == 0
    refused(cli.run("predict", ds, "--run", run, "--out", out), "already exists", "--overwrite")
    assert cli.run("predict", ds, "--run", run, "--out", out, "--overwrite", "-q").rc == 0


def test_a_killed_run_leaves_nothing_that_opens(cora, tmp_path):
    """SIGKILL mid-run: no OUT (only the scratch tables, which the same command reuses or clears)."""
    ds, run, _ = cora
    out = tmp_path / "k"
    proc = subprocess.Popen([sys.executable, "-m", "diskgraph", "embed", str(ds), "--run", str(run), "--layer", "2",
                             "--out", str(out), "--memory-budget", "2M", "-q"], stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and not scratch_dir(out).exists() and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    r = subprocess.run([sys.executable, "-m", "diskgraph", "embed", str(ds), "--run", str(run), "--layer", "2",
                        "--out", str(out), "-q"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    from diskgraph.store.inference_output import open_output

    assert open_output(out).num_rows == open_dataset(ds).num_nodes
