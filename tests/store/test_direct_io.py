"""Direct reads: aligned buffers, O_DIRECT with a buffered fallback, short reads, truncated files."""

from __future__ import annotations

import errno
import fcntl
import logging
import os

import numpy as np
import pytest

from diskgraph.store import direct_io
from diskgraph.store.direct_io import ALIGNMENT, DirectReader, aligned_empty, is_aligned, round_up
from diskgraph.store.errors import FormatError


@pytest.fixture
def data_file(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, 5 * ALIGNMENT + 100, dtype=np.uint8)
    p = tmp_path / "data.bin"
    p.write_bytes(data.tobytes())
    return p, data


@pytest.fixture(autouse=True)
def _reset_warning():
    direct_io._warned["fallback"] = False
    yield
    direct_io._warned["fallback"] = False


@pytest.mark.parametrize("nbytes", [0, 1, 4095, 4096, 12345, 3 << 20])
def test_aligned_empty(nbytes):
    buf = aligned_empty(nbytes)
    assert buf.dtype == np.uint8 and buf.shape == (nbytes,) and buf.flags.writeable
    if nbytes:  # an empty array has no meaningful address
        assert buf.ctypes.data % ALIGNMENT == 0 and is_aligned(buf)
    buf[:] = 7
    assert (buf == 7).all()


def test_round_up():
    assert [round_up(x) for x in (0, 1, 4096, 4097)] == [0, 4096, 4096, 8192]


def test_direct_read(data_file):
    p, data = data_file
    with DirectReader(p) as r:
        assert r.size == data.size
        buf = aligned_empty(2 * ALIGNMENT)
        assert r.read_into(ALIGNMENT, 2 * ALIGNMENT, buf) == 2 * ALIGNMENT
        assert np.array_equal(buf, data[ALIGNMENT:3 * ALIGNMENT])
        if r.direct:
            with pytest.raises(ValueError, match="multiples"):
                r.read_into(100, ALIGNMENT, buf)
            with pytest.raises(ValueError, match="multiples"):
                r.read_into(0, 100, buf)
            with pytest.raises(ValueError, match="multiples"):
                r.read_into(0, ALIGNMENT, aligned_empty(ALIGNMENT + 8)[8:])
        with pytest.raises(ValueError, match="smaller"):
            r.read_into(0, 4 * ALIGNMENT, buf)
        assert r.read_into(0, 0, buf) == 0


def test_buffered_reads_anything(data_file):
    p, data = data_file
    with DirectReader(p, direct=False) as r:
        assert not r.direct
        out = np.zeros(333, np.uint8)
        r.read_into(17, 333, out)
        assert np.array_equal(out, data[17:350])
        assert np.array_equal(r.read(5 * ALIGNMENT, 100), data[5 * ALIGNMENT:])


def test_truncated_file(data_file):
    p, data = data_file
    with DirectReader(p) as r:
        with pytest.raises(FormatError, match="truncated"):
            r.read_into(4 * ALIGNMENT, 2 * ALIGNMENT, aligned_empty(2 * ALIGNMENT))
    with pytest.raises(FormatError, match="missing"):
        DirectReader(p.parent / "nope")


def test_fallback_when_open_refuses_o_direct(data_file, monkeypatch, caplog):
    p, data = data_file
    real_open = os.open

    def fake_open(path, flags, *a, **k):
        if flags & direct_io.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", fake_open)
    with caplog.at_level(logging.WARNING, logger="diskgraph"):
        readers = [DirectReader(p) for _ in range(3)]
    assert all(not r.direct for r in readers)
    assert len([r for r in caplog.records if "O_DIRECT" in r.getMessage()]) == 1  # one warning per process
    buf = aligned_empty(ALIGNMENT)
    readers[0].read_into(ALIGNMENT, ALIGNMENT, buf)
    assert np.array_equal(buf, data[ALIGNMENT:2 * ALIGNMENT])
    for r in readers:
        r.close()


def test_fallback_when_read_refuses_o_direct(data_file, monkeypatch, caplog):
    p, data = data_file
    r = DirectReader(p)
    if not r.direct:
        pytest.skip("this filesystem refuses O_DIRECT already")
    real = os.preadv

    def fake_preadv(fd, bufs, offset):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & direct_io.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, bufs, offset)

    monkeypatch.setattr(os, "preadv", fake_preadv)
    buf = aligned_empty(2 * ALIGNMENT)
    with caplog.at_level(logging.WARNING, logger="diskgraph"):
        r.read_into(0, 2 * ALIGNMENT, buf)
    assert not r.direct and np.array_equal(buf, data[:2 * ALIGNMENT])
    assert any("O_DIRECT" in rec.getMessage() for rec in caplog.records)
    r.close()


def test_short_reads_are_continued(data_file, monkeypatch):
    p, data = data_file
    real = os.preadv

    def short_preadv(fd, bufs, offset):
        view = memoryview(bufs[0])
        return real(fd, [view[:min(len(view), ALIGNMENT)]], offset)  # at most one block per call

    monkeypatch.setattr(os, "preadv", short_preadv)
    with DirectReader(p) as r:
        buf = aligned_empty(4 * ALIGNMENT)
        r.read_into(0, 4 * ALIGNMENT, buf)
        assert np.array_equal(buf, data[:4 * ALIGNMENT])
