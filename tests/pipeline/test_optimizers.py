"""Optimizers, learning-rate schedules and early stopping (``--optimizer``, ``--lr-schedule``, ``--early-stopping``).

* The factory builds Adam, AdamW and SGD with the given rate, weight decay and momentum.
* ``cosine`` and ``step`` give, per epoch, the rates of torch's own schedulers (and of their closed forms), and the
  trainer trains each epoch at that rate (``lr`` in every epoch record).
* A Cora run with ``--early-stopping 1 --epochs 20`` stops before 20 epochs and says so in the summary.
* A run with ``--optimizer sgd --lr-schedule cosine`` stopped mid-way and resumed ends with the model of an
  uninterrupted one (the scheduler's state is in the checkpoint).
* Contradictory flags are refused in one sentence; early stopping without a val split is refused at run time.
"""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch

from diskgraph.pipeline.optimizers import build_optimizer, build_scheduler
from diskgraph.pipeline.trainer import StopTraining, Trainer, TrainConfig
from diskgraph.store.errors import InputError

from loader_helpers import build_identity, loader_threads


def _params():
    return [torch.nn.Parameter(torch.ones(3, 2)), torch.nn.Parameter(torch.zeros(2))]


@pytest.mark.parametrize("name, cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                       ("sgd", torch.optim.SGD)])
def test_factory_builds_each_optimizer(name, cls):
    opt = build_optimizer(_params(), name, lr=0.02, weight_decay=1e-3, momentum=0.9 if name == "sgd" else 0.0)
    assert type(opt) is cls
    group = opt.param_groups[0]
    assert group["lr"] == 0.02 and group["weight_decay"] == 1e-3
    if name == "sgd":
        assert group["momentum"] == 0.9


def test_factory_refuses_momentum_without_sgd_and_unknown_names():
    with pytest.raises(InputError, match="--momentum applies to --optimizer sgd only"):
        build_optimizer(_params(), "adam", lr=0.1, momentum=0.9)
    with pytest.raises(InputError, match="--optimizer rmsprop"):
        build_optimizer(_params(), "rmsprop", lr=0.1)
    with pytest.raises(InputError, match="--lr-schedule linear"):
        build_scheduler(build_optimizer(_params(), lr=0.1), "linear", epochs=3)
    assert build_scheduler(build_optimizer(_params(), lr=0.1), "constant", epochs=3) is None


def _rates(scheduler, optimizer, epochs):
    out = []
    for _ in range(epochs):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return out


@pytest.mark.parametrize("schedule", ["cosine", "step"])
def test_schedules_give_torchs_rate_per_epoch(schedule):
    epochs, lr = 12, 0.1
    opt = build_optimizer(_params(), "sgd", lr=lr)
    got = _rates(build_scheduler(opt, schedule, epochs=epochs, step_size=5, gamma=0.5), opt, epochs)
    ref_opt = torch.optim.SGD(_params(), lr=lr)
    ref = (torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=epochs) if schedule == "cosine"
           else torch.optim.lr_scheduler.StepLR(ref_opt, step_size=5, gamma=0.5))
    assert got == _rates(ref, ref_opt, epochs)
    closed = ([lr * (1 + math.cos(math.pi * e / epochs)) / 2 for e in range(epochs)] if schedule == "cosine"
              else [lr * 0.5 ** (e // 5) for e in range(epochs)])
    assert got == pytest.approx(closed, rel=1e-9, abs=1e-12)


# -- the trainer -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ident(tmp_path_factory):
    return build_identity(tmp_path_factory.mktemp("optimizers"), num_nodes=2000, dim=8)


def _trainer(ds_dir, run_dir, splits=("train", "val", "test"), **cfg):
    from diskgraph.models import build_model
    from diskgraph.pipeline.loader import PackedLoader
    from diskgraph.pipeline.schedule import epoch_order
    from diskgraph.store.dataset import open_dataset
    from diskgraph.store.packed import open_pack
    from diskgraph.store.plan import open_plan

    ds = open_dataset(ds_dir)
    pack = open_pack(ds_dir / "packs" / "some")
    plan = open_plan(pack.plan_path())
    loaders = {s: PackedLoader(ds, pack, plan, s, device="cpu") for s in splits}
    torch.manual_seed(5)
    model = build_model("sage", ds.feature_dim, 16, int(ds.num_classes), 2, dropout=0.5)
    config = TrainConfig(**{"epochs": 4, "lr": 0.05, "seed": 5, "checkpoint_every": 2, **cfg})
    try:
        return Trainer(model, loaders, order=lambda split, e: epoch_order(plan, split, e, 5), run_dir=run_dir,
                       config=config, device=torch.device("cpu"), num_classes=int(ds.num_classes),
                       row_bytes=ds.features.row_bytes)
    except BaseException:
        _close(loaders.values())
        raise


def _close(loaders):
    for loader in loaders:
        loader.close()


_SGD_COSINE = dict(optimizer="sgd", momentum=0.9, weight_decay=1e-4, lr_schedule="cosine")


@pytest.mark.parametrize("stop_after", [11, 19])
def test_resume_with_sgd_and_cosine_equals_uninterrupted(ident, tmp_path, stop_after):
    full = _trainer(ident, tmp_path / "full", **_SGD_COSINE)
    full_summary = full.fit()
    _close(full.loaders.values())
    per_epoch = full.history[0]["minibatches"]
    assert stop_after > per_epoch  # the stop comes after the scheduler's first step
    want = [0.05 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]
    assert [rec["lr"] for rec in full.history] == pytest.approx(want, rel=1e-9)

    crashed = _trainer(ident, tmp_path / "resumed", **_SGD_COSINE)
    with pytest.raises(StopTraining):
        crashed.fit(max_steps=stop_after)
    _close(crashed.loaders.values())
    resumed = _trainer(ident, tmp_path / "resumed", **_SGD_COSINE)
    torch.manual_seed(1234)
    summary = resumed.fit(resume=True)
    _close(resumed.loaders.values())

    for name, p in full.model.state_dict().items():
        assert torch.equal(p, resumed.model.state_dict()[name]), name
    fo, ro = full.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    for k in fo:
        assert torch.equal(fo[k]["momentum_buffer"], ro[k]["momentum_buffer"])
    assert full.scheduler.state_dict() == resumed.scheduler.state_dict()
    assert [(r["loss"], r["lr"]) for r in full.history] == [(r["loss"], r["lr"]) for r in resumed.history]
    assert summary["test_acc"] == full_summary["test_acc"] and summary["epochs_run"] == 4
    assert summary["stopped_early"] is False
    assert loader_threads() == []


def test_resume_with_another_optimizer_or_schedule_is_refused(ident, tmp_path):
    t = _trainer(ident, tmp_path / "run", epochs=1)
    t.fit()
    _close(t.loaders.values())
    for cfg, flag in ((dict(optimizer="adamw"), "--optimizer"), (dict(lr_schedule="step"), "--lr-schedule"),
                      (dict(early_stopping=2), "--early-stopping")):
        other = _trainer(ident, tmp_path / "run", epochs=1, **cfg)
        try:
            with pytest.raises(InputError, match=f"other settings: {flag} "):
                other.fit(resume=True)
        finally:
            _close(other.loaders.values())


def test_early_stopping_without_val_split_is_refused(ident, tmp_path):
    with pytest.raises(InputError, match="--early-stopping watches val_loss, but this run has no val split"):
        _trainer(ident, tmp_path / "run", splits=("train", "test"), early_stopping=2, early_stopping_metric="val_loss")
    assert loader_threads() == []


def test_early_stopping_on_val_loss_counts_and_resumes(ident, tmp_path):
    """Patience counted on val_loss (lower is better); a resumed stopped run stays stopped."""
    t = _trainer(ident, tmp_path / "run", epochs=30, lr=0.3, early_stopping=1, early_stopping_metric="val_loss")
    summary = t.fit()
    _close(t.loaders.values())
    losses = [r["val_loss"] for r in t.history]
    assert summary["stopped_early"] and summary["epochs_run"] == len(losses) < 30
    assert losses[-1] >= min(losses[:-1])  # the last epoch did not improve on the best before it
    assert all(b < a for a, b in zip(losses[:-2], losses[1:-1]))  # every earlier epoch did
    again = _trainer(ident, tmp_path / "run", epochs=30, lr=0.3, early_stopping=1, early_stopping_metric="val_loss")
    summary = again.fit(resume=True)
    _close(again.loaders.values())
    assert summary["stopped_early"] and len(again.history) == len(losses)


# -- the command line ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cora(shared_dataset, tmp_path_factory):
    from diskgraph.cli import main

    out = tmp_path_factory.mktemp("cora") / "cora"
    assert main(["preprocess", "all", "--npz", str(shared_dataset("cora")), "--out", str(out), "--fanouts", "10,5",
                 "--batch-size", "512", "--seed", "0", "-q"]) == 0
    return out


def test_cora_early_stopping_stops_before_the_last_epoch(cora, tmp_path, cli, caplog):
    log = tmp_path / "log.jsonl"
    with caplog.at_level(logging.INFO, logger="diskgraph"):
        r = cli.run("train", cora, "--hidden", "64", "--epochs", "20", "--lr", "0.05", "--early-stopping", "1",
                    "--optimizer", "adamw", "--weight-decay", "0.01", "--lr-schedule", "step", "--lr-step-size", "3",
                    "--lr-gamma", "0.5", "--run-dir", tmp_path / "run", "--log-json", log)
    assert r.rc == 0, r.err
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    summary, epochs = lines[-1], lines[:-1]
    assert summary["stopped_early"] is True and summary["epochs_run"] == len(epochs) < 20
    assert 0 <= summary["test_acc"] <= 1
    assert [rec["lr"] for rec in epochs] == pytest.approx([0.05 * 0.5 ** (e // 3) for e in range(len(epochs))])
    said = [m for m in caplog.messages if m.startswith("early stopping after epoch")]
    assert len(said) == 1 and f"epoch {len(epochs) - 1}: val_acc has not improved for 1 epoch" in said[0]
    assert f"stopped early after {len(epochs)} of 20 epochs" in r.out


@pytest.mark.parametrize("flags, needles", [
    (["--momentum", "0.9"], ["--momentum", "--optimizer sgd"]),
    (["--optimizer", "adamw", "--momentum", "0.9"], ["--momentum", "adamw"]),
    (["--lr-gamma", "0.5"], ["--lr-gamma", "--lr-schedule step"]),
    (["--lr-schedule", "cosine", "--lr-step-size", "3"], ["--lr-step-size", "cosine"]),
    (["--early-stopping-metric", "val_loss"], ["--early-stopping-metric", "--early-stopping PATIENCE"]),
    (["--optimizer", "sgd", "--momentum", "1.5"], ["--momentum 1.5"]),
    (["--lr", "0"], ["--lr 0"]),
])
def test_contradictory_flags_are_refused(tmp_path, cli, refused, flags, needles):
    r = cli.run("train", tmp_path / "nowhere", "--run-dir", tmp_path / "run", *flags)
    refused(r, *needles)
    assert not (tmp_path / "run").exists()
