"""Block GNN models (diskgraph.models) against dense references computed independently.

Each layer is checked against its formula written with dense matrices: the
block's adjacency ``A [num_dst, num_src]`` (entry = number of sampled edges
u -> v) is built from ``indptr``/``indices`` by a Python loop, and the layer is
computed in float64 with the model's own parameters.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diskgraph.models import MODELS, build_model, count_parameters
from diskgraph.pipeline.blocks import Block, make_block
from diskgraph.store.errors import InputError

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")


# -- helpers --------------------------------------------------------------------------------------

def random_block(rng: np.random.Generator, num_src: int, num_dst: int, max_deg: int = 6,
                 zero_deg: tuple[int, ...] = ()) -> Block:
    """A random block: degrees 0..max_deg, sources anywhere in 0..num_src-1 (repeats and v itself allowed)."""
    deg = rng.integers(0, max_deg + 1, num_dst)
    deg[list(zero_deg)] = 0
    indptr = np.zeros(num_dst + 1, dtype=np.int64)
    np.cumsum(deg, out=indptr[1:])
    indices = rng.integers(0, num_src, int(indptr[-1]))
    return make_block(num_src, num_dst, indptr, indices)


def dense_adjacency(block: Block) -> torch.Tensor:
    """float64 [num_dst, num_src]: number of sampled edges from each source to each destination."""
    a = torch.zeros(block.num_dst, block.num_src, dtype=torch.float64)
    ptr = block.indptr.tolist()
    idx = block.indices.tolist()
    for v in range(block.num_dst):
        for u in idx[ptr[v]:ptr[v + 1]]:
            a[v, u] += 1
    return a


def with_self_loops(a: torch.Tensor) -> torch.Tensor:
    a = a.clone()
    n = a.shape[0]
    a[torch.arange(n), torch.arange(n)] += 1
    return a


def d64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float64)


def ref_sage(layer, block: Block, x: torch.Tensor) -> torch.Tensor:
    a = dense_adjacency(block)
    x = d64(x)
    mean = (a @ x) / a.sum(1, keepdim=True).clamp(min=1)
    return x[: block.num_dst] @ d64(layer.lin_self.weight).T + mean @ d64(layer.lin_neigh.weight).T + d64(layer.bias)


def ref_gcn(layer, block: Block, x: torch.Tensor) -> torch.Tensor:
    a = with_self_loops(dense_adjacency(block))
    d_in = a.sum(1)                     # >= 1 thanks to the self loop
    d_out = a.sum(0).clamp(min=1)       # sources that send nothing do not matter
    norm = torch.diag(d_in.rsqrt()) @ a @ torch.diag(d_out.rsqrt())
    return norm @ d64(x) @ d64(layer.weight) + d64(layer.bias)


def ref_gat(layer, block: Block, x: torch.Tensor) -> torch.Tensor:
    a = with_self_loops(dense_adjacency(block))       # multiplicities weight the softmax like parallel edges
    H, C, nd = layer.heads, layer.out_dim, block.num_dst
    z = (d64(x) @ d64(layer.lin.weight).T).view(-1, H, C)
    outs = []
    for k in range(H):
        zk = z[:, k, :]
        s_src = zk @ d64(layer.att_src[0, k])
        s_dst = zk[:nd] @ d64(layer.att_dst[0, k])
        e = F.leaky_relu(s_dst[:, None] + s_src[None, :], 0.2)
        w = a * torch.exp(e - e.max())
        alpha = w / w.sum(1, keepdim=True)
        outs.append(alpha @ zk)
    out = torch.cat(outs, 1) if layer.concat else torch.stack(outs, 0).mean(0)
    return out + d64(layer.bias)


REFS = {"sage": ref_sage, "gcn": ref_gcn, "gat": ref_gat}


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every parameter (biases included) random values so that each one is exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def sampled_blocks(fanouts=(4, 3, 2), num_nodes=300, num_seeds=12, seed=0) -> list[Block]:
    """Blocks of one minibatch sampled by the project's sampler from a random graph."""
    from diskgraph.pipeline.blocks import blocks_from_minibatch
    from diskgraph.sampler.neighbor_sampler import sample_minibatch

    rng = np.random.default_rng(seed)
    src = rng.integers(0, num_nodes, num_nodes * 8)
    dst = rng.integers(0, num_nodes, num_nodes * 8)
    order = np.argsort(dst, kind="stable")
    indptr = np.zeros(num_nodes + 1, dtype=np.int64)
    np.cumsum(np.bincount(dst, minlength=num_nodes), out=indptr[1:])
    mb = sample_minibatch(indptr, src[order], np.arange(num_seeds), list(fanouts), 1234)
    return blocks_from_minibatch(mb)


