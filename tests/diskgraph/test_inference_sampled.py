"""Sampled-mode inference (diskgraph.inference_sampled.run_sampled) and what it adds below it.

The oracle is a plain full-graph forward in float64: one :class:`Block` over all N nodes built from the
dataset's CSC, repeated once per layer. With fanouts of -1 every sampled block holds each destination's
whole in-neighborhood, so SAGE and GAT (whose layers read only a destination's in-neighbors) give the same
numbers; GCN normalizes by the block's out-degrees and is not compared. With real fanouts the rows are
compared with the model run on the scratch plan's own minibatches and an in-memory gather of the features.
Also: ``BlockGNN.embed``, ``sample_plan(seed_nodes=...)`` and the plan binding of given seed nodes.
"""

from __future__ import annotations

import copy
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from diskgraph.inference_sampled import InOrder, run_sampled
from diskgraph.models import build_model
from diskgraph.pipeline.blocks import blocks_from_minibatch, make_block
from diskgraph.pipeline.trainer import StopRequested
from diskgraph.sampler.neighbor_sampler import SEED_NODES_SPLIT, sample_plan
from diskgraph.store.binding import check_plan, plan_problem
from diskgraph.store.dataset import open_dataset
from diskgraph.store.errors import InputError
from diskgraph.store.importer import ImportOptions, import_dataset
from diskgraph.store.plan import open_plan
from diskgraph.store.sources.edges import GeneratedEdges
from diskgraph.store.sources.features import GeneratedFeatures

N, DIM, CLASSES, HIDDEN = 700, 12, 4, 16
BUDGET = 8 << 20


def random_dataset(out: Path, num_nodes: int = N, dim: int = DIM, seed: int = 0) -> Path:
    """A random graph (skewed in-degrees, some nodes without in-edges) with random float32 features."""
    def edges(start: int, count: int):
        rng = np.random.default_rng([seed, start])
        dst = (rng.pareto(1.2, count) * 5).astype(np.int64) % num_nodes
        return rng.integers(0, num_nodes, count), dst

    def rows(start: int, count: int):
        return np.random.default_rng([seed, 7, start]).standard_normal((count, dim)).astype(np.float32)

    return import_dataset(out, GeneratedEdges(num_nodes * 5, edges),
                          features=GeneratedFeatures(num_nodes, dim, "float32", rows),
                          labels=np.arange(num_nodes) % CLASSES, random_split=((0.5, 0.25, 0.25), seed),
                          options=ImportOptions(memory_budget=32 << 20, dedup=False, num_nodes=num_nodes))


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return open_dataset(random_dataset(tmp_path_factory.mktemp("infer") / "ds"))


