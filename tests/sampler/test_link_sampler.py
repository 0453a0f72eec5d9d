"""Link-prediction plans (``preprocess sample --task link``; diskgraph.sampler.link_sampler).

Every row of a link plan is checked against the dataset's edge splits (train positives once per epoch, shuffled per
epoch; val/test once, in order), its seeds against the endpoints, its eval negatives against every true edge (the
topology and all splits, both directions when undirected); no training block holds a val/test edge; the in-memory
reference draws the same minibatches as the plan; packing and the loaders' ``y`` work on a link plan; bad options and
datasets without an edge split are refused; node plans stay format version 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from diskgraph.cli import main
from diskgraph.preprocess import run_pack, run_sample
from diskgraph.sampler.link_sampler import LinkOptions, LinkSampler, exclude_edges, has_edge
from diskgraph.sampler.neighbor_sampler import sample_plan
from diskgraph.store.checksums import manifest_checksum
from diskgraph.store.dataset import open_dataset
from diskgraph.store.edge_splits import EdgeSplitSpec
from diskgraph.store.errors import FormatError, InputError
from diskgraph.store.importer import ImportOptions, import_dataset
from diskgraph.store.plan import LinkTargets, open_plan
from diskgraph.store.sources.edges import GeneratedEdges
from diskgraph.store.sources.features import GeneratedFeatures


@pytest.fixture(scope="module")
def cora_link(tmp_path_factory, shared_dataset) -> Path:
    """Cora imported with an undirected random edge split, with a link plan (K=2, 2 epochs) and its pack."""
    out = tmp_path_factory.mktemp("cora-link") / "cora"
    assert main(["preprocess", "all", "--npz", str(shared_dataset("cora")), "--out", str(out), "--task", "link",
                 "--edge-split", "random:0.85,0.05,0.1", "--undirected", "--fanouts", "5,3", "--batch-size", "512",
                 "--eval-batch-size", "128", "--epochs", "2", "--negatives", "2", "--eval-negatives", "20",
                 "--host-cache", "256K", "--seed", "3", "-q"]) == 0
    return out


def directed(tmp: Path, num_nodes: int = 300, num_edges: int = 3000, edge_split=True) -> Path:
    def edges(start: int, count: int):
        rng = np.random.default_rng([7, start])
        return rng.integers(0, num_nodes, count), (rng.pareto(1.5, count) * 3).astype(np.int64) % num_nodes

    spec = EdgeSplitSpec("random", (0.8, 0.1, 0.1), 1) if edge_split else None
    feats = GeneratedFeatures(num_nodes, 8, "float32",
                              lambda s, c: np.arange(s * 8, (s + c) * 8, dtype=np.float32).reshape(c, 8))
    return import_dataset(tmp, GeneratedEdges(num_edges, edges), features=feats, labels=np.arange(num_nodes) % 3,
                          random_split=((0.5, 0.25, 0.25), 0),
                          options=ImportOptions(memory_budget=64 << 20, dedup=True, num_nodes=num_nodes),
                          edge_split=spec)


def rows(plan, split):
    return [plan.minibatch(split, i) for i in range(plan.num_minibatches(split))]


def endpoints(mb):
    s, lk = mb.seeds, mb.link
    return s[lk.src], s[lk.dst], s[lk.neg]


def true_pairs(ds, undirected: bool) -> set:
    """Every true (u, w): the topology's edges and every split edge (both directions when undirected)."""
    ptr, idx = np.asarray(ds.indptr), np.asarray(ds.indices)
    dst = np.repeat(np.arange(ds.num_nodes), np.diff(ptr))
    pairs = set(zip(idx.tolist(), dst.tolist()))
    for e in ds.edge_splits.values():
        pairs |= set(zip(e[0].tolist(), e[1].tolist()))
        if undirected:
            pairs |= set(zip(e[1].tolist(), e[0].tolist()))
    return pairs


def check_plan_rows(ds, plan, undirected: bool, k: int, m: int):
    es = ds.edge_splits
    truth = true_pairs(ds, undirected)
    for split in plan.splits:
        e = es[split]
        for epoch in range(plan.num_epochs(split)):
            per = plan.minibatches_per_epoch(split)
            mbs = [plan.minibatch(split, epoch * per + b) for b in range(per)]
            got = np.concatenate([np.stack(endpoints(mb)[:2]) for mb in mbs], axis=1)
            if split == "train":  # every train edge once per epoch, shuffled
                assert sorted(map(tuple, got.T.tolist())) == sorted(map(tuple, e.T.tolist()))
            else:  # every val/test positive once, in order
                np.testing.assert_array_equal(got, e)
            for mb in mbs:
                src, dst, neg = endpoints(mb)
                lk = mb.link
                assert lk.k == (k if split == "train" else m) and neg.shape == (len(src), lk.k)
                np.testing.assert_array_equal(mb.seeds, np.unique(np.concatenate([src, dst, neg.ravel()])))
                if split != "train":  # fixed, distinct, filtered negatives
                    for u, row in zip(src.tolist(), neg.tolist()):
                        assert len(set(row)) == m
                        assert not any((u, w) in truth or (undirected and (w, u) in truth) for w in row)


