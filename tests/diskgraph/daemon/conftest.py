"""Fixtures of the daemon tests (see daemon_helpers)."""

from __future__ import annotations

import pytest

from daemon_helpers import TRAIN, make_dataset


@pytest.fixture(scope="session")
def workspace(tmp_path_factory):
    """An allowed root holding ``syn``: a small dataset with plan and pack ``default``."""
    ws = tmp_path_factory.mktemp("daemon-ws")
    make_dataset(ws)
    return ws


@pytest.fixture(scope="session")
def reference_model(workspace, tmp_path_factory):
    """The final model of an uninterrupted run of the TRAIN spec on ``syn``."""
    from daemon_helpers import final_model

    from diskgraph.train import TrainOptions, run_training

    run_dir = tmp_path_factory.mktemp("reference") / "run"
    run_training(workspace / "syn", TrainOptions(**TRAIN, run_dir=str(run_dir)))
    return final_model(run_dir)