def make_model(name: str, layers: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(name, DIM, HIDDEN, CLASSES, layers, dropout=0.5, heads=2)
    with torch.no_grad():  # non-zero biases, so a skipped bias shows
        for layer in model.layers:
            layer.bias.uniform_(-0.5, 0.5)
    return model.eval()


def oracle(ds, model):
    """(float64 logits [N, C], float64 layer-1 activations [N, H]) of a full-graph forward."""
    n = ds.num_nodes
    full = make_block(n, n, np.array(ds.indptr), np.array(ds.indices))
    x = torch.from_numpy(ds.features.read_rows(0, n).astype(np.float64))
    m = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        logits = m([full] * m.num_layers, x)
        h1 = m.activation(m.layers[0](full, x))
    return logits.numpy(), h1.numpy()


def infer(ds, model, nodes, tmp_path: Path, *, layer=None, fanouts=None, batch_size=64, stop=None, seed=0,
          device: str = "cpu"):
    calls = []

    def emit(ids, rows):
        assert isinstance(ids, np.ndarray) and ids.dtype == np.int64
        assert isinstance(rows, torch.Tensor) and rows.dtype == torch.float32 and rows.device.type == "cpu"
        assert rows.shape[0] == ids.shape[0]
        calls.append((ids.copy(), rows.clone()))

    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    stats = run_sampled(ds, model, np.asarray(nodes, np.int64), layer=layer or model.num_layers,
                        fanouts=fanouts or [-1] * model.num_layers, batch_size=batch_size, seed=seed,
                        scratch=scratch, memory_budget=BUDGET, device=torch.device(device), direct=True, emit=emit,
                        stop=stop)
    return calls, stats, scratch


def joined(calls):
    ids = np.concatenate([c[0] for c in calls])
    rows = torch.cat([c[1] for c in calls]).numpy().astype(np.float64)
    return ids, rows


def assert_close(got: np.ndarray, want: np.ndarray, rtol: float = 1e-4) -> None:
    """Every row within ``rtol`` relative, in the max norm (an entry that cancels to near zero is measured against
    its row's scale, not its own)."""
    assert got.shape == want.shape
    scale = np.maximum(np.abs(want).max(axis=1, keepdims=True), 1e-6)
    err = np.abs(got - want) / scale
    assert err.max() < rtol, f"max relative error {err.max():.3g} at {np.unravel_index(err.argmax(), err.shape)}"


# -- all neighbors: equal to the full-graph forward ------------------------------------------------------

@pytest.mark.parametrize("name", ["sage", "gat"])
def test_all_neighbors_equal_full_graph_forward(ds, tmp_path, name):
    model = make_model(name)
    want_logits, _ = oracle(ds, model)
    calls, stats, scratch = infer(ds, model, np.arange(N), tmp_path)
    ids, rows = joined(calls)
    assert np.array_equal(ids, np.arange(N)), "every node exactly once, ascending"
    assert len(calls) == stats["minibatches"] == -(-N // 64)
    for a, b in zip(calls, calls[1:]):
        assert a[0][-1] < b[0][0]
    assert rows.shape == (N, CLASSES)
    assert_close(rows, want_logits)
    assert set(stats) == {"minibatches", "seconds", "sample_s", "pack_s", "read_bytes", "read_amplification",
                          "peak_rss_bytes"}
    assert stats["seconds"] >= stats["sample_s"] + stats["pack_s"] > 0 and stats["peak_rss_bytes"] > 0
    # the scratch plan is an ordinary plan, bound to the dataset's graph and to the seed ids
    plan = open_plan(scratch / "plan")
    check_plan(plan, ds)
    assert plan.splits == [SEED_NODES_SPLIT] and plan.config["fanouts"] == [-1, -1]
    assert "seeds_sha256" in plan.manifest["dataset"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_all_neighbors_on_cuda(ds, tmp_path):
    model = make_model("sage")
    want_logits, want_h1 = oracle(ds, model)
    model = model.to("cuda")
    for layer, want in ((2, want_logits), (1, want_h1)):
        (tmp_path / str(layer)).mkdir()
        calls, stats, _ = infer(ds, model, np.arange(N), tmp_path / str(layer), layer=layer, device="cuda")
        ids, rows = joined(calls)
        assert np.array_equal(ids, np.arange(N))
        assert_close(rows, want)


def test_embed_layer1_equals_full_graph_activations(ds, tmp_path):
    model = make_model("sage")
    _, want_h1 = oracle(ds, model)
    calls, _, _ = infer(ds, model, np.arange(N), tmp_path, layer=1, batch_size=100)
    ids, rows = joined(calls)
    assert np.array_equal(ids, np.arange(N))
    assert rows.shape == (N, HIDDEN)
    assert (rows >= 0).all() and (rows == 0).any(), "after the ReLU"
    assert_close(rows, want_h1)


def test_three_layers_middle_layer(ds, tmp_path):
    model = make_model("sage", layers=3, seed=3)
    n = ds.num_nodes
    full = make_block(n, n, np.array(ds.indptr), np.array(ds.indices))
    x = torch.from_numpy(ds.features.read_rows(0, n).astype(np.float64))
    m = copy.deepcopy(model).double()
    with torch.no_grad():
        h2 = m.activation(m.layers[1](full, m.activation(m.layers[0](full, x)))).numpy()
    calls, _, _ = infer(ds, model, np.arange(N), tmp_path, layer=2, batch_size=256)
    ids, rows = joined(calls)
    assert np.array_equal(ids, np.arange(N))
    assert_close(rows, h2)


def test_subset_gives_exactly_those_nodes(ds, tmp_path):
    model = make_model("sage")
    want_logits, _ = oracle(ds, model)
    nodes = np.sort(np.random.default_rng(5).choice(N, 123, replace=False)).astype(np.int64)
    calls, stats, _ = infer(ds, model, nodes, tmp_path, batch_size=50)
    ids, rows = joined(calls)
    assert np.array_equal(ids, nodes)
    assert stats["minibatches"] == 3
    assert_close(rows, want_logits[nodes])


def test_sampled_fanouts_match_the_plans_minibatches(ds, tmp_path):
    """Real fanouts: each row is the model on the scratch plan's blocks with in-memory features (training's
    behaviour), bit for bit; the same seed samples the same rows again."""
    model = make_model("sage")
    nodes = np.arange(0, N, 2, dtype=np.int64)
    calls, stats, scratch = infer(ds, model, nodes, tmp_path, fanouts=[3, 2], batch_size=40, seed=11)
    ids, rows = joined(calls)
    assert np.array_equal(ids, nodes)
    plan = open_plan(scratch / "plan")
    assert plan.config["fanouts"] == [3, 2] and plan.config["seed"] == 11
    feats = ds.features.read_rows(0, ds.num_nodes)
    want = []
    with torch.no_grad():
        for i in range(plan.num_minibatches(SEED_NODES_SPLIT)):
            mb = plan.minibatch(SEED_NODES_SPLIT, i)
            want.append(model(blocks_from_minibatch(mb), torch.from_numpy(feats[mb.input_nodes])))
    assert np.array_equal(rows.astype(np.float32), torch.cat(want).numpy())
    (tmp_path / "again").mkdir()
    again, _, _ = infer(ds, model, nodes, tmp_path / "again", fanouts=[3, 2], batch_size=40, seed=11)
    assert np.array_equal(joined(again)[1], rows)


def test_small_budget_reads_cold_rows(tmp_path):
    """With features larger than the host tier, rows come from packed extents and the amplification is measured."""
    d = open_dataset(random_dataset(tmp_path / "wide", num_nodes=500, dim=256, seed=2))
    torch.manual_seed(0)
    model = build_model("sage", 256, 8, CLASSES, 2).eval()
    calls = []
    scratch = tmp_path / "s"
    scratch.mkdir()
    stats = run_sampled(d, model, np.arange(500), layer=2, fanouts=[-1, -1], batch_size=64, seed=0, scratch=scratch,
                        memory_budget=1 << 20, device=torch.device("cpu"), direct=True,
                        emit=lambda i, r: calls.append((i, r)), stop=None)
    ids, rows = joined(calls)
    assert np.array_equal(ids, np.arange(500))
    assert_close(rows, oracle(d, model)[0])
    manifest = json.loads((scratch / "pack" / "manifest.json").read_text())
    assert manifest["tiers"]["host"]["rows"] == (1 << 20) // 4 // 1024 < 500
    assert manifest["cold_bytes"] > 0
    # cold rows were needed, so the amplification is measured (0 where the filesystem serves reads from memory)
    assert stats["read_amplification"] is not None and stats["read_amplification"] >= 0


def test_stop_raises_after_the_current_minibatch(ds, tmp_path):
    model = make_model("sage")
    stop = threading.Event()
    calls = []

    def emit(ids, rows):
        calls.append(ids)
        stop.set()

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with pytest.raises(StopRequested):
        run_sampled(ds, model, np.arange(N), layer=2, fanouts=[-1, -1], batch_size=64, seed=0, scratch=scratch,
                    memory_budget=BUDGET, device=torch.device("cpu"), direct=True, emit=emit, stop=stop)
    assert len(calls) == 1 and np.array_equal(calls[0], np.arange(64))
    assert not [t for t in threading.enumerate() if t.name.startswith("diskgraph-") and t.is_alive()]
    stop2 = threading.Event()
    stop2.set()
    with pytest.raises(StopRequested):  # set before: nothing is sampled
        run_sampled(ds, model, np.arange(N), layer=2, fanouts=[-1, -1], batch_size=64, seed=0,
                    scratch=tmp_path, memory_budget=BUDGET, device=torch.device("cpu"), direct=True,
                    emit=emit, stop=stop2)
    assert len(calls) == 1 and not (tmp_path / "plan").exists()


def test_refusals(ds, tmp_path):
    model = make_model("sage")
    kw = dict(fanouts=[-1, -1], batch_size=64, seed=0, scratch=tmp_path, memory_budget=BUDGET,
              device=torch.device("cpu"), direct=True, emit=lambda i, r: None)
    with pytest.raises(InputError, match="outside 1..2"):
        run_sampled(ds, model, np.arange(5), layer=3, **kw)
    with pytest.raises(InputError, match="sorted"):
        run_sampled(ds, model, np.array([3, 1]), layer=2, **kw)
    with pytest.raises(InputError, match="outside the dataset"):
        run_sampled(ds, model, np.array([N]), layer=2, **kw)
    with pytest.raises(InputError, match="one fanout per layer"):
        run_sampled(ds, model, np.arange(5), layer=2, **{**kw, "fanouts": [-1]})
    calls = []
    stats = run_sampled(ds, model, np.zeros(0, np.int64), layer=2, **{**kw, "emit": lambda i, r: calls.append(i)})
    assert calls == [] and stats["minibatches"] == 0


# -- the pieces ---------------------------------------------------------------------------------------

def test_in_order_reorders_minibatches_and_seeds():
    nodes = np.array([2, 5, 7, 8, 11, 12, 20], np.int64)
    got = []
    o = InOrder(nodes, 3, lambda i, r: got.append((i, r)))
    rows = {int(v): torch.tensor([[float(v)]]) for v in nodes}

    def part(ids):
        return np.array(ids, np.int64), torch.cat([rows[i] for i in ids])

    o.add(2, *part([20]))
    o.add(1, *part([12, 8, 11]))  # seeds out of order within the minibatch
    assert got == [] and not o.done()
    o.add(0, *part([2, 5, 7]))
    assert o.done()
    ids = np.concatenate([g[0] for g in got])
    assert np.array_equal(ids, nodes)
    assert torch.cat([g[1] for g in got]).flatten().tolist() == nodes.astype(float).tolist()
    with pytest.raises(RuntimeError):
        o.add(0, *part([2, 5, 7]))
    o2 = InOrder(nodes, 3, lambda i, r: None)
    with pytest.raises(RuntimeError, match="other seeds"):
        o2.add(0, *part([2, 5, 8]))


@pytest.mark.parametrize("name", ["sage", "gcn", "gat"])
def test_embed_matches_forward_and_layers(ds, name):
    model = make_model(name, layers=2)
    plan_dir = Path(ds.path) / "plans" / f"embed-{name}"
    sample_plan(ds, plan_dir, fanouts=[4, 3], batch_size=30, seed=1, splits=["val"])
    mb = open_plan(plan_dir).minibatch("val", 0)
    blocks_mb = blocks_from_minibatch(mb)
    x = torch.from_numpy(ds.features.read_rows(0, ds.num_nodes)[mb.input_nodes])
    with torch.no_grad():
        logits = model(blocks_mb, x)
        assert torch.equal(model.embed(blocks_mb, x, 2), logits)
        h1 = model.activation(model.layers[0](blocks_mb[0], x))[: blocks_mb[-1].num_dst]
        assert torch.equal(model.embed(blocks_mb, x, np.int64(1)), h1)
    for bad in (0, 3, True, 1.0):
        with pytest.raises(ValueError, match="outside 1..2"):
            model.embed(blocks_mb, x, bad)
    model.train()  # dropout only in training: before layer 2, not on the returned layer (gat: also inside layers)
    if name != "gat":
        assert torch.equal(model.embed(blocks_mb, x, 1), h1)
    assert not torch.equal(model.embed(blocks_mb, x, 2), logits)


def test_sample_plan_seed_nodes(ds, tmp_path):
    seeds = np.array([9, 3, 400, 17, 5], np.int64)  # kept in the given order
    out = sample_plan(ds, tmp_path / "p", fanouts=[2, 2], batch_size=2, seed=4, seed_nodes=seeds)
    plan = open_plan(out)
    assert plan.splits == [SEED_NODES_SPLIT] and plan.num_minibatches(SEED_NODES_SPLIT) == 3
    got = np.concatenate([plan.minibatch(SEED_NODES_SPLIT, i).seeds for i in range(3)])
    assert np.array_equal(got, seeds)
    assert plan.config["seed_nodes"] == 5 and plan.verify(ds) == []
    assert plan_problem(plan, ds) is None
    # bound to the graph: another graph refuses it
    other = open_dataset(random_dataset(tmp_path / "other", seed=9))
    assert "another graph" in plan_problem(plan, other)
    for bad, msg in ((np.array([1, 1]), "repeat"), (np.array([N]), "outside"), (np.zeros(0, np.int64), "no seed"),
                     (np.array([0.5]), "integer")):
        with pytest.raises(InputError, match=msg):
            sample_plan(ds, tmp_path / "bad", fanouts=[2], batch_size=2, seed_nodes=bad)
    with pytest.raises(InputError, match="--splits"):
        sample_plan(ds, tmp_path / "bad", fanouts=[2], batch_size=2, seed_nodes=seeds, splits=["train"])
    with pytest.raises(InputError, match="--eval-fanouts"):
        sample_plan(ds, tmp_path / "bad", fanouts=[2], batch_size=2, seed_nodes=seeds, eval_fanouts=[3])
    assert not (tmp_path / "bad").exists()


def test_cora_all_nodes(shared_dataset, tmp_path):
    """On cora (the shared dataset), all-neighbor sampled logits equal the float64 full-graph forward."""
    from diskgraph.cli import main

    npz = shared_dataset("cora")
    out = tmp_path / "cora"
    assert main(["preprocess", "import", "--npz", str(npz), "--out", str(out), "-q"]) == 0
    d = open_dataset(out)
    torch.manual_seed(0)
    model = build_model("sage", d.feature_dim, 32, int(d.num_classes), 2).eval()
    want, _ = oracle(d, model)
    calls, stats, _ = infer(d, model, np.arange(d.num_nodes), tmp_path, batch_size=512)
    ids, rows = joined(calls)
    assert np.array_equal(ids, np.arange(d.num_nodes))
    assert_close(rows, want)
