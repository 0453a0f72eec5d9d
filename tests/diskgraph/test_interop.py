"""diskgraph.from_pyg and diskgraph.from_ogb: a PyG Data or an OGB directory → the same dataset as the import."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

import diskgraph
from diskgraph import InputError, open_dataset

torch = pytest.importorskip("torch")
pyg_data = pytest.importorskip("torch_geometric.data")
Data = pyg_data.Data

N, E, F, C = 200, 1500, 6, 4


def _graph(seed: int = 0):
    rng = np.random.default_rng(seed)
    src = rng.integers(0, N, E)
    dst = rng.integers(0, N, E)
    x = rng.standard_normal((N, F)).astype(np.float32)
    y = rng.integers(0, C, N)
    y[rng.random(N) < 0.1] = -1
    perm = rng.permutation(N)
    splits = {"train": np.sort(perm[:100]), "val": np.sort(perm[100:140]), "test": np.sort(perm[140:200])}
    return src, dst, x, y, splits


def _check(ds_path, csc_oracle, src, dst, x, y, splits, *, undirected=False):
    ds = open_dataset(ds_path)
    indptr, indices = csc_oracle(src, dst, N, undirected=undirected)
    np.testing.assert_array_equal(ds.indptr, indptr)
    np.testing.assert_array_equal(ds.indices, indices)
    if x is not None:
        np.testing.assert_array_equal(ds.features.read_rows(0, N), x)
    np.testing.assert_array_equal(ds.labels, y)
    assert set(ds.splits) == set(splits)
    for name, idx in splits.items():
        np.testing.assert_array_equal(ds.splits[name], idx)
    assert ds.verify() == []


def test_from_pyg_masks_and_indices(tmp_path, csc_oracle):
    src, dst, x, y, splits = _graph()
    mask = {k: torch.zeros(N, dtype=torch.bool) for k in splits}
    for k, idx in splits.items():
        mask[k][torch.from_numpy(idx)] = True
    data = Data(x=torch.from_numpy(x), edge_index=torch.from_numpy(np.stack([src, dst])), y=torch.from_numpy(y),
                train_mask=mask["train"], val_mask=mask["val"], test_idx=torch.from_numpy(splits["test"][::-1].copy()))
    out = diskgraph.from_pyg(data, tmp_path / "ds")
    assert out == tmp_path / "ds"
    _check(out, csc_oracle, src, dst, x, y, splits)
    # undirected, y as [N, 1], float64 x narrowed to float32
    data2 = Data(x=torch.from_numpy(x.astype(np.float64)), edge_index=torch.from_numpy(np.stack([src, dst])),
                 y=torch.from_numpy(y).view(-1, 1), train_mask=mask["train"], val_mask=mask["val"],
                 test_mask=mask["test"])
    _check(diskgraph.from_pyg(data2, tmp_path / "u", undirected=True), csc_oracle, src, dst, x, y, splits,
           undirected=True)


def test_from_pyg_without_x_uses_num_nodes(tmp_path, csc_oracle):
    src, dst, _x, _y, _ = _graph(1)
    data = Data(edge_index=torch.from_numpy(np.stack([src, dst]) % 50), num_nodes=N)
    ds = open_dataset(diskgraph.from_pyg(data, tmp_path / "ds"))
    assert ds.num_nodes == N and ds.features is None and ds.labels is None
    indptr, indices = csc_oracle(src % 50, dst % 50, N)
    np.testing.assert_array_equal(ds.indptr, indptr)
    np.testing.assert_array_equal(ds.indices, indices)


def _one_sentence(msg: str) -> None:
    assert "\n" not in msg and ". " not in msg.replace("e.g. ", ""), msg


@pytest.mark.parametrize("make, needle", [
    (lambda t: {"edge_index": t}, "got a dict"),
    (lambda t: Data(x=torch.zeros(N, 2)), "no edge_index"),
    (lambda t: Data(edge_index=t.t().contiguous()), "[2, E]"),
    (lambda t: Data(edge_index=t.float()), "dtype"),
    (lambda t: Data(edge_index=t, x=torch.zeros(N - 1, 2)), "rows of data.x"),
    (lambda t: Data(edge_index=t, x=torch.zeros(N, 2), y=torch.zeros(N + 3, dtype=torch.long)), "data.y"),
    (lambda t: Data(edge_index=t, num_nodes=10), "data.edge_index"),
    (lambda t: Data(edge_index=t - 1, num_nodes=N), "negative"),
    (lambda t: Data(edge_index=t, x=torch.zeros(N, 2), y=torch.zeros(N, dtype=torch.long),
                    train_mask=torch.ones(N + 1, dtype=torch.bool)), "data.train_mask"),
])
def test_from_pyg_refusals(tmp_path, no_leftovers, make, needle):
    t = torch.from_numpy(np.stack([np.arange(N), np.arange(N)[::-1].copy()]))
    out = tmp_path / "ds"
    with pytest.raises(InputError) as e:
        diskgraph.from_pyg(make(t), out)
    msg = str(e.value)
    _one_sentence(msg)
    assert needle in msg, msg
    assert no_leftovers(out) == []


def _write_gz(path, rows: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:
        f.write("".join(r + "\n" for r in rows))


def _ogb_dir(root, src, dst, x, y, splits, schemes=("random",)):
    raw = root / "raw"
    _write_gz(raw / "edge.csv.gz", [f"{a},{b}" for a, b in zip(src, dst)])
    _write_gz(raw / "node-feat.csv.gz", [",".join(repr(float(v)) for v in row) for row in x])
    _write_gz(raw / "node-label.csv.gz", ["nan" if v < 0 else str(v) for v in y])
    _write_gz(raw / "num-node-list.csv.gz", [str(N)])
    _write_gz(raw / "num-edge-list.csv.gz", [str(len(src))])
    for scheme in schemes:
        for ogb_name, name in (("train", "train"), ("valid", "val"), ("test", "test")):
            _write_gz(root / "split" / scheme / f"{ogb_name}.csv.gz", [str(i) for i in splits[name]])
    return root


def test_from_ogb(tmp_path, csc_oracle):
    src, dst, x, y, splits = _graph(2)
    root = _ogb_dir(tmp_path / "ogbn_toy", src, dst, x, y, splits)
    out = diskgraph.from_ogb(root, tmp_path / "ds", memory_budget=64 << 20)
    _check(out, csc_oracle, src, dst, x, y, splits)
    # raw/ itself is accepted, and a small budget streams the features in many slices
    _check(diskgraph.from_ogb(root / "raw", tmp_path / "ds2"), csc_oracle, src, dst, x, y, splits)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sources"]["from"] == "ogb"


def test_from_ogb_streams_in_blocks(tmp_path, csc_oracle, monkeypatch):
    from diskgraph.store.sources import ogb

    src, dst, x, y, splits = _graph(6)
    root = _ogb_dir(tmp_path / "ogbn_toy", src, dst, x, y, splits)
    monkeypatch.setattr(ogb, "_BLOCK", 2048)  # many CSV blocks per file
    inputs, num_nodes = ogb.open_ogb(root)
    assert num_nodes == N
    got = list(inputs.features.slices(7))
    assert len(got) > N // 7 and all(len(r) <= 7 for _, r in got)
    np.testing.assert_array_equal(np.concatenate([r for _, r in got]), x)
    _check(diskgraph.from_ogb(root, tmp_path / "ds"), csc_oracle, src, dst, x, y, splits)


def test_from_ogb_undirected_by_name_and_split_choice(tmp_path, csc_oracle):
    src, dst, x, y, splits = _graph(3)
    root = _ogb_dir(tmp_path / "ogbn_products", src, dst, x, y, splits, schemes=("sales_ranking", "other"))
    with pytest.raises(InputError) as e:
        diskgraph.from_ogb(root, tmp_path / "ds")
    _one_sentence(str(e.value))
    assert "sales_ranking" in str(e.value) and not (tmp_path / "ds").exists()
    out = diskgraph.from_ogb(root, tmp_path / "ds", split="sales_ranking")
    _check(out, csc_oracle, src, dst, x, y, splits, undirected=True)  # ogbn-products adds inverse edges
    _check(diskgraph.from_ogb(root, tmp_path / "d2", split="other", undirected=False), csc_oracle, src, dst, x, y,
           splits)


def test_from_ogb_binary_layout(tmp_path, csc_oracle):
    src, dst, x, y, splits = _graph(4)
    raw = tmp_path / "ogbn_big" / "raw"
    raw.mkdir(parents=True)
    np.savez_compressed(raw / "data.npz", edge_index=np.stack([src, dst]), node_feat=x, num_nodes_list=np.array([N]),
                        num_edges_list=np.array([E]))
    np.savez_compressed(raw / "node-label.npz", node_label=np.where(y < 0, np.nan, y).astype(np.float64)[:, None])
    for ogb_name, name in (("train", "train"), ("valid", "val"), ("test", "test")):
        _write_gz(tmp_path / "ogbn_big" / "split" / "time" / f"{ogb_name}.csv.gz", [str(i) for i in splits[name]])
    _check(diskgraph.from_ogb(tmp_path / "ogbn_big", tmp_path / "ds"), csc_oracle, src, dst, x, y, splits)


@pytest.mark.parametrize("breakage, needle", [
    ("missing", "does not exist"),
    ("no-edges", "edge.csv.gz"),
    ("bad-label", "NaN in some but not all targets of node 0"),
    ("short-feat", "rows"),
    ("bad-split", "outside"),
])
def test_from_ogb_refusals(tmp_path, no_leftovers, breakage, needle):
    src, dst, x, y, splits = _graph(5)
    root = _ogb_dir(tmp_path / "ogbn_toy", src, dst, x, y, splits)
    if breakage == "missing":
        root = tmp_path / "nowhere"
    elif breakage == "no-edges":
        (root / "raw" / "edge.csv.gz").unlink()
    elif breakage == "bad-label":
        _write_gz(root / "raw" / "node-label.csv.gz", ["1.5,"] + ["1.5,2"] * (N - 1))  # regression, a row half NaN
    elif breakage == "short-feat":
        _write_gz(root / "raw" / "node-feat.csv.gz", [",".join("0.5" for _ in range(F))] * (N - 3))
    elif breakage == "bad-split":
        _write_gz(root / "split" / "random" / "test.csv.gz", [str(N + 5)])
    out = tmp_path / "ds"
    with pytest.raises(InputError) as e:
        diskgraph.from_ogb(root, out)
    _one_sentence(str(e.value))
    assert needle in str(e.value), str(e.value)
    assert no_leftovers(out) == []


def test_cora_round_trip_equals_cli_import(tmp_path, cli, shared_dataset):
    path = shared_dataset("cora")
    z = np.load(path)
    data = Data(x=torch.from_numpy(z["features"]), edge_index=torch.from_numpy(z["edges"]),
                y=torch.from_numpy(z["labels"]), train_mask=torch.from_numpy(z["train_idx"]),
                val_idx=torch.from_numpy(z["val_idx"]), test_idx=torch.from_numpy(z["test_idx"]))
    a = open_dataset(diskgraph.from_pyg(data, tmp_path / "pyg"))
    assert cli.run("preprocess", "import", "--npz", path, "--out", tmp_path / "cli", "-q").rc == 0
    b = open_dataset(tmp_path / "cli")
    assert a.array_names == b.array_names
    for name in a.array_names:
        ra, rb = a.array(name), b.array(name)
        if name == "features":
            np.testing.assert_array_equal(ra.read_rows(0, a.num_nodes), rb.read_rows(0, b.num_nodes))
        else:
            np.testing.assert_array_equal(ra.memmap(), rb.memmap())
    ma, mb = (json.loads((p / "manifest.json").read_text()) for p in (tmp_path / "pyg", tmp_path / "cli"))
    for key in ("num_nodes", "num_edges", "num_classes", "index_dtype", "features", "splits"):
        assert ma[key] == mb[key], key
    assert {k: v["sha256"] for k, v in ma["arrays"].items()} == {k: v["sha256"] for k, v in mb["arrays"].items()}


def test_cli_import_ogb_equals_from_ogb(tmp_path, cli, csc_oracle, refused):
    src, dst, x, y, splits = _graph(7)
    root = _ogb_dir(tmp_path / "ogbn_products", src, dst, x, y, splits)
    r = cli.run("preprocess", "import", "--ogb", root, "--out", tmp_path / "cli", "-q")
    assert r.rc == 0, r.err
    _check(tmp_path / "cli", csc_oracle, src, dst, x, y, splits, undirected=True)
    a, b = open_dataset(diskgraph.from_ogb(root, tmp_path / "api")), open_dataset(tmp_path / "cli")
    assert {k: v["sha256"] for k, v in a.manifest["arrays"].items()} == {k: v["sha256"] for k, v in b.manifest["arrays"].items()}
    refused(cli.run("preprocess", "import", "--ogb", root, "--npz", tmp_path / "x.npz", "--out", tmp_path / "o"),
            "--ogb", out=tmp_path / "o")
