"""Losses and metrics of each label kind (diskgraph.pipeline.tasks), against float64 oracles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from diskgraph.pipeline.metrics import roc_auc
from diskgraph.pipeline.tasks import (MAE, RMSE, Accuracy, MicroF1, WholeMetric, as_metrics, balanced_weights,
                                      build_task, parse_class_weights)
from diskgraph.store.errors import InputError


def _split_sums(metric, out, y, cut):
    """The metric's sums over two minibatches, added up (what the trainer does, on the device), read as floats."""
    total: dict = {}
    for part in (slice(0, cut), slice(cut, None)):
        for k, v in metric.sums(out[part], y[part]).items():
            assert isinstance(v, torch.Tensor) and v.dim() == 0  # no host read per minibatch
            total[k] = total.get(k, 0.0) + v.double()
    return {k: float(v) for k, v in total.items()}


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 60), c=st.integers(1, 6), seed=st.integers(0, 10_000), data=st.data())
def test_additive_metrics_equal_their_oracles_over_any_minibatch_cut(n, c, seed, data):
    rng = np.random.default_rng(seed)
    cut = data.draw(st.integers(0, n))
    out = torch.from_numpy(rng.normal(size=(n, c)).astype(np.float32))
    # classification
    y = torch.from_numpy(rng.integers(0, c, n))
    acc = Accuracy().value(_split_sums(Accuracy(), out, y, cut))
    assert acc == pytest.approx(float(np.mean(out.numpy().argmax(1) == y.numpy())))
    # multilabel: micro-F1 over every (node, label) pair
    ym = torch.from_numpy((rng.random((n, c)) < 0.4).astype(np.float32))
    pred, true = out.numpy() > 0, ym.numpy() > 0.5
    tp, fp, fn = (pred & true).sum(), (pred & ~true).sum(), (~pred & true).sum()
    f1 = MicroF1().value(_split_sums(MicroF1(), out, ym, cut))
    if 2 * tp + fp + fn:
        assert f1 == pytest.approx(2 * tp / (2 * tp + fp + fn))
    else:
        assert np.isnan(f1)
    # regression, [n, c] and [n] targets (against [n, 1] outputs)
    for target, values in ((torch.from_numpy(rng.normal(size=(n, c)).astype(np.float32)), out),
                           (torch.from_numpy(rng.normal(size=n).astype(np.float32)), out[:, :1])):
        d = values.double().numpy().reshape(target.shape) - target.double().numpy()
        assert RMSE().value(_split_sums(RMSE(), values, target, cut)) == pytest.approx(np.sqrt(np.mean(d * d)))
        assert MAE().value(_split_sums(MAE(), values, target, cut)) == pytest.approx(np.mean(np.abs(d)))


def test_task_losses_and_metric_lists():
    rng = np.random.default_rng(0)
    out = torch.from_numpy(rng.normal(size=(8, 3)).astype(np.float32))
    y = torch.tensor([0, 1, 2, 2, 1, 0, 0, 2])
    t = build_task("classification", 3, [1.0, 2.0, 0.5])
    assert torch.allclose(t.loss(out, y), F.cross_entropy(out, y, weight=torch.tensor([1.0, 2.0, 0.5])))
    assert [m.name for m in t.metrics] == ["acc"] and t.main.name == "acc"
    assert [m.name for m in build_task("classification", 2).metrics] == ["acc", "auc"]
    ym = torch.from_numpy((rng.random((8, 3)) < 0.5).astype(np.float32))
    t = build_task("multilabel", 3, [3.0, 1.0, 1.0])
    assert torch.allclose(t.loss(out, ym), F.binary_cross_entropy_with_logits(out, ym, pos_weight=torch.tensor([3.0, 1, 1])))
    assert [m.name for m in t.metrics] == ["micro_f1", "auc"]
    auc = t.metric("auc").value_of(out, ym)
    assert auc == pytest.approx(roc_auc(out.numpy().ravel(), ym.numpy().ravel() > 0.5))
    yr = torch.from_numpy(rng.normal(size=8).astype(np.float32))
    t = build_task("regression", 1)
    assert torch.allclose(t.loss(out[:, :1], yr), F.mse_loss(out[:, 0], yr))
    assert [m.name for m in t.metrics] == ["rmse", "mae"] and not t.main.higher_is_better


