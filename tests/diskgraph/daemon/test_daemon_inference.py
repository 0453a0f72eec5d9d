"""Inference jobs: a spec's ``[predict]`` / ``[embed]`` tables after ``[train]``.

The spec checks (keys, types, paths, the model's layers) and the runner's stage logic (options handed to the
engine, order, skipping finished training, keeping a finished output, refusing a foreign one) run in this process,
most with a fake engine; a real stop-and-resume in this process shows that the second attempt continues after the
finished layer with the same logits; one daemon in a subprocess trains, predicts and embeds, its job process is
SIGKILLed while predict computes layer 2, and the retry resumes at layer 2 (status, ``jobs`` and ``/metrics``
name the stage meanwhile).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time

import numpy as np
import pytest

from daemon_helpers import DaemonProcess, metric_families

from diskgraph.daemon.jobdir import JobDir
from diskgraph.daemon.runner import run_job
from diskgraph.daemon.spec import SpecChecker, SpecError, parse_body
from diskgraph.pipeline.trainer import StopRequested
from diskgraph.store.errors import InputError

TRAIN = {"model": "sage", "hidden": 16, "epochs": 1, "seed": 3, "device": "cpu", "checkpoint_every": 4}
SMALL_BUDGET = "192K"
"""Exact mode's memory budget in the tests that stop it mid-way: many partitions, so a layer takes a while."""


@pytest.fixture(scope="module")
def trained_run(workspace, tmp_path_factory):
    """A finished training run of TRAIN on ``syn`` (copied into each job's ``run/``)."""
    from diskgraph.train import TrainOptions, run_training

    run_dir = tmp_path_factory.mktemp("inference-run") / "run"
    run_training(workspace / "syn", TrainOptions(**TRAIN, run_dir=str(run_dir)))
    return run_dir


def _job(workspace, tmp_path, spec: dict, trained_run=None, attempt: int = 1, done=()):
    """A checked spec, its job directory (with the trained run and ``done`` recorded, when given) and the job."""
    spec = SpecChecker([workspace]).check(spec)
    jd = JobDir(tmp_path / "job")
    jd.prepare(7, spec, attempt=attempt, recovering=attempt > 1, allowed_roots=[str(workspace)])
    if trained_run is not None:
        shutil.copytree(trained_run, jd.run)
    if done:
        jd.write_progress(None, list(done))
    return spec, jd, {"id": 7, "spec": spec, "attempt": attempt, "allowed_roots": [str(workspace)]}


# -- the spec ------------------------------------------------------------------------------------------------------


def test_spec_takes_predict_and_embed_tables_after_train(workspace):
    checker = SpecChecker([workspace])
    body = parse_body(b'dataset = "syn"\n[train]\nepochs = 1\n[predict]\nmemory-budget = "512M"\nnodes = "test"\n'
                      b'[embed]\nlayer = 1\ndtype = "float16"\nout = "emb-out"\nparquet = "emb.parquet"\n',
                      "application/toml")
    spec = checker.check(body)
    assert spec["predict"] == {"memory_budget": "512M", "nodes": "test"}
    assert spec["embed"] == {"layer": 1, "dtype": "float16", "out": str((workspace / "emb-out").resolve()),
                             "parquet": str((workspace / "emb.parquet").resolve())}
    ids = workspace / "some-ids.npy"
    np.save(ids, np.array([3, 1, 2]))
    spec = checker.check({"dataset": "syn", "train": {}, "predict": {"nodes": "some-ids.npy", "mode": "sampled",
                                                                     "fanouts": [5, 5], "batch_size": 32}})
    assert spec["predict"]["nodes"] == str(ids.resolve()) and spec["predict"]["fanouts"] == [5, 5]


