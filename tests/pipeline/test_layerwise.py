"""Layer-wise inference engine: every model's partitioned, sliced, out-of-core output equals the model's own forward
on a full-neighborhood block in float64 (the oracle), for every storage and for budgets that force many partitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diskgraph.layer_programs import layer_programs
from diskgraph.models import build_model
from diskgraph.native import layerwise as kernels
from diskgraph.pipeline.blocks import make_block
from diskgraph.pipeline.layerwise import Table, Topology, read_state, run_layerwise
from diskgraph.pipeline.trainer import StopRequested
from diskgraph.store.errors import InputError
from diskgraph.store.zarr_arrays import RawArray, RowChunkWriter, write_array

N, E, F, C = 1500, 9000, 24, 5


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    """A random multigraph (repeated edges, self loops, nodes without in-edges) on disk, and its arrays."""
    d = tmp_path_factory.mktemp("layerwise")
    rng = np.random.default_rng(7)
    src = rng.integers(0, N, E)
    dst = rng.integers(0, N - 100, E)  # the last 100 nodes have no in-edges
    src[:50] = dst[:50]
    src[50:80], dst[50:80] = src[80:110], dst[80:110]
    order = np.lexsort((src, dst))
    src, dst = src[order], dst[order]
    indptr = np.zeros(N + 1, np.int64)
    np.cumsum(np.bincount(dst, minlength=N), out=indptr[1:])
    x = rng.standard_normal((N, F)).astype(np.float32)
    write_array(d / "indptr", indptr)
    write_array(d / "indices", src.astype(np.int32))
    w = RowChunkWriter(d / "features", N, (F,), "float32", 400)
    w.append(x)
    w.finish()
    return d, indptr, src, x


def _model(name: str, hidden: int, layers: int = 2):
    torch.manual_seed(3)
    model = build_model(name, F, hidden, C, layers, heads=4)
    with torch.no_grad():  # biases away from zero so that a missing term shows
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _oracle(model, indptr, src, x, upto: int | None = None) -> np.ndarray:
    """The model's own forward, float64, on a block with every in-neighbor of every node (layer ``upto``'s
    activation when given)."""
    block = make_block(N, N, indptr, src)
    m = model.double()
    h = torch.from_numpy(x).double()
    with torch.no_grad():
        for i, layer in enumerate(m.layers[: upto or len(m.layers)]):
            h = layer(block, h)
            if i != len(m.layers) - 1:
                h = m.activation(h)
    model.float()
    return h.numpy()


def _run(graph, model, storage="disk", budget=1 << 30, final_layer=None, selected=None, scratch=None,
         identity=None, stop=lambda: None):
    d, _indptr, _src, _x = graph
    arr = RawArray(d / "features")
    feats = {"disk": lambda: Table.on_disk(arr), "ram": lambda: Table.in_ram(arr),
             "mmap": lambda: Table("mmap", array=arr)}[storage]()
    topo = Topology(RawArray(d / "indptr"), RawArray(d / "indices"), N)
    final = final_layer or model.num_layers
    out, seen = {}, []

    def emit(ids, rows):
        seen.append(np.asarray(ids))
        out.update(zip(ids.tolist(), rows.numpy()))

    res = run_layerwise(layer_programs(model), feats, topo, final_layer=final, selected=selected,
                        activation=model.activation, emit=emit, budget=budget,
                        scratch=scratch if storage != "ram" else None, identity=identity or {"t": 1}, stop=stop,
                        table_kind="mmap" if storage == "mmap" else "disk")
    ids = np.concatenate(seen)
    assert (np.diff(ids) > 0).all(), "rows must come in ascending node order, each once"
    return ids, np.stack([out[i] for i in ids.tolist()]), res


def _relerr(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


CASES = [("sage", 16), ("sage", 40), ("gcn", 16), ("gcn", 40), ("gat", 16)]


@pytest.mark.parametrize("name,hidden", CASES)
@pytest.mark.parametrize("storage,case", [("disk", "grid"), ("disk", "resident"), ("disk", "roomy"), ("ram", "roomy"),
                                          ("mmap", "roomy")])
def test_logits_equal_the_full_neighborhood_forward(graph, tmp_path, monkeypatch, name, hidden, storage, case):
    """``grid``: G larger than the budget, streamed in slices once per destination partition; ``resident``: several
    partitions, G read once and kept; ``roomy``: one partition."""
    from diskgraph.pipeline import layer_layout as layerwise  # plan_layout reads MIN_SLICE_BYTES there

    model = _model(name, hidden)
    ref = _oracle(model, *graph[1:])
    if case == "grid":
        monkeypatch.setattr(layerwise, "MIN_SLICE_BYTES", 4096)
    budget = {"grid": 80_000, "resident": 400_000, "roomy": 1 << 30}[case]
    ids, got, res = _run(graph, model, storage, budget, scratch=tmp_path / "s")
    assert (ids == np.arange(N)).all()
    assert _relerr(got, ref) < 1e-5
    first = next(s for s in res.layers if s.layer == 1).record()
    slices = -(-N // first["slice_rows"])
    if case == "grid":
        assert first["partitions"] > 1 and first["slices_read"] > slices and first["resident_slices"] < slices, first
    elif case == "resident":
        assert first["partitions"] > 1 and first["slices_read"] == slices == first["resident_slices"], first


@pytest.mark.parametrize("name,hidden", [("sage", 16), ("gcn", 40), ("gat", 16)])
def test_a_subset_of_nodes_and_an_inner_layer(graph, tmp_path, name, hidden):
    model = _model(name, hidden, layers=3)
    pick = np.sort(np.random.default_rng(1).choice(N, 200, replace=False)).astype(np.int64)
    ids, got, _ = _run(graph, model, "disk", 400_000, selected=pick, scratch=tmp_path / "s")
    assert (ids == pick).all()
    assert _relerr(got, _oracle(model, *graph[1:])[pick]) < 1e-5
    ids, got, _ = _run(graph, model, "disk", 400_000, final_layer=2, scratch=tmp_path / "s2")
    assert got.shape == (N, hidden)
    assert _relerr(got, _oracle(model, *graph[1:], upto=2)) < 1e-5


def test_a_stopped_run_continues_after_its_last_finished_layer(graph, tmp_path):
    model = _model("sage", 40, layers=3)
    scratch = tmp_path / "s"
    calls = {"n": 0}
    layer_at_stop = []

    def stop():
        calls["n"] += 1
        state = read_state(scratch, {"t": 1})
        if state is not None and state["done"] == 2:
            layer_at_stop.append(state["done"])
            raise StopRequested()

    with pytest.raises(StopRequested):
        _run(graph, model, scratch=scratch, stop=stop)
    assert layer_at_stop == [2]
    ids, got, res = _run(graph, model, scratch=scratch)
    assert res.resumed_after == 2 and [s.layer for s in res.layers] == [3]
    assert _relerr(got, _oracle(model, *graph[1:])) < 1e-5
    _, _, other = _run(graph, model, scratch=scratch, identity={"t": 2})  # another request starts over
    assert other.resumed_after == 0


def test_a_budget_too_small_is_refused_naming_what_it_needs(graph, tmp_path):
    with pytest.raises(InputError, match="--memory-budget .* too small .* give --memory-budget"):
        _run(graph, _model("sage", 16), budget=50_000, scratch=tmp_path / "s")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 99), min_size=0, max_size=300), st.integers(1, 40))
def test_regroup_is_a_stable_sort_by_slice(srcs, slice_rows):
    src = np.array(srcs, dtype=np.int64)
    dst = np.arange(len(src), dtype=np.int32) // 3
    num_slices = -(-100 // slice_rows)
    out_src, out_dst = np.empty(len(src), np.int32), np.empty(len(src), np.int32)
    ptr = np.empty(num_slices + 1, np.int64)
    kernels.regroup_by_slice(src, dst, slice_rows, num_slices, out_src, out_dst, ptr)
    order = np.argsort(src // slice_rows, kind="stable")
    assert (out_dst == dst[order]).all()
    assert (out_src == src[order] - (src[order] // slice_rows) * slice_rows).all()
    assert (np.diff(ptr) == np.bincount(src // slice_rows, minlength=num_slices)).all()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 19), st.integers(0, 29)), min_size=0, max_size=200), st.integers(1, 4))
def test_sum_rows_into_matches_a_scatter_add(edges, threads):
    edges = sorted(edges)
    dst = np.array([e[0] for e in edges], dtype=np.int32)
    src = np.array([e[1] for e in edges], dtype=np.int32)
    g = np.random.default_rng(0).standard_normal((30, 7)).astype(np.float32)
    acc = np.ones((20, 7), np.float32)
    kernels.sum_rows_into(acc, dst, src, g, threads)
    ref = np.ones((20, 7), np.float64)
    np.add.at(ref, dst, g[src].astype(np.float64))
    np.testing.assert_allclose(acc, ref, rtol=1e-5, atol=1e-5)


def test_partition_ordered_tables_are_read_by_runs_and_stay_exact(graph, tmp_path, monkeypatch):
    """GCN (40 wide: its tables are written by the engine) under a budget that cuts every layer into several
    partitions: layers 1 and 2 read partition-ordered tables, only their runs, and a run stopped after layer 1
    resumes from the ordered table it wrote."""
    from diskgraph.pipeline import layer_layout as layerwise  # plan_layout reads MIN_SLICE_BYTES there

    monkeypatch.setattr(layerwise, "MIN_SLICE_BYTES", 4096)
    model = _model("gcn", 40, layers=3)
    ref = _oracle(model, *graph[1:])
    _, got, res = _run(graph, model, "disk", 80_000, scratch=tmp_path / "a")
    assert _relerr(got, ref) < 1e-5
    ordered = {s.layer: s.extra.get("partition_order") for s in res.layers if s.layer >= 1}
    assert ordered[1] and ordered[2], ordered
    scratch = tmp_path / "b"

    def stop():
        state = read_state(scratch, {"t": 1})
        if state is not None and state["done"] == 1:
            assert state["ordered"]
            raise StopRequested()

    with pytest.raises(StopRequested):
        _run(graph, model, "disk", 80_000, scratch=scratch, stop=stop)
    _, got, res = _run(graph, model, "disk", 80_000, scratch=scratch)
    assert res.resumed_after == 1 and res.layers[0].extra["partition_order"]
    assert _relerr(got, ref) < 1e-5


def test_partition_order_runs_hold_exactly_the_rows_each_partition_reads(graph):
    from diskgraph.pipeline.layerwise import Layout, partition_order

    d, indptr, src, _ = graph
    topo = Topology(RawArray(d / "indptr"), RawArray(d / "indices"), N)
    cuts = [0, 300, 700, 701, 1200, N]
    order = partition_order(topo, Layout(list(zip(cuts[:-1], cuts[1:])), 100, 10))
    assert sorted(order.pos.tolist()) == list(range(N))
    total = 0
    for q, (lo, hi) in enumerate(zip(cuts[:-1], cuts[1:])):
        want = set(order.pos[src[indptr[lo]:indptr[hi]]].tolist())
        got = set()
        for a, b in order.runs[q]:
            got.update(range(int(a), int(b)))
        assert got == want, q
        total += len(want)
    assert order.needed_rows == total
