"""The on-disk output of `diskgraph predict` / `embed` (issue 13): writer, reader, zarr and Parquet round trips,
refusals of damaged outputs."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from diskgraph.store.errors import FormatError, InputError
from diskgraph.store.inference_output import (CHUNK_BYTES, INFERENCE_FORMAT, INFERENCE_VERSION, OutputWriter,
                                              open_output, output_task, predict_columns, predict_rows, write_parquet)
from diskgraph.store.manifest import write_manifest

PREDICT = {"node_ids": ((), "int64"), "logits": ((5,), "float32"), "predictions": ((), "int64")}
BODY = {"kind": "predict", "mode": "exact", "run": {"path": "/runs/r1", "best_epoch": 3},
        "model": {"name": "sage", "hidden": 16}, "dataset": {"path": "/data/ds", "checksum": "sha256:00"},
        "nodes": "all", "summary": {"seconds": 1.5}}


def predict_data(n: int, classes: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(10 * n + 10, size=n, replace=False)).astype(np.int64)
    logits = rng.standard_normal((n, classes)).astype(np.float32)
    return ids, logits, logits.argmax(1).astype(np.int64)


def write_predict(out, n: int = 50, chunk_rows: int | None = 7, pieces=(0, 3, 20, 21, 44)):
    """A predict output of ``n`` rows appended in uneven slices; returns (ids, logits, predictions)."""
    out.mkdir()
    ids, logits, preds = predict_data(n)
    w = OutputWriter(out, n, PREDICT, chunk_rows=chunk_rows)
    bounds = [*pieces, n]
    for a, b in zip(bounds[:-1], bounds[1:]):
        w.append(node_ids=ids[a:b], logits=logits[a:b], predictions=preds[a:b])
    w.finish(BODY)
    return ids, logits, preds


def write_embed(out, n: int = 30, hidden: int = 8, dtype: str = "float16", chunk_rows: int | None = 4):
    out.mkdir()
    rng = np.random.default_rng(1)
    ids = np.arange(n, dtype=np.int64) * 2
    emb = rng.standard_normal((n, hidden)).astype(dtype)
    w = OutputWriter(out, n, {"node_ids": ((), "int64"), "embeddings": ((hidden,), dtype)}, chunk_rows=chunk_rows)
    w.append(node_ids=ids[:11], embeddings=emb[:11])
    w.append(node_ids=ids[11:], embeddings=emb[11:])
    w.finish({"kind": "embed", "mode": "sampled", "layer": 1, "dtype": dtype})
    return ids, emb


def flip(path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))


# -- round trips ------------------------------------------------------------------------------------------------------

def test_predict_round_trip(tmp_path):
    out = tmp_path / "out"
    ids, logits, preds = write_predict(out)
    o = open_output(out)
    assert o.kind == "predict" and o.num_rows == 50 and o.path == out
    assert o.array_names == ["node_ids", "logits", "predictions"]
    np.testing.assert_array_equal(o.read("node_ids", 0, 50), ids)
    np.testing.assert_array_equal(o.read("logits", 0, 50), logits)
    np.testing.assert_array_equal(o.read("predictions"), preds)
    np.testing.assert_array_equal(o.read("logits", 6, 22), logits[6:22])  # across chunk boundaries
    assert o.read("logits", 0, 50).dtype == np.float32 and o.read("node_ids").dtype == np.int64
    m = o.manifest
    assert m["format"] == INFERENCE_FORMAT and m["format_version"] == INFERENCE_VERSION
    assert m["num_rows"] == 50 and m["run"] == BODY["run"] and m["model"] == BODY["model"] and m["mode"] == "exact"
    assert m["arrays"]["logits"]["shape"] == [50, 5] and m["arrays"]["logits"]["dtype"] == "float32"
    assert m["arrays"]["logits"]["sha256"] == hashlib.sha256(logits.tobytes()).hexdigest()
    assert m["arrays"]["node_ids"]["sha256"] == hashlib.sha256(ids.tobytes()).hexdigest()
    assert m["arrays"]["predictions"]["chunk_rows"] == 7 and o.array("logits").chunk_shape == (7, 5)
    assert o.verify() == []


def test_zarr_opens_the_output_alone(tmp_path):
    zarr = pytest.importorskip("zarr")
    out = tmp_path / "out"
    ids, logits, preds = write_predict(out)
    g = zarr.open_group(out, mode="r")
    np.testing.assert_array_equal(g["logits"][:], logits)
    np.testing.assert_array_equal(g["node_ids"][:], ids)
    np.testing.assert_array_equal(g["predictions"][:], preds)
    assert g["logits"].dtype == np.float32 and g["logits"].shape == (50, 5)
    assert "predict" in g.attrs["description"]
    e_out = tmp_path / "emb"
    e_ids, emb = write_embed(e_out)
    g = zarr.open_group(e_out, mode="r")
    np.testing.assert_array_equal(g["embeddings"][:], emb)
    assert g["embeddings"].dtype == np.float16
    np.testing.assert_array_equal(g["node_ids"][:], e_ids)


def test_embed_round_trip_and_default_chunks(tmp_path):
    ids, emb = write_embed(tmp_path / "emb", dtype="float32")
    o = open_output(tmp_path / "emb")
    assert o.kind == "embed" and o.manifest["layer"] == 1
    np.testing.assert_array_equal(o.read("embeddings", 0, 30), emb)
    # default chunks: about CHUNK_BYTES per chunk, capped by the row count
    out = tmp_path / "big"
    out.mkdir()
    n, h = 40000, 64
    w = OutputWriter(out, n, {"node_ids": ((), "int64"), "embeddings": ((h,), "float32")})
    x = np.ones((n, h), np.float32) * np.arange(n, dtype=np.float32)[:, None]
    for s in range(0, n, 9999):
        w.append(node_ids=np.arange(s, min(s + 9999, n)), embeddings=x[s:s + 9999])
    m = w.finish({"kind": "embed"})
    assert m["arrays"]["embeddings"]["chunk_rows"] == CHUNK_BYTES // (h * 4)
    assert m["arrays"]["node_ids"]["chunk_rows"] == n
    o = open_output(out)
    assert o.array("embeddings").num_chunks == 2
    np.testing.assert_array_equal(o.read("embeddings", 32760, 32780), x[32760:32780])


def test_writer_streams_chunks_before_finish(tmp_path):
    """Memory is one chunk per column: full chunks reach the disk as they complete, before finish."""
    out = tmp_path / "out"
    out.mkdir()
    ids, logits, preds = predict_data(20)
    w = OutputWriter(out, 20, PREDICT, chunk_rows=4)
    w.append(node_ids=ids[:9], logits=logits[:9], predictions=preds[:9])
    assert sorted(p.name for p in (out / "logits" / "c").iterdir()) == ["0", "1"]
    assert not (out / "manifest.json").exists()
    w.append(node_ids=ids[9:], logits=logits[9:], predictions=preds[9:])
    w.finish(BODY)
    assert json.loads((out / "manifest.json").read_text())["num_rows"] == 20


def test_values_are_cast_within_their_kind(tmp_path):
    out = tmp_path / "emb"
    out.mkdir()
    w = OutputWriter(out, 3, {"node_ids": ((), "int64"), "embeddings": ((2,), "float16")})
    x = np.array([[0.1, 0.2], [1.5, -3.0], [7.0, 0.0]])
    w.append(node_ids=np.array([0, 1, 2], np.int32), embeddings=x)
    w.finish({"kind": "embed"})
    np.testing.assert_array_equal(open_output(out).read("embeddings"), x.astype(np.float16))


def test_empty_output(tmp_path):
    out = tmp_path / "out"
    write_predict(out, n=0, chunk_rows=None, pieces=(0,))
    o = open_output(out)
    assert o.num_rows == 0 and o.read("logits").shape == (0, 5) and o.verify() == []
    assert write_parquet(o, tmp_path / "e.parquet") > 0
    import pyarrow.parquet as pq
    assert pq.read_table(tmp_path / "e.parquet").num_rows == 0


# -- Parquet ----------------------------------------------------------------------------------------------------------

def test_parquet_predict_round_trip(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids, logits, preds = write_predict(tmp_path / "out")
    p = tmp_path / "sub" / "pred.parquet"
    size = write_parquet(open_output(tmp_path / "out"), p, rows_per_group=16)
    assert size == p.stat().st_size > 0
    t = pq.read_table(p)
    assert t.column_names == ["node_id", "prediction", "logits"]
    assert t.schema.field("logits").type == pa.list_(pa.float32(), 5)
    assert t.schema.field("node_id").type == pa.int64() and t.schema.field("prediction").type == pa.int64()
    np.testing.assert_array_equal(t["node_id"].to_numpy(), ids)
    np.testing.assert_array_equal(t["prediction"].to_numpy(), preds)
    got = np.stack(t["logits"].to_pylist()).astype(np.float32)
    np.testing.assert_array_equal(got, logits)
    assert pq.ParquetFile(p).num_row_groups == 4  # 50 rows in slices of 16
    assert [x.name for x in p.parent.iterdir()] == ["pred.parquet"]


@pytest.mark.parametrize("dtype, arrow", [("float16", "halffloat"), ("float32", "float")])
def test_parquet_embed_round_trip(tmp_path, dtype, arrow):
    import pyarrow.parquet as pq

    ids, emb = write_embed(tmp_path / "emb", dtype=dtype)
    p = tmp_path / "emb.parquet"
    write_parquet(open_output(tmp_path / "emb"), p, rows_per_group=7)
    t = pq.read_table(p)
    assert t.column_names == ["node_id", "embedding"]
    assert str(t.schema.field("embedding").type.value_type) == arrow and t.schema.field("embedding").type.list_size == 8
    np.testing.assert_array_equal(t["node_id"].to_numpy(), ids)
    flat = t["embedding"].combine_chunks().flatten().to_numpy()
    assert flat.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(flat.reshape(30, 8), emb)


def test_interrupted_parquet_export_leaves_no_file(tmp_path, monkeypatch):
    write_predict(tmp_path / "out")
    o = open_output(tmp_path / "out")
    p = tmp_path / "x" / "pred.parquet"
    real, calls = o.read, []

    def failing(name, start=0, stop=None):
        calls.append(start)
        if start >= 16:
            raise KeyboardInterrupt
        return real(name, start, stop)

    monkeypatch.setattr(o, "read", failing)
    with pytest.raises(KeyboardInterrupt):
        write_parquet(o, p, rows_per_group=16)
    assert calls and list(p.parent.iterdir()) == []
    p.write_bytes(b"old")  # an existing file stays whole until the new one is complete
    with pytest.raises(KeyboardInterrupt):
        write_parquet(o, p, rows_per_group=16)
    assert p.read_bytes() == b"old" and [x.name for x in p.parent.iterdir()] == ["pred.parquet"]
    with pytest.raises(InputError, match="is a directory"):
        write_parquet(o, tmp_path, rows_per_group=16)


# -- writer refusals --------------------------------------------------------------------------------------------------

def test_writer_refuses_wrong_row_counts_and_columns(tmp_path):
    ids, logits, preds = predict_data(10)
    (tmp_path / "a").mkdir()
    w = OutputWriter(tmp_path / "a", 10, PREDICT, chunk_rows=4)
    w.append(node_ids=ids[:6], logits=logits[:6], predictions=preds[:6])
    with pytest.raises(ValueError, match="6 rows appended of the 10"):
        w.finish(BODY)
    with pytest.raises(ValueError, match="more than the 10"):
        w.append(node_ids=ids, logits=logits, predictions=preds)
    with pytest.raises(ValueError, match="different lengths"):
        w.append(node_ids=ids[:2], logits=logits[:3], predictions=preds[:2])
    with pytest.raises(ValueError, match="exactly the columns"):
        w.append(node_ids=ids[:2], logits=logits[:2])
    with pytest.raises(ValueError, match="rows of shape"):
        w.append(node_ids=ids[:2], logits=logits[:2, :4], predictions=preds[:2])
    with pytest.raises(ValueError, match="cannot become int64"):
        w.append(node_ids=ids[:2].astype(np.float64), logits=logits[:2], predictions=preds[:2])
    w.abort()
    assert not (tmp_path / "a" / "manifest.json").exists()
    with pytest.raises(ValueError, match="closed"):
        w.append(node_ids=ids[:2], logits=logits[:2], predictions=preds[:2])
    (tmp_path / "b").mkdir()
    w = OutputWriter(tmp_path / "b", 0, {"node_ids": ((), "int64"), "logits": ((5,), "float32")})
    with pytest.raises(ValueError, match="needs the arrays"):
        w.finish(BODY)
    with pytest.raises(ValueError, match="kind"):
        w.finish({"kind": "classify"})
    assert not (tmp_path / "b" / "manifest.json").exists()
    with pytest.raises(ValueError, match="not empty"):
        OutputWriter(tmp_path / "b", 0, PREDICT)
    with pytest.raises(ValueError, match="not an existing directory"):
        OutputWriter(tmp_path / "missing", 0, PREDICT)


# -- reader refusals --------------------------------------------------------------------------------------------------

def test_truncated_chunk_file_is_refused(tmp_path):
    out = tmp_path / "out"
    write_predict(out)
    chunk = out / "logits" / "c" / "3" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-4])
    with pytest.raises(FormatError, match="truncated") as e:
        open_output(out)
    assert str(chunk) in str(e.value)


def test_edited_manifest_is_refused(tmp_path):
    out = tmp_path / "out"
    write_predict(out)
    mf = out / "manifest.json"
    m = json.loads(mf.read_text())
    m["num_rows"] = 49
    mf.write_text(json.dumps(m))
    with pytest.raises(FormatError, match="checksum") as e:
        open_output(out)
    assert str(mf) in str(e.value)


def test_newer_version_and_missing_manifest_are_refused(tmp_path):
    out = tmp_path / "out"
    write_predict(out)
    m = json.loads((out / "manifest.json").read_text())
    body = {k: v for k, v in m.items() if k not in ("format", "format_version", "created_by", "created_at",
                                                    "checksum")}
    write_manifest(out, INFERENCE_FORMAT, INFERENCE_VERSION + 1, body)
    with pytest.raises(FormatError, match="upgrade diskgraph"):
        open_output(out)
    (out / "manifest.json").unlink()  # what an interrupted writer leaves: the arrays, no manifest
    with pytest.raises(FormatError, match="diskgraph predict or diskgraph embed"):
        open_output(out)


@pytest.mark.parametrize("field, value", [("shape", [50, 4]), ("dtype", "float64"), ("chunk_rows", 8)])
def test_array_disagreeing_with_the_manifest_is_refused(tmp_path, field, value):
    out = tmp_path / "out"
    write_predict(out)
    m = json.loads((out / "manifest.json").read_text())
    m["arrays"]["logits"][field] = value
    body = {k: v for k, v in m.items() if k not in ("format", "format_version", "created_by", "created_at",
                                                    "checksum")}
    write_manifest(out, INFERENCE_FORMAT, INFERENCE_VERSION, body)  # a well-formed manifest that disagrees
    with pytest.raises(FormatError, match=f"arrays.logits.{field}") as e:
        open_output(out)
    assert str(out / "logits" / "zarr.json") in str(e.value) and "run the inference again" in str(e.value)


def test_manifest_missing_an_array_of_its_kind_is_refused(tmp_path):
    out = tmp_path / "out"
    write_predict(out)
    m = json.loads((out / "manifest.json").read_text())
    del m["arrays"]["predictions"]
    body = {k: v for k, v in m.items() if k not in ("format", "format_version", "created_by", "created_at",
                                                    "checksum")}
    write_manifest(out, INFERENCE_FORMAT, INFERENCE_VERSION, body)
    with pytest.raises(FormatError, match="predictions"):
        open_output(out)


def test_verify_catches_a_flipped_byte(tmp_path):
    out = tmp_path / "out"
    write_predict(out)
    o = open_output(out)
    assert o.verify() == []
    flip(out / "logits" / "c" / "2" / "0", 13)
    problems = open_output(out).verify()  # opening checks sizes only: the flip is found by verify
    assert len(problems) == 1
    assert "arrays.logits.sha256" in problems[0] and str(out / "logits") in problems[0]
    assert "run the inference again" in problems[0]
    flip(out / "node_ids" / "c" / "0", 0)
    assert len(open_output(out).verify()) == 2


def test_flipped_byte_in_chunk_padding_is_not_a_problem(tmp_path):
    """The sha256 covers the logical rows: the padding of the last chunk is not data."""
    out = tmp_path / "out"
    write_predict(out)  # 50 rows in chunks of 7: the last chunk holds 1 row and 6 of padding
    flip(out / "predictions" / "c" / "7", 8 * 3)
    assert open_output(out).verify() == []
    flip(out / "predictions" / "c" / "7", 0)
    assert len(open_output(out).verify()) == 1


# -- tasks (format version 2) and version 1 outputs ------------------------------------------------------------------

def _write_task(out, task: dict, outputs: np.ndarray, chunk_rows: int = 4):
    """A predict output of ``task`` whose arrays come from the model outputs ``outputs`` [n, W] (predict_rows)."""
    out.mkdir()
    n = len(outputs)
    w = OutputWriter(out, n, predict_columns(task), chunk_rows=chunk_rows)
    rows = predict_rows(task, outputs)
    w.append(node_ids=np.arange(n), **rows)
    w.finish({**BODY, "task": task})
    return rows


def _rewrite(out, **changes):
    """Rewrite ``out``'s manifest with ``changes`` (a key set to None is dropped) as a well-formed manifest."""
    m = json.loads((out / "manifest.json").read_text())
    version = changes.pop("format_version", INFERENCE_VERSION)
    body = {k: v for k, v in {**m, **changes}.items() if v is not None and k not in
            ("format", "format_version", "created_by", "created_at", "checksum")}
    write_manifest(out, INFERENCE_FORMAT, version, body)


