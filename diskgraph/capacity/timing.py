"""How the planner times things: warm-up calls, then several timed calls, and a robust statistic of them.

One timed call says as much about what else the machine was doing at that moment as about the work: on a
shared 2-core machine a model step of a few milliseconds takes 2–15× as long while another process holds a
core. Every timing that feeds an estimate therefore takes several. Identical calls go through
:func:`robust_seconds`: warm-up calls, then at least ``reps`` timed calls and more until ``min_seconds`` were
timed, summarised by

* :func:`fast_mean`, the mean of the fastest quarter, for compute — model steps, the sampler's and the
  packer's kernels run again on the same minibatch: interference only ever adds time, so the slow tail is
  noise, and this survives interference in bursts that cover up to three quarters of the calls (a median
  does not once they cover half); averaging the fastest few rather than taking the single fastest keeps the
  call-to-call variation of the work itself from setting the number;
* the median, for memory-bound work — the calibration's gathers and read stage: their fastest calls are
  the cache-warm ones, further still from what the loader's assemble stage sees between the other
  stages' traffic (which already costs it more than any isolated gather).

Items of different sizes (the minibatches a plan samples and indexes) go through :func:`per_unit_seconds`,
the median time per unit of work. Every clock read goes through :func:`clock`, the performance counter.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence


def clock() -> float:
    """Seconds on the performance counter (``time.perf_counter``), read at call time."""
    return time.perf_counter()


def fast_mean(times: Sequence[float], fraction: float = 0.25) -> float:
    """The mean of the fastest ``fraction`` of ``times`` (at least one of them): a trimmed mean that drops the slow
    tail, where interference from other processes lands."""
    ordered = sorted(times)
    n = max(1, int(round(len(ordered) * fraction)))
    return sum(ordered[:n]) / n


def robust_seconds(fn: Callable[[], object], *, warmup: int = 1, reps: int = 5, min_seconds: float = 0.0,
                   max_reps: int = 50, statistic: Callable[[Sequence[float]], float] = statistics.median) -> float:
    """Seconds one call of ``fn`` takes.

    ``warmup`` untimed calls first (caches, allocators, lazily built state), then timed calls: at least
    ``reps``, and more — up to ``max_reps`` — until ``min_seconds`` seconds have been timed in all. Returns
    ``statistic`` of them (the median, or :func:`fast_mean` for compute).
    """
    for _ in range(warmup):
        fn()
    times: list[float] = []
    total = 0.0
    while len(times) < max(1, reps) or (total < min_seconds and len(times) < max_reps):
        t0 = clock()
        fn()
        dt = clock() - t0
        times.append(dt)
        total += dt
    return statistic(times)


def per_unit_seconds(times: Sequence[float], units: Sequence[float]) -> float:
    """Seconds per unit of work from items timed separately: the median of ``times[i] / units[i]`` over the
    items with ``units[i] > 0`` (0 when there are none)."""
    rates = [t / u for t, u in zip(times, units) if u > 0]
    return statistics.median(rates) if rates else 0.0


def repeats_for(items: int, timings: int = 32) -> int:
    """How many times to time each of ``items`` items so that at least ``timings`` timings are taken
    (at least once each, at most ``timings`` times)."""
    return max(1, min(timings, -(-timings // max(items, 1))))


# -- how each measurement is timed -------------------------------------------------------------------

CALIBRATION_TIMING = {"warmup": 1, "reps": 5, "min_seconds": 0.05, "max_reps": 25}
"""How the calibration times its gathers and read stage (:func:`robust_seconds`): one warm-up call, then at least 5
timed calls, more until 0.05 s were timed (at most 25); their median (memory-bound work: its fastest calls are the
cache-warm ones)."""
CALIBRATION_STEP_TIMING = {**CALIBRATION_TIMING, "statistic": fast_mean}
"""How the calibration times model steps: as :data:`CALIBRATION_TIMING`, but the mean of the fastest quarter
(:func:`fast_mean`), the statistic the steps a plan times (:data:`STEP_TIMING`) are compared with."""
QUICK_TIMING = {"warmup": 1, "reps": 3, "min_seconds": 0.0, "max_reps": 3, "statistic": fast_mean}
"""``--quick-calibration``'s model steps: one warm-up call, then the fastest of 3."""
STEP_TIMING = {"warmup": 2, "reps": 5, "min_seconds": 0.3, "max_reps": 40, "statistic": fast_mean}
"""How a plan times model steps on its own minibatches (:func:`~diskgraph.capacity.estimate.local_compute_scale`):
two warm-up steps, then at least 5 timed steps, more until 0.3 s were timed (at most 40), the mean of the fastest
quarter: interference in bursts that cover up to three quarters of the window is left out. On a small graph's
steps (milliseconds each) that is a few dozen steps per minibatch."""