def test_cora_link_plan_rows(cora_link):
    ds, plan = open_dataset(cora_link), open_plan(cora_link / "plans" / "default")
    assert plan.task == "link" and plan.manifest["format_version"] == 3
    c = plan.config
    assert (c["task"], c["negatives"], c["negative_sampler"], c["shared_negatives"], c["eval_negatives"]) == (
        "link", 2, "uniform", False, 20)
    check_plan_rows(ds, plan, True, 2, 20)
    a, b = rows(plan, "train")[:plan.minibatches_per_epoch("train")], rows(plan, "train")[plan.minibatches_per_epoch("train"):]
    assert not np.array_equal(endpoints(a[0])[0], endpoints(b[0])[0])  # epochs are shuffled differently
    assert plan.verify(ds) == []


def test_no_val_test_edge_in_any_training_block(cora_link):
    ds, plan = open_dataset(cora_link), open_plan(cora_link / "plans" / "default")
    n = np.int64(ds.num_nodes)
    held = np.concatenate([ds.edge_splits["val"], ds.edge_splits["test"]], axis=1).astype(np.int64)
    keys = np.unique(np.concatenate([held[0] * n + held[1], held[1] * n + held[0]]))  # either direction
    checked = 0
    for mb in rows(plan, "train"):
        for h in range(mb.num_hops):
            ptr, idx = mb.hop_indptr[h], mb.hop_indices[h]
            dst = mb.input_nodes[np.repeat(np.arange(len(ptr) - 1), np.diff(ptr))]
            src = mb.input_nodes[idx]
            assert not np.isin(src * n + dst, keys).any() and not np.isin(dst * n + src, keys).any()
            checked += len(idx)
    assert checked > 0


def block_edges(mb, h):
    """(destination, source) global ids of hop ``h``'s sampled edges, in block order."""
    ptr, idx = mb.hop_indptr[h], mb.hop_indices[h]
    return list(zip(mb.input_nodes[np.repeat(np.arange(len(ptr) - 1), np.diff(ptr))].tolist(),
                    mb.input_nodes[idx].tolist()))


@pytest.mark.parametrize("undirected", [True, False])
def test_seed_edges_leave_training_blocks(cora_link, tmp_path, undirected):
    """Oracle: a train minibatch sampled with seed-edge exclusion = the same minibatch sampled keeping them, minus
    (in a plain Python filter) every block edge u -> v of its positives (and v -> u when undirected); val/test
    minibatches are untouched; the plan records the option, a plan from before it reads as keeping them."""
    ds = open_dataset(cora_link) if undirected else open_dataset(directed(tmp_path / "d"))
    splits = {k: np.asarray(v) for k, v in ds.edge_splits.items()}
    common = dict(undirected=undirected, fanouts=[5, 3], batch_size=256, seed=3)
    cut = LinkSampler(ds.indptr, ds.indices, ds.num_nodes, splits, **common)
    keep = LinkSampler(ds.indptr, ds.indices, ds.num_nodes, splits, **common,
                       options=LinkOptions(exclude_seed_edges=False))
    dropped = 0
    for b in range(min(3, cut.minibatches_per_epoch("train"))):
        a, k = cut.minibatch("train", 1, b), keep.minibatch("train", 1, b)
        src, dst = a.seeds[a.link.src].tolist(), a.seeds[a.link.dst].tolist()
        banned = {(v, u) for u, v in zip(src, dst)} | ({(u, v) for u, v in zip(src, dst)} if undirected else set())
        np.testing.assert_array_equal(a.input_nodes, k.input_nodes)
        for h in range(a.num_hops):
            want = [e for e in block_edges(k, h) if e not in banned]
            assert block_edges(a, h) == want
            assert not banned & set(block_edges(a, h))
            dropped += len(block_edges(k, h)) - len(want)
    assert dropped > 0
    for split in ("val", "test"):
        a, k = cut.minibatch(split, 0, 0), keep.minibatch(split, 0, 0)
        for h in range(a.num_hops):
            assert block_edges(a, h) == block_edges(k, h)
    assert exclude_edges(keep.minibatch("val", 0, 0), np.array([0]), np.array([1]), undirected=True) == 0
    if undirected:
        plan = open_plan(cora_link / "plans" / "default")
        assert plan.config["exclude_seed_edges"] is True
        assert LinkOptions.from_config({k: v for k, v in plan.config.items() if k != "exclude_seed_edges"}) == \
            LinkOptions(negatives=2, eval_negatives=20, exclude_seed_edges=False)


