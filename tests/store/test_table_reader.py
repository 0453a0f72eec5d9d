"""Reading given rows of a feature table straight from its chunk files (diskgraph.store.table_reader): every row
bit-exact against the array, whatever the ids, chunk sizes (not page multiples), run gaps, run caps and thread
counts; the pages read are counted; bad ids and damaged chunk files are refused in one sentence."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diskgraph.store.direct_io import ALIGNMENT
from diskgraph.store.errors import FormatError, InputError
from diskgraph.store.table_reader import FeatureTableReader, plan_runs
from diskgraph.store.zarr_arrays import RowChunkWriter


def table(path, rows: int, width: int, chunk_rows: int, dtype: str = "float32") -> np.ndarray:
    """A feature table whose row i holds i, i + 1/1024, ... (identity features); returns the array written."""
    data = (np.arange(rows, dtype=np.float64)[:, None] + np.arange(width)[None, :] / 1024).astype(dtype)
    w = RowChunkWriter(path, rows, (width,), dtype, chunk_rows)
    w.append(data)
    w.finish()
    return data


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    root = tmp_path_factory.mktemp("tables")
    # 3000 rows of 100 float32 (400 B: rows straddle pages); chunks of 777 rows (310,800 B, not a page multiple)
    return {"straddle": (root / "a", table(root / "a", 3000, 100, 777)),
            "small": (root / "b", table(root / "b", 5000, 8, 1000, "float16")),
            "wide": (root / "c", table(root / "c", 400, 2000, 64))}


@settings(max_examples=40, deadline=None)
@given(which=st.sampled_from(["straddle", "small", "wide"]), frac=st.floats(0.0, 1.0), seed=st.integers(0, 10**6),
       gap=st.integers(0, 8), max_run=st.sampled_from([4096, 16384, 1 << 20]), threads=st.sampled_from([1, 3, 8]),
       direct=st.booleans())
def test_rows_are_exact(tables, which, frac, seed, gap, max_run, threads, direct):
    path, data = tables[which]
    rng = np.random.default_rng(seed)
    ids = np.flatnonzero(rng.random(len(data)) < frac ** 3)  # from none to all, mostly sparse
    with FeatureTableReader(path, direct=direct, gap_pages=gap, max_run_bytes=max_run, threads=threads) as r:
        out = np.zeros((len(ids), data.shape[1]), data.dtype)
        got = r.read_rows(ids, out)
        np.testing.assert_array_equal(out, data[ids])
        assert got.rows == len(ids)
        assert got.bytes_read >= len(ids) * r.row_bytes * (len(ids) > 0)
        assert (got.requests == 0) == (len(ids) == 0)


def test_runs_cover_the_rows_and_merge_near_pages():
    rb, cr = 512, 100  # 8 rows a page; chunk of 100 rows = 51,200 B (12.5 pages)
    ids = np.array([0, 1, 9, 40, 99, 100, 150], np.int64)
    runs = plan_runs(ids, cr, rb, 0, 1 << 20)
    # chunk 0: pages 0 (rows 0, 1), 1 (row 9), 5 (row 40), 12 (row 99); chunk 1: pages 0 (100), 6 (150)
    assert runs.tolist() == [[0, 0, 2, 0, 3], [0, 5, 1, 3, 1], [0, 12, 1, 4, 1], [1, 0, 1, 5, 1], [1, 6, 1, 6, 1]]
    merged = plan_runs(ids, cr, rb, 4, 1 << 20)  # gaps of up to 4 pages are read through
    assert merged.tolist() == [[0, 0, 6, 0, 4], [0, 12, 1, 4, 1], [1, 0, 1, 5, 1], [1, 6, 1, 6, 1]]
    capped = plan_runs(ids, cr, rb, 100, 2)  # a run holds at most 2 pages
    assert all(p <= 2 for p in capped[:, 2]) and capped[:, 4].sum() == len(ids)


def test_whole_table_reads_each_page_once(tables):
    path, data = tables["small"]  # 16 B rows, chunks of 16,000 B: 4 pages, the last one short
    with FeatureTableReader(path, gap_pages=0) as r:
        out = np.empty_like(data)
        got = r.read_rows(np.arange(len(data)), out)
    np.testing.assert_array_equal(out, data)
    assert got.bytes_read == len(data) * 16  # every byte once: the short last page of each chunk reads short
    assert got.requests == 5  # one run per chunk (1 MiB runs)


def test_bad_ids_and_damaged_chunks(tables, tmp_path):
    path, data = tables["straddle"]
    with FeatureTableReader(path) as r:
        with pytest.raises(FormatError, match="has rows 0..2999, not 3000"):
            r.read_rows(np.array([5, 3000]), np.empty((2, 100), np.float32))
    bad = tmp_path / "bad"
    table(bad, 3000, 100, 777)
    chunk = next(p for p in sorted((bad / "c").rglob("*")) if p.is_file())
    chunk.write_bytes(chunk.read_bytes()[:ALIGNMENT])
    with FeatureTableReader(bad) as r:
        with pytest.raises(FormatError, match="holds 4096 bytes where 310800 are expected"):
            r.read_rows(np.array([10, 700]), np.empty((2, 100), np.float32))


def test_a_run_the_compiled_loop_cannot_read_is_read_again_by_the_reader(tables, monkeypatch):
    """The compiled loop reports a failed run (O_DIRECT refused, a short file): the reader's own reads take over (they
    fall back to buffered I/O, or refuse in one sentence), and the rows are still exact."""
    from diskgraph.store import table_reader

    path, data = tables["straddle"]
    ids = np.arange(0, 3000, 7)
    monkeypatch.setattr(table_reader, "_read_runs", lambda *a: -1)
    with FeatureTableReader(path, threads=3) as r:
        out = np.zeros((len(ids), data.shape[1]), data.dtype)
        got = r.read_rows(ids, out)
    np.testing.assert_array_equal(out, data[ids])
    assert got.bytes_read >= len(ids) * r.row_bytes


def test_the_open_file_limit_is_raised_or_refused(tmp_path, monkeypatch):
    """A reader keeps every chunk file open (a run holds three readers): a soft limit below that is raised to what they
    need; a hard limit below it is refused in one sentence."""
    from diskgraph.store import table_reader

    path = tmp_path / "many"
    data = table(path, 600, 4, 2)  # 300 chunk files
    calls = []
    monkeypatch.setattr(table_reader.resource, "getrlimit", lambda what: (100, 10_000))
    monkeypatch.setattr(table_reader.resource, "setrlimit", lambda what, limits: calls.append(limits))
    with FeatureTableReader(path) as r:
        out = np.empty((3, 4), np.float32)
        r.read_rows(np.array([0, 301, 599]), out)
    np.testing.assert_array_equal(out, data[[0, 301, 599]])
    assert calls == [(3 * 300 + table_reader.FD_MARGIN, 10_000)]
    monkeypatch.setattr(table_reader.resource, "getrlimit", lambda what: (100, 900))
    with pytest.raises(InputError, match=r"needs 1156 open files \(900 chunk files and room for the rest\), more than "
                                         r"this process's open-file limit of 900"):
        FeatureTableReader(path)
