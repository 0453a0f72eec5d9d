"""Hot-set selection: ranking by score, ties by id, byte budgets, zero scores excluded."""

from __future__ import annotations

import numpy as np
import pytest

from diskgraph.sampler.hot_set import expected_reads_per_epoch, select_hot_sets
from diskgraph.store.errors import InputError


def test_ranking_and_budgets():
    score = np.array([0, 5, 1, 9, 3, 7, 0, 2], dtype=np.int32)
    t = select_hot_sets(score, row_bytes=100, gpu_bytes=250, host_bytes=199)
    assert t["gpu"].tolist() == [3, 5]  # 9, 7: floor(250 / 100) = 2 rows
    assert t["host"].tolist() == [1]  # 5: floor(199 / 100) = 1 row
    assert t["gpu"].dtype == np.int64 and t["host"].dtype == np.int64
    t = select_hot_sets(score, 100, 0, 400)
    assert t["gpu"].size == 0 and t["host"].tolist() == [1, 3, 4, 5]  # sorted ids of the 4 hottest


def test_ties_lower_id_first():
    score = np.array([2.0, 5.0, 2.0, 5.0, 2.0, 1.0])
    t = select_hot_sets(score, 8, 8 * 3, 8 * 1)
    assert t["gpu"].tolist() == [0, 1, 3]  # 5 (id 1), 5 (id 3), then the first 2 (id 0)
    assert t["host"].tolist() == [2]  # next 2: id 2, not id 4


def test_zero_scores_excluded_and_everything():
    score = np.array([0.0, 0.5, 0.0, 3.0])
    t = select_hot_sets(score, 4, 4 * 100, 4 * 100)
    assert t["gpu"].tolist() == [1, 3] and t["host"].size == 0
    assert select_hot_sets(np.zeros(5), 4, 100, 100)["gpu"].size == 0


def test_matches_a_full_sort_on_random_scores():
    rng = np.random.default_rng(0)
    score = rng.integers(0, 20, 5000)
    rb = 64
    t = select_hot_sets(score, rb, 300 * rb, 700 * rb)
    order = np.lexsort((np.arange(score.size), -score))
    order = order[score[order] > 0]
    assert np.array_equal(t["gpu"], np.sort(order[:300]))
    assert np.array_equal(t["host"], np.sort(order[300:1000]))
    assert np.intersect1d(t["gpu"], t["host"]).size == 0


def test_refusals():
    with pytest.raises(InputError, match="negative"):
        select_hot_sets(np.ones(3), 4, -1, 0)
    with pytest.raises(InputError, match="negative"):
        select_hot_sets(np.ones(3), 4, 0, -8)
    with pytest.raises(InputError, match="NaN"):
        select_hot_sets(np.array([1.0, np.nan]), 4, 8, 8)
    with pytest.raises(InputError):
        select_hot_sets(np.ones((2, 2)), 4, 8, 8)
    with pytest.raises(InputError):
        select_hot_sets(np.ones(3), 0, 8, 8)


class _FakePlan:
    num_nodes = 4
    splits = ["train", "val", "test"]

    def counts(self, split):
        return {"train": np.array([6, 0, 3, 0], np.int32), "val": np.array([0, 1, 0, 0], np.int32),
                "test": np.array([1, 0, 0, 2], np.int32)}[split]

    def num_epochs(self, split):
        return 3 if split == "train" else 1


def test_expected_reads_per_epoch():
    s = expected_reads_per_epoch(_FakePlan())
    assert s.dtype == np.float64 and s.tolist() == [3.0, 1.0, 1.0, 2.0]
    assert expected_reads_per_epoch(_FakePlan(), splits=["train"]).tolist() == [2.0, 0.0, 1.0, 0.0]
