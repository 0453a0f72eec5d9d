"""Every input format of `diskgraph preprocess import`, compared with the in-memory inputs."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import zarr

from diskgraph.store.dataset import open_dataset
from diskgraph.store.features_copy import float32_to_bfloat16

N, E, F, C = 60, 400, 8, 4


@pytest.fixture(scope="module")
def graph():
    rng = np.random.default_rng(42)
    src = rng.integers(0, N, E)
    dst = rng.integers(0, N, E)
    src[:5] = dst[:5]  # some self-loops
    src[5:10], dst[5:10] = src[10:15], dst[10:15]  # some repeated edges
    features = rng.standard_normal((N, F)).astype(np.float32)
    labels = rng.integers(0, C, N)
    labels[::7] = -1
    return {"src": src, "dst": dst, "features": features, "labels": labels}


def imported(cli, out, *args):
    r = cli.run("preprocess", "import", "--out", out, "-q", *args)
    assert r.rc == 0, r.err
    return open_dataset(out)


def assert_topology(ds, g, csc_oracle, n=N, **opts):
    indptr, indices = csc_oracle(g["src"], g["dst"], n, **opts)
    assert ds.num_nodes == n and ds.num_edges == indices.size
    np.testing.assert_array_equal(ds.indptr, indptr)
    np.testing.assert_array_equal(ds.indices, indices)


def features_of(ds):
    return ds.features.read_rows(0, ds.num_nodes)


# -- edges -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["[2,E]", "[E,2]", "[E,2] fortran"])
@pytest.mark.parametrize("dtype", ["int32", "int64", "uint32"])
def test_npy_edges(cli, tmp_path, graph, csc_oracle, layout, dtype):
    e = np.stack([graph["src"], graph["dst"]]).astype(dtype)
    if layout != "[2,E]":
        e = e.T.copy() if layout == "[E,2]" else np.asfortranarray(e.T)
    np.save(tmp_path / "e.npy", e)
    ds = imported(cli, tmp_path / "ds", "--edges", tmp_path / "e.npy", "--num-nodes", N)
    assert_topology(ds, graph, csc_oracle)
    assert ds.manifest["sources"]["edges"]["layout"] == layout.split()[0]
    assert ds.indices.dtype == np.int32


def test_node_count_defaults_to_largest_id(cli, tmp_path, graph, csc_oracle):
    np.save(tmp_path / "e.npy", np.stack([graph["src"], graph["dst"]]))
    ds = imported(cli, tmp_path / "ds", "--edges", tmp_path / "e.npy")
    n = int(max(graph["src"].max(), graph["dst"].max())) + 1
    assert_topology(ds, graph, csc_oracle, n=n)
    assert ds.feature_dim == 0 and ds.features is None and ds.labels is None and ds.splits == {}


def _table(g, names=("source", "target"), dtype=pa.int64()):
    return pa.table({names[0]: pa.array(g["src"], dtype), names[1]: pa.array(g["dst"], dtype)})


@pytest.mark.parametrize("dtype", [pa.int32(), pa.int64()])
def test_parquet_edges(cli, tmp_path, graph, csc_oracle, dtype):
    pq.write_table(_table(graph, dtype=dtype), tmp_path / "e.parquet", row_group_size=77)
    ds = imported(cli, tmp_path / "ds", "--edges", tmp_path / "e.parquet", "--num-nodes", N)
    assert_topology(ds, graph, csc_oracle)


def test_parquet_edges_custom_columns(cli, tmp_path, graph, csc_oracle):
    t = _table(graph, ("u", "v")).append_column("weight", pa.array(np.ones(E)))
    pq.write_table(t, tmp_path / "e.pq")
    ds = imported(cli, tmp_path / "ds", "--edges", tmp_path / "e.pq", "--src-column", "u", "--dst-column", "v",
                  "--num-nodes", N)
    assert_topology(ds, graph, csc_oracle)


def test_csv_edges_named_columns(cli, tmp_path, graph, csc_oracle):
    pacsv.write_csv(_table(graph), tmp_path / "e.csv")
    ds = imported(cli, tmp_path / "ds", "--edges", tmp_path / "e.csv", "--num-nodes", N)
    assert_topology(ds, graph, csc_oracle)
    # columns in another order, custom names, extra columns
    lines = ["weight,to,from"] + [f"1.5,{d},{s}" for s, d in zip(graph["src"], graph["dst"])]
    (tmp_path / "e2.csv").write_text("\n".join(lines) + "\n")
    ds = imported(cli, tmp_path / "ds2", "--edges", tmp_path / "e2.csv", "--src-column", "from", "--dst-column", "to",
                  "--num-nodes", N)
    assert_topology(ds, graph, csc_oracle)


def test_csv_edges_headerless_positional(cli, tmp_path, graph, csc_oracle):
    lines = [f"{s},{d}" for s, d in zip(graph["src"], graph["dst"])]
    (tmp_path / "e.csv").write_text("\n".join(lines) + "\n")
    ds = imported(cli, tmp_path / "ds", "--edges", tmp_path / "e.csv", "--src-column", "0", "--dst-column", "1",
                  "--num-nodes", N)
    assert_topology(ds, graph, csc_oracle)
    # reversed positions read the reverse graph
    ds = imported(cli, tmp_path / "rev", "--edges", tmp_path / "e.csv", "--src-column", "1", "--dst-column", "0",
                  "--num-nodes", N)
    assert_topology(ds, {"src": graph["dst"], "dst": graph["src"]}, csc_oracle)
    lines = [f"{s}\t{d}" for s, d in zip(graph["src"], graph["dst"])]
    (tmp_path / "e.tsv").write_text("\n".join(lines) + "\n")
    ds = imported(cli, tmp_path / "tsv", "--edges", tmp_path / "e.tsv", "--src-column", "0", "--dst-column", "1",
                  "--num-nodes", N)
    assert_topology(ds, graph, csc_oracle)


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_directory_of_part_files(cli, tmp_path, graph, csc_oracle, fmt):
    parts = tmp_path / "edges"
    parts.mkdir()
    t = _table(graph)
    bounds = [0, 50, 51, 230, E]
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        name = parts / f"part-{i:03d}.{fmt}"
        (pq.write_table if fmt == "parquet" else pacsv.write_csv)(t.slice(a, b - a), name)
    (parts / "_SUCCESS").write_text("")  # not a part file: ignored
    ds = imported(cli, tmp_path / "ds", "--edges", parts, "--num-nodes", N)
    assert_topology(ds, graph, csc_oracle)
    assert ds.manifest["sources"]["edges"]["files"] == 4


def test_edge_options(cli, tmp_path, graph, csc_oracle):
    np.save(tmp_path / "e.npy", np.stack([graph["src"], graph["dst"]]))
    for i, opts in enumerate([{"undirected": True}, {"dedup": True}, {"drop_self_loops": True},
                              {"undirected": True, "dedup": True, "drop_self_loops": True}]):
        flags = [f"--{k.replace('_', '-')}" for k in opts]
        ds = imported(cli, tmp_path / f"ds{i}", "--edges", tmp_path / "e.npy", "--num-nodes", N, *flags)
        assert_topology(ds, graph, csc_oracle, **opts)
        for k in ("undirected", "dedup", "drop_self_loops"):
            assert ds.manifest["options"][k] == opts.get(k, False)
        assert ds.verify() == []


# -- features ----------------------------------------------------------------------------------------

@pytest.fixture
def edges_npy(tmp_path, graph):
    p = tmp_path / "e.npy"
    np.save(p, np.stack([graph["src"], graph["dst"]]))
    return p


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_npy_features(cli, tmp_path, graph, edges_npy, dtype):
    x = graph["features"].astype(dtype)
    np.save(tmp_path / "x.npy", x)
    ds = imported(cli, tmp_path / "ds", "--edges", edges_npy, "--features", tmp_path / "x.npy")
    assert ds.feature_dim == F and ds.feature_dtype == dtype and ds.num_nodes == N
    got = features_of(ds)
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, x)
    assert ds.manifest["features"]["bytes"] == x.nbytes


def test_float64_features_are_stored_as_float32(cli, tmp_path, graph, edges_npy):
    x = np.random.default_rng(1).standard_normal((N, F))
    np.save(tmp_path / "x.npy", x)
    ds = imported(cli, tmp_path / "ds", "--edges", edges_npy, "--features", tmp_path / "x.npy")
    assert ds.feature_dtype == "float32"
    np.testing.assert_array_equal(features_of(ds), x.astype(np.float32))


@pytest.mark.parametrize("target", ["float16", "bfloat16", "float32"])
def test_feature_dtype_conversion(cli, tmp_path, graph, edges_npy, target):
    np.save(tmp_path / "x.npy", graph["features"])
    ds = imported(cli, tmp_path / "ds", "--edges", edges_npy, "--features", tmp_path / "x.npy",
                  "--feature-dtype", target)
    want = float32_to_bfloat16(graph["features"]) if target == "bfloat16" else graph["features"].astype(target)
    assert ds.feature_dtype == target
    np.testing.assert_array_equal(features_of(ds), want)


def test_integer_features_need_a_feature_dtype(cli, tmp_path, graph, edges_npy, refused):
    np.save(tmp_path / "x.npy", np.arange(N * F, dtype=np.int32).reshape(N, F))
    r = cli.run("preprocess", "import", "--edges", edges_npy, "--features", tmp_path / "x.npy", "--out", tmp_path / "ds")
    refused(r, str(tmp_path / "x.npy"), "int32", "--feature-dtype", out=tmp_path / "ds")
    ds = imported(cli, tmp_path / "ds", "--edges", edges_npy, "--features", tmp_path / "x.npy", "--feature-dtype",
                  "float32")
    np.testing.assert_array_equal(features_of(ds), np.arange(N * F, dtype=np.float32).reshape(N, F))


@pytest.mark.parametrize("compressor", [None, "zstd", "blosc"])
def test_zarr_features(cli, tmp_path, graph, edges_npy, compressor):
    codecs = {None: None, "zstd": zarr.codecs.ZstdCodec(level=3), "blosc": zarr.codecs.BloscCodec()}[compressor]
    z = zarr.create_array(str(tmp_path / "x.zarr"), shape=(N, F), chunks=(7, 3), dtype="float32",
                          compressors=codecs)
    z[:] = graph["features"]
    ds = imported(cli, tmp_path / "ds", "--edges", edges_npy, "--features", tmp_path / "x.zarr")
    np.testing.assert_array_equal(features_of(ds), graph["features"])
    assert ds.manifest["sources"]["features"]["kind"] == "zarr"


def test_zarr_v2_features(cli, tmp_path, graph, edges_npy):
    z = zarr.create_array(str(tmp_path / "x2"), shape=(N, F), chunks=(16, F), dtype="float16", zarr_format=2)
    z[:] = graph["features"].astype(np.float16)
    ds = imported(cli, tmp_path / "ds", "--edges", edges_npy, "--features", tmp_path / "x2")
    np.testing.assert_array_equal(features_of(ds), graph["features"].astype(np.float16))


def test_parquet_features_fixed_size_list(cli, tmp_path, graph, edges_npy):
    x = graph["features"]
    col = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), F)
    pq.write_table(pa.table({"x": col}), tmp_path / "x.parquet", row_group_size=13)
    ds = imported(cli, tmp_path / "ds", "--edges", edges_npy, "--features", tmp_path / "x.parquet")
    np.testing.assert_array_equal(features_of(ds), x)
    # with an id column beside it, the list column is named
    t = pa.table({"node": pa.array(np.arange(N)), "emb": col})
    pq.write_table(t, tmp_path / "x2.parquet")
    ds = imported(cli, tmp_path / "ds2", "--edges", edges_npy, "--features", tmp_path / "x2.parquet",
                  "--feature-column", "emb")
    np.testing.assert_array_equal(features_of(ds), x)


def test_parquet_features_one_column_per_dimension(cli, tmp_path, graph, edges_npy):
    x = graph["features"]
    t = pa.table({f"f{j}": pa.array(x[:, j]) for j in range(F)})
    pq.write_table(t, tmp_path / "x.parquet", row_group_size=25)
    ds = imported(cli, tmp_path / "ds", "--edges", edges_npy, "--features", tmp_path / "x.parquet")
    assert ds.feature_dim == F
    np.testing.assert_array_equal(features_of(ds), x)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_raw_binary_features(cli, tmp_path, graph, edges_npy, dtype):
    x = graph["features"]
    stored = float32_to_bfloat16(x) if dtype == "bfloat16" else x.astype(dtype)
    stored.astype(stored.dtype.newbyteorder("<")).tofile(tmp_path / "x.bin")
    ds = imported(cli, tmp_path / "ds", "--edges", edges_npy, "--features", tmp_path / "x.bin", "--dtype", dtype,
                  "--dim", F)
    assert ds.feature_dtype == dtype
    got = features_of(ds)
    np.testing.assert_array_equal(got, stored)  # bfloat16: the stored bits round-trip exactly
    if dtype == "bfloat16":
        assert got.dtype == np.uint16
        a = zarr.open_array(str(tmp_path / "ds" / "features"), mode="r")
        assert a.attrs["diskgraph_dtype"] == "bfloat16"
        np.testing.assert_array_equal(a[:], stored)


def test_raw_features_with_a_wrong_dim_are_refused(cli, tmp_path, graph, edges_npy, refused):
    graph["features"].tofile(tmp_path / "x.bin")
    r = cli.run("preprocess", "import", "--edges", edges_npy, "--features", tmp_path / "x.bin", "--dtype", "float32",
                "--dim", 7, "--out", tmp_path / "ds")
    refused(r, str(tmp_path / "x.bin"), "--dim", out=tmp_path / "ds")
    r = cli.run("preprocess", "import", "--edges", edges_npy, "--features", tmp_path / "x.bin", "--out", tmp_path / "ds")
    refused(r, str(tmp_path / "x.bin"), "--dtype", out=tmp_path / "ds")


# -- labels and splits -------------------------------------------------------------------------------

def test_npy_labels_with_index_splits(cli, tmp_path, graph, edges_npy):
    np.save(tmp_path / "y.npy", graph["labels"])
    idx = np.random.default_rng(3).permutation(N)
    np.save(tmp_path / "train.npy", idx[:30])  # unsorted on input
    np.save(tmp_path / "val.npy", idx[30:40].astype(np.int32))
    np.save(tmp_path / "test.npy", idx[40:55])
    ds = imported(cli, tmp_path / "ds", "--edges", edges_npy, "--labels", tmp_path / "y.npy", "--train",
                  tmp_path / "train.npy", "--val", tmp_path / "val.npy", "--test", tmp_path / "test.npy")
    np.testing.assert_array_equal(ds.labels, graph["labels"])
    assert ds.num_classes == C and ds.num_nodes == N  # node count from the labels
    assert set(ds.splits) == {"train", "val", "test"}
    for name, part in (("train", idx[:30]), ("val", idx[30:40]), ("test", idx[40:55])):
        np.testing.assert_array_equal(ds.splits[name], np.sort(part))
        assert ds.splits[name].dtype == np.int64
    assert ds.manifest["splits"] == {"train": 30, "val": 10, "test": 15}


def test_mask_splits(cli, tmp_path, graph, edges_npy):
    np.save(tmp_path / "y.npy", graph["labels"])
    masks = np.zeros((3, N), dtype=bool)
    masks[0, :20], masks[1, 20:35], masks[2, 40:] = True, True, True
    for name, m in zip(("train", "val", "test"), masks):
        np.save(tmp_path / f"{name}.npy", m)
    ds = imported(cli, tmp_path / "ds", "--edges", edges_npy, "--labels", tmp_path / "y.npy", "--train",
                  tmp_path / "train.npy", "--val", tmp_path / "val.npy", "--test", tmp_path / "test.npy")
    for name, m in zip(("train", "val", "test"), masks):
        np.testing.assert_array_equal(ds.splits[name], np.flatnonzero(m))


def test_parquet_labels_and_splits(cli, tmp_path, graph, edges_npy):
    pq.write_table(pa.table({"y": graph["labels"]}), tmp_path / "y.parquet")
    pq.write_table(pa.table({"node": pa.array(np.arange(0, 20))}), tmp_path / "train.parquet")
    pq.write_table(pa.table({"mask": pa.array(np.arange(N) >= 50)}), tmp_path / "test.parquet")
    ds = imported(cli, tmp_path / "ds", "--edges", edges_npy, "--labels", tmp_path / "y.parquet", "--train",
                  tmp_path / "train.parquet", "--test", tmp_path / "test.parquet")
    np.testing.assert_array_equal(ds.labels, graph["labels"])
    np.testing.assert_array_equal(ds.splits["train"], np.arange(20))
    np.testing.assert_array_equal(ds.splits["test"], np.arange(50, N))
    assert "val" not in ds.splits
    # a named column of a wider table
    pq.write_table(pa.table({"id": np.arange(N), "class": graph["labels"]}), tmp_path / "y2.parquet")
    ds = imported(cli, tmp_path / "ds2", "--edges", edges_npy, "--labels", tmp_path / "y2.parquet", "--label-column",
                  "class")
    np.testing.assert_array_equal(ds.labels, graph["labels"])


def test_explicit_num_classes(cli, tmp_path, graph, edges_npy):
    np.save(tmp_path / "y.npy", graph["labels"])
    ds = imported(cli, tmp_path / "ds", "--edges", edges_npy, "--labels", tmp_path / "y.npy", "--num-classes", 9)
    assert ds.num_classes == 9 and ds.verify() == []


def _random_split(cli, tmp_path, name, graph, edges_npy, *args):
    return imported(cli, tmp_path / name, "--edges", edges_npy, "--labels", tmp_path / "y.npy", *args).splits


def test_random_split_is_seeded_disjoint_and_over_labelled_nodes(cli, tmp_path, graph, edges_npy):
    np.save(tmp_path / "y.npy", graph["labels"])
    args = ("--split", "random:0.6,0.2,0.2", "--seed", "7")
    a = _random_split(cli, tmp_path, "a", graph, edges_npy, *args)
    b = _random_split(cli, tmp_path, "b", graph, edges_npy, *args)
    c = _random_split(cli, tmp_path, "c", graph, edges_npy, "--split", "random:0.6,0.2,0.2", "--seed", "8")
    labelled = np.flatnonzero(graph["labels"] >= 0)
    n = labelled.size
    assert {k: v.size for k, v in a.items()} == {"train": round(0.6 * n), "val": round(0.2 * n),
                                                 "test": min(n - round(0.6 * n) - round(0.2 * n), round(0.2 * n))}
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])  # deterministic
        assert (np.diff(a[k]) > 0).all()
    assert any(not np.array_equal(a[k], c[k]) for k in a)  # the seed matters
    union = np.concatenate(list(a.values()))
    assert np.unique(union).size == union.size  # disjoint
    assert np.isin(union, labelled).all()  # only labelled nodes
    assert set(union.tolist()) == set(labelled.tolist())  # fractions summing to 1 cover them all
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["options"]["split"] == {"random": [0.6, 0.2, 0.2], "seed": 7}


def test_default_random_split_when_labels_come_without_splits(cli, tmp_path, graph, edges_npy):
    np.save(tmp_path / "y.npy", graph["labels"])
    d = _random_split(cli, tmp_path, "d", graph, edges_npy)
    e = _random_split(cli, tmp_path, "e", graph, edges_npy, "--split", "random:0.6,0.2,0.2", "--seed", "0")
    assert set(d) == {"train", "val", "test"}
    for k in d:
        np.testing.assert_array_equal(d[k], e[k])


def test_random_split_fractions_below_one(cli, tmp_path, graph, edges_npy):
    np.save(tmp_path / "y.npy", graph["labels"])
    s = _random_split(cli, tmp_path, "s", graph, edges_npy, "--split", "random:0.1,0.1,0.1", "--seed", "1")
    n = int((graph["labels"] >= 0).sum())
    assert [s[k].size for k in ("train", "val", "test")] == [round(0.1 * n)] * 3


@pytest.mark.parametrize("spec", ["random:0.6,0.6,0.2", "random:0.5,0.5", "shuffle:0.6,0.2,0.2", "random:a,b,c",
                                  "random:-0.1,0.5,0.5"])
def test_bad_random_split_spec(cli, tmp_path, graph, edges_npy, refused, spec):
    np.save(tmp_path / "y.npy", graph["labels"])
    r = cli.run("preprocess", "import", "--edges", edges_npy, "--labels", tmp_path / "y.npy", "--split", spec,
                "--out", tmp_path / "ds")
    refused(r, "--split", spec, out=tmp_path / "ds")


# -- the npz layout with overrides -------------------------------------------------------------------

def test_npz_layout_with_masks_and_overrides(cli, tmp_path, graph, csc_oracle):
    masks = {"train_mask": np.arange(N) < 30, "val_mask": (np.arange(N) >= 30) & (np.arange(N) < 40),
             "test_mask": np.arange(N) >= 40}
    np.savez_compressed(tmp_path / "data.npz", edges=np.stack([graph["src"], graph["dst"]]).T.copy(),
                        features=graph["features"], labels=graph["labels"], **masks)
    ds = imported(cli, tmp_path / "ds", "--npz", tmp_path / "data.npz")
    assert_topology(ds, graph, csc_oracle)
    np.testing.assert_array_equal(features_of(ds), graph["features"])
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(ds.splits[name], np.flatnonzero(masks[f"{name}_mask"]))
    # a flag replaces one part of the archive
    x2 = graph["features"][:, :3].copy()
    np.save(tmp_path / "x2.npy", x2)
    ds = imported(cli, tmp_path / "ds2", "--npz", tmp_path / "data.npz", "--features", tmp_path / "x2.npy")
    np.testing.assert_array_equal(features_of(ds), x2)


def test_npz_edges_upper_layout(cli, tmp_path, csc_oracle):
    rng = np.random.default_rng(5)
    u = rng.integers(0, 20, 50)
    v = rng.integers(0, 20, 50)
    u, v = np.minimum(u, v), np.maximum(u, v)
    np.savez(tmp_path / "data.npz", edges_upper=np.stack([u, v]).astype(np.int32))
    ds = imported(cli, tmp_path / "ds", "--npz", tmp_path / "data.npz", "--num-nodes", 20)
    indptr, indices = csc_oracle(u, v, 20, undirected=True)
    np.testing.assert_array_equal(ds.indptr, indptr)
    np.testing.assert_array_equal(ds.indices, indices)


def test_graph_without_edges(cli, tmp_path):
    np.save(tmp_path / "e.npy", np.zeros((2, 0), np.int64))
    np.save(tmp_path / "x.npy", np.ones((5, 3), np.float32))
    ds = imported(cli, tmp_path / "ds", "--edges", tmp_path / "e.npy", "--features", tmp_path / "x.npy")
    assert ds.num_nodes == 5 and ds.num_edges == 0
    np.testing.assert_array_equal(ds.indptr, np.zeros(6))
    assert ds.indices.shape == (0,) and ds.verify() == []
    assert ds.stats()["in_degree"]["isolated_nodes"] == 5
    # no edges and nothing else to count nodes by: refused at import (issue 12: it used to fail only later)
    r = cli.run("preprocess", "import", "--edges", tmp_path / "e.npy", "--out", tmp_path / "empty")
    assert r.rc == 2 and "the graph has no nodes" in r.err and not (tmp_path / "empty").exists()