@pytest.mark.parametrize("task, arrays", [
    (output_task("classification", 5), {"logits": ((17, 5), "float32"), "predictions": ((17,), "int64")}),
    (output_task("multilabel", 5), {"logits": ((17, 5), "float32"), "predictions": ((17, 5), "uint8")}),
    (output_task("regression", 1), {"predictions": ((17,), "float32")}),
    (output_task("regression", 1, [1]), {"predictions": ((17, 1), "float32")}),
    (output_task("regression", 3, [3]), {"predictions": ((17, 3), "float32")}),
])
def test_predict_arrays_per_task(tmp_path, task, arrays):
    import pyarrow as pa
    import pyarrow.parquet as pq

    width = task["num_outputs"]
    outputs = np.random.default_rng(2).standard_normal((17, width)).astype(np.float32)
    rows = _write_task(tmp_path / "out", task, outputs)
    o = open_output(tmp_path / "out")
    assert o.task == task and o.manifest["task"] == task and o.verify() == []
    assert o.array_names == ["node_ids", *arrays]
    for name, (shape, dtype) in arrays.items():
        got = o.read(name)
        assert got.shape == shape and got.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got, rows[name])
    kind = task["kind"]
    pred = o.read("predictions")
    if kind == "classification":
        np.testing.assert_array_equal(pred, outputs.argmax(1))
    elif kind == "multilabel":
        np.testing.assert_array_equal(pred, (outputs > 0).astype(np.uint8))
    else:
        np.testing.assert_array_equal(pred.reshape(17, width), outputs)
    p = tmp_path / "p.parquet"
    write_parquet(o, p, rows_per_group=5)
    t = pq.read_table(p)
    assert t.column_names == ["node_id", "prediction", *(["logits"] if kind != "regression" else [])]
    assert t.schema.metadata[b"diskgraph.task"] == kind.encode()
    want_type = {"classification": pa.int64(), "multilabel": pa.list_(pa.uint8(), width),
                 "regression": pa.float32() if not task.get("target_shape") else pa.list_(pa.float32(), width)}[kind]
    assert t.schema.field("prediction").type == want_type
    got = t["prediction"].to_pylist()
    np.testing.assert_array_equal(np.array(got, dtype=pred.dtype), pred)
    summary = o.prediction_summary(slice_rows=4)
    assert summary["task"] == kind and summary["num_outputs"] == width
    if kind == "classification":
        assert summary["predicted_counts"] == {str(i): int(k) for i, k in enumerate(np.bincount(pred, minlength=5))}
    elif kind == "multilabel":
        assert summary["predicted_positives"] == {str(i): int(k) for i, k in enumerate(pred.sum(0))}
        assert summary["mean_positives"] == pytest.approx(pred.sum() / 17)
    else:
        np.testing.assert_allclose(summary["mean"], outputs.astype(np.float64).mean(0), rtol=1e-9)
        np.testing.assert_allclose(summary["std"], outputs.astype(np.float64).std(0), rtol=1e-6)


