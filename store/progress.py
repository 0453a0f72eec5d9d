"""Progress bars and log lines for long work.

Lives at the bottom of the package stack (``diskgraph.store``) so every layer can
report progress without importing upward. Bars are tqdm's, drawn on stderr only when it is
a terminal and ``quiet`` is off; log lines go through :mod:`logging` under the
``diskgraph`` logger.
"""

from __future__ import annotations

import logging
import sys
import time

from tqdm import tqdm

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


class _Bar(tqdm):
    """tqdm with diskgraph's numbers: bytes in binary units (``4.0 MiB``), counts with SI suffixes, the average rate."""

    monitor_interval = 0  # no monitor thread: bars are redrawn by update() and close()

    def __init__(self, *args, byte_unit: bool = False, count_unit: str = "", **kwargs):
        self._byte_unit = byte_unit
        self._count_unit = count_unit
        super().__init__(*args, **kwargs)

    def _fmt(self, n: float, unit: bool = True) -> str:
        if self._byte_unit:
            return format_bytes(n)
        return format_count(n) + (f" {self._count_unit}" if self._count_unit and unit else "")

    @property
    def format_dict(self):
        d = super().format_dict
        elapsed = d.get("elapsed") or 0
        rate = d["n"] / elapsed if elapsed > 0 else None
        # "3/10 minibatches", "1.0 MiB/4.0 MiB"; "12.3K edges" without a total
        d.update(rate=rate, n_fmt=self._fmt(d["n"], unit=False), done_fmt=self._fmt(d["n"]),
                 total_fmt=self._fmt(d["total"]) if d.get("total") else "?",
                 rate_fmt=(self._fmt(rate) if rate is not None else "?") + "/s")
        return d


_BAR_FORMAT = "{desc}: {percentage:5.1f}%|{bar}| {n_fmt}/{total_fmt} {rate_fmt} eta {remaining}"
_COUNTER_FORMAT = "{desc}: {done_fmt} {rate_fmt}"


class Progress:
    """A progress bar over ``total`` units (items or bytes), drawn on stderr by `tqdm <https://tqdm.github.io>`_.

    Use as a context manager; call :meth:`update` with the units just done.
    ``unit="B"`` shows sizes and rates in bytes (binary units: KiB, MiB, …); any other unit is a count with SI
    suffixes (``12.3K minibatches``). Nothing is drawn when stderr is not a terminal or quiet mode is on, so logs
    and CI output stay clean (no tqdm bar is even made then).
    """

    def __init__(self, desc: str, total: float | None, unit: str = "", min_interval: float = 0.2):
        self.desc = desc
        self.total = total
        self.unit = unit
        self.done = 0.0
        self.start = time.perf_counter()
        self.enabled = (not _settings["quiet"]) and sys.stderr.isatty()
        self._bar: tqdm | None = None
        if self.enabled:
            self._bar = _Bar(total=total or None, desc=desc, file=sys.stderr, mininterval=min_interval, miniters=0,
                             leave=True, dynamic_ncols=True, byte_unit=unit == "B", count_unit=unit.strip(),
                             bar_format=_BAR_FORMAT if total else _COUNTER_FORMAT)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: float) -> None:
        """Count ``n`` more units as done (the bar redraws at most every ``min_interval`` seconds)."""
        self.done += n
        if self._bar is not None and n:
            self._bar.update(n)

    def close(self) -> None:
        """Draw the final state and end the line."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self.enabled = False

    @property
    def elapsed(self) -> float:
        """Seconds since the bar was created."""
        return time.perf_counter() - self.start
