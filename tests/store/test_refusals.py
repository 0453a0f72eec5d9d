"""Bad input is refused: exit status 2, one sentence naming the file or flag, no traceback, nothing left behind.

Every case runs twice: in-process through ``diskgraph.cli.main`` and end to end in a
real ``python -m diskgraph`` subprocess (which proves there is no traceback).
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from diskgraph.store.dataset import open_dataset
from diskgraph.store.checksums import manifest_checksum
from diskgraph.store.errors import FormatError
from diskgraph.store.importer import DATASET_VERSION

N, F = 10, 4


@pytest.fixture
def inputs(tmp_path):
    """Valid raw inputs (10 nodes) that each case spoils one part of."""
    rng = np.random.default_rng(0)
    paths = {
        "edges": tmp_path / "edges.npy",
        "features": tmp_path / "features.npy",
        "labels": tmp_path / "labels.npy",
        "out": tmp_path / "ds",
    }
    np.save(paths["edges"], np.stack([rng.integers(0, N, 30), rng.integers(0, N, 30)]))
    np.save(paths["features"], rng.standard_normal((N, F)).astype(np.float32))
    np.save(paths["labels"], rng.integers(0, 3, N))
    return paths


def base_args(p, edges=True, features=True, labels=False, out=True):
    args = ["preprocess", "import"]
    if edges:
        args += ["--edges", p["edges"]]
    if features:
        args += ["--features", p["features"]]
    if labels:
        args += ["--labels", p["labels"]]
    if out:
        args += ["--out", p["out"]]
    return args


def _save(path, array):
    np.save(path, array)
    return path


def _truncate(path, keep_fraction=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: 128 + int((len(data) - 128) * keep_fraction)])
    return path


# Each case: (name, build(p) -> (argv, needles)). ``p`` holds the valid inputs' paths.
def _case_id_out_of_range(p):
    e = _save(p["edges"], np.array([[0, 1, 2], [1, 10, 3]]))
    return base_args(p), [str(e), "node id 10", "10 nodes", "--num-nodes"]


def _case_id_out_of_range_num_nodes(p):
    _save(p["edges"], np.array([[0, 1, 2], [1, 10, 3]]))
    return base_args(p, features=False) + ["--num-nodes", "5"], [str(p["edges"]), "node id 10", "--num-nodes 5"]


def _case_negative_id(p):
    e = _save(p["edges"], np.array([[0, -1, 2], [1, 1, 3]]))
    return base_args(p), [str(e), "negative node id -1", "source of edge 1"]


def _case_negative_id_scan(p):  # node count from the ids: the scan refuses it
    e = _save(p["edges"], np.array([[0, 3, 2], [1, 1, -7]]))
    return base_args(p, features=False), [str(e), "negative node id -7"]


def _case_wrong_shape(p):
    e = _save(p["edges"], np.zeros((3, 5), dtype=np.int64))
    return base_args(p), [str(e), "shape (3, 5)", "[2, E]"]


def _case_wrong_shape_1d(p):
    e = _save(p["edges"], np.zeros(6, dtype=np.int64))
    return base_args(p), [str(e), "shape (6,)"]


def _case_float_edges(p):
    e = _save(p["edges"], np.zeros((2, 5), dtype=np.float64))
    return base_args(p), [str(e), "dtype float64", "integers"]


def _case_float_edges_parquet(p):
    path = p["edges"].with_suffix(".parquet")
    pq.write_table(pa.table({"source": [0.0, 1.5], "target": [1.0, 2.0]}), path)
    return base_args(p, edges=False) + ["--edges", path], [str(path), "'source'", "double"]


def _case_float_edges_csv(p):
    path = p["edges"].with_suffix(".csv")
    path.write_text("source,target\n0,1\n1.5,2\n")
    return base_args(p, edges=False) + ["--edges", path], [str(path), "int64"]


def _case_missing_column(p):
    path = p["edges"].with_suffix(".parquet")
    pq.write_table(pa.table({"src": [0, 1], "dst": [1, 2]}), path)
    return base_args(p, edges=False) + ["--edges", path], [str(path), "'source'", "--src-column"]


def _case_feature_rows(p):
    return base_args(p) + ["--num-nodes", "12"], [str(p["features"]), "10 rows", "12 nodes"]


def _case_nan_features(p):
    x = np.ones((N, F), np.float32)
    x[7, 2] = np.nan
    _save(p["features"], x)
    return base_args(p), [str(p["features"]), "nan", "node 7", "feature 2", "--allow-nonfinite"]


def _case_inf_features(p):
    x = np.ones((N, F), np.float16)
    x[3, 0] = -np.inf
    _save(p["features"], x)
    return base_args(p), [str(p["features"]), "-inf", "node 3", "--allow-nonfinite"]


def _case_nan_bfloat16_raw(p):
    raw = p["features"].with_suffix(".bin")
    bits = np.full((N, F), 0x3F80, np.uint16)  # 1.0
    bits[9, 3] = 0x7FC0  # NaN
    bits.tofile(raw)
    return base_args(p, features=False) + ["--features", raw, "--dtype", "bfloat16", "--dim", str(F)], \
        [str(raw), "nan", "node 9", "--allow-nonfinite"]


def _case_label_below_minus_one(p):
    _save(p["labels"], np.array([0, 1, -2, 0, 1, 0, 1, 0, 1, 0]))
    return base_args(p, labels=True), [str(p["labels"]), "label -2", "node 2"]


def _case_label_too_large(p):
    _save(p["labels"], np.array([0, 1, 2, 0, 5, 0, 1, 0, 1, 0]))
    return base_args(p, labels=True) + ["--num-classes", "3"], [str(p["labels"]), "label 5", "--num-classes"]


def _case_labels_wrong_length(p):
    _save(p["labels"], np.zeros(9, dtype=np.int64))
    return base_args(p, labels=True), [str(p["labels"]), "9 labels", "10 nodes"]


def _case_labels_not_integers(p):  # (without --task, fractions are regression targets)
    _save(p["labels"], np.full(N, 0.5))
    return base_args(p, labels=True) + ["--task", "classification"], [str(p["labels"]), "0.5 at node 0",
                                                                       "--task classification"]


def _case_overlapping_splits(p):
    a = _save(p["labels"].with_name("train.npy"), np.array([0, 1, 2, 3]))
    b = _save(p["labels"].with_name("val.npy"), np.array([3, 4]))
    return base_args(p) + ["--train", a, "--val", b], ["train", "val", str(a), str(b), "node 3", "disjoint"]


def _case_split_index_out_of_range(p):
    a = _save(p["labels"].with_name("train.npy"), np.array([0, 1, 99]))
    return base_args(p) + ["--train", a], [str(a), "node index 99"]


def _case_split_repeats(p):
    a = _save(p["labels"].with_name("train.npy"), np.array([0, 1, 1]))
    return base_args(p) + ["--train", a], [str(a), "more than once"]


def _case_split_mask_length(p):
    a = _save(p["labels"].with_name("test.npy"), np.ones(N + 1, dtype=bool))
    return base_args(p) + ["--test", a], [str(a), "length 11", "10 nodes"]


def _case_split_and_random(p):
    a = _save(p["labels"].with_name("train.npy"), np.array([0, 1]))
    return base_args(p, labels=True) + ["--train", a, "--split", "random:0.5,0.5,0"], ["--split", "--train"]


def _case_missing_edges(p):
    p["edges"].unlink()
    return base_args(p), [str(p["edges"]), "does not exist", "--edges"]


def _case_missing_features(p):
    p["features"].unlink()
    return base_args(p), [str(p["features"]), "does not exist", "--features"]


def _case_missing_labels(p):
    p["labels"].unlink()
    return base_args(p, labels=True), [str(p["labels"]), "does not exist", "--labels"]


def _case_missing_split(p):
    missing = p["labels"].with_name("nope.npy")
    return base_args(p) + ["--val", missing], [str(missing), "does not exist", "--val"]


def _case_missing_npz(p):
    missing = p["edges"].with_name("data.npz")
    return ["preprocess", "import", "--npz", missing, "--out", p["out"]], [str(missing), "does not exist", "--npz"]


def _case_truncated_edges(p):
    _truncate(p["edges"])
    return base_args(p), [str(p["edges"]), "truncated"]


def _case_truncated_features(p):
    _truncate(p["features"])
    return base_args(p), [str(p["features"]), "truncated"]


def _case_not_npy(p):
    p["features"].write_bytes(b"this is not a numpy file at all")
    return base_args(p), [str(p["features"]), "not a valid .npy"]


def _case_truncated_npz(p):
    z = p["edges"].with_name("data.npz")
    np.savez(z, edges=np.zeros((2, 100), np.int64))
    _truncate(z, 0.5)
    return ["preprocess", "import", "--npz", z, "--out", p["out"]], [str(z)]


def _case_missing_out(p):
    return base_args(p, out=False), ["--out"]


def _case_no_edges(p):
    return ["preprocess", "import", "--features", p["features"], "--out", p["out"]], ["--edges"]


def _case_out_parent_missing(p):  # (missing parents are created; a parent that is a file cannot be)
    p["out"].parent.joinpath("a-file").write_text("x")
    out = p["out"].parent / "a-file" / "ds"
    return base_args(p, out=False) + ["--out", out], [str(out.parent)]


def _case_budget_too_small(p):
    return base_args(p, features=False) + ["--num-nodes", "3000000", "--memory-budget", "20M"], ["--memory-budget"]


def _case_budget_zero(p):  # not silently replaced by the default budget
    return base_args(p) + ["--memory-budget", "0"], ["--memory-budget 0 B", "too small"]


def _case_unknown_config_key(p):
    cfg = p["out"].with_name("c.toml")
    cfg.write_text('colour = "red"\n')
    return base_args(p) + ["--config", cfg], [str(cfg), "'colour'"]


def _case_bad_toml(p):
    cfg = p["out"].with_name("c.toml")
    cfg.write_text("[import\nout = \n")
    return base_args(p) + ["--config", cfg], [str(cfg), "TOML"]


def _case_missing_config(p):
    cfg = p["out"].with_name("none.toml")
    return base_args(p) + ["--config", cfg], [str(cfg), "--config"]


IMPORT_CASES = {name[len("_case_"):]: fn for name, fn in dict(globals()).items() if name.startswith("_case_")}


@pytest.mark.parametrize("via", ["main", "subprocess"])
@pytest.mark.parametrize("case", sorted(IMPORT_CASES))
def test_import_refuses(cli, inputs, refused, case, via):
    argv, needles = IMPORT_CASES[case](inputs)
    r = cli.run(*argv) if via == "main" else cli.subprocess(*argv, cwd=inputs["out"].parent)
    refused(r, *needles, out=inputs["out"])


@pytest.mark.parametrize("via", ["main", "subprocess"])
def test_existing_output_is_kept_unless_overwrite(cli, inputs, refused, no_leftovers, via):
    run = cli.run if via == "main" else cli.subprocess
    out = inputs["out"]
    assert run(*base_args(inputs), "-q").rc == 0  # a dataset is there (--overwrite replaces only diskgraph's own)
    (out / "precious").write_text("keep me")
    r = run(*base_args(inputs))
    refused(r, str(out), "already exists", "--overwrite")
    assert (out / "precious").read_text() == "keep me"
    assert no_leftovers(out) == [out]
    r = run(*base_args(inputs), "--overwrite", "-q")
    assert r.rc == 0, r.err
    assert not (out / "precious").exists()
    assert open_dataset(out).num_nodes == N
    assert no_leftovers(out) == [out]


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_allow_nonfinite_accepts_them(cli, inputs, value):
    x = np.ones((N, F), np.float32)
    x[4, 1] = value
    np.save(inputs["features"], x)
    r = cli.run(*base_args(inputs), "--allow-nonfinite")
    assert r.rc == 0, r.err
    ds = open_dataset(inputs["out"])
    got = ds.features.read_rows(0, N)
    np.testing.assert_array_equal(got, x)  # NaN compares equal in assert_array_equal
    assert ds.manifest["options"]["allow_nonfinite"] is True
    assert ds.verify() == []


# -- refusals of inspect -----------------------------------------------------------------------------

@pytest.fixture
def dataset(cli, inputs):
    r = cli.run(*base_args(inputs, labels=True), "-q")
    assert r.rc == 0, r.err
    return inputs["out"]


def _write_signed(path, manifest: dict) -> None:
    """Write an edited manifest with a matching checksum (as a writer of another version would)."""
    manifest["checksum"] = manifest_checksum(manifest)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("via", ["main", "subprocess"])
def test_inspect_refuses_newer_format_version(cli, dataset, refused, via):
    m = json.loads((dataset / "manifest.json").read_text())
    m["format_version"] = DATASET_VERSION + 1
    _write_signed(dataset / "manifest.json", m)
    r = (cli.run if via == "main" else cli.subprocess)("inspect", dataset, "--verify")
    refused(r, str(dataset / "manifest.json"), f"format_version {DATASET_VERSION + 1}", "upgrade diskgraph")
    assert r.out == ""


@pytest.mark.parametrize("via", ["main", "subprocess"])
def test_inspect_refuses_directory_without_manifest(cli, dataset, refused, via):
    (dataset / "manifest.json").unlink()
    r = (cli.run if via == "main" else cli.subprocess)("inspect", dataset)
    refused(r, str(dataset), "manifest.json", "diskgraph preprocess import")


@pytest.mark.parametrize("damage, needles", [
    ("missing", ["does not exist"]),
    ("file", ["is a file"]),
    ("foreign", ["'other.format'"]),
    ("missing-array", ["labels", "zarr.json"]),
    ("shape", ["labels", "manifest records"]),
    ("edited-manifest", ["manifest.json", "does not match its 'checksum' field", "diskgraph preprocess import"]),
    ("no-arg", ["inspect DIR"]),
])
def test_inspect_refuses_damaged_or_foreign_directories(cli, dataset, refused, damage, needles):
    target = dataset
    if damage == "missing":
        target = dataset.with_name("elsewhere")
    elif damage == "file":
        target = dataset / "manifest.json"
    elif damage == "foreign":
        (dataset / "manifest.json").write_text(json.dumps({"format": "other.format", "format_version": 1}))
    elif damage == "missing-array":
        (dataset / "labels" / "zarr.json").unlink()
    elif damage == "shape":
        m = json.loads((dataset / "manifest.json").read_text())
        m["arrays"]["labels"]["shape"] = [N + 1]
        _write_signed(dataset / "manifest.json", m)  # a consistent manifest that disagrees with the array
    elif damage == "edited-manifest":
        m = json.loads((dataset / "manifest.json").read_text())
        m["num_classes"] += 1
        (dataset / "manifest.json").write_text(json.dumps(m))
    args = ["inspect"] if damage == "no-arg" else ["inspect", target]
    refused(cli.run(*args), *needles)
    if damage != "no-arg":
        with pytest.raises(FormatError):
            open_dataset(target)


def test_bad_size_is_a_usage_error(cli, inputs, no_leftovers):
    r = cli.subprocess(*base_args(inputs), "--memory-budget", "lots")
    assert r.rc == 2 and "Traceback" not in r.err
    assert "--memory-budget" in r.err and "'lots' is not a size" in r.err
    assert no_leftovers(inputs["out"]) == []
