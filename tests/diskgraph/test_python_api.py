"""The public loaders (diskgraph.PackedLoader / InMemoryLoader), Batch.to_pyg(), and docs/python-api.md's examples."""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import diskgraph
from diskgraph.pipeline.blocks import Batch
from diskgraph.pipeline.schedule import epoch_order

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "python-api.md"
BATCH = 16


@pytest.fixture(scope="module")
def cora(prepared_cora):
    return prepared_cora("10,5", BATCH)


def _indices(loader) -> list[int]:
    return [b.index for b in loader]


# -- loaders ----------------------------------------------------------------------------------------

def test_packed_loader_epochs_len_and_order(cora):
    with diskgraph.PackedLoader(cora, "train", pack="default", device="cpu") as loader:
        assert len(loader) == -(-140 // BATCH)
        first = _indices(loader)
        assert first == _indices(loader)  # a second pass of the same epoch: same order
        assert first == epoch_order(loader.plan, "train", 0, 0).tolist()
        assert sorted(first) == list(range(len(loader)))
        orders = []
        for e in range(4):
            loader.set_epoch(e)
            batches = list(iter(loader))
            assert len(batches) == len(loader) and all(isinstance(b, Batch) for b in batches)
            assert all(b.batch_size == b.y.shape[0] == b.blocks[-1].num_dst for b in batches)
            assert sum(b.batch_size for b in batches) == 140
            orders.append([b.index for b in batches])
        assert orders[0] == first and len({tuple(o) for o in orders}) > 1  # set_epoch reshuffles
    with diskgraph.PackedLoader(cora, "train", seed=0) as again, diskgraph.PackedLoader(cora, "train", seed=1) as other:
        again.set_epoch(3)
        assert _indices(again) == orders[3]  # same seed, same epoch: same order
        assert [other.order(e).tolist() for e in range(4)] != orders
    with diskgraph.PackedLoader(cora, "train", shuffle=False) as plain:
        assert _indices(plain) == list(range(len(plain)))
    with diskgraph.PackedLoader(cora, "val") as val:
        assert len(val) == -(-500 // BATCH) and _indices(val) == list(range(len(val)))


def test_loader_refusals_are_one_sentence(cora, tmp_path):
    for make in (lambda: diskgraph.PackedLoader(cora, "train", pack="nope"),
                 lambda: diskgraph.PackedLoader(tmp_path / "missing", "train"),
                 lambda: diskgraph.PackedLoader(cora, "bogus"),
                 lambda: diskgraph.InMemoryLoader(cora, "bogus", fanouts=[5], batch_size=8)):
        with pytest.raises(diskgraph.InputError) as e:
            make()
        assert "\n" not in str(e.value)
    with diskgraph.PackedLoader(cora, "train") as loader, pytest.raises(diskgraph.InputError):
        loader.set_epoch(-1)


def test_in_memory_loader_same_interface_and_plan_minibatches(cora):
    with diskgraph.InMemoryLoader(cora, "train", fanouts=[10, 5], batch_size=BATCH, seed=0) as mem, \
            diskgraph.PackedLoader(cora, "train", shuffle=False, reuse_buffers=False) as packed:
        assert len(mem) == len(packed)
        for a, b in zip(mem, packed):  # epoch 0 of the online sampler = presampled epoch 0 of the plan
            assert isinstance(a, Batch) and a.batch_size == b.batch_size
            np.testing.assert_array_equal(a.input_nodes, b.input_nodes)
            assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
            _check_pyg(a, a.to_pyg())
        mem.set_epoch(1)
        assert [b.index for b in mem] == mem.order(1).tolist()


# -- to_pyg -----------------------------------------------------------------------------------------

def _check_pyg(batch: Batch, data) -> None:
    """``data`` holds the blocks' edges hop by hop (as (global src, global dst) multisets), PyG's layout."""
    L = len(batch.blocks)
    nodes = batch.input_nodes
    assert data.batch_size == batch.batch_size and torch.equal(data.y, batch.y)
    assert len(data.num_sampled_nodes) == L + 1 and len(data.num_sampled_edges) == L
    assert data.num_sampled_nodes[0] == batch.batch_size
    assert sum(data.num_sampled_nodes) == data.x.shape[0] == data.n_id.shape[0]
    assert sum(data.num_sampled_edges) == data.edge_index.shape[1]
    assert data.edge_index.dtype == torch.int64
    n_id = data.n_id.cpu().numpy()
    np.testing.assert_array_equal(n_id[:batch.batch_size], nodes[:batch.batch_size])
    # x row i is the features of node n_id[i] (batch.x row = input node)
    pos = {int(g): i for i, g in enumerate(nodes)}
    assert torch.equal(data.x, batch.x[torch.tensor([pos[int(g)] for g in n_id])])
    node_off = np.concatenate([[0], np.cumsum(data.num_sampled_nodes)])
    edge_off = np.concatenate([[0], np.cumsum(data.num_sampled_edges)])
    ei = data.edge_index.cpu().numpy()
    for h in range(1, L + 1):
        block = batch.blocks[L - h]  # blocks are in GNN-layer order: hop L first
        src, dst = ei[:, edge_off[h - 1]:edge_off[h]]
        assert ((src >= node_off[h]) & (src < node_off[h + 1])).all()  # hop-h rows → hop-(h-1) rows
        assert ((dst >= node_off[h - 1]) & (dst < node_off[h])).all()
        got = Counter(zip(n_id[src].tolist(), n_id[dst].tolist()))
        want = Counter(zip(nodes[block.indices.cpu().numpy()].tolist(), nodes[block.dst_index.cpu().numpy()].tolist()))
        assert got == want, f"hop {h}"


def test_to_pyg_edges_equal_the_blocks(cora):
    for split in ("train", "test"):
        with diskgraph.PackedLoader(cora, split) as loader:
            for batch in loader:
                _check_pyg(batch, batch.to_pyg())


def _forward(model, data, trim: bool):
    if trim:
        return model(data.x, data.edge_index, num_sampled_nodes_per_hop=data.num_sampled_nodes,
                     num_sampled_edges_per_hop=data.num_sampled_edges)[:data.batch_size]
    return model(data.x, data.edge_index)[:data.batch_size]


def test_stock_graphsage_trims_exactly_and_trains(cora):
    from torch_geometric.nn import GraphSAGE

    torch.manual_seed(0)
    loader = diskgraph.PackedLoader(cora, "train", seed=0)
    model = GraphSAGE(loader.num_features, 64, num_layers=2, out_channels=loader.num_classes)
    model.eval()
    with torch.no_grad():
        for batch in loader:
            data = batch.to_pyg()
            torch.testing.assert_close(_forward(model, data, True), _forward(model, data, False), rtol=1e-5, atol=1e-6)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for epoch in range(6):
        loader.set_epoch(epoch)
        total = 0.0
        for batch in loader:
            data = batch.to_pyg()
            loss = torch.nn.functional.cross_entropy(_forward(model, data, True), data.y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * data.batch_size
        losses.append(total / 140)
    loader.close()
    assert losses[-1] < 0.5 * losses[0], losses


def test_to_pyg_without_torch_geometric_is_refused(cora, monkeypatch):
    with diskgraph.PackedLoader(cora, "train") as loader:
        batch = next(iter(loader))
        monkeypatch.setitem(sys.modules, "torch_geometric", None)
        monkeypatch.setitem(sys.modules, "torch_geometric.data", None)
        with pytest.raises(diskgraph.InputError, match=re.escape('pip install "diskgraph[pyg]"')):
            batch.to_pyg()


# -- docs/python-api.md -----------------------------------------------------------------------------

def test_python_api_doc_examples_run(shared_dataset, tmp_path, monkeypatch):
    from diskgraph.cli import main

    text = DOC.read_text()
    (setup,) = re.findall(r"```bash\n(.*?)```", text, re.S)
    argv = setup.split()
    assert argv[:2] == ["diskgraph", "preprocess"] and "data.npz" in argv
    argv = [str(shared_dataset("cora")) if a == "data.npz" else a for a in argv[1:]]
    monkeypatch.chdir(tmp_path)
    assert main(argv + ["-q"]) == 0
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 2
    namespace: dict = {"__name__": "__doc__"}
    for code in blocks:
        exec(compile(code, str(DOC), "exec"), namespace)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_to_pyg_on_cuda(cora):
    from torch_geometric.nn import GraphSAGE

    torch.manual_seed(0)
    with diskgraph.PackedLoader(cora, "train", device="cuda") as loader:
        model = GraphSAGE(loader.num_features, 64, num_layers=2, out_channels=loader.num_classes).to("cuda").eval()
        with torch.no_grad():
            for batch in loader:
                data = batch.to_pyg()
                assert data.x.is_cuda and data.edge_index.is_cuda and data.y.is_cuda
                _check_pyg(batch, data)
                torch.testing.assert_close(_forward(model, data, True), _forward(model, data, False))
