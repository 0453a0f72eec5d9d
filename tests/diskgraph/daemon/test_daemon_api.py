"""The HTTP API: bearer token, refusals (400/401/404/405/409), concurrent submissions, OpenAPI, metrics, CLI.

The daemon runs in this process with ``max_concurrent=0`` (jobs are accepted and wait), so these
tests start no job processes.
"""

from __future__ import annotations

import json
import os
import re
import stat
import threading

import pytest

from daemon_helpers import metric_families, request

from diskgraph.daemon.daemon import Daemon
from diskgraph.daemon.server import ROUTES
from diskgraph.daemon.spec import SpecError, parse_body
from diskgraph.store.errors import InputError

MAX_BODY = 64 << 10


@pytest.fixture
def daemon(workspace, tmp_path):
    d = Daemon(tmp_path / "root", allowed_roots=[workspace], port=0, max_concurrent=0, max_body=MAX_BODY).start()
    yield d
    d.stop()


def _call(d, method, path, body=None, token="default", **kw):
    return request(d.url, d.token if token == "default" else token, method, path, body, **kw)


def _one_sentence(message: str) -> None:
    assert message and "\n" not in message and "Traceback" not in message
    assert ". " not in message.replace("e.g. ", ""), message


def test_token_file_is_private_and_kept(daemon, tmp_path):
    token_path = tmp_path / "root" / "token"
    assert stat.S_IMODE(token_path.stat().st_mode) == 0o600
    assert token_path.read_text().strip() == daemon.token and len(daemon.token) >= 32
    daemon.stop()
    again = Daemon(tmp_path / "root", allowed_roots=[tmp_path], port=0, max_concurrent=0).start()
    try:
        assert again.token == daemon.token
    finally:
        again.stop()
    os.chmod(token_path, 0o644)
    with pytest.raises(InputError, match="chmod 600"):
        Daemon(tmp_path / "root", allowed_roots=[tmp_path], port=0).start()


def test_a_second_daemon_on_the_same_root_is_refused(daemon, tmp_path):
    with pytest.raises(InputError, match="another daemon already serves"):
        Daemon(tmp_path / "root", allowed_roots=[tmp_path], port=0).start()


def test_missing_or_wrong_token_is_401(daemon):
    for method, path, _ in ROUTES:
        path = path.replace("{id}", "1")
        for auth in (None, "Bearer wrong-token", "Basic dXNlcjpwYXNz", "Bearer ", "bearer", daemon.token):
            headers = {"Authorization": auth} if auth is not None else {}
            body = {"dataset": "syn", "train": {}} if method == "POST" else None
            status, out, hdrs = _call(daemon, method, path, body, token=None, headers=headers)
            assert status == 401 and hdrs["WWW-Authenticate"].startswith("Bearer"), (method, path, auth)
            _one_sentence(out["error"])
    assert daemon.store.list() == []


