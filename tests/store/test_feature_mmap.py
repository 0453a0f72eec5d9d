"""MappedFeatures: the memory-mapped feature table (the np.memmap baseline) gathers exactly the stored rows."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diskgraph.store.errors import InputError
from diskgraph.store.feature_mmap import MappedFeatures
from diskgraph.store.zarr_arrays import RawArray, RowChunkWriter, write_group

ROWS, DIM, CHUNK = 1000, 3, 64


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """Identity rows (row i holds i) over 16 chunk files, the last one padded."""
    root = tmp_path_factory.mktemp("mmap")
    write_group(root)
    w = RowChunkWriter(root / "features", ROWS, (DIM,), "float32", CHUNK)
    w.append(np.repeat(np.arange(ROWS, dtype=np.float32)[:, None], DIM, axis=1))
    w.finish()
    return RawArray(root / "features")


@pytest.mark.parametrize("advice", ["normal", "random", "sequential"])
def test_gathers_rows_across_chunks(table, advice):
    m = MappedFeatures(table, advice=advice)
    assert table.num_chunks == 16 and m.shape == (ROWS, DIM)
    ids = np.array([999, 0, 63, 64, 500, 0, 999, 128])
    assert np.array_equal(m.gather(ids)[:, 0], ids.astype(np.float32))
    m.close()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, ROWS - 1), max_size=300))
def test_gather_equals_an_in_memory_oracle(table, ids):
    m = MappedFeatures(table)
    ids = np.asarray(ids, dtype=np.int64)
    got = m.gather(ids)
    assert got.shape == (ids.size, DIM)
    assert np.array_equal(got, np.repeat(ids.astype(np.float32)[:, None], DIM, axis=1))


def test_refusals(table):
    with pytest.raises(InputError, match="advice 'wild'"):
        MappedFeatures(table, advice="wild")
    m = MappedFeatures(table)
    with pytest.raises(InputError, match="0..999"):
        m.gather(np.array([ROWS]))