def test_keep_seed_edges_flag(tmp_path, cli):
    from diskgraph.preprocess import plan_difference

    d = directed(tmp_path / "d")
    assert cli.run("preprocess", "sample", str(d), "--task", "link", "--fanouts", "3", "--batch-size", "50",
                   "--eval-negatives", "5", "--keep-seed-edges", "-q").rc == 0
    plan = open_plan(d / "plans" / "default")
    assert plan.config["exclude_seed_edges"] is False
    why = plan_difference(plan.path, open_dataset(d), fanouts=[3], batch_size=50, task="link",
                          link_options=LinkOptions(eval_negatives=5))
    assert why == "--keep-seed-edges given there, not given in this run"
    assert plan_difference(plan.path, open_dataset(d), fanouts=[3], batch_size=50, task="link",
                           link_options=LinkOptions(eval_negatives=5, exclude_seed_edges=False)) is None


def test_reference_equals_plan_and_y(cora_link):
    from diskgraph.pipeline.memory_loader import InMemoryLoader

    ds, plan = open_dataset(cora_link), open_plan(cora_link / "plans" / "default")
    for split, fan, bs in (("train", [5, 3], 512), ("val", [5, 3], 128)):
        ref = InMemoryLoader(ds, split, fanouts=fan, batch_size=bs, seed=3, task="link",
                             link_options=LinkOptions(negatives=2, eval_negatives=20))
        assert len(ref) == plan.minibatches_per_epoch(split)
        for r in range(plan.num_minibatches(split)):  # epoch e of the reference = presampled epoch e
            a, b = ref.minibatch(r), plan.minibatch(split, r)
            np.testing.assert_array_equal(a.input_nodes, b.input_nodes)
            for x, y in zip(a.hop_indices + a.hop_indptr, b.hop_indices + b.hop_indptr):
                np.testing.assert_array_equal(x, y)
            for x, y in ((a.link.src, b.link.src), (a.link.dst, b.link.dst), (a.link.neg, b.link.neg)):
                np.testing.assert_array_equal(x, y)
        batch = next(iter(ref.epoch(ref.order(0))))
        mb = plan.minibatch(split, 0)
        assert batch.y.dtype == torch.int64 and tuple(batch.y.shape) == (len(mb.link.src), 2 + mb.link.k)
        np.testing.assert_array_equal(batch.y.numpy(), mb.link.targets())
        assert torch.equal(batch.x, torch.from_numpy(ds.features.read_rows(0, ds.num_nodes))[batch.input_nodes])
        ref.close()


def test_packed_loader_y(cora_link):
    from diskgraph.pipeline.loader import PackedLoader

    ds, plan = open_dataset(cora_link), open_plan(cora_link / "plans" / "default")
    loader = PackedLoader(ds, cora_link / "packs" / "default", plan, "test")
    for i, batch in enumerate(loader.epoch(loader.order(0))):
        mb = plan.minibatch("test", batch.index)
        y = mb.link.targets()
        assert y.shape[1] == 22
        np.testing.assert_array_equal(batch.y.numpy(), y)
        np.testing.assert_array_equal(batch.y[:, 0].numpy(), mb.link.src)
        np.testing.assert_array_equal(batch.y[:, 2:].numpy(), mb.link.neg)
    assert i + 1 == plan.num_minibatches("test")
    loader.close()


