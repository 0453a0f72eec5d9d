"""PackedLoader: every minibatch bit-exact, order/resume, queue depths, errors and shutdown, stats, CUDA path.

Identity features (row i = i) packed with the real sampler and packer at cache
sizes from nothing to everything: for every minibatch of every split the
loader's ``x`` equals ``features[input_nodes]`` bit for bit, ``y`` the seeds'
labels and the blocks the plan row's blocks. The CUDA tests at the end run
wherever torch sees a GPU and are skipped with a reason elsewhere.
"""

from __future__ import annotations

import gc
import shutil
import time

import numpy as np
import pytest
import torch
from loader_helpers import (CACHES, PLAN_SEED, build_identity, check_batch, features_as_float32, loader_threads)

from diskgraph.pipeline.cache import FeatureCache
from diskgraph.pipeline.loader import STAT_KEYS, PackedLoader
from diskgraph.store.dataset import open_dataset
from diskgraph.store.direct_io import DirectReader
from diskgraph.store.errors import FormatError, InputError
from diskgraph.store.packed import open_pack
from diskgraph.store.plan import open_plan

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
SPLITS = ("train", "val", "test")


class Ident:
    """An identity dataset with its plan, packs and in-memory reference."""

    def __init__(self, path):
        self.path = path
        self.ds = open_dataset(path)
        self.plan = open_plan(path / "plans" / "default")
        self.feats = features_as_float32(self.ds)
        self.labels = np.asarray(self.ds.labels)

    def pack(self, name):
        return open_pack(self.path / "packs" / name)

    def loader(self, pack="some", split="train", **kw):
        p = pack if not isinstance(pack, str) else self.pack(pack)
        return PackedLoader(self.ds, p, self.plan, split, **kw)

    def orders(self, loader):
        if loader.split == "train":
            return [loader.order(e, seed=7) for e in range(3)]
        return [None]

    def check_epoch(self, loader, order=None, start=0) -> int:
        expect = loader._check_order(order)
        n = 0
        for k, batch in enumerate(loader.epoch(order, start=start)):
            assert batch.position == start + k and batch.index == expect[start + k] and batch.split == loader.split
            check_batch(batch, self.plan, loader.split, self.feats, self.labels)
            s = batch.stats
            assert set(STAT_KEYS) <= set(s)
            assert s["rows_gpu"] + s["rows_host"] + s["rows_cold"] + s["rows_table"] == s["inputs"] == batch.x.shape[0]
            e = loader.pack.entry(loader.split, batch.index)
            assert s["rows_cold"] == e.n_cold and s["rows_table"] == e.n_table
            if e.n_table:  # the extent, and the whole pages (4 KiB) of the table rows' runs
                table = s["bytes_read"] - e.padded_nbytes
                assert table >= e.n_table * loader.pack.row_bytes
            else:
                assert s["bytes_read"] == e.padded_nbytes
            n += 1
        assert n == len(expect) - start
        return n


@pytest.fixture(scope="module")
def ident(tmp_path_factory):
    return Ident(build_identity(tmp_path_factory.mktemp("loader"), caches=CACHES))


@pytest.fixture(autouse=True)
def no_threads_left():
    yield
    gc.collect()
    assert loader_threads() == []