@pytest.mark.parametrize("spec, match", [
    ({"predict": {}}, "has a predict table but no train table"),
    ({"train": {}, "predict": {"run": "x"}}, r"predict\.run is set by the daemon"),
    ({"train": {}, "embed": {"overwrite": True}}, r"embed\.overwrite is set by the daemon"),
    ({"train": {}, "predict": {"log-json": "x.jsonl"}}, r"predict\.log-json is set by the daemon"),
    ({"train": {}, "predict": {"kind": "embed"}}, r"predict\.kind is set by the daemon"),
    ({"train": {}, "predict": {"epochs": 3}}, "predict spec has unknown option 'epochs'; the options are out, nodes"),
    ({"train": {}, "predict": {"layer": 1}}, r"predict\.layer is an option of embed only"),
    ({"train": {}, "predict": {"dtype": "float16"}}, r"predict\.dtype is an option of embed only"),
    ({"train": {}, "embed": {"layer": 3}}, r"embed\.layer 3 is out of range: the model the job trains has 2 layers"),
    ({"train": {}, "embed": {"layer": 0}}, r"embed\.layer must be a whole number of at least 1"),
    ({"train": {}, "embed": {"dtype": "int8"}}, r"embed\.dtype must be one of \"float32\", \"float16\""),
    ({"train": {}, "predict": {"mode": "fast"}}, r"predict\.mode must be one of \"exact\", \"sampled\""),
    ({"train": {}, "predict": {"memory_budget": "lots"}}, r"predict\.memory_budget: 'lots' is not a size"),
    ({"train": {}, "predict": {"memory_budget": True}}, r"predict\.memory_budget must be a size"),
    ({"train": {}, "predict": {"fanouts": [5, 5]}}, r"predict\.fanouts applies to mode \"sampled\" only"),
    ({"train": {}, "predict": {"mode": "sampled", "fanouts": [5]}}, r"has 1 hops but the model the job trains has 2"),
    ({"train": {}, "predict": {"mode": "sampled", "storage": "ram"}}, r"predict\.storage applies to mode \"exact\""),
    ({"train": {}, "predict": {"device": "tpu"}}, r"predict\.device must be \"auto\", \"cpu\" or \"cuda\[:N\]\""),
    ({"train": {}, "predict": {"nodes": "nowhere.npy"}}, r"predict\.nodes 'nowhere\.npy' is neither all"),
    ({"train": {}, "predict": {"out": "syn"}}, r"predict\.out 'syn' already exists and a job never replaces it"),
    ({"train": {}, "predict": {"out": "/elsewhere/pred"}}, "outside the daemon's allowed roots"),
    ({"train": {}, "predict": {"out": "../pred"}}, "contains '..'"),
    ({"train": {}, "predict": {"out": "no/such/pred"}}, "its parent directory does not exist"),
    ({"train": {}, "predict": {"out": "o"}, "embed": {"out": "o"}}, r"embed\.out \S+ and predict\.out \S+ overlap"),
    ({"train": {}, "predict": {"out": "o", "parquet": "o/p.parquet"}}, "its parent directory does not exist"),
    ({"train": {}, "predict": {"out": "o"}, "embed": {"parquet": "o"}}, r"embed\.parquet \S+ and predict\.out"),
    ({"train": {}, "predict": []}, "predict must be a table of `diskgraph predict` options"),
])
def test_spec_refuses_bad_inference_tables_in_one_sentence(workspace, spec, match):
    with pytest.raises(SpecError, match=match) as e:
        SpecChecker([workspace]).check({"dataset": "syn", **spec})
    assert "\n" not in str(e.value)


def test_layer_range_follows_the_model_the_job_makes(workspace, raw_inputs_ws):
    checker = SpecChecker([workspace, raw_inputs_ws])
    # a pack the job makes: its fanouts give the layers (three here)
    pre = {"edges": str(raw_inputs_ws / "edges.npy"), "features": str(raw_inputs_ws / "features.npy"),
           "labels": str(raw_inputs_ws / "labels.npy"), "fanouts": "4,3,2"}
    checker.check({"dataset": "new-ds", "preprocess": pre, "train": {}, "embed": {"layer": 3}})
    with pytest.raises(SpecError, match="has 3 layers"):
        checker.check({"dataset": "new-ds", "preprocess": pre, "train": {}, "embed": {"layer": 4}})
    with pytest.raises(SpecError, match="has 2 layers"):  # train.layers when given
        checker.check({"dataset": "syn", "train": {"layers": 2}, "embed": {"layer": 4}})


@pytest.fixture(scope="module")
def raw_inputs_ws(tmp_path_factory):
    from diskgraph.generate import write_raw_inputs

    raw = tmp_path_factory.mktemp("inference-raw") / "raw"
    write_raw_inputs(raw, nodes=500, edges=3000, feature_dim=8, classes=4, seed=1)
    return raw