def test_writer_refuses_arrays_that_are_not_the_tasks(tmp_path):
    reg = output_task("regression", 1)
    for i, (task, columns) in enumerate([
        (reg, {"node_ids": ((), "int64"), "logits": ((1,), "float32"), "predictions": ((), "float32")}),
        (reg, {"node_ids": ((), "int64"), "predictions": ((1,), "float32")}),  # [M, 1] for [N] targets
        (output_task("multilabel", 5), PREDICT),  # int64 [M] predictions
    ]):
        (tmp_path / str(i)).mkdir()
        w = OutputWriter(tmp_path / str(i), 0, columns)
        with pytest.raises(ValueError, match=f"a {task['kind']} predict output needs the arrays"):
            w.finish({**BODY, "task": task})
    with pytest.raises(ValueError, match="not one of"):
        output_task("ranking", 3)
    with pytest.raises(ValueError, match="positive whole number"):
        output_task("multilabel", 0)
    with pytest.raises(ValueError, match="does not hold"):
        output_task("regression", 3, [2])


def test_version_1_outputs_are_read_as_classification(tmp_path):
    """A version 1 output (before label kinds: no task) opens, exports and summarizes as classification."""
    import pyarrow.parquet as pq

    out = tmp_path / "out"
    ids, logits, preds = write_predict(out)
    _rewrite(out, format_version=1, task=None)
    o = open_output(out)
    assert o.manifest["format_version"] == 1 and "task" not in o.manifest
    assert o.task == {"kind": "classification", "num_outputs": 5}
    write_parquet(o, tmp_path / "v1.parquet")
    t = pq.read_table(tmp_path / "v1.parquet")
    assert t.column_names == ["node_id", "prediction", "logits"]
    np.testing.assert_array_equal(t["prediction"].to_numpy(), preds)
    assert sum(o.prediction_summary()["predicted_counts"].values()) == 50
    e_out = tmp_path / "emb"
    write_embed(e_out)
    _rewrite(e_out, format_version=1)
    assert open_output(e_out).task is None and open_output(e_out).kind == "embed"


def test_bad_or_unknown_tasks_are_refused(tmp_path):
    out = tmp_path / "out"
    write_predict(out)
    _rewrite(out, task={"kind": "ranking", "num_outputs": 5})
    with pytest.raises(FormatError, match="task 'ranking', which this diskgraph does not know; upgrade diskgraph"):
        open_output(out)
    _rewrite(out, task={"kind": "classification", "num_outputs": "five"})
    with pytest.raises(FormatError, match="bad task entry"):
        open_output(out)
    _rewrite(out, task={"kind": "multilabel", "num_outputs": 5})  # int64 [M] predictions are not multilabel ones
    with pytest.raises(FormatError, match=r"predictions.*a multilabel predict output with 5 outputs has predictions "
                                          r"uint8") as e:
        open_output(out)
    assert "run the inference again" in str(e.value)
    _rewrite(out, task={"kind": "regression", "num_outputs": 1})  # regression has no logits but needs predictions
    with pytest.raises(FormatError, match="float32"):
        open_output(out)
    _rewrite(out, task={"kind": "classification", "num_outputs": 5})
    assert open_output(out).task["kind"] == "classification"
