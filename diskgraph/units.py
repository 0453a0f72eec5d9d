"""Parsing sizes given by users (``--memory-budget 2GiB``)."""

from __future__ import annotations

import argparse
import re

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "kb": 10**3, "m": 1 << 20, "mib": 1 << 20, "mb": 10**6,
          "g": 1 << 30, "gib": 1 << 30, "gb": 10**9, "t": 1 << 40, "tib": 1 << 40, "tb": 10**12}


def parse_bytes(text: str) -> int:
    """``"512M"``, ``"2GiB"``, ``"1.5G"``, ``"4096"`` → bytes.

    K/M/G/T and KiB/MiB/GiB/TiB are powers of 1024; KB/MB/GB/TB powers of 1000.
    """
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; write e.g. 512M, 2GiB or 4096 (bytes)")
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if not value < 2**63:
        raise argparse.ArgumentTypeError(f"{text!r} is too large a size")
    return int(value)
