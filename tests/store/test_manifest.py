"""Versioned manifests (store.manifest)."""

from __future__ import annotations

import json

import pytest

from diskgraph.store.errors import FormatError
from diskgraph.store.manifest import MANIFEST_NAME, read_manifest, write_manifest

FMT = "diskgraph.dataset"


def test_round_trip(tmp_path):
    written = write_manifest(tmp_path, FMT, 1, {"num_nodes": 3, "nested": {"a": [1, 2]}})
    read = read_manifest(tmp_path, FMT, 1)
    assert read == written
    assert read["format"] == FMT and read["format_version"] == 1 and read["num_nodes"] == 3
    assert read["created_by"].startswith("diskgraph ") and read["created_at"].endswith("Z")
    assert read_manifest(tmp_path, FMT, 5)["format_version"] == 1  # older versions are read


def test_newer_version_is_refused(tmp_path):
    write_manifest(tmp_path, FMT, 2, {})
    with pytest.raises(FormatError, match=r"format_version 2 .* reads up to version 1; upgrade diskgraph"):
        read_manifest(tmp_path, FMT, 1)


@pytest.mark.parametrize("content, match", [
    (None, "has no manifest.json"),
    ("{oops", "is not valid JSON"),
    (json.dumps({"format": "something.else", "format_version": 1}), "describes 'something.else', not a diskgraph dataset"),
    (json.dumps([1, 2]), "describes None"),
    (json.dumps({"format": FMT, "format_version": "1"}), "no integer format_version"),
])
def test_damaged_or_foreign_manifests(tmp_path, content, match):
    if content is not None:
        (tmp_path / MANIFEST_NAME).write_text(content)
    with pytest.raises(FormatError, match=match):
        read_manifest(tmp_path, FMT, 1)


def test_missing_directory_or_a_file(tmp_path):
    with pytest.raises(FormatError, match="does not exist"):
        read_manifest(tmp_path / "nope", FMT, 1)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FormatError, match="is a file, not a diskgraph dataset directory"):
        read_manifest(tmp_path / "file", FMT, 1)