# -- the runner, with a fake engine --------------------------------------------------------------------------------


@pytest.fixture
def fake_engine(monkeypatch):
    import diskgraph.inference as inference

    calls = []

    def run_inference(dataset, opts):
        calls.append((str(dataset), opts))
        return {"summary": True, "kind": opts.kind, "nodes": 3000, "out": opts.out}

    monkeypatch.setattr(inference, "run_inference", run_inference)
    return calls


def test_runner_hands_the_engine_its_options_after_training(workspace, tmp_path, fake_engine, monkeypatch):
    import diskgraph.train as train

    spec, jd, job = _job(workspace, tmp_path, {
        "dataset": "syn", "train": TRAIN, "predict": {"memory_budget": "1M", "nodes": "test"},
        "embed": {"layer": 1, "dtype": "float16", "out": "emb-a", "storage": "ram"}})
    order = []
    monkeypatch.setattr(train, "run_training", lambda ds, opts: order.append("train") or {"summary": True})
    stop = threading.Event()
    assert run_job(job, jd, stop, {}) == {"summary": True}
    assert order == ["train"] and [opts.kind for _, opts in fake_engine] == ["predict", "embed"]
    (ds, p), (_, e) = fake_engine
    home = os.path.realpath(jd.path)
    assert ds == spec["dataset"]
    assert (p.run, p.out, p.nodes, p.memory_budget, p.overwrite, p.stop, p.layer, p.log_json) == (
        str(jd.run), os.path.join(home, "predict"), "test", 1 << 20, False, stop, None, None)
    assert (e.out, e.layer, e.dtype, e.storage, e.memory_budget) == (str(workspace.resolve() / "emb-a"), 1, "float16",
                                                                      "ram", None)
    assert jd.stages_done() == ["train", "predict", "embed"]
    assert jd.inference()["predict"] == {"summary": True, "kind": "predict", "nodes": 3000,
                                         "out": os.path.join(home, "predict")}
    assert jd.progress()["stage"] is None and "output" not in jd.progress()


def test_finished_training_goes_straight_to_inference(workspace, tmp_path, trained_run, fake_engine, monkeypatch):
    import diskgraph.train as train

    # the attempt before finished training (metrics.jsonl ends with the summary) and died before recording it
    spec, jd, job = _job(workspace, tmp_path, {"dataset": "syn", "train": TRAIN, "predict": {}}, trained_run, attempt=2)
    monkeypatch.setattr(train, "run_training", lambda *a: pytest.fail("finished training ran again"))
    summary = run_job(job, jd, threading.Event(), {})
    assert summary["summary"] is True and summary["epochs"] == TRAIN["epochs"]
    assert jd.stages_done() == ["train", "predict"] and len(fake_engine) == 1
    assert fake_engine[0][1].overwrite  # a later attempt may replace what an earlier one wrote (the Parquet table)


def test_a_stop_during_inference_leaves_the_stage_to_resume(workspace, tmp_path, trained_run, monkeypatch):
    import diskgraph.inference as inference

    spec, jd, job = _job(workspace, tmp_path, {"dataset": "syn", "train": TRAIN, "predict": {}, "embed": {}},
                         trained_run, attempt=2, done=["train"])
    training, seen = {"on": False}, []

    def stopped(dataset, opts):
        seen.append(training["on"])  # on: the runner's SIGTERM handler only sets opts.stop, the engine stops itself
        raise StopRequested()

    monkeypatch.setattr(inference, "run_inference", stopped)
    with pytest.raises(StopRequested):
        run_job(job, jd, threading.Event(), training)
    assert seen == [True] and training == {"on": False} and jd.stages_done() == ["train"]
    p = jd.progress()
    assert p["stage"] == "predict" and p["output"] == os.path.join(os.path.realpath(jd.path), "predict")


# -- the runner, with the real engine ------------------------------------------------------------------------------


def _read(out, name):
    from diskgraph.store.inference_output import open_output

    return open_output(out).read(name)


