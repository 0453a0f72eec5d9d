"""Shared pieces of the pipeline tests: identity-feature packs, the every-minibatch check, thread census.

The datasets come from ``tests/store/packing_helpers.identity_dataset`` (feature
row ``i`` holds ``i`` in every column), sampled and packed with the real
``preprocess`` code paths, so a wrong row, a shifted slot or a stale buffer is
one comparison away.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "store"))
from packing_helpers import identity_dataset  # noqa: E402

from diskgraph.pipeline.blocks import Batch, Block, blocks_from_minibatch
from diskgraph.preprocess import run_pack, run_sample
from diskgraph.store.dataset import open_dataset

FANOUTS = [4, 3]
BATCH_SIZE = 128
PLAN_SEED = 1
PLAN_EPOCHS = 2


def build_identity(root: Path, dtype: str = "float32", num_nodes: int = 3000, dim: int = 8,
                   caches: dict[str, tuple] | None = None) -> Path:
    """An identity dataset with plan ``default`` and one pack per ``caches`` entry: ``(gpu, host)`` fractions of N
    rows, and optionally a third entry, the pack's ``--max-blowup`` (default: unbounded)."""
    ds_dir = identity_dataset(root / f"ident-{dtype}", num_nodes, dim=dim, dtype=dtype, avg_degree=5)
    run_sample(ds_dir, fanouts=FANOUTS, batch_size=BATCH_SIZE, seed=PLAN_SEED, epochs=PLAN_EPOCHS)
    ds = open_dataset(ds_dir)
    row = ds.features.row_bytes
    for name, (gpu, host, *bound) in (caches or {"some": (0.05, 0.1)}).items():
        run_pack(ds_dir, name=name, gpu_cache=int(gpu * num_nodes) * row, host_cache=int(host * num_nodes) * row,
                 memory_budget=32 << 20, max_blowup=bound[0] if bound else None)
    return ds_dir


CACHES = {"none": (0.0, 0.0), "some": (0.05, 0.1), "host-only": (0.0, 0.25), "everything": (0.5, 1.0),
          "bounded": (0.0, 0.05, 0.5), "table-only": (0.0, 0.0, 0.0)}
"""GPU and host cache sizes as fractions of the node count (nothing cached … everything cached), and two packs
bounded by ``--max-blowup``: 0.5 (part of the cold rows packed, the rest read from the feature table) and 0 (no
extent: every row from the feature table)."""


def features_as_float32(ds) -> np.ndarray:
    """The whole feature table as float32 (bfloat16 bit patterns widened exactly)."""
    rows = ds.features.read_rows(0, ds.num_nodes)
    if ds.feature_dtype == "bfloat16":
        return (rows.astype(np.uint32) << 16).view(np.float32)
    return rows.astype(np.float32)


def assert_blocks_equal(got: list[Block], want: list[Block]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert (g.num_src, g.num_dst) == (w.num_src, w.num_dst)
        for name in ("indptr", "indices", "dst_index", "in_degree"):
            a, b = getattr(g, name).cpu(), getattr(w, name)
            assert a.dtype == b.dtype and torch.equal(a, b), name


def check_batch(batch: Batch, plan, split: str, feats32: np.ndarray, labels: np.ndarray) -> None:
    """x == features[input_nodes] bit for bit (float32), y == labels[seeds], blocks == the plan row's blocks."""
    mb = plan.minibatch(split, batch.index)
    nodes = mb.input_nodes
    assert np.array_equal(batch.input_nodes, nodes)
    assert batch.x.dtype == torch.float32 and tuple(batch.x.shape) == (nodes.shape[0], feats32.shape[1])
    x = batch.x.cpu().numpy()
    assert np.array_equal(x.view(np.uint32), feats32[nodes].view(np.uint32)), f"{split} minibatch {batch.index}"
    assert batch.y.dtype == torch.int64
    assert np.array_equal(batch.y.cpu().numpy(), labels[mb.seeds])
    assert_blocks_equal(batch.blocks, blocks_from_minibatch(mb))


def loader_threads() -> list[threading.Thread]:
    """Live threads the pipeline started."""
    return [t for t in threading.enumerate() if t.name.startswith("diskgraph-")]
