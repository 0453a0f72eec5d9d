"""An interrupted import never leaves something that opens as a dataset; the next import cleans up."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import diskgraph.store.importer as importer
from diskgraph.store.dataset import open_dataset
from diskgraph.store.errors import FormatError
from diskgraph.store.importer import ImportOptions, import_dataset
from diskgraph.store.sources.edges import NpyEdges


def _small_inputs(tmp_path, n=2000, e=20000, f=64):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "e.npy", rng.integers(0, n, (2, e)))
    np.save(tmp_path / "x.npy", rng.standard_normal((n, f)).astype(np.float32))
    return tmp_path / "e.npy", tmp_path / "x.npy"


def test_keyboard_interrupt_during_feature_copy(cli, tmp_path, monkeypatch, no_leftovers):
    edges, feats = _small_inputs(tmp_path)
    out = tmp_path / "ds"
    seen = {}
    real_copy = importer.copy_features

    def interrupted_copy(source, dest, *args, **kwargs):
        slices = source.slices

        def some_slices(rows):
            for i, item in enumerate(slices(min(rows, 300))):
                if i == 2:
                    # the topology is written, features partly: the temporary directory has it all
                    seen["tmp"] = sorted(p.name for p in dest.parent.iterdir())
                    seen["chunks"] = len(list(dest.rglob("c/*/*")))
                    raise KeyboardInterrupt
                yield item

        monkeypatch.setattr(source, "slices", some_slices)
        return real_copy(source, dest, *args, **kwargs)

    monkeypatch.setattr(importer, "copy_features", interrupted_copy)
    monkeypatch.setattr("diskgraph.store.features_copy.CHUNK_BYTES", 64 * 4 * 100)  # 100-row chunks
    r = cli.run("preprocess", "import", "--edges", edges, "--features", feats, "--out", out,
                "--memory-budget", "32M", "-q")
    assert r.rc == 130 and "interrupted" in r.err and "Traceback" not in r.err
    assert seen["tmp"] == ["features", "topology", "zarr.json"] and seen["chunks"] > 0
    assert no_leftovers(out) == []
    with pytest.raises(FormatError):
        open_dataset(out)
    # a later import to the same place succeeds
    monkeypatch.setattr(importer, "copy_features", real_copy)
    r = cli.run("preprocess", "import", "--edges", edges, "--features", feats, "--out", out, "-q")
    assert r.rc == 0, r.err
    ds = open_dataset(out)
    assert ds.verify() == []
    np.testing.assert_array_equal(ds.features.read_rows(0, ds.num_nodes), np.load(feats))


@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
def test_interrupt_during_topology_spill(tmp_path, monkeypatch, exc, no_leftovers):
    edges_path, _ = _small_inputs(tmp_path)
    monkeypatch.setattr(importer, "build_csc", functools.partial(importer.build_csc, part_edges=3000))
    spilled = []

    class Interrupted(NpyEdges):
        reads = 0

        def chunks(self, max_edges):
            self.reads += 1
            for i, c in enumerate(super().chunks(min(max_edges, 1000))):
                if self.reads == 2 and i == 5:  # mid-way through spilling to the range files
                    spilled.extend(tmp_path.glob(".ds.diskgraph-tmp-*/topology/_spill/part*.bin"))
                    raise exc("stop")
                yield c

    out = tmp_path / "ds"
    with pytest.raises(exc):
        import_dataset(out, Interrupted(edges_path), options=ImportOptions(memory_budget=32 << 20, num_nodes=2000))
    assert len(spilled) >= 6  # 20000 edges in ranges of at most 3000
    assert no_leftovers(out) == []


def _wait_for(predicate, timeout, proc):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    return False


def test_sigkill_midway_leaves_nothing_valid_and_next_import_cleans_up(cli, tmp_path, no_leftovers):
    """A real import of ~330 MB of raw inputs, killed with SIGKILL while it writes."""
    rng = np.random.default_rng(1)
    n, e, f = 100_000, 8_000_000, 256
    edges = np.lib.format.open_memmap(tmp_path / "e.npy", mode="w+", dtype=np.int64, shape=(2, e))
    for s in range(0, e, 2_000_000):
        edges[:, s:s + 2_000_000] = rng.integers(0, n, (2, min(2_000_000, e - s)))
    edges.flush()
    del edges
    feats = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32, shape=(n, f))
    for s in range(0, n, 25_000):
        feats[s:s + 25_000] = rng.standard_normal((25_000, f), dtype=np.float32)
    feats.flush()
    del feats
    out = tmp_path / "ds"
    args = ["preprocess", "import", "--edges", tmp_path / "e.npy", "--features", tmp_path / "x.npy", "--out", out,
            "--memory-budget", "64M", "-q"]
    proc = subprocess.Popen([sys.executable, "-m", "diskgraph", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        # wait until the import is mid-way (the topology's destination ranges are being spilled), then kill it
        def spilling():
            return any(f.stat().st_size > 0 for f in tmp_path.glob(".ds.diskgraph-tmp-*/topology/_spill/part*.bin"))

        started = _wait_for(spilling, 60, proc)
        assert started, f"the import never spilled: {proc.stderr.read().decode() if proc.poll() is not None else ''}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    stale = no_leftovers(out)
    assert not out.exists()
    assert len(stale) == 1 and stale[0].name.startswith(f".ds.diskgraph-tmp-{proc.pid}-")
    with pytest.raises(FormatError):
        open_dataset(out)
    assert list(stale[0].glob("topology/_spill/part*.bin"))  # killed mid-way: its spill files are still there
    with pytest.raises(FormatError):
        open_dataset(stale[0])  # the manifest comes last: even the leftover does not read as a dataset

    r = cli.run(*args)
    assert r.rc == 0, r.err
    assert no_leftovers(out) == [out]  # the stale temporary directory is gone
    ds = open_dataset(out)
    assert ds.num_nodes == n and ds.num_edges == e
    assert ds.verify() == []
