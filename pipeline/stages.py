"""The stage harness: one epoch of a chain of stage threads joined by bounded queues.

A loader describes its stages — a *source* that yields items (the packed loader's read stage, the in-memory
loader's sampling stage) and *transforms* that turn each item into the next (assembly) — and iterates
:meth:`StageRun.get_output` in the consumer's thread. The harness owns the queues (``depth`` items each), the stop
flag, the first error (re-raised in the consumer), the end marker, and the joining of the threads — also when the
consumer stops early (``break``, ``close()`` of its generator, garbage collection).

Each stage measures its own busy time into ``run.totals[stage]``; the harness adds ``input_wait_s`` (a transform
waiting for its input) and ``put_wait_s`` (a stage waiting for room downstream).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from typing import Callable, Iterator

from ..store.progress import log

END = object()
"""The marker a stage passes on after its last item."""
POLL_S = 0.05
"""How often a waiting stage looks at the stop flag (waits themselves wake at once on new items)."""
JOIN_TIMEOUT_S = 60.0


def now() -> float:
    return time.perf_counter()


class Stage:
    """One stage: ``source(run) -> iterator of items`` or ``transform(run, item, input_wait_s) -> item`` (None: the
    run was stopped), run in a thread named ``thread`` inside ``context()`` (e.g. a CUDA device and stream)."""

    def __init__(self, name: str, thread: str, *, source: Callable[["StageRun"], Iterator] | None = None,
                 transform: Callable[["StageRun", object, float], object] | None = None,
                 context: Callable[[], contextlib.AbstractContextManager] | None = None):
        if (source is None) == (transform is None):
            raise ValueError("a stage is either a source or a transform")
        self.name, self.thread, self.source, self.transform = name, thread, source, transform
        self.context = context or contextlib.nullcontext


class StageRun:
    """One epoch of ``stages`` (the first a source, the rest transforms), ``depth`` items between each."""

    def __init__(self, stages: list[Stage], depth: int):
        if not stages or stages[0].source is None or any(s.source is not None for s in stages[1:]):
            raise ValueError("a stage chain is one source followed by transforms")
        self.stages = stages
        self.queues = [queue.Queue(maxsize=depth) for _ in stages]
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.totals: dict[str, dict] = {s.name: {"busy_s": 0.0, "input_wait_s": 0.0, "put_wait_s": 0.0,
                                                 "minibatches": 0} for s in stages}
        self.t_start = self.t_end = 0.0

    # -- coordination -------------------------------------------------------------------------------

    def fail(self, e: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = e
        self.stop.set()

    def put(self, q: queue.Queue, item) -> bool:
        """Put ``item`` into ``q`` (waiting for room); False when the run was stopped first."""
        while not self.stop.is_set():
            try:
                q.put(item, timeout=POLL_S)
                return True
            except queue.Full:
                pass
        return False

    def get(self, q: queue.Queue):
        """The next item of ``q``; None when the run was stopped first."""
        while not self.stop.is_set():
            try:
                return q.get(timeout=POLL_S)
            except queue.Empty:
                pass
        return None

    def get_output(self):
        """The last stage's next item or :data:`END`; raises a stage's error."""
        out = self.queues[-1]
        while True:
            if self.error is not None:
                raise self.error
            if self.stop.is_set():
                raise RuntimeError("this epoch was stopped (another epoch of the loader started, or it was closed); "
                                   "its remaining batches are gone")
            try:
                return out.get(timeout=POLL_S)
            except queue.Empty:
                if not any(t.is_alive() for t in self.threads) and out.empty() and self.error is None:
                    raise RuntimeError("the loader's stage threads stopped without finishing the epoch")

    # -- threads ------------------------------------------------------------------------------------

    def begin(self) -> None:
        self.t_start = now()
        self.threads = [threading.Thread(target=self._run_stage, args=(k,), name=s.thread, daemon=True)
                        for k, s in enumerate(self.stages)]
        for t in self.threads:
            t.start()

    def _run_stage(self, k: int) -> None:
        stage = self.stages[k]
        try:
            with stage.context():
                if stage.source is not None:
                    self._source_loop(stage, self.queues[k])
                else:
                    self._transform_loop(stage, self.queues[k - 1], self.queues[k])
        except BaseException as e:
            self.fail(e)

    def _put_timed(self, stage: Stage, q: queue.Queue, item) -> bool:
        t0 = now()
        ok = self.put(q, item)
        self.totals[stage.name]["put_wait_s"] += now() - t0
        return ok

    def _source_loop(self, stage: Stage, q_out: queue.Queue) -> None:
        for item in stage.source(self):
            if item is None or not self._put_timed(stage, q_out, item):
                return
            self.totals[stage.name]["minibatches"] += 1
        self.put(q_out, END)

    def _transform_loop(self, stage: Stage, q_in: queue.Queue, q_out: queue.Queue) -> None:
        tot = self.totals[stage.name]
        while True:
            t0 = now()
            item = self.get(q_in)
            wait = now() - t0
            tot["input_wait_s"] += wait
            if item is None:
                return
            if item is END:
                self.put(q_out, END)
                return
            out = stage.transform(self, item, wait)
            if out is None or not self._put_timed(stage, q_out, out):
                return
            tot["minibatches"] += 1

    def shutdown(self) -> None:
        """Stop the stages and join their threads."""
        self.stop.set()
        for t in self.threads:
            t.join(JOIN_TIMEOUT_S)
            if t.is_alive():  # pragma: no cover - a read stuck in the kernel
                log.warning("loader thread %s did not stop within %.0f s", t.name, JOIN_TIMEOUT_S)
        self.t_end = now()

    @property
    def epoch_s(self) -> float:
        return max((self.t_end or now()) - self.t_start, 0.0) if self.t_start else 0.0


def device_context(device=None, stream=None) -> contextlib.AbstractContextManager:
    """A stage thread's CUDA context: ``device`` current and, when given, ``stream`` (no-op for None: CPU)."""
    stack = contextlib.ExitStack()
    if device is not None:
        import torch

        stack.enter_context(torch.cuda.device(device))
        if stream is not None:
            stack.enter_context(torch.cuda.stream(stream))
    return stack


def overlap_stats(epoch_s: float, busy: dict[str, float]) -> dict:
    """The slowest stage and the overlap ratio (epoch time ÷ slowest stage's busy time)."""
    slowest = max(busy, key=busy.get)
    return {"slowest_stage": slowest, "slowest_stage_s": busy[slowest],
            "overlap": epoch_s / busy[slowest] if busy[slowest] > 0 else None}
