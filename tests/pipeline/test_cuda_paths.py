"""CUDA paths end to end (issue 15): run where a GPU is present, skipped with a reason elsewhere.

* ``diskgraph train --device cuda`` twice, and once killed (SIGKILL) mid-epoch after a ``--checkpoint-every``
  checkpoint and resumed: the three final models (and optimizer states) are bit-identical (deterministic
  algorithms on, ``CUBLAS_WORKSPACE_CONFIG=:4096:8``).
* Release race: the consumer's stream is delayed (``torch.cuda._sleep``) before it reads each batch, and asks
  for the next batch at once: every batch's ``x`` still equals ``features[input_nodes]`` (identity features).
* float16 and bfloat16 features through the CUDA loader equal the widened table bit for bit, in every tier.
* ``torchrun`` with 2 ranks that both see only GPU 0 (``CUDA_VISIBLE_DEVICES=0``) and ``--device cuda`` trains.

``tools/bench/gpu_check.sh`` selects these (the ``cuda`` marker) and records their outcomes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import diskgraph
from diskgraph.generate import generate_dataset
from diskgraph.preprocess import run_pack, run_sample
from diskgraph.store.dataset import open_dataset

from loader_helpers import CACHES, build_identity, features_as_float32

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
pytestmark = [pytest.mark.cuda, needs_cuda]

DETERMINISTIC_MAIN = ("import sys, torch; torch.use_deterministic_algorithms(True, warn_only=True); "
                      "from diskgraph.cli import main; sys.exit(main(sys.argv[1:]))")


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(CUBLAS_WORKSPACE_CONFIG=":4096:8", **extra)
    return env


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    """A synthetic dataset, about 190 train minibatches per epoch, rows in the GPU tier, the host tier and on disk."""
    ds = tmp_path_factory.mktemp("cuda-paths") / "syn"
    generate_dataset(ds, nodes=20_000, edges=120_000, feature_dim=16, classes=4, seed=0)
    run_sample(ds, fanouts=[5, 5], batch_size=64, seed=0, splits=["train", "val"])
    run_pack(ds, gpu_cache=64 << 10, host_cache=256 << 10)
    return ds


def _train_argv(ds: Path, run: Path, *extra) -> list[str]:
    return [sys.executable, "-c", DETERMINISTIC_MAIN, "train", str(ds), "--run-dir", str(run), "--epochs", "2",
            "--hidden", "32", "--seed", "3", "--device", "cuda", "-q", *extra]


def _final_state(run: Path) -> dict:
    try:
        from diskgraph.pipeline.checkpoint_file import read_checkpoint_file
    except ImportError:  # before the trainer's split into modules
        from diskgraph.pipeline.trainer import read_checkpoint_file
    state = read_checkpoint_file(run / "checkpoint.pt")
    assert (state["epoch"], state["position"]) == (2, 0), (state["epoch"], state["position"])
    return state


def _assert_same_state(a: dict, b: dict, what: str) -> None:
    for name, t in a["model"].items():
        assert torch.equal(t, b["model"][name]), f"{what}: model tensor {name} differs"
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        for field, t in sa[k].items():
            if torch.is_tensor(t):
                assert torch.equal(t, sb[k][field]), f"{what}: optimizer state {k}.{field} differs"


def test_cuda_training_is_deterministic_and_resumes_mid_epoch_bit_for_bit(packed, tmp_path):
    runs = {}
    for name in ("a", "b"):
        r = subprocess.run(_train_argv(packed, tmp_path / name), capture_output=True, text=True, timeout=600,
                           env=_env())
        assert r.returncode == 0, r.stderr[-3000:]
        runs[name] = _final_state(tmp_path / name)
    _assert_same_state(runs["a"], runs["b"], "two uninterrupted CUDA runs (nondeterministic kernels?)")

    # the third run is killed (no chance to checkpoint on its way out) after a --checkpoint-every checkpoint
    run, steps = tmp_path / "c", tmp_path / "c-steps.jsonl"
    argv = _train_argv(packed, run, "--checkpoint-every", "10", "--step-log", str(steps))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.time() + 300
    killed = False
    while time.time() < deadline and proc.poll() is None:
        if steps.exists() and len(steps.read_text().splitlines()) >= 25 and (run / "checkpoint.json").exists():
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.005)
    out, err = proc.communicate(timeout=120)
    assert killed, f"the run ended (rc {proc.returncode}) before it could be killed mid-epoch: {err[-2000:]}"
    info = json.loads((run / "checkpoint.json").read_text())
    assert info["epoch"] == 0 and 0 < info["position"] < 190, info
    r = subprocess.run(_train_argv(packed, run, "--checkpoint-every", "10", "--resume"), capture_output=True,
                       text=True, timeout=600, env=_env())
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_state(runs["a"], _final_state(run), f"a run killed at position {info['position']} and resumed")


@pytest.fixture(scope="module")
def ident(tmp_path_factory) -> Path:
    return build_identity(tmp_path_factory.mktemp("cuda-race"), num_nodes=3000, dim=8, caches=CACHES)


@pytest.mark.parametrize("pack", ["none", "some", "everything"])
@pytest.mark.parametrize("prefetch", [1, 3])
@pytest.mark.parametrize("stream", ["default", "side"])
def test_a_delayed_consumer_stream_never_sees_a_released_buffer(ident, pack, prefetch, stream):
    """The consumer queues a long sleep on its stream, then the check of ``x``, and asks for the next batch without
    waiting: a buffer handed back to the assembler before the consumer's stream read it would be overwritten."""
    dim = open_dataset(ident).feature_dim
    consumer = torch.cuda.Stream() if stream == "side" else torch.cuda.current_stream()
    bad = torch.zeros((), dtype=torch.int64, device="cuda")
    seen = 0
    with diskgraph.PackedLoader(ident, "train", pack=pack, device="cuda", prefetch=prefetch, seed=1) as loader:
        with torch.cuda.stream(consumer):
            for epoch in range(2):
                loader.set_epoch(epoch)
                for batch in loader:
                    torch.cuda._sleep(20_000_000)  # ~10 ms of GPU time before x is read
                    nodes = torch.from_numpy(batch.input_nodes).pin_memory().to("cuda", non_blocking=True)
                    want = nodes.to(torch.float32).unsqueeze(1).expand(-1, dim)
                    bad += (batch.x != want).any(dim=1).sum()
                    seen += 1
        n = len(loader)
    torch.cuda.synchronize()
    assert seen == 2 * n
    assert int(bad) == 0, f"{int(bad)} rows of x were overwritten before the consumer's stream read them"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_features_through_the_cuda_loader_are_exact(tmp_path, dtype):
    ds_dir = build_identity(tmp_path, dtype=dtype, num_nodes=2000, dim=8, caches=CACHES)
    feats32 = features_as_float32(open_dataset(ds_dir))
    for pack in CACHES:
        for split in ("train", "val"):
            with diskgraph.PackedLoader(ds_dir, split, pack=pack, device="cuda") as loader:
                count = 0
                for batch in loader:
                    assert batch.x.is_cuda and batch.x.dtype == torch.float32
                    got = batch.x.cpu().numpy()
                    want = feats32[batch.input_nodes]
                    assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), (pack, split, count)
                    count += 1
                assert count == len(loader) > 0


