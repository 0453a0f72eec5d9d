"""Link prediction's losses, ranking metrics and pair decoders (diskgraph.pipeline.link_task, diskgraph.link_models),
against brute-force float64 oracles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from diskgraph.link_models import LinkModel, PairDecoder
from diskgraph.pipeline.blocks import Batch, make_block
from diskgraph.pipeline.link_task import HitsAt, LinkTask, MRR, ranks
from diskgraph.store.errors import InputError


def _oracle_rank(pos: float, negs: list[float]) -> float:
    optimistic = 1 + sum(n > pos for n in negs)
    pessimistic = 1 + sum(n >= pos for n in negs)
    return (optimistic + pessimistic) / 2


@settings(max_examples=40, deadline=None)
@given(p=st.integers(1, 20), k=st.integers(1, 8), seed=st.integers(0, 1000), data=st.data())
def test_ranks_mrr_and_hits_equal_the_oracle_over_any_minibatch_cut(p, k, seed, data):
    rng = np.random.default_rng(seed)
    scores = torch.from_numpy(rng.integers(-3, 4, size=(p, 1 + k)).astype(np.float32))  # integers: ties happen
    want = [_oracle_rank(float(r[0]), [float(v) for v in r[1:]]) for r in scores]
    assert ranks(scores).tolist() == want
    cut = data.draw(st.integers(0, p))
    for metric, oracle in ((MRR(), np.mean([1 / r for r in want])),
                           *((HitsAt(h), np.mean([r <= h for r in want])) for h in (1, 10, 50))):
        total: dict = {}
        for part in (scores[:cut], scores[cut:]):
            for name, v in metric.sums(part, None).items():
                total[name] = total.get(name, 0.0) + float(v)
        assert metric.value(total) == pytest.approx(oracle)


def test_losses():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(6, 4, generator=g)
    pos, neg = scores[:, 0], scores[:, 1:]
    bce = LinkTask(8, "bce").loss(scores, None)
    want = F.binary_cross_entropy_with_logits(pos, torch.ones(6)) + F.binary_cross_entropy_with_logits(neg, torch.zeros(6, 3))
    assert torch.allclose(bce, want)
    soft = LinkTask(8, "softmax").loss(scores, None)
    assert torch.allclose(soft, -torch.log_softmax(scores, 1)[:, 0].mean())
    margin = LinkTask(8, "margin").loss(scores, None)
    assert torch.allclose(margin, torch.clamp(1 - pos[:, None] + neg, min=0).mean())
    task = LinkTask(8)
    assert [m.name for m in task.metrics] == ["mrr", "hits@1", "hits@10", "hits@50"] and task.main.name == "mrr"
    with pytest.raises(InputError, match="--link-loss 'hinge' is not one of"):
        LinkTask(8, "hinge")


class _Seeds(torch.nn.Module):
    """An encoder that returns fixed embeddings of the seeds (blocks input)."""

    diskgraph_input = "blocks"

    def __init__(self, emb):
        super().__init__()
        self.emb = torch.nn.Parameter(emb)

    def forward(self, blocks, x):
        return self.emb[: blocks[-1].num_dst]


def test_link_model_scores_every_pair_with_each_decoder():
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(5, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([[0, 1, 2, 3], [4, 2, 0, 1]])  # (src, dst, two negatives) as positions in the seeds
    block = make_block(5, 5, np.arange(6, dtype=np.int64), np.arange(5, dtype=np.int64))
    batch = Batch(split="train", position=0, index=0, blocks=[block], x=torch.zeros(5, 1), y=y,
                  input_nodes=np.arange(5), stats={})
    for kind in ("dot", "distmult", "mlp"):
        model = LinkModel(_Seeds(emb.clone()), kind, 4).double()
        scores = model(batch)
        assert scores.shape == (2, 3)
        dec = model.decoder
        for i, row in enumerate(y.tolist()):
            for j, v in enumerate(row[1:]):
                assert torch.allclose(scores[i, j], dec(emb[row[0]], emb[v]))
        if kind == "dot":
            assert torch.allclose(scores[0, 0], emb[0] @ emb[1])
    with pytest.raises(InputError, match="--decoder 'cosine' is not one of"):
        PairDecoder("cosine", 4)
