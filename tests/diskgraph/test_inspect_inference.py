"""`diskgraph inspect` on the output of `diskgraph predict` / `embed` (issue 13): summary, --json, --verify."""

from __future__ import annotations

import json

import numpy as np
import pytest

from diskgraph.store.inference_output import INFERENCE_VERSION, OutputWriter

RUN = {"path": "/runs/cora-sage", "best_epoch": 7}
MODEL = {"name": "sage", "hidden": 16, "layers": 2, "fanouts": [10, 5]}
DATASET = {"path": "/data/cora", "checksum": "sha256:abc123"}


@pytest.fixture
def predict_out(tmp_path):
    out = tmp_path / "pred"
    out.mkdir()
    rng = np.random.default_rng(0)
    n, c = 40, 3
    logits = rng.standard_normal((n, c)).astype(np.float32)
    w = OutputWriter(out, n, {"node_ids": ((), "int64"), "logits": ((c,), "float32"), "predictions": ((), "int64")},
                     chunk_rows=8)
    w.append(node_ids=np.arange(n), logits=logits, predictions=logits.argmax(1))
    w.finish({"kind": "predict", "mode": "exact", "run": RUN, "model": MODEL, "dataset": DATASET, "nodes": "all",
              "summary": {"nodes": n, "seconds": 0.25, "read_amplification": 1.02}})
    return out


@pytest.fixture
def embed_out(tmp_path):
    """An embed output whose manifest lacks run, model and dataset (inspect must tolerate it)."""
    out = tmp_path / "emb"
    out.mkdir()
    w = OutputWriter(out, 12, {"node_ids": ((), "int64"), "embeddings": ((6,), "float16")})
    w.append(node_ids=np.arange(12), embeddings=np.ones((12, 6), np.float16))
    w.finish({"kind": "embed", "mode": "sampled", "layer": 1, "dtype": "float16"})
    return out


def flip(path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))


def test_inspect_prints_an_inference_output(cli, predict_out):
    r = cli.run("inspect", predict_out)
    assert r.rc == 0, r.err
    lines = r.out.splitlines()
    assert lines[0].startswith(f"output        {predict_out}") and f"predict output, format version {INFERENCE_VERSION}" in lines[0]
    assert "kind          predict  mode exact" in r.out
    assert "rows          40  (nodes all)" in r.out
    assert "task          classification, 3 classes  (rows predicted per class: 0: " in r.out
    assert any(line.startswith("array logits") and "40 x 3 float32" in line and "480 B" in line for line in lines)
    assert any(line.startswith("array node_ids") and "40 int64" in line for line in lines)
    assert any(line.startswith("array predictions") for line in lines)
    assert "run           /runs/cora-sage  (best_epoch 7)" in r.out
    assert any(line.startswith("model") and "sage" in line and "hidden 16" in line and "fanouts 10,5" in line
               for line in lines)
    assert "dataset       /data/cora  (checksum sha256:abc123)" in r.out
    assert "read_amplification 1.02" in r.out
    assert "in-degree" not in r.out and "verify" not in r.out  # not the dataset summary, nothing verified


def test_inspect_json(cli, predict_out):
    r = cli.run("inspect", predict_out, "--json")
    assert r.rc == 0, r.err
    info = json.loads(r.out)
    assert info["kind"] == "predict" and info["mode"] == "exact" and info["num_rows"] == 40
    assert info["format"] == "diskgraph.inference" and info["format_version"] == INFERENCE_VERSION
    assert info["task"] == {"kind": "classification", "num_outputs": 3}  # (a body without a task: classification)
    counts = np.bincount(np.random.default_rng(0).standard_normal((40, 3)).astype(np.float32).argmax(1), minlength=3)
    assert info["prediction_summary"]["predicted_counts"] == {str(i): int(k) for i, k in enumerate(counts)}
    assert info["arrays"]["logits"] == {"shape": [40, 3], "dtype": "float32", "bytes": 480}
    assert info["arrays"]["predictions"] == {"shape": [40], "dtype": "int64", "bytes": 320}
    assert info["run"] == RUN and info["model"] == MODEL and info["dataset"] == DATASET
    assert info["disk_bytes"] > 480 + 2 * 320 and "verify" not in info


def test_inspect_embed_without_run_or_model(cli, embed_out):
    r = cli.run("inspect", embed_out)
    assert r.rc == 0, r.err
    assert "kind          embed  mode sampled  layer 1  dtype float16" in r.out
    assert any(line.startswith("array embeddings") and "12 x 6 float16" in line for line in r.out.splitlines())
    assert "\nrun " not in r.out and "\nmodel " not in r.out and "\ndataset " not in r.out
    info = json.loads(cli.run("inspect", embed_out, "--json").out)
    assert info["run"] is None and info["model"] is None and info["layer"] == 1 and info["dtype"] == "float16"


def test_verify_ok_and_a_flipped_byte(cli, predict_out):
    r = cli.run("inspect", predict_out, "--verify")
    assert r.rc == 0 and "verify        ok" in r.out, r.out + r.err
    flip(predict_out / "logits" / "c" / "1" / "0", 5)
    r = cli.run("inspect", predict_out, "--verify")
    assert r.rc == 1 and "Traceback" not in r.err
    assert "verify        FAILED" in r.out and "arrays.logits.sha256" in r.out and "run the inference again" in r.out
    assert "arrays.node_ids" not in r.out
    info = json.loads(cli.run("inspect", predict_out, "--verify", "--json").out)
    assert info["verify"]["ok"] is False and len(info["verify"]["problems"]) == 1
    assert cli.run("inspect", predict_out).rc == 0  # without --verify only sizes are checked


def test_verify_exit_status_in_a_subprocess(cli, predict_out):
    r = cli.subprocess("inspect", predict_out, "--verify", "--json", "-q")
    assert r.rc == 0 and r.err == "" and json.loads(r.out)["verify"] == {"ok": True, "problems": []}
    flip(predict_out / "predictions" / "c" / "0", 0)
    r = cli.subprocess("inspect", predict_out, "--verify", "-q")
    assert r.rc == 1 and "arrays.predictions.sha256" in r.out and "Traceback" not in r.err


def test_damaged_outputs_are_refused_in_one_sentence(cli, refused, predict_out):
    chunk = predict_out / "logits" / "c" / "2" / "0"
    chunk.write_bytes(chunk.read_bytes()[:10])
    refused(cli.run("inspect", predict_out, "--verify"), str(chunk), "truncated")
    chunk.unlink()
    refused(cli.run("inspect", predict_out), str(chunk), "missing")


def test_edited_manifest_is_refused(cli, refused, predict_out):
    mf = predict_out / "manifest.json"
    m = json.loads(mf.read_text())
    m["model"]["hidden"] = 32
    mf.write_text(json.dumps(m))
    refused(cli.run("inspect", predict_out), str(mf), "checksum")
