"""Pieces shared by the command-line modules: common flags and value parsers."""

from __future__ import annotations

import argparse

EPILOG_SIZES = "Sizes accept K/M/G/T (powers of 1024, also KiB/MiB/GiB) or KB/MB/GB (powers of 1000)."


def add_common(p: argparse.ArgumentParser) -> None:
    """Add --config, --print-config, --quiet and --verbose to a command."""
    g = p.add_argument_group("general")
    g.add_argument("--config", metavar="FILE", help="read options from a TOML or YAML file (flags given here win)")
    g.add_argument("--print-config", action="store_true", help="print the resolved options as TOML and exit")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings and errors only")
    g.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def positive_int(text: str) -> int:
    """A whole number ≥ 0 (underscores allowed: 1_000_000)."""
    try:
        v = int(str(text).replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return v


def shard(text: str) -> tuple[int, int]:
    """``R/W`` (share R of W, ``0 <= R < W``) → ``(R, W)``."""
    try:
        r, w = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not RANK/WORLD_SIZE; give e.g. 0/2 for the first of two "
                                         "shares") from None
    if w < 1 or not 0 <= r < w:
        raise argparse.ArgumentTypeError(f"{text!r} needs 0 <= RANK < WORLD_SIZE; give e.g. 1/2 for the second of two "
                                         "shares")
    return r, w


def fanouts(text: str) -> str:
    """``10,15,20`` → the same text after checking it: positive integers or -1 (all neighbors)."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if not values or any(v == 0 or v < -1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} is not a fanout list; write e.g. 10,15,20 (positive numbers, -1 = all neighbors)")
    return ",".join(str(v) for v in values)


def parse_fanouts(text: str) -> list[int]:
    """A checked fanout string → list of ints."""
    return [int(p) for p in fanouts(text).split(",")]
