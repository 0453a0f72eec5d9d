"""Manifests: the versioned, self-describing header of every directory diskgraph writes.

A manifest is ``manifest.json`` at the top of the directory::

    {"format": "diskgraph.dataset", "format_version": 2,
     "created_by": "diskgraph 0.1.0", "created_at": "2026-11-21T08:00:00Z", ...,
     "checksum": "sha256:…"}

``checksum`` covers every other field (:func:`~diskgraph.store.checksums.manifest_checksum`), so a
manifest that was edited or damaged after it was written is refused, not trusted. Readers call
:func:`read_manifest` with the format they expect and the range of versions they understand;
anything else is refused with one sentence.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path

from .checksums import MANIFEST_CHECKSUM_FIELD, manifest_checksum
from .errors import FormatError
from .files import read_json, write_file

MANIFEST_NAME = "manifest.json"
PACKAGE_VERSION = "0.1.0"

FORMATS = {
    "diskgraph.dataset": ("a diskgraph dataset", "diskgraph preprocess import"),
    "diskgraph.plan": ("a diskgraph plan", "diskgraph preprocess sample"),
    "diskgraph.pack": ("a diskgraph pack", "diskgraph preprocess pack"),
    "diskgraph.raw-inputs": ("diskgraph generate's raw inputs", "diskgraph generate --format raw"),
    "diskgraph.inference": ("a diskgraph inference output", "diskgraph predict or diskgraph embed"),
}
"""Each directory format diskgraph writes: what messages call it, and the command that makes it."""


def write_manifest(directory: str | os.PathLike, fmt: str, version: int, body: dict) -> dict:
    """Write ``manifest.json`` into ``directory`` (written last by every writer), with its checksum; returns it."""
    manifest = {
        "format": fmt,
        "format_version": version,
        "created_by": f"diskgraph {PACKAGE_VERSION}",
        "created_at": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        **body,
    }
    manifest[MANIFEST_CHECKSUM_FIELD] = manifest_checksum(manifest)
    write_file(Path(directory) / MANIFEST_NAME, (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest


def read_manifest(directory: str | os.PathLike, fmt: str, max_version: int, min_version: int = 1,
                  checksum_since: int | None = None) -> dict:
    """Read and check the manifest of ``directory``.

    Args:
        fmt, max_version, min_version: the format and the versions this reader understands.
        checksum_since: the first version whose manifests must carry a ``checksum`` (None: any manifest
            may lack one). A checksum present is always verified.

    Raises:
        FormatError: the directory or its manifest is missing, unreadable, of another format, of a
            version outside ``min_version..max_version``, lacking its checksum, or not matching it.
    """
    directory = Path(directory)
    what, maker = FORMATS.get(fmt, (fmt, "diskgraph"))
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
    if version < min_version:
        raise FormatError(
            f"{path} has format_version {version}, older than this diskgraph ({PACKAGE_VERSION}) reads (from version "
            f"{min_version}: it adds checksums of the data); rebuild it with {maker}"
        )
    recorded = manifest.get(MANIFEST_CHECKSUM_FIELD)
    if recorded is None and checksum_since is not None and version >= checksum_since:
        raise FormatError(f"{path} has no {MANIFEST_CHECKSUM_FIELD!r} field; the manifest is damaged, rebuild it with "
                          f"{maker}")
    if recorded is not None and recorded != manifest_checksum(manifest):
        raise FormatError(f"{path} does not match its {MANIFEST_CHECKSUM_FIELD!r} field (the manifest was edited or "
                          f"is damaged); rebuild it with {maker}")
    return manifest