# -- exactness -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("pack", list(CACHES))
def test_every_minibatch_of_every_split_is_exact(ident, pack):
    p = ident.pack(pack)
    for split in SPLITS:
        loader = ident.loader(p, split)
        for order in ident.orders(loader):
            ident.check_epoch(loader, order)
            st = loader.epoch_stats()
            assert st["minibatches"] == len(loader._check_order(order))
            assert st["rows_gpu"] + st["rows_host"] + st["rows_cold"] + st["rows_table"] == st["inputs"]
            assert abs(st["gpu_hit_rate"] + st["host_hit_rate"] + st["cold_rate"] + st["table_rate"] - 1) < 1e-9
            if pack == "everything":
                assert st["rows_cold"] == 0 and st["bytes_read"] == 0
            if pack == "none":
                assert st["rows_gpu"] == st["rows_host"] == 0 and st["bytes_read"] > 0
            if pack == "some":
                assert st["rows_gpu"] > 0 and st["rows_host"] > 0 and st["rows_cold"] > 0
            if pack == "bounded":  # the bytes read include the table rows' whole pages
                assert st["rows_cold"] > 0 and st["rows_table"] > 0
                assert st["bytes_read"] >= (st["rows_cold"] + st["rows_table"]) * p.row_bytes
            if pack == "table-only":
                assert st["rows_cold"] == 0 and st["rows_table"] == st["inputs"] and st["bytes_read"] > 0
    # the train order of a later epoch replays presampled epoch e % K
    assert set(ident.loader(p).order(2, seed=7)) == set(ident.loader(p).order(0, seed=7))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_features_arrive_as_exact_float32(tmp_path, dtype):
    ident = Ident(build_identity(tmp_path, dtype=dtype, num_nodes=1500, dim=4))
    assert ident.ds.feature_dtype == dtype
    for split in SPLITS:
        loader = ident.loader("some", split)
        assert loader.cache.gpu.data.dtype == {"float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
        ident.check_epoch(loader)


# -- order, resume, queue depths, read modes ----------------------------------------------------------


def test_order_and_start_are_honored(ident):
    loader = ident.loader("some")
    order = loader.order(1, seed=3)
    assert sorted(order.tolist()) == list(range(loader.plan.minibatches_per_epoch("train"),
                                                2 * loader.plan.minibatches_per_epoch("train")))
    assert ident.check_epoch(loader, order, start=5) == len(order) - 5
    assert ident.check_epoch(loader, order, start=len(order)) == 0
    assert ident.check_epoch(loader, None) == loader.num_minibatches
    assert ident.check_epoch(loader, [3, 3, 0]) == 3  # any rows, repeats allowed
    assert len(loader) == loader.plan.minibatches_per_epoch("train")
    for bad in (-1, len(order) + 1, 1.5):
        with pytest.raises(InputError, match="start position"):
            loader.epoch(order, start=bad)
    with pytest.raises(InputError, match="outside"):
        loader.epoch([0, loader.num_minibatches])


@pytest.mark.parametrize("depth,ring", [(1, None), (1, 1), (2, None), (2, 1), (3, None), (3, 8)])
def test_queue_depths_and_ring_sizes(ident, depth, ring):
    loader = ident.loader("none", queue_depth=depth, ring=ring)
    assert loader.ring_size == (depth + 2 if ring is None else ring)
    ident.check_epoch(loader, loader.order(0, seed=PLAN_SEED))
    it = loader.epoch(loader.order(0, seed=PLAN_SEED))
    next(it)
    assert len(loader.cold.ring.slots) == loader.ring_size
    for _ in it:
        pass
    assert loader.cold.ring.slots == [] and all(b.x is None for b in loader._pool.buffers)  # freed between epochs (CPU)


def test_direct_and_buffered_reads_agree(ident):
    p = ident.pack("some")
    for split in SPLITS:
        a = [b.x.clone() for b in ident.loader(p, split, direct=True).epoch()]
        b = [b.x.clone() for b in ident.loader(p, split, direct=False).epoch()]
        assert len(a) == len(b) and all(torch.equal(u, v) for u, v in zip(a, b))
    assert p.reader("train", True).direct  # the test filesystem takes O_DIRECT
    assert not p.reader("train", False).direct


def test_reuse_buffers_false_keeps_every_batch_valid(ident):
    loader = ident.loader("some", "val", reuse_buffers=False)
    batches = list(loader.epoch())
    for batch in batches:
        check_batch(batch, ident.plan, "val", ident.feats, ident.labels)
    pooled = ident.loader("some", "train", queue_depth=1)
    ptrs = {b.x.data_ptr() for b in pooled.epoch()}
    assert len(ptrs) <= pooled.queue_depth + 2  # x comes from the pool


# -- errors and shutdown -----------------------------------------------------------------------------


def test_a_failing_read_raises_in_the_consumer_and_stops_the_threads(ident, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(ident.path / "packs" / "none", broken)
    cold = broken / "cold" / "train" / "c" / "0"
    size = cold.stat().st_size
    with open(cold, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(FormatError, match="truncated"):
        open_pack(broken)  # a truncated extent file is refused before anything is read
    with open(cold, "r+b") as f:
        f.truncate(size)  # the second half now reads as zeros: refused when its first extent is read
    loader = ident.loader(open_pack(broken))
    seen = 0
    with pytest.raises(FormatError, match=r"cold/train/c/0: the extent of minibatch \d+ of train .* does not match "
                                          "its checksum; the pack is damaged, pack the plan again"):
        for batch in loader.epoch():
            check_batch(batch, ident.plan, "train", ident.feats, ident.labels)
            seen += 1
    assert seen < loader.num_minibatches
    assert loader_threads() == []
    ident.check_epoch(ident.loader("none"))  # the intact pack still reads


def test_an_assemble_error_raises_in_the_consumer(ident, monkeypatch):
    p = ident.pack("some")
    cache = FeatureCache(p)

    def boom(slots, staged=None):
        raise RuntimeError("gather failed")

    monkeypatch.setattr(cache.host, "gather", boom)
    loader = ident.loader(p, cache=cache)
    with pytest.raises(RuntimeError, match="gather failed"):
        for _ in loader.epoch():
            pass
    assert loader_threads() == []


def test_a_slow_consumer_that_stops_early_leaves_no_threads(ident):
    loader = ident.loader("some", queue_depth=1)
    for k, batch in enumerate(loader.epoch()):
        if k == 2:
            break
    del batch
    assert loader_threads() == []
    gen = loader.epoch()
    next(gen)
    assert len(loader_threads()) == 2
    gen.close()
    assert loader_threads() == []
    # starting an epoch while one is open stops the first; the pool is intact afterwards
    first = loader.epoch()
    next(first)
    ident.check_epoch(loader, loader.order(1, seed=2))
    with pytest.raises(RuntimeError, match="stopped"):
        next(first)  # superseded: its remaining batches are gone, not handed out stale
    first.close()
    ident.check_epoch(loader)
    loader.close()
    with pytest.raises(InputError, match="closed"):
        loader.epoch()


def test_bad_options_are_refused(ident, tmp_path):
    with pytest.raises(InputError, match="queue depth"):
        ident.loader(queue_depth=0)
    with pytest.raises(InputError, match="ring size"):
        ident.loader(ring=0)
    with pytest.raises(InputError, match="no 'nope' split"):
        ident.loader(split="nope")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU"):
            ident.loader(device="cuda")
    other = Ident(build_identity(tmp_path, num_nodes=1500, dim=8))
    with pytest.raises(InputError, match=r"pack .* was packed from other features than dataset .* dataset.num_nodes "
                                         r"is 1500, the dataset's 3000"):
        PackedLoader(ident.ds, other.pack("some"), ident.plan, "train")
    with pytest.raises(InputError, match=r"plan .* was sampled from another graph"):
        PackedLoader(ident.ds, ident.pack("some"), other.plan, "train")


# -- stats and overlap --------------------------------------------------------------------------------


def test_epoch_stats_sum_the_batches(ident):
    loader = ident.loader("some")
    sums = {k: 0 for k in ("bytes_read", "rows_gpu", "rows_host", "rows_cold", "inputs", "seeds")}
    waits = 0.0
    for batch in loader.epoch(loader.order(0, seed=1)):
        for k in sums:
            sums[k] += batch.stats[k]
        waits += batch.stats["consumer_wait_s"]
    st = loader.epoch_stats()
    for k, v in sums.items():
        assert st[k] == v, k
    assert st["consumer_wait_s"] >= waits - 1e-9  # plus the wait for the end of the epoch
    for k in ("epoch_s", "read_busy_s", "io_s", "assemble_busy_s", "compute_s", "read_buffer_wait_s",
              "assemble_input_wait_s", "assemble_buffer_wait_s", "minibatches_per_s", "read_gb_per_s", "overlap"):
        assert st[k] >= 0, k
    assert st["slowest_stage"] in ("read", "assemble", "compute")
    assert st["io_s"] <= st["read_busy_s"]
    assert loader.describe()["cache"]["host"]["mode"] == "cpu"


def test_stages_overlap(ident, monkeypatch):
    """With a 20 ms read and a 20 ms compute per minibatch, an epoch takes about one of them, not their sum."""
    real = DirectReader.read_into

    def slow_read(self, offset, length, buf):
        time.sleep(0.02)
        return real(self, offset, length, buf)

    monkeypatch.setattr(DirectReader, "read_into", slow_read)
    loader = ident.loader("none", "val")
    for batch in loader.epoch():
        time.sleep(0.02)
    st = loader.epoch_stats()
    n = st["minibatches"]
    assert st["read_busy_s"] >= 0.02 * n and st["compute_s"] >= 0.02 * n
    total = st["read_busy_s"] + st["assemble_busy_s"] + st["compute_s"]
    assert st["epoch_s"] < 0.8 * total, st
    assert st["overlap"] < 1.6, st


# -- CUDA ---------------------------------------------------------------------------------------------


@needs_gpu
@pytest.mark.cuda
@pytest.mark.parametrize("pack", list(CACHES))
def test_cuda_loader_equals_cpu_loader(ident, pack):
    p = ident.pack(pack)
    for split in SPLITS:
        gpu_loader = ident.loader(p, split, device="cuda")
        cpu_loader = ident.loader(p, split, device="cpu")
        assert gpu_loader.cache.host.mode == ("uva" if gpu_loader.cache.host.rows else "empty")
        for order in ident.orders(gpu_loader)[:2]:
            want = [(b.x.clone(), b.y, b.blocks) for b in cpu_loader.epoch(order)]
            got = 0
            for batch, (x, y, blocks) in zip(gpu_loader.epoch(order), want):
                assert batch.x.is_cuda and batch.y.is_cuda and batch.blocks[0].indices.is_cuda
                assert torch.equal(batch.x.cpu(), x) and torch.equal(batch.y.cpu(), y)
                check_batch(batch, ident.plan, split, ident.feats, ident.labels)
                got += 1
            assert got == len(want)
            st = gpu_loader.epoch_stats()
            assert st["minibatches"] == got


@needs_gpu
@pytest.mark.cuda
def test_cuda_batches_are_ready_on_the_consumers_stream(ident):
    loader = ident.loader("none", device="cuda", queue_depth=3)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for batch in loader.epoch(loader.order(0, seed=4)):
            # use the batch on the consumer's stream right away, as a model would
            total = (batch.x * 2).sum(dim=1)
            nodes = torch.from_numpy(batch.input_nodes).to("cuda", non_blocking=True)
            assert torch.equal(total, nodes.to(torch.float32) * 2 * batch.x.shape[1])
    torch.cuda.synchronize()


@needs_gpu
@pytest.mark.cuda
@pytest.mark.parametrize("depth", [1, 3])
def test_cuda_loader_queue_depths_early_stop_and_fallback(ident, depth, monkeypatch):
    loader = ident.loader("some", device="cuda", queue_depth=depth, reuse_buffers=depth == 1)
    ident.check_epoch(loader, loader.order(1, seed=0))
    for k, _ in enumerate(loader.epoch()):
        if k == 1:
            break
    assert loader_threads() == []
    monkeypatch.setenv("DISKGRAPH_UVA", "0")
    fallback = ident.loader("some", device="cuda", cache=FeatureCache(ident.pack("some"), "cuda"))
    assert fallback.cache.host.mode == "pinned-copy"
    ident.check_epoch(fallback, fallback.order(0, seed=0))


def test_epoch_order_first_pass_in_plan_order_then_fresh_replays():
    """Epoch e < K reads presampled epoch e in plan order (the in-memory reference's order); a replay (e >= K) reads
    epoch e % K in a fresh seeded permutation; evaluation reads its rows once, in order."""
    from diskgraph.pipeline.schedule import epoch_order

    class Plan:  # the three counts epoch_order reads
        def minibatches_per_epoch(self, split):
            return 6

        def num_epochs(self, split):
            return 2

        def num_minibatches(self, split):
            return 12 if split == "train" else 4

    plan = Plan()
    assert epoch_order(plan, "train", 0, 5).tolist() == list(range(6))
    assert epoch_order(plan, "train", 1, 5).tolist() == list(range(6, 12))
    replay = epoch_order(plan, "train", 2, 5)
    assert sorted(replay.tolist()) == list(range(6)) and replay.tolist() != list(range(6))
    assert np.array_equal(replay, epoch_order(plan, "train", 2, 5))  # a pure function (resume)
    assert not np.array_equal(replay, epoch_order(plan, "train", 2, 6))
    assert epoch_order(plan, "val", 3, 5).tolist() == [0, 1, 2, 3]