def test_refused_bodies_are_400_with_one_sentence(daemon, workspace, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (workspace / "link-out").symlink_to(outside, target_is_directory=True)
    cases = {
        "not json": (b"{\"dataset\": ", "not valid JSON"),
        "not an object": (b"[1, 2]", "must be a JSON object"),
        "not utf-8": (b"\xff\xfe{}", "not UTF-8"),
        "bad toml": (b"dataset = ", "not valid TOML"),
        "traversal": ({"dataset": "../syn", "train": {}}, "'..'"),
        "traversal inside": ({"dataset": "syn/../syn", "train": {}}, "'..'"),
        "absolute elsewhere": ({"dataset": str(outside), "train": {}}, "outside the daemon's allowed roots"),
        "symlink out": ({"dataset": "link-out/ds", "train": {}}, "symbolic link"),
        "input outside": ({"dataset": "new", "preprocess": {"npz": "/etc/passwd"}}, "outside the daemon's allowed roots"),
        "unknown key": ({"dataset": "syn", "train": {}, "priority": 1}, "unknown spec key 'priority'"),
        "unknown option": ({"dataset": "syn", "train": {"epoch": 2}}, "unknown option 'epoch'"),
        "wrong type": ({"dataset": "syn", "train": {"epochs": "2"}}, "train.epochs must be a whole number"),
        "bool for number": ({"dataset": "syn", "train": {"hidden": True}}, "train.hidden must be a whole number"),
        "wrong flag type": ({"dataset": "syn", "train": {"reference": 1}}, "train.reference must be true or false"),
        "bad choice": ({"dataset": "syn", "train": {"model": "mlp"}}, "unknown model 'mlp'"),
        "daemon's option": ({"dataset": "syn", "train": {"run_dir": "x"}}, "set by the daemon"),
        "missing dataset": ({"dataset": "nope", "train": {}}, "does not exist"),
        "no dataset key": ({"train": {}}, "no dataset"),
        "nothing to do": ({"dataset": "syn"}, "neither preprocess nor train"),
        "missing pack": ({"dataset": "syn", "train": {"pack": "other"}}, "pack 'other' does not exist"),
        "pack as a path": ({"dataset": "syn", "train": {"pack": "../x"}}, "bare name"),
        "existing plan": ({"dataset": "syn", "preprocess": {"fanouts": "4,3"}}, "already exists"),
        "bad fanouts": ({"dataset": "syn", "preprocess": {"fanouts": "4,x", "name": "n2"}}, "fanout"),
    }
    for name, (body, needle) in cases.items():
        ctype = "application/toml" if name == "bad toml" else "application/json"
        status, out, _ = _call(daemon, "POST", "/jobs", body, headers={"Content-Type": ctype})
        assert status == 400, (name, out)
        assert needle in out["error"], (name, out["error"])
        _one_sentence(out["error"])
    assert daemon.store.list() == []


def test_deeply_nested_bodies_are_400_with_one_sentence(daemon, tmp_path, cli, refused):
    deep = 30000  # nesting far past Python's recursion limit, in a body under the cap
    cases = {
        "array": ("[" * deep + "]" * deep, "application/json"),
        "object": ('{"a":' * (deep // 3) + "1" + "}" * (deep // 3), "application/json"),
        "toml array": ("a = " + "[" * deep + "]" * deep, "application/toml"),
        "toml table": ("a = " + "{b = " * (deep // 5) + "1" + "}" * (deep // 5), "application/toml"),
        # parses, but deep enough to break what formats the values for messages
        "inside a spec": (json.dumps({"dataset": "syn", "train": {"epochs": json.loads("[" * 900 + "]" * 900)}}),
                          "application/json"),
    }
    for name, (body, ctype) in cases.items():
        status, out, _ = _call(daemon, "POST", "/jobs", body, headers={"Content-Type": ctype})
        assert status == 400, (name, status, out)
        assert "nested" in out["error"], (name, out["error"])
        _one_sentence(out["error"])
    with pytest.raises(SpecError, match="nested deeper than"):
        parse_body(b"[" * 100000 + b"]" * 100000)
    assert daemon.store.list() == [] and _call(daemon, "GET", "/jobs")[0] == 200
    spec = tmp_path / "deep.json"
    spec.write_text(cases["object"][0])
    refused(cli.run("submit", spec, "--root", str(tmp_path / "root")), str(spec), "nested")


def test_oversized_body_is_400_and_the_answer_arrives(daemon):
    big = json.dumps({"dataset": "syn", "train": {}, "name": "x" * (4 * MAX_BODY)})
    status, out, _ = _call(daemon, "POST", "/jobs", big)
    assert status == 400 and f"limit of {MAX_BODY} bytes" in out["error"]
    status, out, _ = _call(daemon, "POST", "/jobs", b"{}", headers={"Content-Length": "", "Transfer-Encoding": "chunked"})
    assert status == 400
    assert daemon.store.list() == []
    assert _call(daemon, "GET", "/jobs")[0] == 200  # the daemon is fine


def test_toml_spec_and_normalised_paths(daemon, workspace):
    body = b'dataset = "syn"\nname = "t"\n[train]\nmodel = "gcn"\nepochs = 2\nfanouts = [4, 3]\n'
    status, out, _ = _call(daemon, "POST", "/jobs", body, headers={"Content-Type": "application/toml"})
    assert status == 201 and out["state"] == "queued", out
    job = _call(daemon, "GET", f"/jobs/{out['id']}")[1]
    assert job["spec"] == {"dataset": str((workspace / "syn").resolve()), "name": "t",
                           "train": {"model": "gcn", "epochs": 2, "fanouts": "4,3", "checkpoint_every": 50}}
    assert job["state"] == "queued" and job["progress"]["stage"] is None and job["checkpoint"] is None


def test_not_found_wrong_method_and_cancel(daemon):
    assert _call(daemon, "GET", "/jobs/99")[0] == 404
    assert _call(daemon, "GET", "/nothing")[0] == 404
    assert _call(daemon, "GET", "/jobs/abc")[0] == 404
    status, out, _ = _call(daemon, "DELETE", "/jobs")
    assert status == 405 and "GET or POST" in out["error"]
    assert _call(daemon, "GET", "/jobs/1/cancel")[0] == 405
    assert _call(daemon, "GET", "/jobs?state=bogus")[0] == 400
    assert _call(daemon, "GET", "/jobs?limit=x")[0] == 400
    job_id = _call(daemon, "POST", "/jobs", {"dataset": "syn", "train": {"epochs": 1}})[1]["id"]
    status, out, _ = _call(daemon, "POST", f"/jobs/{job_id}/cancel")
    assert status == 200 and out["state"] == "cancelled"
    status, out, _ = _call(daemon, "POST", f"/jobs/{job_id}/cancel")
    assert status == 409 and "already cancelled" in out["error"]
    job = _call(daemon, "GET", f"/jobs/{job_id}")[1]
    assert [(t["from_state"], t["to_state"]) for t in job["transitions"]] == [(None, "queued"), ("queued", "cancelled")]


def test_200_submissions_from_8_concurrent_clients(daemon):
    clients, each = 8, 25
    answers: dict[int, list[int]] = {c: [] for c in range(clients)}
    errors = []
    start = threading.Barrier(clients)

    def client(c: int):
        start.wait()
        for i in range(each):
            status, out, _ = _call(daemon, "POST", "/jobs", {"dataset": "syn", "name": f"c{c}-{i}", "train": {"epochs": 1}})
            if status != 201:
                errors.append(out)
            else:
                answers[c].append(out["id"])

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    ids = sorted(i for a in answers.values() for i in a)
    assert ids == list(range(1, clients * each + 1))  # all recorded, none lost or duplicated
    jobs = _call(daemon, "GET", "/jobs?limit=1000")[1]["jobs"]
    assert [j["id"] for j in jobs] == ids and all(j["state"] == "queued" for j in jobs)
    by_id = {j["id"]: j for j in jobs}
    for c, got in answers.items():
        assert [by_id[i]["name"] for i in got] == [f"c{c}-{i}" for i in range(each)]  # each client's own order
        assert got == sorted(got)
    times = [j["submitted_at"] for j in jobs]
    assert times == sorted(times)  # ids follow the order the submissions were recorded in
    assert all(len(daemon.store.transitions(i)) == 1 for i in ids)
    metrics = _call(daemon, "GET", "/metrics")[1]
    assert 'diskgraph_jobs{state="queued"} 200' in metrics and "diskgraph_queue_depth 200" in metrics


def _check_schema(doc: dict, schema: dict, value, where: str) -> None:
    """A small JSON-schema walk: $ref, allOf, type (with null), required, properties, items, enum."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return _check_schema(doc, doc["components"]["schemas"][name], value, where)
    for part in schema.get("allOf", []):
        _check_schema(doc, part, value, where)
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        py = {"object": dict, "array": list, "string": str, "integer": int, "number": (int, float), "boolean": bool,
              "null": type(None)}
        assert any(isinstance(value, py[t]) and not (t in ("integer", "number") and isinstance(value, bool))
                   for t in types), f"{where}: {value!r} is not {types}"
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
    if isinstance(value, dict):
        for key in schema.get("required", []):
            assert key in value, f"{where}: missing {key}"
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                _check_schema(doc, sub, value[key], f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            _check_schema(doc, schema["items"], item, f"{where}[{i}]")


def test_openapi_document_matches_the_routes(daemon):
    status, doc, _ = _call(daemon, "GET", "/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == {(m, p) for m, p, _ in ROUTES}
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    job_id = _call(daemon, "POST", "/jobs", {"dataset": "syn", "train": {"epochs": 1}})[1]["id"]
    bodies = {"/jobs": {"dataset": "syn", "train": {"epochs": 1}}}
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            url = path.replace("{id}", str(job_id))
            params = [p for p in op.get("parameters", []) if p["in"] == "path"]
            assert {p["name"] for p in params} == set(re.findall(r"{(\w+)}", path)), path
            status, out, hdrs = _call(daemon, method.upper(), url, bodies.get(path) if method == "post" else None)
            assert str(status) in op["responses"], (method, path, status)
            content = op["responses"][str(status)]["content"]
            ctype = hdrs["Content-Type"].split(";")[0]
            assert ctype in content, (method, path, ctype)
            if ctype == "application/json":
                _check_schema(doc, content[ctype]["schema"], out, f"{method} {path}")
            # every documented operation refuses a request without the token, as documented
            assert _call(daemon, method.upper(), url, token=None)[0] == 401 and "401" in op["responses"]
            for missing in ("/jobs/987654",):
                if "{id}" in path:
                    status = _call(daemon, method.upper(), path.replace("{id}", missing.rsplit("/", 1)[1]))[0]
                    assert status == 404 and "404" in op["responses"]


def test_metrics_are_prometheus_text(daemon):
    _call(daemon, "POST", "/jobs", {"dataset": "syn", "train": {"epochs": 1}})
    status, text, hdrs = _call(daemon, "GET", "/metrics")
    assert status == 200 and hdrs["Content-Type"].startswith("text/plain; version=0.0.4")
    families = metric_families(text)  # every declared family has a sample
    # no job runs: the daemon-wide families only (the per-job ones appear with running jobs, see test_daemon_jobs)
    assert set(families) == {"diskgraph_jobs", "diskgraph_queue_depth", "diskgraph_running_jobs",
                             "diskgraph_max_concurrent", "diskgraph_job_retries_total"}
    assert 'diskgraph_jobs{state="queued"} 1' in text and 'diskgraph_jobs{state="running"} 0' in text


def test_cli_submit_jobs_logs_cancel(daemon, workspace, tmp_path, cli, refused, monkeypatch):
    spec = tmp_path / "job.toml"
    spec.write_text('dataset = "syn"\nname = "from-cli"\n[train]\nepochs = 1\nhidden = 8\n')
    root = ["--root", str(tmp_path / "root")]
    r = cli.run("submit", spec, *root)
    assert r.rc == 0, r.err
    job_id = int(r.out.strip())
    r = cli.run("jobs", *root)
    assert r.rc == 0 and re.search(rf"^\s+{job_id}\s+queued\s+0\s+from-cli\s+-\s", r.out, re.M), r.out
    assert r.out.splitlines()[0].split() == ["ID", "STATE", "TRIES", "NAME", "STAGE", "REASON"]
    r = cli.run("jobs", str(job_id), *root)
    assert json.loads(r.out)["spec"]["train"]["hidden"] == 8
    assert cli.run("logs", str(job_id), *root).rc == 0
    # the address and token from the environment instead of the root
    monkeypatch.setenv("DISKGRAPH_URL", daemon.url)
    monkeypatch.setenv("DISKGRAPH_TOKEN", daemon.token)
    monkeypatch.setenv("DISKGRAPH_ROOT", str(tmp_path / "elsewhere"))
    r = cli.run("cancel", str(job_id))
    assert r.rc == 0 and "cancelled" in r.out
    r = cli.run("jobs", "--state", "cancelled", "--json")
    assert [j["id"] for j in json.loads(r.out)] == [job_id]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"dataset": "../etc", "train": {}}))
    refused(cli.run("submit", bad), "'..'")
    monkeypatch.setenv("DISKGRAPH_TOKEN", "wrong")
    refused(cli.run("jobs"), "401")
    monkeypatch.setenv("DISKGRAPH_URL", "http://127.0.0.1:9")
    refused(cli.run("jobs"), "cannot reach the daemon")
