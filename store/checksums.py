"""Checksums of what diskgraph writes, declared once.

Two kinds:

* **data checksums** — 64-bit XXH3 (``xxhash.xxh3_64``, about 16 GB/s on one core here, and it releases
  the GIL) of the bytes a reader uses: a plan row's or pack-index row's decoded columns, a packed
  extent (padding included), a tier array. They are verified on the read path, every time, so a
  damaged byte is refused where it is read instead of training silently.
* **manifest checksums** — sha256 of a manifest's canonical JSON (every field but ``checksum``,
  keys sorted, no spaces), stored in the manifest's ``checksum`` field: an edited or damaged manifest
  (a changed count, config or checksum) is refused when the directory is opened.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence

import numpy as np
import xxhash

READ_CHECKS_ENV = "DISKGRAPH_READ_CHECKS"
"""Set to ``0`` to read rows, extents and tiers without checking their checksums — only to measure what the checks
cost (``tools/bench/head_to_head.py --contestants diskgraph,diskgraph-unchecked``); a warning says so once."""

_read_checks = {"on": os.environ.get(READ_CHECKS_ENV, "1") != "0", "warned": False}

DATA_CHECKSUM = "xxh3_64"
"""Name of the data checksum, as recorded in manifests."""

MANIFEST_CHECKSUM_FIELD = "checksum"
"""The manifest field holding the manifest's own checksum (``sha256:<hex>``)."""

_LENGTH = np.dtype("<i8")


def read_checks() -> bool:
    """Whether readers check what they read against its checksum (always, unless ``DISKGRAPH_READ_CHECKS=0``)."""
    if not _read_checks["on"] and not _read_checks["warned"]:
        _read_checks["warned"] = True
        from .progress import log

        log.warning("%s=0: rows, extents and tiers are read without checking their checksums (to measure what the "
                    "checks cost); a damaged plan or pack would not be refused", READ_CHECKS_ENV)
    return _read_checks["on"]


def data_checksum(data) -> int:
    """XXH3-64 of a bytes-like object or contiguous array, as an unsigned int (0 .. 2**64-1)."""
    return xxhash.xxh3_64_intdigest(_bytes(data))


def new_data_hasher() -> "xxhash.xxh3_64":
    """A streaming hasher of :func:`data_checksum`: ``h.update(part)`` … ``h.intdigest()``."""
    return xxhash.xxh3_64()


def row_checksum(columns: Sequence[np.ndarray]) -> int:
    """The checksum of one row of columns (numpy arrays, in schema order): XXH3-64 over the columns'
    lengths (int64 little endian) followed by each column's bytes, so moving bytes between columns
    changes it too."""
    h = xxhash.xxh3_64()
    h.update(np.array([np.asarray(c).size for c in columns], dtype=_LENGTH).tobytes())
    for c in columns:
        h.update(_bytes(c))
    return h.intdigest()


def array_sha256(values: np.ndarray) -> str:
    """sha256 (hex) of an array's bytes in C order, as the manifests record arrays' ``sha256``."""
    return hashlib.sha256(_bytes(np.asarray(values))).hexdigest()


def _bytes(data):
    if isinstance(data, np.ndarray):
        if not data.flags.c_contiguous:
            data = np.ascontiguousarray(data)
        return memoryview(data.reshape(-1).view(np.uint8)) if data.size else b""
    return data


def canonical_json(body: dict) -> bytes:
    """The bytes a manifest checksum covers: ``body`` without its ``checksum`` field, keys sorted, compact."""
    rest = {k: v for k, v in body.items() if k != MANIFEST_CHECKSUM_FIELD}
    return json.dumps(rest, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def manifest_checksum(body: dict) -> str:
    """``sha256:<hex>`` of :func:`canonical_json` of ``body``."""
    return "sha256:" + hashlib.sha256(canonical_json(body)).hexdigest()