# -- each layer against its dense formula ---------------------------------------------------------

@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("in_dim,out_dim", [(7, 3), (3, 7)])  # project before / after aggregating
def test_layer_matches_dense_reference(name, in_dim, out_dim):
    rng = np.random.default_rng(1)
    block = random_block(rng, num_src=40, num_dst=15, zero_deg=(0, 5))
    model = build_model(name, in_dim, 8, out_dim, num_layers=1, dropout=0.0, heads=3).eval()
    randomize(model)
    x = torch.from_numpy(rng.standard_normal((40, in_dim)).astype(np.float32))
    got = model([block], x)
    assert got.shape == (15, out_dim) and got.dtype == torch.float32
    want = REFS[name](model.layers[0], block, x)
    torch.testing.assert_close(d64(got), want, atol=1e-5, rtol=1e-5)


def test_gat_hidden_layer_concatenates_heads():
    rng = np.random.default_rng(2)
    blocks = [random_block(rng, 30, 12, zero_deg=(3,)), random_block(rng, 12, 5)]
    model = build_model("gat", 6, 12, 4, num_layers=2, dropout=0.0, heads=3).eval()
    randomize(model)
    hidden_layer = model.layers[0]
    assert hidden_layer.concat and hidden_layer.heads == 3 and hidden_layer.out_dim == 4
    assert not model.layers[1].concat and model.layers[1].heads == 3
    x = torch.randn(30, 6)
    h = hidden_layer(blocks[0], x)
    assert h.shape == (12, 12)
    torch.testing.assert_close(d64(h), ref_gat(hidden_layer, blocks[0], x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_two_layers_match_composed_references(name):
    rng = np.random.default_rng(3)
    blocks = [random_block(rng, 50, 20, zero_deg=(1,)), random_block(rng, 20, 8, zero_deg=(2,))]
    model = build_model(name, 5, 8, 3, num_layers=2, dropout=0.5, heads=2).eval()  # eval: dropout off
    randomize(model, seed=1)
    x = torch.randn(50, 5)
    ref = REFS[name]
    act = F.elu if name == "gat" else F.relu
    h = act(ref(model.layers[0], blocks[0], x))
    want = ref(model.layers[1], blocks[1], h)
    torch.testing.assert_close(d64(model(blocks, x)), want, atol=1e-5, rtol=1e-5)


# -- shapes on sampled minibatches ---------------------------------------------------------------

@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_shapes_on_sampled_blocks(name, num_layers):
    blocks = sampled_blocks(fanouts=(4, 3, 2)[:num_layers])
    assert len(blocks) == num_layers
    for prev, nxt in zip(blocks, blocks[1:]):
        assert nxt.num_src == prev.num_dst
    model = build_model(name, 16, 24, 5, num_layers=num_layers, heads=4)
    x = torch.randn(blocks[0].num_src, 16)
    out = model(blocks, x)
    assert out.shape == (blocks[-1].num_dst, 5) == (12, 5)
    assert torch.isfinite(out).all()


# -- gradients and empty neighborhoods -----------------------------------------------------------

@pytest.mark.parametrize("name", MODELS)
def test_gradients_reach_every_parameter(name):
    blocks = sampled_blocks(fanouts=(4, 3))
    model = build_model(name, 8, 12, 4, num_layers=2, dropout=0.3, heads=2).train()
    randomize(model, seed=2)
    x = torch.randn(blocks[0].num_src, 8, requires_grad=True)
    model(blocks, x).square().sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{pname} got a zero gradient"
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", MODELS)
def test_destination_without_neighbors(name):
    # destination 0 has no sampled neighbor; destination 1 has one; in a second block every destination is empty
    indptr = np.array([0, 0, 1, 3])
    indices = np.array([4, 0, 5])
    block = make_block(6, 3, indptr, indices)
    empty = make_block(6, 3, np.zeros(4, dtype=np.int64), np.zeros(0, dtype=np.int64))
    model = build_model(name, 4, 8, 3, num_layers=1, dropout=0.5, heads=2)
    randomize(model, seed=3)
    layer = model.layers[0]
    x = torch.randn(6, 4, requires_grad=True)
    for blk in (block, empty):
        for train in (True, False):
            model.train(train)
            out = model([blk], x)
            assert torch.isfinite(out).all()
            out.sum().backward()
            assert all(torch.isfinite(p.grad).all() for p in model.parameters())
            x.grad = None
            model.zero_grad()
    model.eval()
    with torch.no_grad():
        out = model([block], x)[0].double()
        x0 = d64(x[0])
        if name == "sage":      # mean over nobody = 0: only the self term and the bias
            want = x0 @ d64(layer.lin_self.weight).T + d64(layer.bias)
        elif name == "gcn":     # self loop only: d_in = 1, d_out(0) = 1 self loop + 1 edge to destination 2
            want = x0 @ d64(layer.weight) / np.sqrt(2.0) + d64(layer.bias)
        else:                   # attention 1 on the self loop
            want = (x0 @ d64(layer.lin.weight).T).view(2, 3).mean(0) + d64(layer.bias)
        torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
        out_empty = model([empty], x).double()
        torch.testing.assert_close(out_empty, REFS[name](layer, empty, x), atol=1e-5, rtol=1e-5)


# -- determinism ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("threads", [1, 4])
def test_cpu_runs_are_bit_identical(name, threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rng = np.random.default_rng(4)
        blocks = [random_block(rng, 6000, 2000, max_deg=20), random_block(rng, 2000, 400, max_deg=20)]
        model = build_model(name, 32, 32, 6, num_layers=2, heads=4).eval()
        x = torch.from_numpy(rng.standard_normal((6000, 32)).astype(np.float32))
        results = []
        for _ in range(3):
            model.zero_grad()
            out = model(blocks, x)
            (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
            results.append([out.detach().clone()] + [p.grad.clone() for p in model.parameters()])
        for other in results[1:]:
            for a, b in zip(results[0], other):
                assert torch.equal(a, b)
    finally:
        torch.set_num_threads(before)


def test_dropout_is_reproducible_with_the_same_seed():
    blocks = sampled_blocks(fanouts=(4, 3))
    model = build_model("gat", 8, 8, 3, num_layers=2, dropout=0.5, heads=2).train()
    x = torch.randn(blocks[0].num_src, 8)
    torch.manual_seed(7)
    a = model(blocks, x)
    torch.manual_seed(7)
    b = model(blocks, x)
    assert torch.equal(a, b)


# -- learns a neighbor-determined task ------------------------------------------------------------

def majority_block(rng: np.random.Generator, num_dst: int, num_other: int, classes: int, fanout: int):
    """Sources carry one-hot classes; each destination's label is the majority class of its sampled sources."""
    num_src = num_dst + num_other
    cls = rng.integers(0, classes, num_src)
    x = F.one_hot(torch.from_numpy(cls), classes).float()
    indptr = np.arange(num_dst + 1, dtype=np.int64) * fanout
    indices = rng.integers(num_dst, num_src, num_dst * fanout)   # neighbors are not destinations
    counts = np.zeros((num_dst, classes), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(num_dst), fanout), cls[indices]), 1)
    return make_block(num_src, num_dst, indptr, indices), x, torch.from_numpy(counts.argmax(1))


def test_one_layer_sage_learns_majority_of_neighbors():
    torch.manual_seed(0)
    rng = np.random.default_rng(5)
    train_block, x, y = majority_block(rng, 600, 1500, classes=4, fanout=7)
    test_block, x_test, y_test = majority_block(rng, 300, 800, classes=4, fanout=7)
    model = build_model("sage", 4, 16, 4, num_layers=1, dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        loss = F.cross_entropy(model([train_block], x), y)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        train_acc = (model([train_block], x).argmax(1) == y).float().mean().item()
        test_acc = (model([test_block], x_test).argmax(1) == y_test).float().mean().item()
    assert train_acc > 0.95 and test_acc > 0.9, (train_acc, test_acc)


# -- refusals and helpers ------------------------------------------------------------------------

def test_unknown_model_name_is_refused():
    with pytest.raises(InputError) as e:
        build_model("gin", 4, 8, 2, 2)
    msg = str(e.value)
    assert "'gin'" in msg and all(n in msg for n in MODELS) and "\n" not in msg


def test_bad_sizes_are_refused():
    with pytest.raises(InputError, match="divisible"):
        build_model("gat", 4, 10, 2, 2, heads=4)
    with pytest.raises(InputError, match="num_layers"):
        build_model("sage", 4, 8, 2, 0)
    with pytest.raises(InputError, match="dropout"):
        build_model("sage", 4, 8, 2, 1, dropout=1.5)
    build_model("gat", 4, 10, 2, 1, heads=4)   # one layer has no hidden layer to split


@pytest.mark.parametrize("name", MODELS)
def test_wrong_number_of_blocks_or_rows(name):
    blocks = sampled_blocks(fanouts=(3, 2))
    model = build_model(name, 4, 8, 2, num_layers=2, heads=2)
    x = torch.randn(blocks[0].num_src, 4)
    with pytest.raises(ValueError, match="2 layers but got 1 blocks"):
        model(blocks[1:], torch.randn(blocks[1].num_src, 4))
    with pytest.raises(ValueError, match="2 layers but got 3 blocks"):
        model(blocks + blocks[-1:], x)
    with pytest.raises(ValueError, match="source nodes"):
        model(blocks, x[:-1])
    with pytest.raises(ValueError, match="chain"):
        model([blocks[0], blocks[0]], x)


def test_count_parameters():
    assert count_parameters(build_model("sage", 10, 16, 3, 2)) == (2 * 10 * 16 + 16) + (2 * 16 * 3 + 3)
    assert count_parameters(build_model("gcn", 10, 16, 3, 2)) == (10 * 16 + 16) + (16 * 3 + 3)
    # gat: lin + att_src + att_dst + bias; hidden 16 = 4 heads x 4, output 4 heads x 3 averaged
    assert count_parameters(build_model("gat", 10, 16, 3, 2, heads=4)) == \
        (10 * 16 + 16 + 16 + 16) + (16 * 12 + 12 + 12 + 3)
    m = build_model("sage", 10, 16, 3, 1)
    m.layers[0].bias.requires_grad_(False)
    assert count_parameters(m) == 2 * 10 * 3


# -- CUDA -----------------------------------------------------------------------------------------

@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("name", MODELS)
def test_cuda_matches_cpu(name):
    blocks = sampled_blocks(fanouts=(5, 4))
    rng = np.random.default_rng(6)
    blocks[0] = random_block(rng, blocks[0].num_src, blocks[0].num_dst, zero_deg=(0,))  # one empty neighborhood
    model = build_model(name, 16, 32, 5, num_layers=2, heads=4).eval()
    randomize(model, seed=4)
    x = torch.randn(blocks[0].num_src, 16)
    gpu = copy.deepcopy(model).cuda()
    out_cpu = model(blocks, x)
    out_gpu = gpu([b.to("cuda") for b in blocks], x.cuda())
    assert out_gpu.device.type == "cuda"
    torch.testing.assert_close(out_gpu.cpu(), out_cpu, atol=1e-4, rtol=1e-4)
    out_cpu.sum().backward()
    out_gpu.sum().backward()
    for (pname, p), q in zip(model.named_parameters(), gpu.parameters()):
        torch.testing.assert_close(q.grad.cpu(), p.grad, atol=1e-3, rtol=1e-3, msg=pname)
    gpu.train()
    out = gpu([b.to("cuda") for b in blocks], x.cuda())
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="block.to"):
        gpu(blocks, x.cuda())


@pytest.mark.parametrize("trailing", [(5,), (3, 4)])
def test_sum_neighbors_forward_and_backward_match_a_dense_oracle(trailing):
    rng = np.random.default_rng(7)
    nsrc, ndst = 40, 12
    deg = rng.integers(0, 6, ndst)
    ptr = np.concatenate([[0], np.cumsum(deg)])
    idx = rng.integers(0, nsrc, int(ptr[-1]))
    block = make_block(nsrc, ndst, ptr, idx)
    adj = np.zeros((ndst, nsrc))
    for v in range(ndst):
        for u in idx[ptr[v]:ptr[v + 1]]:
            adj[v, u] += 1  # an edge sampled twice counts twice
    h = torch.randn((nsrc,) + trailing, dtype=torch.float64, requires_grad=True)
    out = block.sum_neighbors(h)
    want = torch.einsum("vu,u...->v...", torch.from_numpy(adj), h)
    assert torch.allclose(out, want)
    g = torch.randn_like(out)
    (out * g).sum().backward()
    assert torch.allclose(h.grad, torch.einsum("vu,v...->u...", torch.from_numpy(adj), g))


def test_cpu_dropout_keeps_the_expected_fraction_and_scales():
    from diskgraph.models import dropout

    torch.manual_seed(0)
    h = torch.ones(200, 500)
    out = dropout(h, 0.3, True)
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.01
    assert torch.allclose(out[kept], torch.full_like(out[kept], 1 / 0.7))
    assert dropout(h, 0.3, False) is h and dropout(h, 0.0, True) is h