def test_directed_and_negative_samplers(tmp_path):
    ds = open_dataset(directed(tmp_path / "d"))
    assert not ds.edge_split_info["undirected"]
    p = run_sample(ds.path, name="u", fanouts=[3, 2], batch_size=100, seed=1, task="link",
                   link_options=LinkOptions(negatives=3, eval_negatives=50))
    check_plan_rows(ds, open_plan(p), False, 3, 50)
    # the same seed gives the same plan whatever the thread count; shared and degree negatives
    q = sample_plan(ds, tmp_path / "q", fanouts=[3, 2], batch_size=100, seed=1, task="link",
                    link_options=LinkOptions(negatives=3, eval_negatives=50), threads=1)
    for split in ("train", "val", "test"):
        for x, y in zip(rows(open_plan(p), split), rows(open_plan(q), split)):
            np.testing.assert_array_equal(x.input_nodes, y.input_nodes)
            np.testing.assert_array_equal(x.link.neg, y.link.neg)
    s = open_plan(run_sample(ds.path, name="s", fanouts=[3, 2], batch_size=100, task="link",
                             link_options=LinkOptions(negatives=4, shared_negatives=True, negative_sampler="degree",
                                                      eval_negatives=10)))
    deg = np.diff(np.asarray(ds.indptr))
    for mb in rows(s, "train"):
        neg = endpoints(mb)[2]
        assert neg.shape[1] == 4 and (neg == neg[:1]).all()  # shared by the minibatch
        assert (deg[neg] > 0).all()  # degree^0.75: nodes without in-edges are never drawn
    # eval negatives are fixed by the seed and the positive, not by the eval batch size
    t = open_plan(run_sample(ds.path, name="t", fanouts=[3, 2], batch_size=100, eval_batch_size=7, seed=1,
                             task="link", link_options=LinkOptions(negatives=3, eval_negatives=50)))
    a = np.concatenate([endpoints(mb)[2] for mb in rows(open_plan(p), "val")])
    b = np.concatenate([endpoints(mb)[2] for mb in rows(t, "val")])
    np.testing.assert_array_equal(a, b)


def test_scarce_negatives_and_has_edge():
    # a star: node 0 points at 1..5; with 7 nodes, (0, w) has only {0, 6} left as negatives
    src = np.array([0, 0, 0, 0, 0], np.int64)
    dst = np.array([1, 2, 3, 4, 5], np.int64)
    n = 7
    order = np.lexsort((src, dst))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(dst, minlength=n))])
    indices = src[order]
    assert has_edge(indptr, indices, np.array([0, 0, 1, 0]), np.array([1, 5, 0, 6])).tolist() == [True, True, False,
                                                                                                   False]
    splits = {"train": np.stack([src, dst]), "val": np.array([[0], [1]]), "test": np.array([[0], [2]])}
    ls = LinkSampler(indptr, indices, n, splits, undirected=False, fanouts=[2], batch_size=4,
                     options=LinkOptions(eval_negatives=2))
    assert sorted(ls.eval_negatives_of("val", np.array([0]))[0].tolist()) == [0, 6]
    ls = LinkSampler(indptr, indices, n, splits, undirected=False, fanouts=[2], batch_size=4,
                     options=LinkOptions(eval_negatives=3))
    with pytest.raises(InputError, match="possible negatives"):
        ls.eval_negatives_of("val", np.array([0]))


def test_refusals(tmp_path, cli, refused):
    plain = directed(tmp_path / "plain", edge_split=False)
    res = cli.run("preprocess", "sample", str(plain), "--task", "link")
    refused(res, "no edge split", "--edge-split")
    d = directed(tmp_path / "d")
    refused(cli.run("preprocess", "sample", str(d), "--task", "link", "--negatives", "0"), "--negatives 0")
    refused(cli.run("preprocess", "sample", str(d), "--task", "link", "--eval-negatives", "0"), "--eval-negatives 0")
    refused(cli.run("preprocess", "sample", str(d), "--task", "link", "--eval-negatives", "300"), "possible negatives")
    assert not (d / "plans").exists()


def test_versions_and_pack(tmp_path):
    ds_path = directed(tmp_path / "d")
    node = open_plan(run_sample(ds_path, name="n", fanouts=[3], batch_size=50))
    assert node.task == "node" and node.manifest["format_version"] == 2 and "task" not in node.config
    assert node.minibatch("train", 0).link is None
    link = run_sample(ds_path, name="l", fanouts=[3], batch_size=50, task="link",
                      link_options=LinkOptions(eval_negatives=5))
    pack = run_pack(ds_path, plan="l", host_cache=4096)
    assert pack.exists()
    assert main(["inspect", str(ds_path), "--verify", "-q"]) == 0
    m = json.loads((link / "manifest.json").read_text())
    m["format_version"] = 4
    m.pop("checksum")
    m["checksum"] = manifest_checksum(m)
    (link / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(FormatError, match="reads up to version 3"):
        open_plan(link)


def test_link_targets():
    lk = LinkTargets(src=np.array([0, 2]), dst=np.array([1, 3]), neg=np.array([[4, 5, 6], [7, 8, 9]]))
    assert lk.k == 3 and lk.num_positives == 2
    np.testing.assert_array_equal(lk.targets(), [[0, 1, 4, 5, 6], [2, 3, 7, 8, 9]])
