"""Fits of timed calls: non-negative least squares, on absolute or relative error.

The calibration fits its timings (gathers per row, the read stage per minibatch, model steps per term) with
non-negative coefficients: a negative seconds-per-FLOP or per-row would make larger work cheaper.
"""

from __future__ import annotations

import numpy as np


def nnls(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares with non-negative coefficients (drops the most negative column until none is left)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    active = list(range(x.shape[1]))
    coef = np.zeros(x.shape[1])
    # scale the columns so the solve is well conditioned
    scale = np.maximum(np.abs(x).max(axis=0), 1e-30)
    while active:
        sol, *_ = np.linalg.lstsq(x[:, active] / scale[active], y, rcond=None)
        sol = sol / scale[active]
        if (sol >= 0).all():
            coef[:] = 0
            coef[active] = sol
            return coef
        active.pop(int(np.argmin(sol)))
    return coef


def relative_fit(x, y) -> tuple[np.ndarray, float]:
    """Non-negative coefficients minimising the relative error; and the largest relative error left."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    c = nnls(x / y[:, None], np.ones_like(y))
    return c, float(np.max(np.abs(x @ c - y) / y))
