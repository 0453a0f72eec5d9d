"""Progress bars and log lines for long work.

Lives at the bottom of the package stack (``diskgraph.store``) so every layer can
report progress without importing upward. Bars draw on stderr only when it is a
terminal and ``quiet`` is off; log lines go through :mod:`logging` under the
``diskgraph`` logger.
"""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("diskgraph")

_settings = {"quiet": False}


def set_quiet(quiet: bool) -> None:
    """Turn progress bars off (``True``) or back on for a terminal (``False``)."""
    _settings["quiet"] = bool(quiet)


def _scaled(n: float, base: float, units: tuple[str, ...], sep: str) -> str:
    n = float(n)
    for unit in units:
        if abs(n) < base or unit == units[-1]:
            return f"{n:.0f}{sep}{unit}".rstrip() if unit == units[0] else f"{n:.1f}{sep}{unit}"
        n /= base
    raise AssertionError("unreachable")


def format_bytes(n: float) -> str:
    """``n`` bytes as a short human string, binary units (``1.5 GiB``)."""
    return _scaled(n, 1024, ("B", "KiB", "MiB", "GiB", "TiB"), " ")


def format_count(n: float) -> str:
    """A count with SI suffixes (``12.3M``)."""
    return _scaled(n, 1000, ("", "K", "M", "G", "T"), "")


class Progress:
    """A progress bar over ``total`` units (items or bytes), drawn on stderr.

    Use as a context manager; call :meth:`update` with the units just done.
    ``unit="B"`` shows sizes and rates in bytes. Nothing is drawn when stderr is
    not a terminal or quiet mode is on, so logs and CI output stay clean.
    """

    def __init__(self, desc: str, total: float | None, unit: str = "", min_interval: float = 0.2):
        self.desc = desc
        self.total = total
        self.unit = unit
        self.done = 0.0
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self._min_interval = min_interval
        self.enabled = (not _settings["quiet"]) and sys.stderr.isatty()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _fmt(self, n: float) -> str:
        return format_bytes(n) if self.unit == "B" else format_count(n) + (f" {self.unit}" if self.unit else "")

    def update(self, n: float) -> None:
        """Count ``n`` more units as done and redraw at most every ``min_interval`` seconds."""
        self.done += n
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._last_draw >= self._min_interval:
            self._last_draw = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        if self.total:
            frac = min(self.done / self.total, 1.0)
            width = 24
            bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            eta_s = f"{eta:5.0f}s" if eta != float("inf") else "    ?"
            text = f"{self.desc}: [{bar}] {frac * 100:5.1f}% {self._fmt(self.done)}/{self._fmt(self.total)} {self._fmt(rate)}/s eta {eta_s}"
        else:
            text = f"{self.desc}: {self._fmt(self.done)} {self._fmt(rate)}/s"
        sys.stderr.write("\r" + text[:150].ljust(100))
        sys.stderr.flush()

    def close(self) -> None:
        """Draw the final state and end the line."""
        if self.enabled:
            self._draw(time.perf_counter())
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.enabled = False

    @property
    def elapsed(self) -> float:
        """Seconds since the bar was created."""
        return time.perf_counter() - self.start