def test_torchrun_with_one_visible_gpu_per_process_trains(packed, tmp_path):
    """Each rank sees exactly one GPU (CUDA_VISIBLE_DEVICES set per process, as Slurm and Kubernetes do): rank r sees
    GPU r when there are several (NCCL), both see GPU 0 on a one-GPU machine (then gloo: NCCL refuses two ranks on
    one GPU). Every rank must train on its ``cuda:0``."""
    gpus = torch.cuda.device_count()
    if gpus < 1:
        pytest.skip("needs a CUDA GPU")
    log = tmp_path / "log.jsonl"
    argv = ["diskgraph", "train", str(packed), "--run-dir", str(tmp_path / "run"), "--epochs", "1", "--hidden", "16",
            "--seed", "0", "--device", "cuda", "--log-json", str(log), "-q"]
    per_rank = ("import os, runpy, sys; "
                f"os.environ['CUDA_VISIBLE_DEVICES'] = os.environ['LOCAL_RANK'] if {gpus} > 1 else '0'; "
                f"sys.argv = {argv!r}; runpy.run_module('diskgraph', run_name='__main__')")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "--no-python",
           sys.executable, "-c", per_rank]
    extra = {} if gpus > 1 else {"DISKGRAPH_DIST_BACKEND": "gloo"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=_env(**extra))
    assert r.returncode == 0, r.stderr[-4000:]
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert lines[-1]["summary"] and lines[-1]["world_size"] == 2
    assert lines[0]["world_size"] == 2 and len(lines[0]["ranks"]) == 2