def test_balanced_weights():
    y = np.array([0, 0, 0, 1, -1, 2, 2, 0])  # -1: unlabelled, left out
    w = balanced_weights("classification", y, 4)
    # n / (C * count): 7 labelled nodes, counts 4, 1, 2, 0
    assert np.allclose(w, [7 / 16, 7 / 4, 7 / 8, 0.0]) and w.dtype == np.float32
    ym = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0]], dtype=np.uint8)
    assert np.allclose(balanced_weights("multilabel", ym, 3), [1 / 3, 3.0, 1.0])  # neg/pos; no positive: 1


def test_refusals_are_one_sentence():
    for call, match in ((lambda: build_task("ranking", 2), "task 'ranking' is not one of"),
                        (lambda: build_task("regression", 1, [1.0]), "applies to classification and multilabel"),
                        (lambda: build_task("classification", 3, [1.0, 2.0]), "gives 2 weights but the dataset has 3 classes"),
                        (lambda: build_task("multilabel", 2, [1.0, -1.0]), "must be finite, non-negative"),
                        (lambda: parse_class_weights("heavy"), "--class-weights 'heavy' is not understood"),
                        (lambda: as_metrics([object()]), "is neither a function nor")):
        with pytest.raises(InputError, match=match) as e:
            call()
        assert "\n" not in str(e.value)
    assert parse_class_weights("balanced") == "balanced" and parse_class_weights("1,2.5") == [1.0, 2.5]
    (m,) = as_metrics({"mine": lambda out, y: 1.0})
    assert isinstance(m, WholeMetric) and m.name == "mine" and m.higher_is_better


def test_unlabelled_seeds_are_masked_without_reading_the_device():
    rng = np.random.default_rng(3)
    out = torch.from_numpy(rng.normal(size=(20, 2)).astype(np.float32)).requires_grad_()
    y = torch.from_numpy(rng.normal(size=(20, 2)).astype(np.float32))
    t = build_task("regression", 2)
    # every target known: exactly F.mse_loss and its gradient (the CPU results of earlier versions)
    loss = t.loss(out, y)
    loss.backward()
    grad, out.grad = out.grad.clone(), None
    ref = F.mse_loss(out, y)
    ref.backward()
    assert torch.equal(loss, ref) and torch.equal(grad, out.grad)
    # NaN targets: left out of the loss (no NaN in the gradient) and of RMSE / MAE
    y[[1, 7], 0] = float("nan")
    y[4] = float("nan")
    known = ~torch.isnan(y)
    out.grad = None
    loss = t.loss(out, y)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(float(F.mse_loss(out[known], y[known]).detach()), rel=1e-6)
    assert torch.isfinite(out.grad).all() and not out.grad[4].any()
    d = (out.detach().double() - y.double())[known].numpy()
    assert RMSE().value(_split_sums(RMSE(), out.detach(), y, 9)) == pytest.approx(np.sqrt(np.mean(d * d)))
    assert MAE().value(_split_sums(MAE(), out.detach(), y, 9)) == pytest.approx(np.mean(np.abs(d)))
    # classification: class -1 is an unlabelled seed
    yc = torch.tensor([0, 1, -1, 1, -1, 0])
    oc = torch.tensor([[1.0, 0], [0, 1], [1, 0], [1, 0], [0, 1], [0, 1]])
    assert Accuracy().value(_split_sums(Accuracy(), oc, yc, 3)) == pytest.approx(2 / 4)
