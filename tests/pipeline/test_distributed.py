"""Data-parallel training under torchrun: 2 CPU processes with gloo equal one process with gradient averaging.

* ``torchrun --nproc-per-node 2 -m diskgraph train DIR --epochs 1 --log-json FILE`` on the CPU (gloo): after
  one epoch rank 0's model equals, within float tolerance, a single process that steps Adam on the average of
  the gradients of the two ranks' minibatches, step by step; each rank read exactly its share of the epoch's
  minibatches (its step log names the plan rows, and its loader's extent bytes are those rows' extents); only
  rank 0 wrote the log, which aggregates the ranks.
* Its epoch-end checkpoint resumes in one process; a mid-epoch one from another world size is refused.
* ``preprocess sample --shard R/W`` writes exactly the rows of the whole plan that share R trains, records the
  world size, and training with another world size is refused with one sentence; 2 ranks train their own packs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diskgraph.pipeline.distributed import shard
from diskgraph.pipeline.trainer import read_checkpoint_file, write_checkpoint_file
from diskgraph.pipeline.schedule import epoch_order
from diskgraph.preprocess import run_pack, run_sample
from diskgraph.store.packed import open_pack
from diskgraph.store.plan import open_plan, shard_name

from loader_helpers import BATCH_SIZE, FANOUTS, PLAN_EPOCHS, PLAN_SEED, build_identity

SEED = 3
HIDDEN = 16
LR = 0.01


@pytest.fixture(scope="module")
def ident(tmp_path_factory):
    return build_identity(tmp_path_factory.mktemp("ddp"), num_nodes=2000, dim=8)


def torchrun(*args, nproc: int = 2, timeout: int = 180) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node N -m diskgraph ARGS`` (a free port: tests may run side by side)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "diskgraph", *[str(a) for a in args]]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def train_args(ds_dir, run_dir, log, steps, pack="some", epochs=1):
    return ["train", ds_dir, "--pack", pack, "--model", "sage", "--hidden", HIDDEN, "--dropout", "0", "--lr", LR,
            "--epochs", epochs, "--seed", SEED, "--device", "cpu", "--run-dir", run_dir, "--log-json", log,
            "--step-log", steps, "-q"]


def test_shard_is_disjoint_equal_and_covers_all_but_the_remainder():
    order = np.random.default_rng(0).permutation(11)
    parts = [shard(order, r, 3) for r in range(3)]
    assert [len(p) for p in parts] == [3, 3, 3]
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == 9 and set(joined) == set(order[:9])  # the last 11 % 3 of the order are cut
    assert np.array_equal(parts[1], order[1:9:3])
    evals = [shard(order, r, 3, equal=False) for r in range(3)]
    assert sorted(np.concatenate(evals)) == sorted(order)


def _reference_model(ds_dir, rows_per_rank: list[np.ndarray]):
    """One process: Adam on the mean of the ranks' minibatch gradients at every step."""
    from diskgraph.models import build_model
    from diskgraph.pipeline.loader import PackedLoader
    from diskgraph.store.dataset import open_dataset

    ds = open_dataset(ds_dir)
    pack = open_pack(ds_dir / "packs" / "some")
    plan = open_plan(pack.plan_path())
    torch.manual_seed(SEED)  # as diskgraph train: the model is built right after seeding
    model = build_model("sage", ds.feature_dim, HIDDEN, int(ds.num_classes), len(FANOUTS), dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    loader = PackedLoader(ds, pack, plan, "train", device="cpu", reuse_buffers=False)
    try:
        batches = [list(loader.epoch(rows)) for rows in rows_per_rank]
    finally:
        loader.close()
    for step in zip(*batches):
        opt.zero_grad(set_to_none=True)
        grads = []
        for b in step:
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(b.blocks, b.x), b.y).backward()
            grads.append([p.grad.clone() for p in model.parameters()])
        for p, *g in zip(model.parameters(), *grads):
            p.grad = sum(g) / len(g)
        opt.step()
    return model, pack


