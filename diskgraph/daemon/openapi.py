"""The OpenAPI 3.1 document of the daemon's API, served at ``GET /openapi.json``.

Written by hand (it is the contract); ``tests/diskgraph/daemon/test_api.py`` walks it against the
server's routes and live answers.
"""

from __future__ import annotations

from .. import __version__
from . import STATES


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "401": {"$ref": "#/components/responses/Unauthorized"},
}
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}, "description": "job id"}
_NOT_FOUND = _json(_ref("Error"), "no such job")

_SCHEMAS = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string",
                                                                              "description": "one sentence"}}},
    "Spec": {
        "type": "object", "required": ["dataset"], "additionalProperties": False,
        "description": "A job: preprocess and/or train, then predict and/or embed with the trained model. Section keys "
                       "are the options of `diskgraph preprocess all`, `diskgraph train`, `diskgraph predict` and "
                       "`diskgraph embed` (dashes or underscores); see docs/daemon.md.",
        "properties": {
            "dataset": {"type": "string", "description": "dataset directory, relative to the first allowed root or absolute inside one"},
            "name": {"type": "string", "maxLength": 200},
            "preprocess": {"type": "object", "description": "options of `diskgraph preprocess all` (without out/overwrite)"},
            "train": {"type": "object", "description": "options of `diskgraph train` (without run_dir/resume/overwrite/log_json/step_log)"},
            "predict": {"type": "object", "description": "options of `diskgraph predict` (without run/overwrite/log_json; "
                                                         "out defaults to the job's directory); needs train"},
            "embed": {"type": "object", "description": "options of `diskgraph embed` (without run/overwrite/log_json; "
                                                       "out defaults to the job's directory); needs train"},
        },
    },
    "Submitted": {"type": "object", "required": ["id", "state"],
                  "properties": {"id": {"type": "integer"}, "state": {"type": "string", "enum": ["queued"]}}},
    "JobSummary": {
        "type": "object",
        "required": ["id", "name", "state", "submitted_at", "started_at", "finished_at", "attempts", "retries", "reason",
                     "stage"],
        "properties": {
            "id": {"type": "integer"}, "name": {"type": ["string", "null"]},
            "state": {"type": "string", "enum": list(STATES)},
            "submitted_at": {"type": "number", "description": "Unix time"},
            "started_at": {"type": ["number", "null"]}, "finished_at": {"type": ["number", "null"]},
            "attempts": {"type": "integer", "description": "processes started for the job"},
            "retries": {"type": "integer", "description": "restarts after its process was killed by a signal"},
            "reason": {"type": ["string", "null"], "description": "why it is in its state"},
            "stage": {"type": ["string", "null"], "description": "the stage a running job is in: import, sample, pack, "
                                                                 "train, predict or embed (null otherwise)"},
        },
    },
    "JobList": {"type": "object", "required": ["jobs"],
                "properties": {"jobs": {"type": "array", "items": _ref("JobSummary")}}},
    "Job": {
        "allOf": [_ref("JobSummary"), {
            "type": "object",
            "required": ["spec", "pid", "cancel_requested", "progress", "metrics", "summary", "inference", "checkpoint",
                         "run_dir", "transitions"],
            "properties": {
                "spec": _ref("Spec"), "pid": {"type": ["integer", "null"]}, "cancel_requested": {"type": "boolean"},
                "progress": {"type": "object", "required": ["stage", "stages_done"], "properties": {
                    "stage": {"type": ["string", "null"]}, "stages_done": {"type": "array", "items": {"type": "string"}},
                    "epoch": {"type": "integer"}, "minibatch": {"type": "integer"}, "minibatches": {"type": ["integer", "null"]},
                    "epochs": {"type": "integer"},
                    "output": {"type": "string", "description": "the output a running predict/embed stage writes"},
                    "layers_done": {"type": "integer", "description": "exact mode: layers finished (kept across attempts)"},
                    "layers": {"type": "integer", "description": "exact mode: the layers the stage computes"}}},
                "metrics": {"type": ["object", "null"], "description": "the latest finished epoch's record (metrics.jsonl)"},
                "summary": {"type": ["object", "null"], "description": "the training summary, once it finished"},
                "inference": {"type": "object", "description": "the finished predict/embed stages' summaries (out, nodes, "
                                                               "seconds, read bytes, read amplification, peak memory)",
                              "properties": {"predict": {"type": "object", "required": ["out"]},
                                             "embed": {"type": "object", "required": ["out"]}}},
                "checkpoint": {"type": ["object", "null"], "properties": {
                    "path": {"type": "string"}, "bytes": {"type": "integer"}, "saved_at": {"type": "number"},
                    "epoch": {"type": ["integer", "null"]}, "position": {"type": ["integer", "null"]}}},
                "run_dir": {"type": "string"},
                "transitions": {"type": "array", "items": {"type": "object", "required": ["seq", "at", "from_state", "to_state", "reason"],
                                                           "properties": {"seq": {"type": "integer"}, "at": {"type": "number"},
                                                                          "from_state": {"type": ["string", "null"]},
                                                                          "to_state": {"type": "string"},
                                                                          "reason": {"type": ["string", "null"]}}}},
            }}],
    },
    "LogPage": {
        "type": "object", "required": ["offset", "next_offset", "size", "text", "state", "finished"],
        "properties": {"offset": {"type": "integer"}, "next_offset": {"type": "integer"}, "size": {"type": "integer"},
                       "text": {"type": "string"}, "state": {"type": "string", "enum": list(STATES)},
                       "finished": {"type": "boolean"}},
    },
    "Cancelled": {"type": "object", "required": ["id", "state", "cancel_requested"],
                  "properties": {"id": {"type": "integer"}, "state": {"type": "string", "enum": list(STATES)},
                                 "cancel_requested": {"type": "boolean"}}},
}


