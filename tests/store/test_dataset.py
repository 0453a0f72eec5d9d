"""Reading a dataset directory (store.dataset): stats, verify, damage detection, zarr interop."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from diskgraph.store.checksums import manifest_checksum
from diskgraph.store.dataset import open_dataset
from diskgraph.store.zarr_arrays import RawArray

N, F, C = 300, 6, 5


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    d = tmp_path_factory.mktemp("raw")
    rng = np.random.default_rng(11)
    src = rng.integers(0, N - 10, 2000)  # the last 10 nodes have no in-edges from... and maybe none at all
    dst = np.minimum(rng.zipf(1.5, 2000), N - 11)
    np.save(d / "e.npy", np.stack([src, dst]))
    x = rng.standard_normal((N, F)).astype(np.float32)
    np.save(d / "x.npy", x)
    y = rng.integers(0, C, N)
    y[:17] = -1
    np.save(d / "y.npy", y)
    return {"dir": d, "src": src, "dst": dst, "x": x, "y": y}


@pytest.fixture
def make_dataset(cli, tmp_path, raw, monkeypatch):
    def make(*extra, name="ds", small_chunks=True):
        if small_chunks:  # several feature chunk files
            monkeypatch.setattr("diskgraph.store.features_copy.CHUNK_BYTES", 64 * F * 4)
        out = tmp_path / name
        r = cli.run("preprocess", "import", "--edges", raw["dir"] / "e.npy", "--features", raw["dir"] / "x.npy",
                    "--labels", raw["dir"] / "y.npy", "--out", out, "-q", *extra)
        assert r.rc == 0, r.err
        return out

    return make


def test_open_dataset_reads_back_everything(make_dataset, raw, csc_oracle):
    ds = open_dataset(make_dataset("--dedup"))
    assert (ds.num_nodes, ds.feature_dim, ds.feature_dtype, ds.num_classes) == (N, F, "float32", C)
    indptr, indices = csc_oracle(raw["src"], raw["dst"], N, dedup=True)
    assert ds.num_edges == indices.size
    np.testing.assert_array_equal(ds.indptr, indptr)
    np.testing.assert_array_equal(ds.indices, indices)
    assert ds.features.num_chunks == -(-N // 64)
    np.testing.assert_array_equal(ds.features.read_rows(0, N), raw["x"])
    np.testing.assert_array_equal(ds.labels, raw["y"])
    assert sorted(ds.array_names) == ["features", "labels", "splits/test", "splits/train", "splits/val",
                                      "topology/indices", "topology/indptr"]
    assert "num_nodes=300" in repr(ds)
    m = ds.manifest
    assert m["format"] == "diskgraph.dataset" and m["format_version"] == 3 and m["task"] == "classification"
    assert m["features"]["bytes"] == raw["x"].nbytes and m["features"]["row_bytes"] == F * 4
    assert m["options"]["dedup"] is True and m["import"]["input_edges"] == raw["src"].size
    assert m["import"]["duplicates_dropped"] == raw["src"].size - indices.size


def test_stats_match_numpy(make_dataset, raw, csc_oracle):
    ds = open_dataset(make_dataset())
    s = ds.stats()
    deg = np.diff(csc_oracle(raw["src"], raw["dst"], N)[0])
    assert s["num_nodes"] == N and s["num_edges"] == raw["src"].size
    d = s["in_degree"]
    assert d["min"] == deg.min() and d["max"] == deg.max() and d["isolated_nodes"] == int((deg == 0).sum())
    assert d["mean"] == pytest.approx(deg.mean())
    srt = np.sort(deg)
    assert d["median"] == srt[int(np.ceil(0.5 * N)) - 1]
    assert d["p99"] == srt[int(np.ceil(0.99 * N)) - 1]
    y = raw["y"]
    assert s["label_counts"] == {str(c): int((y == c).sum()) for c in range(C)}
    assert s["unlabelled_nodes"] == 17
    labelled = N - 17
    assert s["splits"] == {"train": round(0.6 * labelled), "val": round(0.2 * labelled),
                           "test": labelled - round(0.6 * labelled) - round(0.2 * labelled)}
    assert s["feature_bytes"] == raw["x"].nbytes
    assert s["disk_bytes"]["total"] >= sum(v for k, v in s["disk_bytes"].items() if k != "total")
    # a tiny slice size gives the same histogram
    np.testing.assert_array_equal(ds.degree_histogram(slice_nodes=7), ds.degree_histogram())
    np.testing.assert_array_equal(ds.degree_histogram(), np.bincount(deg))


def test_inspect_json_and_table(cli, make_dataset):
    out = make_dataset()
    r = cli.run("inspect", out, "--verify", "--json")
    assert r.rc == 0, r.err
    info = json.loads(r.out)
    assert info["verify"] == {"ok": True, "problems": []}
    assert (info["num_nodes"], info["feature_dim"], info["num_classes"]) == (N, F, C)
    r = cli.run("inspect", out, "--verify")
    assert r.rc == 0
    assert "nodes         300" in r.out and "verify        ok" in r.out and f"x {F} float32" in r.out
    r = cli.run("inspect", out)
    assert r.rc == 0 and "verify" not in r.out


def test_every_array_opens_with_zarr_alone(make_dataset):
    for extra, name in (((), "f32"), (("--feature-dtype", "bfloat16"), "bf16"), (("--feature-dtype", "float16"), "f16")):
        out = make_dataset(*extra, name=name)
        ds = open_dataset(out)
        group = zarr.open_group(str(out), mode="r")
        assert group.attrs["diskgraph"] == "diskgraph.dataset"
        for arr_name in ds.array_names:
            z = zarr.open_array(str(out / arr_name), mode="r")
            ours = ds.array(arr_name).read_rows(0, ds.array(arr_name).shape[0])
            assert z.shape == ours.shape and z.dtype == ours.dtype, arr_name
            np.testing.assert_array_equal(z[:], ours, err_msg=arr_name)
            assert group[arr_name].shape == z.shape
        assert zarr.open_array(str(out / "features"), mode="r").attrs.get("diskgraph_dtype") == (
            "bfloat16" if name == "bf16" else None)


def _flip_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("array, offset, expect", [
    ("features", 0, "features: sha256 differs"),
    ("labels", 0, "labels: sha256 differs"),
    ("splits/train", 0, "splits/train: sha256 differs"),
    ("topology/indices", 0, "topology/indices: sha256 differs"),
    ("topology/indptr", N * 8, "topology/indptr: sha256 differs"),  # the last entry: E becomes E + 1
])
def test_verify_catches_a_flipped_byte(cli, make_dataset, array, offset, expect):
    out = make_dataset()
    arr = RawArray(out / array)
    chunk = arr.chunk_path(arr.num_chunks - 1)
    _flip_byte(chunk, offset)
    r = cli.run("inspect", out, "--verify")
    assert r.rc == 1, r.out + r.err
    assert "verify        FAILED" in r.out and expect in r.out
    r = cli.run("inspect", out, "--verify", "--json")
    assert r.rc == 1
    info = json.loads(r.out)
    assert info["verify"]["ok"] is False and any(p.startswith(expect) for p in info["verify"]["problems"])
    # without --verify the damage goes unnoticed (only checked on demand)
    assert cli.run("inspect", out).rc == 0


def test_damaged_indptr_is_reported_not_crashed_on(cli, make_dataset, refused):
    out = make_dataset()
    chunk = RawArray(out / "topology" / "indptr").chunk_path(0)
    _flip_byte(chunk, 5 * 8 + 6)  # a high byte of indptr[5]: it jumps far past num_edges
    problems = open_dataset(out).verify()
    assert problems == ["topology/indptr: sha256 differs from the manifest (the file changed or is damaged)",
                        "topology: indptr decreases at node 5"]
    # the statistics cannot be computed from it: refused with one sentence
    refused(cli.run("inspect", out), str(out / "topology" / "indptr"), "decreases at node 5")
    refused(cli.subprocess("inspect", out, "--verify"), str(out / "topology" / "indptr"))


def test_verify_checks_invariants_too(cli, make_dataset):
    """A consistent rewrite (checksum updated) that breaks an invariant is still caught."""
    import hashlib

    out = make_dataset("--dedup")
    idx_path = RawArray(out / "topology" / "indices").chunk_path(0)
    indices = np.fromfile(idx_path, dtype=np.int32)
    indptr = np.asarray(open_dataset(out).indptr)
    v = int(np.flatnonzero(np.diff(indptr) >= 2)[0])
    a = indptr[v]
    indices[a], indices[a + 1] = indices[a + 1], indices[a]  # unsorted segment
    indices.tofile(idx_path)
    m = json.loads((out / "manifest.json").read_text())
    m["arrays"]["topology/indices"]["sha256"] = hashlib.sha256(indices.tobytes()).hexdigest()
    m["checksum"] = manifest_checksum(m)
    (out / "manifest.json").write_text(json.dumps(m))
    problems = open_dataset(out).verify()
    assert problems == [f"topology: the in-edges of node {v} are not sorted"]
    r = cli.run("inspect", out, "--verify")
    assert r.rc == 1 and f"node {v} are not sorted" in r.out


def test_verify_catches_nonfinite_features_in_place(make_dataset):
    out = make_dataset()
    arr = RawArray(out / "features")
    chunk = arr.chunk_path(1)
    x = np.fromfile(chunk, dtype=np.float32)
    x[F * 3 + 2] = np.nan
    x.tofile(chunk)
    problems = open_dataset(out).verify()
    assert f"features: node {arr.chunk_shape[0] + 3} feature 2 is not finite" in problems
    assert "features: sha256 differs from the manifest (the file changed or is damaged)" in problems


@pytest.mark.parametrize("array", ["features", "topology/indices", "labels"])
def test_truncated_chunk_is_refused_clearly(cli, make_dataset, refused, array):
    out = make_dataset()
    chunk = RawArray(out / array).chunk_path(0)
    chunk.write_bytes(chunk.read_bytes()[:-3])
    for args in (("inspect", out), ("inspect", out, "--verify")):
        refused(cli.run(*args), str(chunk), "truncated or damaged")
    r = cli.subprocess("inspect", out, "--verify", "--json")
    refused(r, str(chunk))
    assert r.out == ""


def test_missing_chunk_is_refused(cli, make_dataset, refused):
    out = make_dataset()
    chunk = RawArray(out / "features").chunk_path(2)
    chunk.unlink()
    refused(cli.run("inspect", out, "--verify"), str(chunk), "missing")