def test_stopped_inference_resumes_after_the_finished_layer(workspace, tmp_path, trained_run, monkeypatch, caplog):
    import diskgraph.pipeline.layerwise as layerwise
    from diskgraph.inference import run_inference
    from diskgraph.inference_options import InferenceOptions

    spec, jd, job = _job(workspace, tmp_path, {"dataset": "syn", "train": TRAIN,
                                              "predict": {"memory_budget": SMALL_BUDGET, "parquet": "p.parquet"}},
                         trained_run, attempt=1, done=["train"])
    stop = threading.Event()
    write_state = layerwise._write_state

    def then_stop(*a, **k):  # the daemon's SIGTERM lands just after layer 1 is finished and recorded
        write_state(*a, **k)
        stop.set()

    with monkeypatch.context() as m:
        m.setattr(layerwise, "_write_state", then_stop)
        with pytest.raises(StopRequested):
            run_job(job, jd, stop, {})
    out = jd.path / "predict"
    assert not out.exists() and jd.stages_done() == ["train"]
    assert jd.progress()["layers_done"] == 1 and jd.progress()["layers"] == 2
    job["attempt"] = 2
    caplog.set_level("INFO", logger="diskgraph")
    run_job(job, jd, threading.Event(), {})
    assert "resuming layer-wise inference at layer 2" in caplog.text
    summary = jd.inference()["predict"]
    assert summary["resumed_after_layer"] == 1 and summary["nodes"] == 3000 and summary["parquet_bytes"] > 0
    reference = run_inference(workspace / "syn", InferenceOptions(kind="predict", run=str(trained_run),
                                                                  out=str(tmp_path / "ref"), memory_budget=192 << 10))
    assert reference["resumed_after_layer"] == 0
    np.testing.assert_array_equal(_read(out, "node_ids"), np.arange(3000))
    np.testing.assert_array_equal(_read(out, "logits"), _read(tmp_path / "ref", "logits"))
    assert not [p.name for p in jd.path.iterdir() if p.name.startswith(".")]  # no scratch or temporaries left


def test_a_finished_output_is_kept_and_a_foreign_one_refused(workspace, tmp_path, trained_run, monkeypatch):
    import pyarrow.parquet as pq

    import diskgraph.inference as inference
    from diskgraph.inference_options import InferenceOptions

    real = inference.run_inference
    parquet = workspace / f"e-{tmp_path.name}.parquet"
    spec, jd, job = _job(workspace, tmp_path, {"dataset": "syn", "train": TRAIN,
                                              "embed": {"layer": 1, "parquet": parquet.name}},
                         trained_run, attempt=2, done=["train"])
    out = jd.path / "embed"
    # an attempt renamed the output into place and died before the Parquet table and before recording the stage
    real(spec["dataset"], InferenceOptions(kind="embed", run=str(jd.run), out=str(out), layer=1))
    monkeypatch.setattr(inference, "run_inference", lambda *a: pytest.fail("a finished output was computed again"))
    assert run_job(job, jd, threading.Event(), {})["epochs"] == TRAIN["epochs"]  # the job's summary: training's
    assert jd.stages_done() == ["train", "embed"] and pq.read_table(parquet).num_rows == 3000
    assert jd.inference()["embed"]["out"] == str(out) and jd.inference()["embed"]["nodes"] == 3000
    # a foreign directory, or another run's output, at OUT: the job stops without touching it
    other = tmp_path / "other-run"
    shutil.copytree(jd.run, other)
    for foreign in ("a directory of the user's", "another run's output"):
        shutil.rmtree(out)
        if foreign == "another run's output":
            real(spec["dataset"], InferenceOptions(kind="embed", run=str(other), out=str(out), layer=1))
        else:
            out.mkdir()
            (out / "mine.txt").write_text("keep me")
        jd.write_progress(None, ["train"])
        with pytest.raises(InputError, match="the job does not replace it") as e:
            run_job(job, jd, threading.Event(), {})
        assert "\n" not in str(e.value) and out.is_dir() and jd.stages_done() == ["train"], foreign
    job["attempt"] = 1  # a first attempt adopts nothing, not even an output of its own run
    with pytest.raises(InputError, match="already exists; a job never replaces outputs it did not make"):
        run_job(job, jd, threading.Event(), {})


# -- a daemon: train, predict (killed in layer 2, resumed), embed ----------------------------------------------------


