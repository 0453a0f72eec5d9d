"""Manifests: the versioned, self-describing header of every directory diskgraph writes.

A manifest is ``manifest.json`` at the top of the directory::

    {"format": "diskgraph.dataset", "format_version": 1,
     "created_by": "diskgraph 0.1.0", "created_at": "2026-11-21T08:00:00Z", ...}

Readers call :func:`read_manifest` with the format they expect and the newest
version they understand; anything else is refused with one sentence.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path

from .errors import FormatError
from .files import read_json, write_file

MANIFEST_NAME = "manifest.json"
PACKAGE_VERSION = "0.1.0"

_WHAT = {
    "diskgraph.dataset": ("a diskgraph dataset", "diskgraph preprocess import"),
}


def write_manifest(directory: str | os.PathLike, fmt: str, version: int, body: dict) -> dict:
    """Write ``manifest.json`` into ``directory`` (written last by every writer); returns it."""
    manifest = {
        "format": fmt,
        "format_version": version,
        "created_by": f"diskgraph {PACKAGE_VERSION}",
        "created_at": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        **body,
    }
    write_file(Path(directory) / MANIFEST_NAME, (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest


def read_manifest(directory: str | os.PathLike, fmt: str, max_version: int) -> dict:
    """Read and check the manifest of ``directory``.

    Raises:
        FormatError: the directory or its manifest is missing, unreadable, of
            another format, or of a format version newer than ``max_version``.
    """
    directory = Path(directory)
    what, maker = _WHAT.get(fmt, (fmt, "diskgraph"))
    path = directory / MANIFEST_NAME
    if not directory.exists():
        raise FormatError(f"{directory} does not exist; pass the directory that {maker} wrote")
    if not directory.is_dir():
        raise FormatError(f"{directory} is a file, not {what} directory; pass the directory that {maker} wrote")
    manifest = read_json(path, f"{directory} is not {what} (it has no {MANIFEST_NAME}); create one with {maker}",
                         f"{path} is not valid JSON; the directory is damaged, rebuild it with {maker}")
    if not isinstance(manifest, dict) or manifest.get("format") != fmt:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise FormatError(f"{path} describes {found!r}, not {what}; pass the directory that {maker} wrote")
    version = manifest.get("format_version")
    if not isinstance(version, int):
        raise FormatError(f"{path} has no integer format_version; the manifest is damaged, rebuild it with {maker}")
    if version > max_version:
        raise FormatError(
            f"{path} has format_version {version} but this diskgraph ({PACKAGE_VERSION}) reads up to "
            f"version {max_version}; upgrade diskgraph to read it"
        )
    return manifest
