"""The training loop: resume mid-epoch equals an uninterrupted run, the JSON log interface, accuracy parity.

* A run stopped mid-epoch (as a crash would) and resumed from its checkpoint ends
  with exactly the same model, optimizer state and per-epoch losses as an
  uninterrupted run with the same seed.
* ``diskgraph train DIR --model sage --hidden H --epochs E --seed S --log-json FILE``
  writes one JSON object per epoch and a summary line with the best model's test accuracy.
* Accuracy parity on Cora: packed out-of-core training (one presampled epoch
  replayed) reaches, over 3 seeds, a mean test accuracy within 1 point of the
  in-memory reference trainer (online sampling, features in RAM).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diskgraph.pipeline.trainer import (BEST_MODEL_NAME, CHECKPOINT_NAME, StopTraining, Trainer, TrainConfig,
                                        read_checkpoint_file)
from diskgraph.train import TrainOptions, run_training

from loader_helpers import build_identity, loader_threads


def _trainer(ds_dir, run_dir, epochs=3, checkpoint_every=2, seed=5):
    from diskgraph.models import build_model
    from diskgraph.pipeline.loader import PackedLoader
    from diskgraph.pipeline.schedule import epoch_order
    from diskgraph.store.dataset import open_dataset
    from diskgraph.store.packed import open_pack
    from diskgraph.store.plan import open_plan

    ds = open_dataset(ds_dir)
    pack = open_pack(ds_dir / "packs" / "some")
    plan = open_plan(pack.plan_path())
    loaders = {s: PackedLoader(ds, pack, plan, s, device="cpu") for s in ("train", "val", "test")}
    torch.manual_seed(seed)
    model = build_model("sage", ds.feature_dim, 16, int(ds.num_classes), 2, dropout=0.5)
    cfg = TrainConfig(epochs=epochs, lr=0.01, seed=seed, checkpoint_every=checkpoint_every)
    return Trainer(model, loaders, order=lambda split, e: epoch_order(plan, split, e, seed), run_dir=run_dir,
                   config=cfg, device=torch.device("cpu"), num_classes=int(ds.num_classes), row_bytes=ds.features.row_bytes)


def _close(trainer):
    for loader in trainer.loaders.values():
        loader.close()


_TIMING = ("epoch_s", "eval_s", "stage_s", "io_s", "verify_s", "queue_wait_s", "overlap", "read_bytes", "eval_read_bytes",
           "read_amplification", "extent_bytes", "peak_rss_bytes", "peak_gpu_bytes", "reserved_gpu_bytes", "seconds")
"""Fields that measure time or I/O: a crash repeats the minibatches read ahead, so these may differ."""


def _learning(history):
    return [{k: v for k, v in rec.items() if k not in _TIMING} for rec in history]


@pytest.fixture(scope="module")
def ident(tmp_path_factory):
    return build_identity(tmp_path_factory.mktemp("trainer"), num_nodes=2000, dim=8)


@pytest.mark.parametrize("stop_after", [2, 5, 11])
def test_resume_mid_epoch_equals_uninterrupted(ident, tmp_path, stop_after):
    full = _trainer(ident, tmp_path / "full")
    full_summary = full.fit()
    _close(full)

    crashed = _trainer(ident, tmp_path / "resumed")
    with pytest.raises(StopTraining):
        crashed.fit(max_steps=stop_after)
    _close(crashed)
    del crashed
    resumed = _trainer(ident, tmp_path / "resumed", seed=5)
    torch.manual_seed(1234)  # the resumed run must not depend on the process's RNG state
    summary = resumed.fit(resume=True)
    _close(resumed)

    for name, p in full.model.state_dict().items():
        assert torch.equal(p, resumed.model.state_dict()[name]), name
    fo, ro = full.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    for k in fo:
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(fo[k][name], ro[k][name])
    assert _learning(full.history) == _learning(resumed.history)
    assert summary["test_acc"] == full_summary["test_acc"]
    assert (tmp_path / "resumed" / BEST_MODEL_NAME).exists()
    assert loader_threads() == []


def test_checkpoint_from_other_settings_is_refused(ident, tmp_path):
    from diskgraph.store.errors import InputError

    t = _trainer(ident, tmp_path / "run", epochs=1)
    t.fit()
    _close(t)
    other = _trainer(ident, tmp_path / "run", epochs=2, seed=6)
    with pytest.raises(InputError, match="other settings"):
        other.fit(resume=True)
    _close(other)
    fresh = _trainer(ident, tmp_path / "nothing-here")
    with pytest.raises(InputError, match="--resume"):
        fresh.fit(resume=True)
    _close(fresh)


def test_checkpoint_is_written_atomically_and_holds_the_position(ident, tmp_path):
    t = _trainer(ident, tmp_path / "run", epochs=2, checkpoint_every=3)
    with pytest.raises(StopTraining):
        t.fit(max_steps=4)
    _close(t)
    state = read_checkpoint_file(tmp_path / "run" / CHECKPOINT_NAME)
    assert (state["epoch"], state["position"]) == (0, 3)
    assert not list((tmp_path / "run").glob(".*tmp*"))


def test_cli_log_json_interface(shared_dataset, tmp_path, cli):
    out = tmp_path / "cora"
    assert cli.run("preprocess", "all", "--npz", shared_dataset("cora"), "--out", out, "--fanouts", "10,5",
                   "--batch-size", "64", "--seed", "0", "--host-cache", "1M", "-q").rc == 0
    log = tmp_path / "log.jsonl"
    r = cli.run("train", out, "--model", "sage", "--hidden", "32", "--epochs", "3", "--seed", "0",
                "--log-json", log, "-q")
    assert r.rc == 0, r.err
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(lines) == 4
    for e, rec in enumerate(lines[:3]):
        assert rec["epoch"] == e
        for key in ("loss", "val_acc", "epoch_s", "read_bytes", "train_acc", "stage_s", "overlap", "hit_rate",
                    "peak_rss_bytes", "read_amplification"):
            assert key in rec, key
        assert rec["read_bytes"] >= 0 and rec["epoch_s"] > 0 and 0 <= rec["val_acc"] <= 1
    summary = lines[-1]
    assert summary["summary"] is True and 0 <= summary["test_acc"] <= 1
    assert "test_acc=" in r.out
    # a second run into the same directory needs --resume or --overwrite; --resume of a finished run is a no-op
    r = cli.run("train", out, "--model", "sage", "--hidden", "32", "--epochs", "3", "--seed", "0")
    assert r.rc == 2 and "--resume" in r.err
    r = cli.run("train", out, "--model", "sage", "--layers", "3", "--epochs", "1", "--run-dir", tmp_path / "x")
    assert r.rc == 2 and "--layers 3" in r.err and "2 hops" in r.err
    r = cli.run("train", out, "--reference-features", "mmap", "--epochs", "1", "--run-dir", tmp_path / "y")
    assert r.rc == 2 and "--reference runs only" in r.err
    r = cli.run("train", out, "--reference", "--reference-features", "mmap-random", "--epochs", "1", "--hidden", "16",
                "--run-dir", tmp_path / "z", "--step-log", tmp_path / "steps.jsonl", "-q")
    assert r.rc == 0, r.err
    assert len((tmp_path / "steps.jsonl").read_text().splitlines()) == 3  # 140 train nodes / 64 per batch
    r = cli.run("train", out, "--model", "sage", "--hidden", "32", "--epochs", "4", "--seed", "0", "--resume",
                "--log-json", log, "-q")
    assert r.rc == 0, r.err
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [rec["epoch"] for rec in lines[:-1]] == [0, 1, 2, 3] and lines[-1]["summary"]


def test_step_log_has_a_line_per_training_minibatch(ident, tmp_path):
    steps = tmp_path / "steps.jsonl"
    t = _trainer(ident, tmp_path / "run", epochs=2, checkpoint_every=0)
    t.step_log = steps
    try:
        t.fit()
    finally:
        _close(t)
    lines = [json.loads(line) for line in steps.read_text().splitlines()]
    per_epoch = t.history[0]["minibatches"]
    assert len(lines) == 2 * per_epoch
    assert [(r["epoch"], r["position"]) for r in lines] == [(e, p) for e in (0, 1) for p in range(1, per_epoch + 1)]
    assert all(r["of"] == per_epoch and r["seconds"] > 0 and np.isfinite(r["loss"]) for r in lines)
    assert lines[per_epoch - 1]["seconds"] <= t.history[0]["epoch_s"]


@pytest.mark.parametrize("model", ["gcn", "gat"])
def test_other_models_train(ident, tmp_path, model):
    opts = TrainOptions(pack="some", model=model, hidden=16, epochs=2, seed=0, run_dir=str(tmp_path / model))
    summary = run_training(ident, opts)
    assert 0 <= summary["test_acc"] <= 1
    assert loader_threads() == []


def test_accuracy_parity_with_in_memory_reference_on_cora(shared_dataset, tmp_path, cli):
    """Mean test accuracy over 3 seeds: packed (one presampled epoch, replayed) vs online in-memory, within 1 point."""
    out = tmp_path / "cora"
    assert cli.run("preprocess", "all", "--npz", shared_dataset("cora"), "--out", out, "--fanouts", "10,5",
                   "--batch-size", "64", "--seed", "0", "--host-cache", "1M", "-q").rc == 0
    packed, reference = [], []
    for seed in (0, 1, 2):
        common = dict(model="sage", hidden=256, epochs=20, seed=seed)
        packed.append(run_training(out, TrainOptions(**common, run_dir=str(tmp_path / f"p{seed}")))["test_acc"])
        reference.append(run_training(out, TrainOptions(**common, reference=True,
                                                        run_dir=str(tmp_path / f"r{seed}")))["test_acc"])
    gap = abs(np.mean(packed) - np.mean(reference))
    assert np.mean(reference) > 0.75, reference  # the reference itself learns Cora
    assert gap <= 0.01, f"packed {packed} vs in-memory {reference}"


def test_device_sums_add_as_python_floats_did():
    """The epoch's sums on the device: float64 additions in the order Python floats made them (bit-equal on CPU),
    read once; a resumed epoch starts from the saved numbers."""
    from diskgraph.pipeline.device_sums import DeviceSums, StepTimer
    from diskgraph.pipeline.tasks import RMSE, Accuracy

    rng = np.random.default_rng(1)
    metrics = [Accuracy(), RMSE()]
    sums = DeviceSums(torch.device("cpu"), 0.25, {"acc": {"correct": 3.0, "total": 4.0}})
    loss_sum, ref = 0.25, {"correct": 3.0, "total": 4.0}
    for _ in range(7):
        n = int(rng.integers(1, 50))
        loss = torch.tensor(rng.random(), dtype=torch.float32)
        out = torch.from_numpy(rng.normal(size=(n, 3)).astype(np.float32))
        y = torch.from_numpy(rng.integers(-1, 3, n))
        sums.add(loss, n, metrics, out, y)
        loss_sum += float(loss) * n
        for k, v in Accuracy().sums(out, y).items():
            ref[k] += float(v)
    got_loss, got = sums.read()
    assert got_loss == loss_sum and got["acc"] == ref and set(got) == {"acc", "rmse"}
    timer = StepTimer(torch.device("cpu"), 1.5)
    timer.start()
    timer.stop()
    assert timer.seconds() >= 1.5


def test_rank_device_with_one_visible_gpu_per_process(monkeypatch):
    from diskgraph.store.errors import InputError
    from diskgraph.train import rank_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for count, rank, want in ((4, 2, "cuda:2"), (1, 3, "cuda:0"), (1, 0, "cuda:0"), (2, 1, "cuda:1")):
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        assert rank_device(rank) == torch.device(want)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(InputError, match="LOCAL_RANK 3 sees 2 GPU"):
        rank_device(3)