def document() -> dict:
    """The OpenAPI document (a fresh dict)."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "diskgraph daemon", "version": __version__,
                 "description": "Submit, watch and cancel diskgraph preprocessing, training and inference jobs."},
        "security": [{"bearer": []}],
        "paths": {
            "/jobs": {
                "get": {"operationId": "listJobs", "summary": "jobs in submission order",
                        "parameters": [
                            {"name": "state", "in": "query", "schema": {"type": "string", "enum": list(STATES)}},
                            {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0},
                             "description": "only ids above this"},
                            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 10000}}],
                        "responses": {"200": _json(_ref("JobList"), "the jobs"), "400": _json(_ref("Error"), "bad query"),
                                      **_ERRORS}},
                "post": {"operationId": "submitJob", "summary": "validate a spec and queue it",
                         "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("Spec")},
                                                                        "application/toml": {"schema": {"type": "string"}}}},
                         "responses": {"201": _json(_ref("Submitted"), "queued"),
                                       "400": _json(_ref("Error"), "invalid spec, malformed body or body over the cap"),
                                       **_ERRORS}},
            },
            "/jobs/{id}": {
                "get": {"operationId": "getJob", "summary": "state, progress, latest metrics, checkpoint",
                        "parameters": [_ID],
                        "responses": {"200": _json(_ref("Job"), "the job"), "404": _NOT_FOUND, **_ERRORS}},
            },
            "/jobs/{id}/log": {
                "get": {"operationId": "getJobLog", "summary": "a page of the job's log (bytes from offset)",
                        "parameters": [_ID,
                                       {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                                       {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                                                    "maximum": 1 << 20}}],
                        "responses": {"200": _json(_ref("LogPage"), "the page"), "400": _json(_ref("Error"), "bad query"),
                                      "404": _NOT_FOUND, **_ERRORS}},
            },
            "/jobs/{id}/cancel": {
                "post": {"operationId": "cancelJob", "summary": "cancel a queued job, or stop a running one (SIGTERM)",
                         "parameters": [_ID],
                         "responses": {"200": _json(_ref("Cancelled"), "cancelled or being cancelled"),
                                       "404": _NOT_FOUND, "409": _json(_ref("Error"), "the job already finished"),
                                       **_ERRORS}},
            },
            "/metrics": {
                "get": {"operationId": "metrics", "summary": "Prometheus text format",
                        "responses": {"200": {"description": "metrics",
                                              "content": {"text/plain": {"schema": {"type": "string"}}}}, **_ERRORS}},
            },
            "/openapi.json": {
                "get": {"operationId": "openapi", "summary": "this document",
                        "responses": {"200": _json({"type": "object"}, "the OpenAPI document"), **_ERRORS}},
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "the token in the daemon's ROOT/token (mode 0600)"}},
            "responses": {"Unauthorized": _json(_ref("Error"), "missing or wrong bearer token")},
            "schemas": _SCHEMAS,
        },
    }
