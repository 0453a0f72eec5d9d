"""pytest plugin of ``tools/bench/gpu_check.sh``: run only the tests that need CUDA, and say what happened to each.

Load it with ``-p cuda_select`` (``tools/bench`` on ``PYTHONPATH``)::

    PYTHONPATH=tools/bench python -m pytest -p cuda_select --cuda-report report.json tests/...

A test is kept when it carries the ``cuda`` marker or a ``skipif`` mark whose reason names a GPU
("needs an NVIDIA GPU", "needs a CUDA GPU"); every other collected test is deselected. The report
(JSON) lists each kept test with its outcome (passed / failed / skipped, and the skip reason) and the
counts, so a CUDA test that was skipped on a GPU machine is visible instead of passing silently.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

GPU_REASON = re.compile(r"\b(gpu|cuda)\b", re.IGNORECASE)


def needs_cuda(item) -> bool:
    """Whether ``item`` is one of the CUDA tests: the ``cuda`` marker, or a skipif that names a GPU."""
    if item.get_closest_marker("cuda") is not None:
        return True
    for mark in item.iter_markers("skipif"):
        if GPU_REASON.search(str(mark.kwargs.get("reason", ""))):
            return True
    return False


def pytest_addoption(parser):
    parser.addoption("--cuda-report", default=None, help="write the CUDA tests' outcomes as JSON to this file")


class _Report:
    def __init__(self, path: str | None):
        self.path = Path(path) if path else None
        self.selected: list[str] = []
        self.deselected = 0
        self.outcomes: dict[str, dict] = {}
        self.collection_errors: dict[str, str] = {}

    def pytest_collectreport(self, report) -> None:
        if report.failed:
            self.collection_errors[report.nodeid] = (str(report.longreprtext).strip().splitlines() or [""])[-1][:300]

    def pytest_runtest_logreport(self, report) -> None:  # registered as a plugin object in pytest_configure
        entry = self.outcomes.setdefault(report.nodeid, {"outcome": "unknown"})
        if report.skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            entry.update(outcome="skipped", reason=str(reason).removeprefix("Skipped: "))
        elif report.failed:
            entry.update(outcome="failed" if report.when == "call" else "error",
                         message=str(report.longreprtext).strip().splitlines()[-1:] or [""])
            entry["message"] = entry["message"][0][:300]
        elif report.when == "call" and entry["outcome"] == "unknown":
            entry["outcome"] = "passed"

    def write(self, exitstatus) -> None:
        if self.path is None:
            return
        counts: dict[str, int] = {}
        for e in self.outcomes.values():
            counts[e["outcome"]] = counts.get(e["outcome"], 0) + 1
        reasons: dict[str, int] = {}
        for e in self.outcomes.values():
            if e["outcome"] == "skipped":
                reasons[e["reason"]] = reasons.get(e["reason"], 0) + 1
        data = {"selected": len(self.selected), "deselected": self.deselected, "counts": counts,
                "skip_reasons": reasons,
                "collection_errors": self.collection_errors, "exitstatus": int(exitstatus), "tests": self.outcomes}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(data, indent=1))


def pytest_configure(config):
    config._cuda_select = _Report(config.getoption("--cuda-report"))
    config.pluginmanager.register(config._cuda_select, "cuda_select_report")


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        (keep if needs_cuda(item) else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep
    rep = config._cuda_select
    rep.selected = [i.nodeid for i in keep]
    rep.deselected = len(drop)
    for nodeid in rep.selected:
        rep.outcomes[nodeid] = {"outcome": "unknown"}


def pytest_sessionfinish(session, exitstatus):
    session.config._cuda_select.write(exitstatus)
