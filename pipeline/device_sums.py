"""The running sums of an epoch, kept where the steps run so that a step does not wait for the device.

Reading a CUDA tensor's value on the host (``float(t)``, ``t.item()``, ``bool(t)``) waits until the GPU has finished
everything queued before it: a training loop that reads the loss after every step cannot queue step N+1 while step N
runs. :class:`DeviceSums` therefore adds each step's loss (times its seeds) and each additive metric's sums
(:meth:`~diskgraph.pipeline.tasks.SumMetric.sums`) into float64 0-d tensors on the compute device, and times the steps
with CUDA events; :meth:`DeviceSums.read` brings everything to the host at once (one wait: at the epoch's end and at a
checkpoint). On a CPU nothing waits, the step times are ``time.perf_counter`` intervals, and the sums are the same
float64 additions, in the same order, as Python floats would give.
"""

from __future__ import annotations

import time

import torch

from .tasks import SumMetric


class StepTimer:
    """Seconds spent in training steps: CUDA events recorded around each step on a GPU (their elapsed times are summed
    when :meth:`seconds` is read, one wait), ``time.perf_counter`` elsewhere.

    Args:
        device: the compute device.
        seconds: seconds counted before (a resumed epoch).
    """

    def __init__(self, device: torch.device, seconds: float = 0.0):
        self.cuda = device.type == "cuda"
        self.device = device
        self._seconds = float(seconds)
        self._events: list = []
        self._start = None

    def start(self) -> None:
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record(torch.cuda.current_stream(self.device))
        else:
            self._start = time.perf_counter()

    def stop(self) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record(torch.cuda.current_stream(self.device))
            self._events.append((self._start, end))
        else:
            self._seconds += time.perf_counter() - self._start

    def seconds(self) -> float:
        """All steps' seconds so far (on a GPU: waits for the last step to finish)."""
        if self._events:
            self._events[-1][1].synchronize()
            self._seconds += sum(s.elapsed_time(e) for s, e in self._events) / 1000.0
            self._events.clear()
        return self._seconds


class DeviceSums:
    """A split's loss sum and additive metric sums over minibatches, as float64 0-d tensors on ``device``.

    Args:
        device: where the sums live (the compute device).
        loss_sum: the loss sum so far (a resumed epoch; a float).
        metric_sums: metric name → sum name → float so far.
    """

    def __init__(self, device: torch.device, loss_sum: float = 0.0, metric_sums: dict | None = None):
        self.device = device
        self.loss_sum = self._tensor(loss_sum)
        self.metric_sums = {name: {k: self._tensor(v) for k, v in part.items()}
                            for name, part in (metric_sums or {}).items()}

    def _tensor(self, value: float) -> torch.Tensor:
        return torch.tensor(float(value), dtype=torch.float64, device=self.device)

    def add(self, loss: torch.Tensor, n: int, metrics, out: torch.Tensor, y: torch.Tensor) -> None:
        """Add one minibatch: its mean ``loss`` times its ``n`` seeds, and the sums of each additive metric of
        ``metrics`` on its outputs ``out`` and targets ``y`` (no wait on the device)."""
        self.loss_sum.add_(loss.detach().to(torch.float64) * n)
        for m in metrics:
            if not isinstance(m, SumMetric):
                continue
            total = self.metric_sums.setdefault(m.name, {})
            for k, v in m.sums(out, y).items():
                if isinstance(v, torch.Tensor):  # the built-in metrics' (a number from your own adds on the host side)
                    v = v.detach().to(device=self.device, dtype=torch.float64)
                if k in total:
                    total[k].add_(v)
                else:
                    total[k] = self._tensor(0.0).add_(v)

    def read(self) -> tuple[float, dict]:
        """``(loss_sum, {metric: {sum name: float}})`` on the host (one wait on the device)."""
        keys = [(name, k) for name, part in self.metric_sums.items() for k in part]
        values = torch.stack([self.loss_sum] + [self.metric_sums[n][k] for n, k in keys]).tolist()
        sums: dict = {}
        for (name, k), v in zip(keys, values[1:]):
            sums.setdefault(name, {})[k] = v
        return values[0], sums
