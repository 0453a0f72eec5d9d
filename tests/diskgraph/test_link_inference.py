"""Inference on link-prediction runs (issue 16): `load_model` gives the encoder and its decoder, `embed` writes the
encoder's exact output embeddings (equal to a float64 in-memory full-neighbour forward), `predict` writes the same
embeddings (a link model has no per-node class), `diskgraph score --pairs` / `diskgraph.score_pairs` equal the decoder on those embeddings, in the pairs'
order, as .npy / .csv / .parquet, and every bad input is refused in one sentence with nothing written.

The runs are made directly (a LinkModel with seeded weights, saved with the trainer's own model card writer) on a
tiny random graph, so each test takes well under a second; `test_trained_link_run_end_to_end` also trains one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import diskgraph
from diskgraph.pipeline.blocks import make_block
from diskgraph.store.dataset import open_dataset

N, F, HIDDEN = 80, 12, 16


def _graph_npz(path, seed=0, n=N):
    r = np.random.default_rng(seed)
    src, dst = r.integers(0, n, 5 * n), r.integers(0, n, 5 * n)
    np.savez(path, edges=np.stack([src, dst]), features=r.standard_normal((n, F)).astype(np.float32),
             labels=r.integers(0, 3, n), train_idx=np.arange(0, n // 2), val_idx=np.arange(n // 2, 3 * n // 4),
             test_idx=np.arange(3 * n // 4, n))
    return path


def _import(tmp, name, seed=0, n=N):
    from diskgraph.cli import main

    out = tmp / name
    assert main(["preprocess", "import", "--npz", str(_graph_npz(tmp / f"{name}.npz", seed, n)), "--out", str(out),
                 "--undirected", "--dedup", "--edge-split", "random:0.8,0.1,0.1", "--seed", "0", "-q"]) == 0
    return out


class _LinkTaskCard:
    kind, num_outputs = "link", HIDDEN


def _make_run(ds_dir, run_dir, model="sage", decoder="dot", layers=2, seed=0):
    """A run directory as `train --task link` leaves it (best_model.pt + best_model.json), with seeded weights."""
    from diskgraph.link_models import LinkModel
    from diskgraph.models import build_model
    from diskgraph.pipeline.checkpoint_file import BEST_MODEL_NAME, write_model_card
    from diskgraph.store.binding import dataset_identity

    torch.manual_seed(seed)
    enc = build_model(model, F, HIDDEN, HIDDEN, layers, dropout=0.0, heads=2)
    link = LinkModel(enc, decoder, HIDDEN)
    with torch.no_grad():
        for p in link.decoder.parameters():  # (distmult's relation starts at ones: make it matter)
            p.add_(0.3 * torch.randn_like(p))
    run_dir.mkdir(parents=True)
    torch.save(link.state_dict(), run_dir / BEST_MODEL_NAME)
    identity = {"dataset": dataset_identity(open_dataset(ds_dir)), "pack": None, "--model": model, "--hidden": HIDDEN,
                "--layers": layers, "--fanouts": [-1] * layers, "--batch-size": 32, "--task": "link",
                "--decoder": decoder}
    write_model_card(run_dir, link, identity, {"task": "link"}, 1, "val_mrr", 0.5, _LinkTaskCard())
    return run_dir


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("link-inf")
    ds = _import(tmp, "ds")
    runs = {dec: _make_run(ds, tmp / f"run-{dec}", decoder=dec) for dec in ("dot", "distmult", "mlp")}
    return ds, runs, tmp


def _oracle(ds_dir, run) -> tuple[np.ndarray, torch.nn.Module]:
    """The encoder's output for every node by a plain float64 in-memory forward over every in-neighbour, and the
    decoder in float64."""
    ds = open_dataset(ds_dir)
    model = diskgraph.load_model(run).double()
    block = make_block(ds.num_nodes, ds.num_nodes, np.asarray(ds.indptr), np.asarray(ds.indices))
    x = torch.from_numpy(ds.features.read_rows(0, ds.num_nodes).astype(np.float64))
    with torch.no_grad():
        return model.encoder([block] * model.encoder.num_layers, x).numpy(), model.decoder


def _close(a, ref, tol=1e-4):
    rel = np.abs(a - ref) / np.maximum(np.abs(ref), 1e-3 * np.abs(ref).max())
    assert rel.max() < tol, rel.max()


def _ref_scores(ds, run, pairs):
    emb, decoder = _oracle(ds, run)
    with torch.no_grad():
        return decoder(torch.from_numpy(emb[pairs[:, 0]]), torch.from_numpy(emb[pairs[:, 1]])).numpy()


def _pairs(n=N, p=50, seed=1):
    r = np.random.default_rng(seed)
    return np.stack([r.integers(0, n, p), r.integers(0, n, p)], axis=1)


# -- load_model, embed, predict ---------------------------------------------------------------------

def test_load_model_gives_encoder_and_decoder(tiny):
    from diskgraph.link_models import LinkModel
    from diskgraph.models import BlockGNN

    _, runs, _ = tiny
    m = diskgraph.load_model(runs["mlp"])
    assert isinstance(m, LinkModel) and isinstance(m.encoder, BlockGNN) and m.decoder.kind == "mlp"
    assert not m.training and m.card["model"]["link"]["decoder"] == "mlp" and m.encoder.card is m.card


@pytest.mark.parametrize("storage,budget", [("disk", "64K"), ("ram", "1G")])
def test_embed_equals_full_neighbour_forward(cli, tiny, tmp_path, storage, budget):
    import zarr

    from diskgraph.store.inference_output import open_output

    ds, runs, _ = tiny
    out = tmp_path / "emb"
    r = cli.run("embed", ds, "--run", runs["dot"], "--out", out, "--storage", storage, "--memory-budget", budget,
                "--parquet", tmp_path / "emb.parquet", "-q")
    assert r.rc == 0, r.err
    g = zarr.open_group(str(out), mode="r")
    ref, _ = _oracle(ds, runs["dot"])
    emb = g["embeddings"][:]
    assert emb.shape == (N, HIDDEN) and emb.dtype == np.float32 and (g["node_ids"][:] == np.arange(N)).all()
    assert (emb < 0).any()  # the encoder's last layer: no activation (the default --layer is L for a link run)
    _close(emb, ref)
    o = open_output(out)
    assert o.task is None and o.kind == "embed" and "logits" not in o.array_names
    assert o.manifest["link"] == {"decoder": "dot", "dim": HIDDEN, "encoder_layers": 2, "scored_by_decoder": True}
    assert o.manifest["layer"] == 2 and o.manifest["model"]["link"]["decoder"] == "dot"


def test_embed_nodes_layer_and_sampled_mode(cli, tiny, tmp_path):
    import zarr

    ds, runs, _ = tiny
    ref, _ = _oracle(ds, runs["distmult"])
    ids = np.array([70, 3, 3, 41], np.int64)
    np.save(tmp_path / "ids.npy", ids)
    assert cli.run("embed", ds, "--run", runs["distmult"], "--nodes", tmp_path / "ids.npy", "--out", tmp_path / "few",
                   "-q").rc == 0
    g = zarr.open_group(str(tmp_path / "few"), mode="r")
    assert (g["node_ids"][:] == [3, 41, 70]).all()
    _close(g["embeddings"][:], ref[[3, 41, 70]])
    assert cli.run("embed", ds, "--run", runs["distmult"], "--layer", "1", "--out", tmp_path / "l1", "-q").rc == 0
    m = json.loads((tmp_path / "l1" / "manifest.json").read_text())
    assert m["link"]["scored_by_decoder"] is False and m["layer"] == 1
    r = cli.run("embed", ds, "--run", runs["distmult"], "--mode", "sampled", "--fanouts", "-1,-1", "--device", "cpu",
                "--out", tmp_path / "sampled", "-q")
    assert r.rc == 0, r.err
    _close(zarr.open_group(str(tmp_path / "sampled"), mode="r")["embeddings"][:], ref)


def test_predict_on_a_link_run_writes_the_embeddings(cli, tiny, tmp_path):
    """A link model has no per-node class: predict writes what embed writes by default (the embeddings its decoder
    scores), equal to the oracle."""
    import zarr

    ds, runs, _ = tiny
    r = cli.run("predict", ds, "--run", runs["dot"], "--out", tmp_path / "pred", "-q")
    assert r.rc == 0, r.err
    g = zarr.open_group(str(tmp_path / "pred"), mode="r")
    _close(g["embeddings"][:], _oracle(ds, runs["dot"])[0])
    m = json.loads((tmp_path / "pred" / "manifest.json").read_text())
    assert m["kind"] == "embed" and m["task"] is None and m["link"]["scored_by_decoder"] is True
    r = cli.run("inspect", tmp_path / "pred")  # the encoder on the model line, the decoder on the link line
    assert r.rc == 0, r.err
    model = next(line for line in r.out.splitlines() if line.startswith("model"))
    assert "name sage" in model
    assert any(line.startswith("link") and "decoder dot" in line for line in r.out.splitlines()), r.out


# -- score ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("decoder", ["dot", "distmult", "mlp"])
def test_score_pairs_equals_decoder_on_exact_embeddings(tiny, decoder):
    ds, runs, _ = tiny
    pairs = _pairs()
    scores = diskgraph.score_pairs(ds, runs[decoder], pairs, memory_budget=64 << 10)
    assert scores.dtype == np.float32 and scores.shape == (len(pairs),)
    _close(scores, _ref_scores(ds, runs[decoder], pairs))
    np.testing.assert_array_equal(diskgraph.score_pairs(ds, runs[decoder], pairs, storage="ram"), scores)


def test_score_under_a_small_budget_keeps_endpoints_on_disk(tiny, tmp_path, monkeypatch):
    """A budget too small to hold the endpoints' embeddings beside the layer-wise run: they go to a memory-mapped
    file in the scratch directory (removed at the end); GAT encoder, 3-layer GCN encoder."""
    ds, _, _ = tiny
    opened = []
    real = np.lib.format.open_memmap
    monkeypatch.setattr(np.lib.format, "open_memmap", lambda *a, **k: opened.append(a) or real(*a, **k))
    pairs = _pairs()
    for name, model, decoder, layers in (("gat", "gat", "mlp", 2), ("gcn", "gcn", "distmult", 3)):
        run = _make_run(ds, tmp_path / name, model=model, decoder=decoder, layers=layers)
        scores = diskgraph.score_pairs(ds, run, pairs, memory_budget=12 << 10, scratch=tmp_path)
        _close(scores, _ref_scores(ds, run, pairs))
    assert len(opened) == 2 and not list(tmp_path.glob(".diskgraph-score-*"))


def test_trained_link_run_end_to_end(cli, tmp_path):
    """`preprocess all --task link` + `train --task link`, then embed and score the val edges with the trained run."""
    from diskgraph.cli import main

    ds = tmp_path / "ds"
    assert main(["preprocess", "all", "--npz", str(_graph_npz(tmp_path / "g.npz")), "--out", str(ds), "--task", "link",
                 "--undirected", "--dedup", "--edge-split", "random:0.8,0.1,0.1", "--seed", "0", "--fanouts", "5,5",
                 "--batch-size", "64", "--negatives", "1", "--eval-negatives", "10", "-q"]) == 0
    run = tmp_path / "run"
    r = cli.run("train", ds, "--task", "link", "--model", "sage", "--decoder", "distmult", "--hidden", HIDDEN,
                "--epochs", "1", "--seed", "0", "--run-dir", run, "--device", "cpu", "-q")
    assert r.rc == 0, r.err
    assert cli.run("embed", ds, "--run", run, "--out", tmp_path / "emb", "-q").rc == 0
    ref, _ = _oracle(ds, run)
    import zarr

    _close(zarr.open_group(str(tmp_path / "emb"), mode="r")["embeddings"][:], ref)
    val = open_dataset(ds).array("edges/val").read_rows(0, 2).T.copy()  # [2, E] → the val edges as pairs
    np.save(tmp_path / "val.npy", val)
    r = cli.run("score", ds, "--run", run, "--pairs", tmp_path / "val.npy", "--out", tmp_path / "val.npy.npy", "-q")
    assert r.rc == 0, r.err
    _close(np.load(tmp_path / "val.npy.npy"), _ref_scores(ds, run, val))


def test_cli_score_writes_every_format_in_pair_order(cli, tiny, tmp_path):
    import pyarrow.parquet as pq

    ds, runs, _ = tiny
    pairs = _pairs(p=30, seed=2)
    pairs[:3] = [[5, 7], [7, 5], [5, 7]]  # repeats and both directions keep their rows
    ref = _ref_scores(ds, runs["mlp"], pairs)
    np.save(tmp_path / "p.npy", pairs)
    np.save(tmp_path / "pt.npy", pairs.T.copy())  # [2, P] is read too (P != 2)
    (tmp_path / "p.csv").write_text("src,dst\n" + "".join(f"{u},{v}\n" for u, v in pairs))
    (tmp_path / "p.txt").write_text("".join(f"{u} {v}\n" for u, v in pairs))
    outs = {}
    for src, out in (("p.npy", "s.npy"), ("pt.npy", "t.csv"), ("p.csv", "s.parquet"), ("p.txt", "s.csv")):
        r = cli.run("score", ds, "--run", runs["mlp"], "--pairs", tmp_path / src, "--out", tmp_path / out,
                    "--log-json", tmp_path / "log.jsonl", "-q")
        assert r.rc == 0, r.err
        assert f"score: {len(pairs)} pairs" in r.out
        outs[out] = tmp_path / out
    npy = np.load(outs["s.npy"])
    assert npy.dtype == np.float32 and npy.shape == (len(pairs),)
    _close(npy, ref)
    assert npy[0] == npy[2]
    for name in ("t.csv", "s.csv"):
        lines = outs[name].read_text().splitlines()
        assert lines[0] == "src,dst,score,probability" and len(lines) == len(pairs) + 1
        table = np.array([[float(x) for x in line.split(",")] for line in lines[1:]])
        assert (table[:, :2] == pairs).all()
        np.testing.assert_allclose(table[:, 2], npy, rtol=1e-6)
        np.testing.assert_allclose(table[:, 3], 1 / (1 + np.exp(-npy.astype(np.float64))), rtol=1e-5)
    t = pq.read_table(outs["s.parquet"])
    assert t.column_names == ["src", "dst", "score", "probability"] and str(t.schema.field("score").type) == "float"
    assert (t["src"].to_numpy() == pairs[:, 0]).all() and (t["dst"].to_numpy() == pairs[:, 1]).all()
    np.testing.assert_array_equal(t["score"].to_numpy(), npy)
    line = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    assert line["kind"] == "score" and line["pairs"] == len(pairs) and line["decoder"] == "mlp"
    assert line["endpoints"] == len(np.unique(pairs)) and "read_bytes" in line and "seconds" in line
    assert not list(tmp_path.glob(".s*")) and not list(tmp_path.glob(".t*"))  # no scratch or temporary left
    # an existing --out: refused without --overwrite, replaced with it
    r = cli.run("score", ds, "--run", runs["mlp"], "--pairs", tmp_path / "p.npy", "--out", outs["s.npy"], "-q")
    assert r.rc == 2 and "already exists" in r.err
    r = cli.run("score", ds, "--run", runs["mlp"], "--pairs", tmp_path / "p.npy", "--out", outs["s.npy"],
                "--overwrite", "-q")
    assert r.rc == 0, r.err


# -- refusals -------------------------------------------------------------------------------------

def _write(path, text=None, array=None):
    if array is not None:
        np.save(path, array)
    else:
        path.write_text(text)
    return path


def test_score_refusals(cli, tiny, tmp_path, refused):
    ds, runs, tmp = tiny
    good = _write(tmp_path / "good.npy", array=_pairs(p=4))
    out = tmp_path / "scores.csv"
    cases = [
        (_write(tmp_path / "shape.npy", array=np.arange(12).reshape(3, 4)), ("shape.npy", "shape (3, 4)", "[P, 2]")),
        (_write(tmp_path / "flat.npy", array=np.arange(6)), ("flat.npy", "[P, 2]")),
        (_write(tmp_path / "float.npy", array=np.ones((3, 2))), ("float.npy", "float64", "integers")),
        (_write(tmp_path / "range.npy", array=np.array([[0, 1], [2, N + 5]])), ("range.npy", f"node id {N + 5}",
                                                                                f"0..{N - 1}")),
        (_write(tmp_path / "neg.csv", "src,dst\n1,2\n-1,3\n"), ("neg.csv", "node id -1", f"0..{N - 1}")),
        (_write(tmp_path / "empty.npy", array=np.zeros((0, 2), np.int64)), ("empty.npy", "no pairs")),
        (_write(tmp_path / "empty.csv", "src,dst\n"), ("empty.csv", "no pairs")),
        (_write(tmp_path / "frac.csv", "1,2\n3.5,4\n"), ("frac.csv", "integer")),
        (_write(tmp_path / "cols.csv", "1,2,3\n4,5,6\n"), ("cols.csv", "3 column")),
        (_write(tmp_path / "junk.npy", "not a numpy file"), ("junk.npy", ".npy")),
        (tmp_path / "missing.npy", ("missing.npy", "does not exist")),
        (_write(tmp_path / "pairs.json", "[[1, 2]]"), ("pairs.json", ".csv")),
    ]
    for pairs, needles in cases:
        r = cli.run("score", ds, "--run", runs["dot"], "--pairs", pairs, "--out", out, "-q")
        refused(r, *needles, out=out)
    # a node-task run
    from diskgraph.models import build_model
    from diskgraph.pipeline.checkpoint_file import BEST_MODEL_NAME, write_model_card
    from diskgraph.store.binding import dataset_identity

    node_run = tmp_path / "node-run"
    node_run.mkdir()
    model = build_model("sage", F, HIDDEN, 3, 2)
    torch.save(model.state_dict(), node_run / BEST_MODEL_NAME)

    class Task:
        kind, num_outputs = "classification", 3
    write_model_card(node_run, model, {"dataset": dataset_identity(open_dataset(ds))}, {}, 1, "val_acc", 0.5, Task())
    refused(cli.run("score", ds, "--run", node_run, "--pairs", good, "--out", out, "-q"), "node task", "--task link",
            out=out)
    with pytest.raises(diskgraph.InputError, match="node task"):
        diskgraph.score_pairs(ds, node_run, _pairs(p=3))
    # a run trained on another dataset
    other = _import(tmp_path, "other", seed=7)
    refused(cli.run("score", other, "--run", runs["dot"], "--pairs", good, "--out", out, "-q"),
            "trained on another dataset", out=out)
    refused(cli.run("embed", other, "--run", runs["dot"], "--out", tmp_path / "e", "-q"), "trained on another dataset",
            out=tmp_path / "e")
    # the output
    refused(cli.run("score", ds, "--run", runs["dot"], "--pairs", good, "--out", tmp_path / "s.zarr", "-q"),
            "s.zarr", ".npy", out=tmp_path / "s.zarr")
    with pytest.raises(diskgraph.InputError, match="pair 1"):
        diskgraph.score_pairs(ds, runs["dot"], np.array([[0, 1], [N, 0]]))


def test_embed_refuses_custom_link_encoder(tiny, tmp_path):
    """A link run whose encoder is a custom model (--model module:Class) is refused by load_model in one sentence."""
    from diskgraph.inference import _refuse_custom

    with pytest.raises(diskgraph.InputError, match="custom model"):
        _refuse_custom({"link": {"decoder": "dot", "dim": 4}, "encoder": {"custom": "mymod:Net"}}, tmp_path)
