"""Builders for the packer tests: identity-feature datasets and handmade plans.

* :func:`identity_dataset` imports a graph whose feature row ``i`` holds ``i`` in
  every column (float32/float16 values, or bfloat16 bit patterns), so a wrong
  row is one comparison away.
* :func:`random_plan` writes a valid plan (one hop, distinct input nodes drawn
  with a skewed distribution, so some nodes are much hotter than others) with
  ``PlanSplitWriter``, standing in for the sampler.
* :func:`neighborhood_plan` writes a one-hop plan from a dataset's real CSC
  (seeds + their in-neighbors), for the shared datasets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diskgraph.store.atomic import AtomicDirectory
from diskgraph.store.binding import plan_binding
from diskgraph.store.importer import ImportOptions, import_dataset
from diskgraph.store.plan import PlanSplitWriter, SampledMinibatch, write_plan_manifest
from diskgraph.store.sources.edges import GeneratedEdges
from diskgraph.store.sources.features import GeneratedFeatures


def identity_rows(start: int, count: int, dim: int, dtype: str) -> np.ndarray:
    ids = np.arange(start, start + count)
    if dtype == "bfloat16":
        return np.repeat(ids.astype(np.uint16)[:, None], dim, axis=1)
    return np.repeat(ids.astype(dtype)[:, None], dim, axis=1)


def identity_dataset(out: Path, num_nodes: int, dim: int = 4, dtype: str = "float32", seed: int = 0,
                     avg_degree: int = 4, memory_budget: int = 64 << 20) -> Path:
    """Import a random graph with identity features (row i = i) into ``out``."""
    n_edges = num_nodes * avg_degree

    def edges(start: int, count: int):
        rng = np.random.default_rng([seed, start])
        return rng.integers(0, num_nodes, count), rng.integers(0, num_nodes, count)

    feats = GeneratedFeatures(num_nodes, dim, dtype, lambda s, c: identity_rows(s, c, dim, dtype), label="identity")
    labels = np.arange(num_nodes) % 3
    return import_dataset(out, GeneratedEdges(n_edges, edges), features=feats, labels=labels,
                          random_split=((0.5, 0.25, 0.25), seed),
                          options=ImportOptions(memory_budget=memory_budget, dedup=True))


def _dataset_info(ds, splits) -> dict:
    return {"path": str(ds.path), **plan_binding(ds, [s for s in splits if f"splits/{s}" in ds.array_records])}


def _write_plan(ds, out: Path, minibatches: dict[str, list[SampledMinibatch]], per_epoch: dict[str, int],
                epochs: dict[str, int], config: dict) -> Path:
    with AtomicDirectory(out) as tmp:
        writers = {}
        for split, mbs in minibatches.items():
            w = PlanSplitWriter(tmp / f"{split}.arrow", ds.num_nodes, 1)
            for mb in mbs:
                w.write(mb)
            w.close()
            writers[split] = w
        write_plan_manifest(tmp, writers, config, _dataset_info(ds, minibatches), 0.0, per_epoch, epochs)
    return out


def _one_hop(epoch: int, batch: int, inputs: np.ndarray, n_seeds: int, rng) -> SampledMinibatch:
    n_in = inputs.size
    deg = rng.integers(0, 3, n_seeds)
    indptr = np.zeros(n_seeds + 1, dtype=np.int32)
    np.cumsum(deg, out=indptr[1:])
    indices = rng.integers(0, n_in, int(indptr[-1])).astype(np.int32)
    return SampledMinibatch(epoch=epoch, batch=batch, input_nodes=inputs.astype(np.int64),
                            layer_sizes=np.array([n_seeds, n_in], dtype=np.int64), hop_indptr=[indptr],
                            hop_indices=[indices])


def random_plan(ds, out: Path, *, train_epochs: int = 2, per_epoch: dict[str, int] | None = None,
                inputs: tuple[int, int] = (1, 200), seed: int = 0, empty_first: bool = False) -> Path:
    """A plan with random minibatches: distinct input nodes drawn ∝ 1/(id+1) (a few very hot nodes)."""
    per_epoch = per_epoch or {"train": 5, "val": 3, "test": 2}
    rng = np.random.default_rng(seed)
    n = ds.num_nodes
    p = 1.0 / (np.arange(n) + 1.0)
    p /= p.sum()
    mbs: dict[str, list[SampledMinibatch]] = {}
    epochs = {}
    for split, k in per_epoch.items():
        e_count = train_epochs if split == "train" else 1
        epochs[split] = e_count
        mbs[split] = []
        for e in range(e_count):
            for b in range(k):
                size = int(rng.integers(inputs[0], min(inputs[1], n) + 1))
                nodes = rng.choice(n, size=size, replace=False, p=p)
                mbs[split].append(_one_hop(e, b, nodes, max(1, size // 4), rng))
    return _write_plan(ds, out, mbs, per_epoch, epochs, {"fanouts": [2], "batch_size": 0, "seed": seed,
                                                          "epochs": train_epochs, "handmade": True})


def neighborhood_plan(ds, out: Path, *, batch_size: int = 64, train_epochs: int = 2, seed: int = 0) -> Path:
    """A one-hop plan from the real CSC: each minibatch's inputs are its seeds plus all their in-neighbors."""
    rng = np.random.default_rng(seed)
    indptr, indices = np.asarray(ds.indptr), np.asarray(ds.indices)
    mbs: dict[str, list[SampledMinibatch]] = {}
    per_epoch, epochs = {}, {}
    for split in ("train", "val", "test"):
        nodes = np.asarray(ds.splits[split])
        e_count = train_epochs if split == "train" else 1
        mbs[split] = []
        for e in range(e_count):
            order = rng.permutation(nodes) if split == "train" else nodes
            for b, s in enumerate(range(0, order.size, batch_size)):
                seeds = order[s:s + batch_size]
                nbrs = np.concatenate([indices[indptr[v]:indptr[v + 1]] for v in seeds]).astype(np.int64)
                extra = np.setdiff1d(nbrs, seeds)
                inputs = np.concatenate([seeds, extra])
                local = {int(v): i for i, v in enumerate(inputs)}
                ptr = np.zeros(seeds.size + 1, dtype=np.int32)
                ptr[1:] = np.cumsum([indptr[v + 1] - indptr[v] for v in seeds])
                idx = np.array([local[int(u)] for u in nbrs], dtype=np.int32)
                mbs[split].append(SampledMinibatch(epoch=e, batch=b, input_nodes=inputs,
                                                   layer_sizes=np.array([seeds.size, inputs.size], np.int64),
                                                   hop_indptr=[ptr], hop_indices=[idx]))
        per_epoch[split] = -(-nodes.size // batch_size)
        epochs[split] = e_count
    return _write_plan(ds, out, mbs, per_epoch, epochs, {"fanouts": [-1], "batch_size": batch_size, "seed": seed,
                                                          "epochs": train_epochs, "handmade": True})


def all_features(ds) -> np.ndarray:
    """The whole feature table in memory (small test datasets only)."""
    return ds.features.read_rows(0, ds.num_nodes)


def assemble_oracle(pack, split: str, i: int, tiers_in_memory: dict[str, np.ndarray] | None = None,
                    direct: bool = True, out: np.ndarray | None = None) -> np.ndarray:
    """Minibatch ``i``'s input features ``[n_inputs, F]`` assembled the plain way, on the CPU with numpy: rows from
    the tiers by slot, from the extent by slot and — table rows, over the pack's ``--max-blowup`` budget — from the
    dataset's feature table (the dataset two levels above the pack; checked against the pack's table checksums), in
    the plan's input-node order (the oracle the loader's
    :class:`~diskgraph.pipeline.tiers.FeatureTier` s are checked against; equal, bit for bit, to
    ``features[input_nodes]``).

    Args:
        tiers_in_memory: ``{"gpu": rows, "host": rows}`` (default: ``pack.load_tiers()``).
    """
    from diskgraph.store.packed import COLD, GPU, HOST, TABLE

    e = pack.entry(split, i)
    tiers = tiers_in_memory if tiers_in_memory is not None else pack.load_tiers()
    if out is None:
        out = np.empty((e.num_inputs, pack.feature_dim), dtype=pack.storage_dtype)
    for name, code in (("gpu", GPU), ("host", HOST)):
        at = np.flatnonzero(e.tier == code)
        if at.size:
            out[at] = np.asarray(tiers[name])[e.slot[at]]
    at = np.flatnonzero(e.tier == COLD)
    if at.size:
        out[at] = pack.read_extent(split, i, direct=direct, entry=e)[e.slot[at]]
    at = np.flatnonzero(e.tier == TABLE)
    if at.size or e.n_table:  # rows over the --max-blowup budget: from the dataset's feature table, checked
        from diskgraph.store.dataset import open_dataset
        from diskgraph.store.packed import table_rows

        raw = table_rows(open_dataset(pack.path.parent.parent).features, e.table_nodes)
        pack.check_table_rows(split, i, e, raw)
        out[at] = raw.view(pack.storage_dtype).reshape(e.n_table, pack.feature_dim)[e.slot[at]]
    return out


def check_all_minibatches(pack, plan, feats: np.ndarray) -> int:
    """assemble == features[input_nodes], bit for bit, for every minibatch of every split; returns the count."""
    tiers = pack.load_tiers()
    checked = 0
    for split in pack.splits:
        assert pack.num_minibatches(split) == plan.num_minibatches(split)
        for i in range(pack.num_minibatches(split)):
            nodes = plan.input_nodes(split, i)
            got = assemble_oracle(pack, split, i, tiers)
            want = feats[nodes]
            assert got.dtype == want.dtype and got.shape == want.shape
            assert np.array_equal(got.view(np.uint8), want.view(np.uint8)), f"{split} minibatch {i}"
            checked += 1
    return checked
