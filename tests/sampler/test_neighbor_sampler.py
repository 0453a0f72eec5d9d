"""Offline neighbor sampling into plans (diskgraph.sampler.neighbor_sampler.sample_plan).

Every minibatch of a plan is checked against the dataset's topology in global
ids (each sampled edge exists, the layout invariants hold), the plan's counts
against a recount, the seeds against the splits (each train node once per
epoch, K distinct shuffles, val/test in order), and the plan against itself
sampled with another thread count (identical) or another seed (different).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from diskgraph.sampler import neighbor_sampler as ns
from diskgraph.sampler.neighbor_sampler import sample_plan
from diskgraph.store.dataset import open_dataset
from diskgraph.store.errors import InputError
from diskgraph.store.importer import ImportOptions, import_dataset
from diskgraph.store.plan import open_plan
from diskgraph.store.sources.edges import GeneratedEdges

TMP_TAG = ".diskgraph-tmp-"


def make_dataset(out: Path, num_nodes: int, num_edges: int, *, seed: int = 0, splits=None,
                 fractions=(0.5, 0.25, 0.25)) -> Path:
    def edges(start: int, count: int):
        rng = np.random.default_rng([seed, start])
        # skewed destinations: a few nodes of high in-degree, many of low
        dst = (rng.pareto(1.5, count) * 3).astype(np.int64) % num_nodes
        return rng.integers(0, num_nodes, count), dst

    labels = np.arange(num_nodes) % 3
    kw = {"splits": splits} if splits is not None else {"random_split": (fractions, seed)}
    return import_dataset(out, GeneratedEdges(num_edges, edges), labels=labels,
                          options=ImportOptions(memory_budget=64 << 20, dedup=True, num_nodes=num_nodes), **kw)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("small") / "ds", 3000, 30000)


_EDGE_KEYS: dict = {}


def edge_keys(indptr, indices) -> np.ndarray:
    """Sorted ``dst * N + src`` of every edge (cached per topology)."""
    k = (id(indptr), id(indices))
    if k not in _EDGE_KEYS:
        n = indptr.size - 1
        dst = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
        _EDGE_KEYS.clear()
        _EDGE_KEYS[k] = (indptr, indices, dst * n + np.asarray(indices, np.int64))
    return _EDGE_KEYS[k][2]


def check_minibatch(mb, indptr, indices, fanouts):
    """Layout invariants of one minibatch, and every sampled edge exists in the graph (global ids)."""
    nodes, sizes = mb.input_nodes, mb.layer_sizes
    assert sizes.size == len(fanouts) + 1 and sizes[-1] == nodes.size and (np.diff(sizes) >= 0).all()
    assert np.unique(nodes).size == nodes.size, "input nodes repeat"
    for h in range(len(fanouts)):
        ptr, idx = mb.hop_indptr[h], mb.hop_indices[h]
        n_dst, n_src = int(sizes[h]), int(sizes[h + 1])
        assert ptr.size == n_dst + 1 and ptr[0] == 0 and (np.diff(ptr) >= 0).all() and ptr[-1] == idx.size
        assert idx.size == 0 or (idx.min() >= 0 and idx.max() < n_src)
        assert (np.diff(nodes[n_dst:n_src]) > 0).all(), "new nodes of a hop not appended in ascending id"
        dst = np.repeat(nodes[:n_dst], np.diff(ptr))
        src = nodes[idx]
        # every edge (src -> dst) exists: a binary search for dst * N + src among the graph's sorted edge keys
        n = indptr.size - 1
        graph = edge_keys(indptr, indices)
        keys = dst * n + src
        at = np.minimum(np.searchsorted(graph, keys), graph.size - 1)
        assert keys.size == 0 or (graph[at] == keys).all(), "a sampled edge is not in the graph"
        d_all = (indptr[nodes[:n_dst] + 1] - indptr[nodes[:n_dst]])
        want = d_all if fanouts[h] < 0 else np.minimum(d_all, fanouts[h])
        np.testing.assert_array_equal(np.diff(ptr), want)
        # no source repeats within a destination (the dataset is de-duplicated)
        for d in range(n_dst):
            seg = src[ptr[d]:ptr[d + 1]]
            assert (np.diff(seg) > 0).all()


def all_minibatches(plan, split):
    return [plan.minibatch(split, i) for i in range(plan.num_minibatches(split))]


# -- the plan's content ---------------------------------------------------------------------------

def test_plan_structure_seeds_and_counts(small, tmp_path):
    out = sample_plan(small, tmp_path / "plan", fanouts=[5, 3], batch_size=128, seed=7, epochs=3,
                      eval_fanouts=[4, -1], eval_batch_size=200, threads=2)
    ds = open_dataset(small)
    indptr, indices = np.asarray(ds.indptr), np.asarray(ds.indices)
    plan = open_plan(out)
    assert plan.splits == ["train", "val", "test"] and plan.num_hops == 2
    cfg = plan.config
    assert cfg["fanouts"] == [5, 3] and cfg["eval_fanouts"] == [4, -1] and cfg["batch_size"] == 128
    assert cfg["eval_batch_size"] == 200 and cfg["epochs"] == 3 and cfg["seed"] == 7
    assert cfg["fanout_order"].startswith("hop") and "without replacement" in cfg["sampler"]
    info = plan.manifest["dataset"]
    assert info["num_nodes"] == ds.num_nodes and info["num_edges"] == ds.num_edges
    assert info["indptr_sha256"] == ds.manifest["arrays"]["topology/indptr"]["sha256"]
    assert info["indices_sha256"] == ds.manifest["arrays"]["topology/indices"]["sha256"]

    train = np.asarray(ds.splits["train"])
    per_epoch = -(-train.size // 128)
    assert plan.minibatches_per_epoch("train") == per_epoch and plan.num_epochs("train") == 3
    mbs = all_minibatches(plan, "train")
    assert len(mbs) == 3 * per_epoch
    orders = []
    for e in range(3):
        epoch = mbs[e * per_epoch:(e + 1) * per_epoch]
        assert [(m.epoch, m.batch) for m in epoch] == [(e, b) for b in range(per_epoch)]
        assert all(m.seeds.size == 128 for m in epoch[:-1]) and 0 < epoch[-1].seeds.size <= 128
        seeds = np.concatenate([m.seeds for m in epoch])
        np.testing.assert_array_equal(np.sort(seeds), train)  # every train node exactly once per epoch
        orders.append(seeds)
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
    assert not np.array_equal(orders[0], train), "train seeds were not shuffled"

    for split, fan in (("train", [5, 3]), ("val", [4, -1]), ("test", [4, -1])):
        split_mbs = mbs if split == "train" else all_minibatches(plan, split)
        for mb in split_mbs:
            check_minibatch(mb, indptr, indices, fan)
        if split != "train":
            nodes = np.asarray(ds.splits[split])
            assert plan.num_epochs(split) == 1 and plan.num_minibatches(split) == -(-nodes.size // 200)
            np.testing.assert_array_equal(np.concatenate([m.seeds for m in split_mbs]), nodes)  # in order, once
        recount = np.bincount(np.concatenate([m.input_nodes for m in split_mbs]), minlength=ds.num_nodes)
        np.testing.assert_array_equal(plan.counts(split), recount)
        si = plan.split_info[split]
        assert si["input_nodes"] == recount.sum()
        assert si["sampled_edges"] == sum(h.size for m in split_mbs for h in m.hop_indices)
        assert si["distinct_nodes_read"] == int((recount > 0).sum())


def test_same_seed_same_plan_across_thread_counts(small, tmp_path):
    kw = dict(fanouts=[6, 4], batch_size=100, epochs=2)
    a = open_plan(sample_plan(small, tmp_path / "a", seed=3, threads=1, **kw))
    b = open_plan(sample_plan(small, tmp_path / "b", seed=3, threads=2, **kw))
    c = open_plan(sample_plan(small, tmp_path / "c", seed=4, threads=2, **kw))
    for split in a.splits:
        assert a.num_minibatches(split) == b.num_minibatches(split) == c.num_minibatches(split)
        differs = False
        for i in range(a.num_minibatches(split)):
            x, y, z = a.minibatch(split, i), b.minibatch(split, i), c.minibatch(split, i)
            np.testing.assert_array_equal(x.input_nodes, y.input_nodes)
            np.testing.assert_array_equal(x.layer_sizes, y.layer_sizes)
            for h in range(2):
                np.testing.assert_array_equal(x.hop_indptr[h], y.hop_indptr[h])
                np.testing.assert_array_equal(x.hop_indices[h], y.hop_indices[h])
            differs |= not np.array_equal(x.input_nodes, z.input_nodes)
        assert differs, f"seed 3 and seed 4 gave the same {split} plan"
        np.testing.assert_array_equal(a.counts(split), b.counts(split))
        # the Arrow files are byte-identical too
        assert (a.path / f"{split}.arrow").read_bytes() == (b.path / f"{split}.arrow").read_bytes()


def test_minibatch_is_a_function_of_seed_split_epoch_batch(small):
    ds = open_dataset(small)
    indptr, indices = np.asarray(ds.indptr), np.asarray(ds.indices)
    seeds = np.asarray(ds.splits["train"])[:50]
    keys = {ns.minibatch_key(s, sp, e, b) for s in (0, 1) for sp in ("train", "val") for e in (0, 1) for b in (0, 1)}
    assert len(keys) == 16
    m1 = ns.sample_minibatch(indptr, indices, seeds, [5, 5], ns.minibatch_key(0, "train", 0, 0))
    m2 = ns.sample_minibatch(indptr, indices, seeds, [5, 5], ns.minibatch_key(0, "train", 0, 0))
    np.testing.assert_array_equal(m1.input_nodes, m2.input_nodes)
    check_minibatch(m1, indptr, indices, [5, 5])


def test_default_splits_eval_settings_and_one_hop(small, tmp_path):
    plan = open_plan(sample_plan(small, tmp_path / "p", fanouts=[-1], batch_size=500, threads=1))
    assert plan.splits == ["train", "val", "test"]
    assert plan.config["eval_fanouts"] == [-1] and plan.config["eval_batch_size"] == 500
    ds = open_dataset(small)
    for split in plan.splits:
        for mb in all_minibatches(plan, split):
            check_minibatch(mb, np.asarray(ds.indptr), np.asarray(ds.indices), [-1])
    only = open_plan(sample_plan(small, tmp_path / "q", fanouts=[2], batch_size=500, splits=["val"], threads=1))
    assert only.splits == ["val"]


# -- refusals -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, flag", [
    ({"fanouts": []}, "--fanouts"),
    ({"fanouts": [0, 5]}, "--fanouts"),
    ({"fanouts": [5, -2]}, "--fanouts"),
    ({"fanouts": ["x"]}, "--fanouts"),
    ({"batch_size": 0}, "--batch-size"),
    ({"batch_size": 2.5}, "--batch-size"),
    ({"epochs": 0}, "--epochs"),
    ({"eval_fanouts": [3]}, "--eval-fanouts"),
    ({"eval_fanouts": [3, 0]}, "--eval-fanouts"),
    ({"eval_batch_size": -1}, "--eval-batch-size"),
    ({"threads": 0}, "--threads"),
    ({"splits": ["train", "holdout"]}, "holdout"),
])
def test_bad_options_are_refused_naming_the_flag(small, tmp_path, kwargs, flag):
    args = {"fanouts": [3, 2], "batch_size": 64, **kwargs}
    with pytest.raises(InputError) as e:
        sample_plan(small, tmp_path / "p", **args)
    msg = str(e.value)
    assert flag in msg and "\n" not in msg and ". " not in msg.replace("e.g. ", "")
    assert not (tmp_path / "p").exists() and not list(tmp_path.glob(f".p{TMP_TAG}*"))


def test_empty_train_split_is_refused(tmp_path):
    n = 50
    splits = {"train": (np.zeros(0, np.int64), "train"), "val": (np.arange(10), "val"), "test": (np.arange(10, 20), "test")}
    ds = make_dataset(tmp_path / "ds", n, 200, splits=splits)
    with pytest.raises(InputError, match="train split .* is empty"):
        sample_plan(ds, tmp_path / "p", fanouts=[2], batch_size=8)
    # an eval-only plan is still possible
    plan = open_plan(sample_plan(ds, tmp_path / "p", fanouts=[2], batch_size=8, splits=["val", "test"], threads=1))
    assert plan.splits == ["val", "test"] and plan.num_minibatches("val") == 2


def test_existing_plan_needs_overwrite_and_a_failed_run_leaves_nothing(small, tmp_path, monkeypatch):
    out = tmp_path / "p"
    sample_plan(small, out, fanouts=[2], batch_size=300, threads=1)
    first = json.loads((out / "manifest.json").read_text())
    with pytest.raises(InputError, match="already exists"):
        sample_plan(small, out, fanouts=[2], batch_size=300)
    # an interrupted run leaves the old plan untouched and no temporary directory
    calls = {"n": 0}
    real = ns.sample_minibatch

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(ns, "sample_minibatch", failing)
    with pytest.raises(KeyboardInterrupt):
        sample_plan(small, out, fanouts=[3], batch_size=100, threads=2, overwrite=True)
    monkeypatch.undo()
    assert json.loads((out / "manifest.json").read_text()) == first
    assert not list(tmp_path.glob(f".p{TMP_TAG}*"))
    sample_plan(small, out, fanouts=[3], batch_size=100, threads=2, overwrite=True)
    assert open_plan(out).config["fanouts"] == [3]


# -- datasets on disk -----------------------------------------------------------------------------

def test_shared_cora_end_to_end(shared_dataset, tmp_path):
    from diskgraph.cli import main

    npz = shared_dataset("cora")
    ds_dir = tmp_path / "cora"
    assert main(["preprocess", "import", "--npz", str(npz), "--out", str(ds_dir), "-q"]) == 0
    out = sample_plan(ds_dir, ds_dir / "plan", fanouts=[10, 5], batch_size=512, seed=0, epochs=2)
    ds = open_dataset(ds_dir)
    plan = open_plan(out)
    indptr, indices = np.asarray(ds.indptr), np.asarray(ds.indices)
    for split in plan.splits:
        mbs = all_minibatches(plan, split)
        for mb in mbs:
            check_minibatch(mb, indptr, indices, [10, 5])
        seeds = Counter(np.concatenate([m.seeds for m in mbs]).tolist())
        nodes = np.asarray(ds.splits[split])
        assert set(seeds) == set(nodes.tolist()) and set(seeds.values()) == {plan.num_epochs(split)}
        recount = np.bincount(np.concatenate([m.input_nodes for m in mbs]), minlength=ds.num_nodes)
        np.testing.assert_array_equal(plan.counts(split), recount)


def test_generated_dataset_through_memory_maps(tmp_path, monkeypatch):
    """A generated graph read only through memory maps, with and without MADV_RANDOM: the same plan."""
    from diskgraph.generate import generate_dataset

    path = generate_dataset(tmp_path / "syn", nodes=20_000, edges=200_000, feature_dim=2, classes=4, seed=1,
                            split="random:0.2,0.1,0.1")
    ds = open_dataset(path)
    for advice in ("random", "normal"):
        m = ns._topology_map(ds, "topology/indices", advice)
        assert isinstance(m, np.memmap) and m._mmap is not ds.indices._mmap
    plans = []
    for advice in ("random", "normal"):
        monkeypatch.setenv(ns.ADVICE_ENV, advice)
        plans.append(open_plan(sample_plan(path, tmp_path / advice, fanouts=[10, 10], batch_size=512, threads=2)))
    a, b = plans
    assert a.num_minibatches("train") == -(-len(ds.splits["train"]) // 512)
    for split in a.splits:
        np.testing.assert_array_equal(a.counts(split), b.counts(split))
        assert (a.path / f"{split}.arrow").read_bytes() == (b.path / f"{split}.arrow").read_bytes()
    indptr, indices = np.asarray(ds.indptr), np.asarray(ds.indices)
    for i in (0, a.num_minibatches("train") - 1):
        check_minibatch(a.minibatch("train", i), indptr, indices, [10, 10])


def test_topology_advice(monkeypatch):
    monkeypatch.delenv(ns.ADVICE_ENV, raising=False)
    assert ns.topology_advice(1 << 20) == "normal"
    assert ns.topology_advice(1 << 55) == "random"
    monkeypatch.setenv(ns.ADVICE_ENV, "random")
    assert ns.topology_advice(1 << 20) == "random"