def test_daemon_job_predicts_and_embeds_and_resumes_a_killed_predict_at_its_layer(workspace, tmp_path):
    from test_daemon_api import _check_schema

    root = tmp_path / "root"
    daemon = DaemonProcess(root, workspace, "--max-concurrent", "1", "--max-retries", "2").start()
    try:
        status, body, _ = daemon.api("POST", "/jobs", (
            f'dataset = "syn"\nname = "infer"\n[train]\n{_toml(TRAIN)}\n[predict]\nmemory_budget = "{SMALL_BUDGET}"\n'
            f'[embed]\nlayer = 1\ndtype = "float16"\nout = "emb-{tmp_path.name}"\n'),
            headers={"Content-Type": "application/toml"})
        assert status == 201, body
        job_id = body["id"]
        jobdir = root / "jobs" / str(job_id)
        scratch = jobdir / ".predict.diskgraph-inference"
        state = scratch / "layerwise-state.json"
        deadline = time.time() + 120
        while not (scratch / "layer2").exists():  # predict's layer 1 is writing layer 2's tables
            assert time.time() < deadline, daemon.job(job_id)
            time.sleep(0.001)
        pid = daemon.job(job_id)["pid"]
        os.kill(pid, signal.SIGSTOP)
        while not state.exists():  # step the frozen job 2 ms at a time until layer 1 has finished
            assert time.time() < deadline, daemon.job(job_id)
            os.kill(pid, signal.SIGCONT)
            time.sleep(0.002)
            os.kill(pid, signal.SIGSTOP)
            time.sleep(0.002)
        assert not (jobdir / "predict").exists(), "predict finished before the test could stop it in layer 2"
        job = daemon.job(job_id)
        assert job["stage"] == "predict" and job["progress"]["stage"] == "predict"
        assert (job["progress"]["layers_done"], job["progress"]["layers"]) == (1, 2)
        assert job["progress"]["stages_done"] == ["train"]
        listed = daemon.api("GET", "/jobs")[1]["jobs"]
        assert [(j["id"], j["stage"]) for j in listed] == [(job_id, "predict")]
        metrics = metric_families(daemon.api("GET", "/metrics")[1])
        assert metrics["diskgraph_job_stage"] == [f'diskgraph_job_stage{{job="{job_id}",stage="predict"}} 1']
        assert metrics["diskgraph_job_inference_layers_done"] == [
            f'diskgraph_job_inference_layers_done{{job="{job_id}",stage="predict"}} 1']
        os.kill(pid, signal.SIGKILL)
        job = daemon.wait_state(job_id, ("succeeded", "failed"))
        assert job["state"] == "succeeded", job
        assert (job["attempts"], job["retries"]) == (2, 1) and job["stage"] is None
        assert job["progress"]["stages_done"] == ["train", "predict", "embed"]
        log = (jobdir / "log.txt").read_text()
        assert "stage train: finished by an earlier attempt, skipped" in log
        assert "resuming layer-wise inference at layer 2" in log
        doc = daemon.api("GET", "/openapi.json")[1]
        _check_schema(doc, doc["components"]["schemas"]["Job"], job, "job")
        predict, embed = job["inference"]["predict"], job["inference"]["embed"]
        assert predict["resumed_after_layer"] == 1 and predict["out"] == str(jobdir.resolve() / "predict")
        assert embed["out"] == str(workspace.resolve() / f"emb-{tmp_path.name}") and embed["layer"] == 1
        import zarr

        g = zarr.open_group(str(jobdir / "predict"), mode="r")
        logits, predictions = g["logits"][:], g["predictions"][:]
        np.testing.assert_array_equal(g["node_ids"][:], np.arange(3000))
        assert logits.shape == (3000, 4) and (predictions == logits.argmax(1)).all()
        e = zarr.open_group(embed["out"], mode="r")["embeddings"]
        assert e.shape == (3000, TRAIN["hidden"]) and e.dtype == np.float16
        # the resumed logits equal an uninterrupted run of the same request
        from diskgraph.inference import run_inference
        from diskgraph.inference_options import InferenceOptions

        run_inference(workspace / "syn", InferenceOptions(kind="predict", run=str(jobdir / "run"),
                                                          out=str(tmp_path / "ref"), memory_budget=192 << 10))
        np.testing.assert_array_equal(logits, _read(tmp_path / "ref", "logits"))
    finally:
        daemon.stop()


def _toml(table: dict) -> str:
    return "\n".join(f"{k} = {json.dumps(v)}" for k, v in table.items())
