"""InMemoryLoader: online sampling that reproduces the plan's minibatches, fresh samples per epoch.

Offline sampling must change when sampling happens, not what is sampled: with the plan's
seed, fanouts and batch size, epoch ``e`` of the in-memory loader holds exactly the plan's
presampled epoch ``e`` (seeds, input nodes, blocks), and the packed loader's ``x`` for
those minibatches equals the in-memory gather.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from loader_helpers import (BATCH_SIZE, FANOUTS, PLAN_EPOCHS, PLAN_SEED, assert_blocks_equal, build_identity,
                            features_as_float32)

from diskgraph.pipeline.blocks import blocks_from_minibatch
from diskgraph.pipeline.loader import PackedLoader
from diskgraph.pipeline.memory_loader import InMemoryLoader
from diskgraph.store.dataset import open_dataset
from diskgraph.store.errors import InputError
from diskgraph.store.plan import open_plan

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")


@pytest.fixture(scope="module")
def ident(tmp_path_factory):
    return build_identity(tmp_path_factory.mktemp("memory"), num_nodes=2500, dim=8)


def _loader(path, split, **kw):
    args = dict(fanouts=FANOUTS, batch_size=BATCH_SIZE, seed=PLAN_SEED)
    args.update(kw)
    return InMemoryLoader(path, split, **args)


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_online_samples_equal_the_plans_minibatches(ident, split):
    plan = open_plan(ident / "plans" / "default")
    ds = open_dataset(ident)
    feats, labels = features_as_float32(ds), np.asarray(ds.labels)
    loader = _loader(ident, split)
    assert len(loader) == plan.minibatches_per_epoch(split)
    epochs = PLAN_EPOCHS if split == "train" else 1
    for e in range(epochs):
        n = 0
        for k, batch in enumerate(loader.epoch(loader.order(e))):
            row = e * len(loader) + k
            assert batch.index == row and batch.position == k
            mb = plan.minibatch(split, row)
            assert np.array_equal(batch.input_nodes, mb.input_nodes)
            assert_blocks_equal(batch.blocks, blocks_from_minibatch(mb))
            assert np.array_equal(batch.x.numpy().view(np.uint32), feats[mb.input_nodes].view(np.uint32))
            assert np.array_equal(batch.y.numpy(), labels[mb.seeds])
            n += 1
        assert n == len(loader)
        st = loader.epoch_stats()
        assert st["minibatches"] == n and st["bytes_read"] == 0 and st["inputs"] == st["rows_memory"] > 0


def test_packed_and_in_memory_inputs_agree(ident):
    mem = _loader(ident, "train")
    packed = PackedLoader(ident, ident / "packs" / "some", ident / "plans" / "default", "train")
    want = {b.index: (b.x, b.y) for b in mem.epoch(mem.order(1))}
    order = packed.order(1, seed=9)
    assert set(order.tolist()) == set(want)
    for batch in packed.epoch(order):
        x, y = want[batch.index]
        assert torch.equal(batch.x, x) and torch.equal(batch.y, y)


def test_every_epoch_draws_a_fresh_sample(ident):
    loader = _loader(ident, "train")
    seen = []
    for e in (0, 1, 5):
        seen.append([b.input_nodes.copy() for b in loader.epoch(loader.order(e))])
    assert not all(np.array_equal(a, b) for a, b in zip(seen[0], seen[2]))
    # the seeds of an epoch cover the train split once
    batches = list(loader.epoch(loader.order(5)))
    all_seeds = np.concatenate([b.input_nodes[:b.num_seeds] for b in batches])
    assert np.array_equal(np.sort(all_seeds), np.asarray(open_dataset(ident).splits["train"]))
    # resume mid-epoch gives the same minibatches
    tail = list(loader.epoch(loader.order(5), start=3))
    assert [b.index for b in tail] == [b.index for b in batches[3:]]
    assert all(np.array_equal(a.input_nodes, b.input_nodes) for a, b in zip(tail, batches[3:]))


def test_eval_splits_read_in_ascending_id_order(ident):
    loader = _loader(ident, "val", batch_size=100)
    seeds = np.concatenate([b.input_nodes[:b.num_seeds] for b in loader.epoch()])
    assert np.array_equal(seeds, np.asarray(open_dataset(ident).splits["val"]))


def test_bad_options_are_refused(ident):
    with pytest.raises(InputError, match="no 'nope' split"):
        _loader(ident, "nope")
    with pytest.raises(InputError, match="batch-size"):
        _loader(ident, "train", batch_size=0)
    with pytest.raises(InputError, match="start position"):
        _loader(ident, "train").epoch(None, start=99)


@needs_gpu
@pytest.mark.cuda
def test_in_memory_loader_on_cuda(ident):
    cpu = _loader(ident, "val")
    gpu = _loader(ident, "val", device="cuda")
    for a, b in zip(cpu.epoch(), gpu.epoch()):
        assert b.x.is_cuda and torch.equal(a.x, b.x.cpu()) and torch.equal(a.y, b.y.cpu())


@pytest.mark.parametrize("features", ["mmap", "mmap-random"])
def test_memory_mapped_features_give_the_same_batches(ident, features):
    ram = _loader(ident, "train")
    mapped = _loader(ident, "train", features=features)
    assert mapped.features is None and mapped.mapped is not None
    for a, b in zip(ram.epoch(ram.order(1)), mapped.epoch(mapped.order(1))):
        assert a.index == b.index and torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    mapped.close()
    with pytest.raises(InputError, match="reference features 'disk'"):
        _loader(ident, "train", features="disk")


@pytest.mark.parametrize("features", ["ram", "mmap"])
def test_loaders_of_one_run_share_the_feature_table(ident, features):
    train = _loader(ident, "train", features=features)
    val = _loader(ident, "val", features=features, share_features_with=train)
    assert val.features is train.features and val.mapped is train.mapped
    alone = _loader(ident, "val", features=features)
    for a, b in zip(val.epoch(), alone.epoch()):
        assert torch.equal(a.x, b.x)
    val.close()  # does not unmap the table the train loader still uses
    assert next(iter(train.epoch())).x.shape[1] == 8
    with pytest.raises(InputError, match="same dataset and feature mode"):
        _loader(ident, "val", features="mmap-random" if features == "mmap" else "mmap", share_features_with=train)