def test_two_gloo_ranks_equal_one_process_with_gradient_averaging(ident, tmp_path, cli):
    run, log, steps = tmp_path / "run", tmp_path / "log.jsonl", tmp_path / "steps.jsonl"
    r = torchrun(*train_args(ident, run, log, steps))
    assert r.returncode == 0, r.stderr[-3000:]

    plan = open_plan(open_pack(ident / "packs" / "some").plan_path())
    order = epoch_order(plan, "train", 0, SEED)
    shares = [shard(order, rank, 2) for rank in range(2)]
    model, pack = _reference_model(ident, shares)
    state = read_checkpoint_file(run / "checkpoint.pt")
    assert state["world_size"] == 2 and (state["epoch"], state["position"]) == (1, 0)
    for name, want in model.state_dict().items():
        torch.testing.assert_close(state["model"][name], want, rtol=1e-4, atol=1e-5, msg=name)

    # each rank read exactly its share: the plan rows it stepped through, and those rows' extents
    for rank, path in enumerate([steps, steps.with_name(steps.name + ".rank1")]):
        read = [json.loads(line)["minibatch"] for line in path.read_text().splitlines()]
        assert read == shares[rank].tolist()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(lines) == 2 and lines[1]["summary"] and lines[1]["world_size"] == 2
    rec = lines[0]
    assert rec["world_size"] == 2 and rec["minibatches"] == len(shares[0]) * 2
    for rank, share in enumerate(shares):
        mine = rec["ranks"][rank]
        assert mine["rank"] == rank and mine["minibatches"] == len(share)
        assert mine["extent_bytes"] == sum(pack.entry("train", int(i)).padded_nbytes for i in share)
    assert rec["extent_bytes"] == sum(m["extent_bytes"] for m in rec["ranks"])
    assert rec["read_bytes"] == sum(m["read_bytes"] for m in rec["ranks"])
    assert rec["epoch_s"] == max(m["epoch_s"] for m in rec["ranks"])
    assert not list(tmp_path.glob("log.jsonl.*"))  # rank 0 alone wrote --log-json

    # the epoch-end checkpoint continues in one process; a mid-epoch one of 2 ranks does not
    r1 = cli.run(*train_args(ident, run, log, tmp_path / "s1.jsonl", epochs=2), "--resume")
    assert r1.rc == 0, r1.err
    assert [json.loads(x)["epoch"] for x in log.read_text().splitlines()[:-1]] == [0, 1]
    state = read_checkpoint_file(run / "checkpoint.pt")
    state.update(epoch=1, position=2, world_size=2)
    write_checkpoint_file(state, run / "checkpoint.pt")
    r2 = cli.run(*train_args(ident, run, log, tmp_path / "s2.jsonl", epochs=3), "--resume")
    assert r2.rc == 2 and "mid-epoch" in r2.err and "resume it with 2" in r2.err


def test_split_sampling_matches_the_whole_plan_and_records_the_world_size(ident, tmp_path, cli):
    whole = open_plan(ident / "plans" / "default")
    for rank in range(2):
        path = run_sample(ident, name="split", fanouts=FANOUTS, batch_size=BATCH_SIZE, seed=PLAN_SEED,
                          epochs=PLAN_EPOCHS, shard=(rank, 2))
        assert path.name == shard_name("split", rank, 2)
        part = open_plan(path)
        assert part.config["shard"] == {"rank": rank, "world_size": 2}
        for split in part.splits:
            per_epoch = whole.minibatches_per_epoch(split)
            stop = per_epoch - per_epoch % 2 if split == "train" else per_epoch
            want = [e * per_epoch + b for e in range(whole.num_epochs(split)) for b in range(rank, stop, 2)]
            assert part.num_minibatches(split) == len(want)
            for i, w in enumerate(want):
                a, b = part.minibatch(split, i), whole.minibatch(split, w)
                assert (a.epoch, a.batch) == (b.epoch, b.batch)
                assert np.array_equal(a.input_nodes, b.input_nodes)
                assert all(np.array_equal(x, y) for x, y in zip(a.hop_indices, b.hop_indices))
        run_pack(ident, plan="split", shard=(rank, 2), max_blowup=None, host_cache=8 * 4 * 100)
    # the command line: `preprocess all --shard R/W` names plan and pack after the share; a bad share is refused
    r = cli.run("preprocess", "all", ident, "--fanouts", "4,3", "--batch-size", BATCH_SIZE, "--seed", PLAN_SEED,
                "--epochs", PLAN_EPOCHS, "--name", "cli", "--shard", "1/2", "--max-blowup", "100", "-q")
    assert r.rc == 0, r.err
    assert open_pack(ident / "packs" / "cli.rank1-of-2").manifest["plan"]["config"]["shard"] == {"rank": 1,
                                                                                              "world_size": 2}
    r = cli.run("preprocess", "sample", ident, "--shard", "2/2", "--name", "bad")
    assert r.rc == 2 and "0 <= RANK < WORLD_SIZE" in r.err
    # one process (a world of 1) cannot train a plan split for 2
    r = cli.run("train", ident, "--pack", "split", "--epochs", "1", "--hidden", "8", "--run-dir", tmp_path / "one",
                "--device", "cpu")
    assert r.rc == 2 and "another number of ranks" in r.err and "--shard R/1" in r.err
    r = cli.run("train", ident, "--pack", shard_name("split", 1, 2), "--epochs", "1", "--hidden", "8",
                "--run-dir", tmp_path / "one", "--device", "cpu")
    assert r.rc == 2 and "share 1 of a plan split for 2 ranks" in r.err

    # two ranks train their own shares: each reads all of its own pack's epoch and nothing else
    run, log, steps = tmp_path / "run", tmp_path / "log.jsonl", tmp_path / "steps.jsonl"
    res = torchrun(*train_args(ident, run, log, steps, pack="split"))
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert lines[-1]["presplit"] is True and lines[0]["world_size"] == 2
    for rank, path in enumerate([steps, steps.with_name(steps.name + ".rank1")]):
        plan = open_plan(ident / "plans" / shard_name("split", rank, 2))
        read = [json.loads(line)["minibatch"] for line in path.read_text().splitlines()]
        assert sorted(read) == list(range(plan.minibatches_per_epoch("train")))
        assert lines[0]["ranks"][rank]["minibatches"] == plan.minibatches_per_epoch("train")
