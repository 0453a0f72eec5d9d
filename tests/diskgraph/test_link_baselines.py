"""Structure-only link scores (diskgraph.link_baselines): common neighbours and Adamic–Adar against a plain Python
set oracle, and their ranking of a link plan's test positives against its fixed negatives."""

from __future__ import annotations

import math

import numpy as np
import pytest

from diskgraph.link_baselines import neighbour_lists, pair_scores, plan_baselines
from diskgraph.store.errors import InputError


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pair_scores_equal_a_set_oracle(seed):
    rng = np.random.default_rng(seed)
    n, e = 40, 160
    src, dst = rng.integers(0, n, e), rng.integers(0, n, e)  # directed, repeats and self loops included
    order = np.lexsort((src, dst))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(dst, minlength=n))])
    ptr, nbr = neighbour_lists(indptr, src[order], n)
    nb = [set() for _ in range(n)]
    for a, b in zip(src.tolist(), dst.tolist()):
        if a != b:
            nb[a].add(b)
            nb[b].add(a)
    for v in range(n):
        assert nbr[ptr[v]:ptr[v + 1]].tolist() == sorted(nb[v])
    u, w = rng.integers(0, n, 300), rng.integers(0, n, 300)
    cn = pair_scores(ptr, nbr, u, w, "common_neighbours")
    aa = pair_scores(ptr, nbr, u, w, "adamic_adar")
    for i, (a, b) in enumerate(zip(u.tolist(), w.tolist())):
        common = nb[a] & nb[b]
        assert cn[i] == len(common)
        assert aa[i] == pytest.approx(sum(1 / math.log(len(nb[z])) for z in common), rel=1e-12)
    with pytest.raises(ValueError, match="unknown structure score"):
        pair_scores(ptr, nbr, u, w, "jaccard")


def test_plan_baselines_rank_the_plans_test_positives(tmp_path, shared_dataset):
    from diskgraph.cli import main

    out = tmp_path / "cora"
    assert main(["preprocess", "all", "--npz", str(shared_dataset("cora")), "--out", str(out), "--task", "link",
                 "--undirected", "--edge-split", "random:0.85,0.05,0.1", "--fanouts", "3", "--batch-size", "512",
                 "--eval-negatives", "20", "-q"]) == 0
    b = plan_baselines(out)
    for name in ("common_neighbours", "adamic_adar"):
        r = b[name]
        assert 0 < r["hits@1"] <= r["hits@10"] <= r["hits@50"] <= 1 and r["hits@1"] <= r["mrr"] <= 1
    # a random scorer's MRR against 20 negatives is about H(21) / 21 ≈ 0.17; structure ranks better on cora
    assert b["adamic_adar"]["mrr"] > 0.2
    assert plan_baselines(out, split="val")["common_neighbours"]["mrr"] > 0.2
    assert main(["preprocess", "sample", str(out), "--name", "node", "--fanouts", "3", "--batch-size", "512",
                 "-q"]) == 0
    with pytest.raises(InputError, match="was sampled for --task node"):
        plan_baselines(out, plan="node")
