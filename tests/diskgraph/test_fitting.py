"""diskgraph.fit / diskgraph.Trainer: your model, optimizer, loss, metrics and callbacks in diskgraph's loop."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import diskgraph
from diskgraph.callbacks import Callback, Checkpoint, EarlyStopping, LambdaCallback

BATCH = 16


@pytest.fixture(scope="module")
def cora(prepared_cora):
    return prepared_cora("5,5", BATCH)


class TinyBlocksModel(torch.nn.Module):
    """A model on diskgraph blocks (``diskgraph_input = "blocks"``): a linear layer on the seeds' own features."""

    diskgraph_input = "blocks"

    def __init__(self, f, c):
        super().__init__()
        self.lin = torch.nn.Linear(f, c)
        self.drop = torch.nn.Dropout(0.3)

    def forward(self, blocks, x):
        return self.lin(self.drop(x[: blocks[-1].num_dst]))


def _loaders(cora, seed=0):
    return (diskgraph.PackedLoader(cora, "train", seed=seed), diskgraph.PackedLoader(cora, "val"),
            diskgraph.PackedLoader(cora, "test"))


def _close(*loaders):
    for ld in loaders:
        ld.close()


def test_fit_pyg_model_with_metrics_and_callbacks(cora, tmp_path):
    pytest.importorskip("torch_geometric")
    from torch_geometric.nn import GraphSAGE

    train, val, test = _loaders(cora)
    torch.manual_seed(0)
    model = GraphSAGE(train.num_features, 32, num_layers=2, out_channels=train.num_classes)
    seen = []

    def macro_recall(out, y):  # a whole-split metric of the user's
        pred = out.argmax(1)
        return float(np.mean([(pred[y == c] == c).float().mean() for c in torch.unique(y)]))

    summary = diskgraph.fit(model, train, val, test, run_dir=tmp_path / "run", epochs=4,
                            optimizer=torch.optim.AdamW(model.parameters(), lr=0.01),
                            metrics={"macro_recall": macro_recall},
                            callbacks=[LambdaCallback(on_epoch_end=lambda t, rec: seen.append(rec["epoch"]))],
                            log_json=tmp_path / "log.jsonl")
    _close(train, val, test)
    assert seen == [0, 1, 2, 3]
    lines = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines[:-1]] == [0, 1, 2, 3]
    assert all({"loss", "train_acc", "val_acc", "val_loss", "val_macro_recall"} <= set(r) for r in lines[:-1])
    assert lines[-1] == summary and summary["task"] == "classification" and summary["monitor"] == "val_acc"
    assert summary["test_acc"] > 0.5 and 0 < summary["test_macro_recall"] <= 1
    best = max(lines[:-1], key=lambda r: r["val_acc"])
    assert summary["best_epoch"] == best["epoch"] and summary["best_val_acc"] == best["val_acc"]
    assert (tmp_path / "run" / "best_model.pt").is_file()


def _run(cora, run_dir, crash_at=None, resume=False):
    """A blocks model with SGD + cosine schedule, a custom loss and early stopping; optionally crashes after
    ``crash_at`` minibatches (checkpoints every 3)."""
    train, val, test = _loaders(cora, seed=3)
    torch.manual_seed(1)
    model = TinyBlocksModel(train.num_features, train.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5)
    steps = [0]

    def crash(t, batch, loss):
        steps[0] += 1
        if crash_at is not None and steps[0] == crash_at:
            raise KeyboardInterrupt("simulated crash")

    def loss(out, y):
        return torch.nn.functional.cross_entropy(out, y, label_smoothing=0.1)

    trainer = diskgraph.Trainer(model, train, val, test, run_dir=run_dir, epochs=5, optimizer=opt, scheduler=sched,
                                loss=loss, callbacks=[Checkpoint(every=3), EarlyStopping("val_loss", patience=10),
                                                      LambdaCallback(on_batch_end=crash)])
    try:
        return trainer.fit(resume=resume), model
    finally:
        trainer.close()


def test_trainer_resumes_mid_epoch_to_the_uninterrupted_model(cora, tmp_path):
    whole, m_whole = _run(cora, tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        _run(cora, tmp_path / "crashed", crash_at=23)  # minibatch 5 of epoch 2 (9 per epoch)
    info = json.loads((tmp_path / "crashed" / "checkpoint.json").read_text())
    assert (info["epoch"], info["position"]) == (2, 3)  # Checkpoint(every=3)
    resumed, m_resumed = _run(cora, tmp_path / "crashed", resume=True)
    for a, b in zip(m_whole.state_dict().values(), m_resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert resumed["test_acc"] == whole["test_acc"] and resumed["best_epoch"] == whole["best_epoch"]


def test_early_stopping_callback_stops_and_is_reported(cora, tmp_path):
    train, val, test = _loaders(cora)
    torch.manual_seed(0)
    model = TinyBlocksModel(train.num_features, train.num_classes)
    summary = diskgraph.fit(model, train, val, test, run_dir=tmp_path / "run", epochs=30, lr=0.05,
                            callbacks=[EarlyStopping("val_loss", patience=1, min_delta=10.0)])
    _close(train, val, test)
    assert summary["stopped_early"] and summary["epochs_run"] == 2


def test_fit_refusals_are_one_sentence(cora, tmp_path):
    train, val, _ = _loaders(cora)
    model = TinyBlocksModel(train.num_features, train.num_classes)
    try:
        with pytest.raises(diskgraph.InputError, match="cannot watch val_rmse: this classification run reports"):
            diskgraph.Trainer(model, train, val, run_dir=tmp_path / "r", monitor="val_rmse")
        with pytest.raises(diskgraph.InputError, match="is not a torch.nn.Module"):
            diskgraph.Trainer(object(), train, val, run_dir=tmp_path / "r")
        with pytest.raises(diskgraph.InputError, match="given twice"):
            diskgraph.Trainer(model, train, val, run_dir=tmp_path / "r", metrics={"acc": lambda o, y: 0.0})
        with pytest.raises(diskgraph.InputError, match="gives 2 weights but the dataset has 7 classes"):
            diskgraph.Trainer(model, train, val, run_dir=tmp_path / "r", class_weights=[1, 2])
        diskgraph.fit(model, train, val, run_dir=tmp_path / "r", epochs=1)
        with pytest.raises(diskgraph.InputError, match="already holds a run; pass resume=True"):
            diskgraph.fit(model, train, val, run_dir=tmp_path / "r", epochs=1)
        with pytest.raises(diskgraph.InputError, match="was made with other settings: loss"):
            diskgraph.fit(model, train, val, run_dir=tmp_path / "r", epochs=2, resume=True,
                          loss=torch.nn.functional.cross_entropy)
    finally:
        _close(train, val)


def test_callback_state_is_checkpointed(cora, tmp_path):
    class Counter(Callback):
        def __init__(self):
            self.batches = 0

        def on_batch_end(self, trainer, batch, loss):
            self.batches += 1

        def state_dict(self):
            return {"batches": self.batches}

        def load_state_dict(self, state):
            self.batches = state["batches"]

    train, val, _ = _loaders(cora)
    model = TinyBlocksModel(train.num_features, train.num_classes)
    first = Counter()
    diskgraph.fit(model, train, val, run_dir=tmp_path / "r", epochs=1, callbacks=[first])
    again = Counter()
    diskgraph.fit(model, train, val, run_dir=tmp_path / "r", epochs=2, callbacks=[again], resume=True)
    _close(train, val)
    assert first.batches == len(train) and again.batches == 2 * len(train)
