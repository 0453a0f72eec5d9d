"""The HTTP + JSON API (stdlib ``http.server``; one thread per connection).

Every request needs ``Authorization: Bearer TOKEN`` (else 401). Routes are the table
:data:`ROUTES`; ``/openapi.json`` describes them (:mod:`.openapi`). Errors are JSON
``{"error": "one sentence"}`` with 400 (bad spec, bad JSON, body over the cap, bad query), 401, 404,
405 or 409 (cancelling a finished job).
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from . import FINAL_STATES, STATES
from .jobdir import JobDir
from .spec import SpecError, parse_body

log = logging.getLogger("diskgraph")

ROUTES = [
    ("GET", "/jobs", "list_jobs"),
    ("POST", "/jobs", "submit"),
    ("GET", "/jobs/{id}", "get_job"),
    ("GET", "/jobs/{id}/log", "get_log"),
    ("POST", "/jobs/{id}/cancel", "cancel"),
    ("GET", "/metrics", "metrics"),
    ("GET", "/openapi.json", "openapi"),
]
"""(method, path template, handler method) of every route."""

_PATTERNS = [(m, re.compile("^" + t.replace("{id}", "(?P<id>[0-9]{1,18})") + "$"), h) for m, t, h in ROUTES]
DRAIN_LIMIT = 16 << 20
"""At most this many bytes of a refused body are read and dropped (so the client sees the answer, not a reset)."""
LOG_PAGE_MAX = 1 << 20


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _int_param(query: dict, name: str, default: int, lo: int = 0, hi: int = 1 << 62) -> int:
    raw = query.get(name, [str(default)])[-1]
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"query parameter {name}={raw!r} is not a whole number") from None
    if not lo <= value <= hi:
        raise ApiError(400, f"query parameter {name}={value} is out of range ({lo} to {hi})")
    return value


def job_summary(job: dict, stage: str | None = None) -> dict:
    """A job's row in ``GET /jobs``: ``stage`` is the stage a running job is in (import … train, predict, embed)."""
    keys = ("id", "name", "state", "submitted_at", "started_at", "finished_at", "attempts", "retries", "reason")
    return {**{k: job[k] for k in keys}, "stage": stage}


class Handler(BaseHTTPRequestHandler):
    server_version = "diskgraph"
    protocol_version = "HTTP/1.1"
    daemon = None  # set on the subclass the daemon makes

    def log_message(self, fmt, *args):  # requests go to the debug log, not stderr
        log.debug("%s %s", self.address_string(), fmt % args)

    # -- plumbing ----------------------------------------------------------------------------------

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def do_PATCH(self):
        self._dispatch("PATCH")

    def _dispatch(self, method: str) -> None:
        self._body_read = False
        try:
            self._authenticate()
            url = urlsplit(self.path)
            handler, params, allowed = None, {}, []
            for m, pattern, name in _PATTERNS:
                match = pattern.match(url.path)
                if match:
                    allowed.append(m)
                    if m == method:
                        handler, params = getattr(self, name), match.groupdict()
            if handler is None:
                if allowed:
                    raise ApiError(405, f"{url.path} takes {' or '.join(allowed)}, not {method}")
                raise ApiError(404, f"no route {url.path}; see /openapi.json for the API")
            if "id" in params:
                params["job_id"] = int(params.pop("id"))
            status, body, ctype = handler(query=parse_qs(url.query), **params)
        except ApiError as e:
            status, body, ctype = e.status, {"error": str(e)}, "application/json"
        except Exception as e:  # noqa: BLE001
            log.exception("error answering %s %s", method, self.path)
            status, body, ctype = 500, {"error": f"internal error ({type(e).__name__}); see the daemon's log"}, "application/json"
        self._send(status, body, ctype)

    def _authenticate(self) -> None:
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip() or not hmac.compare_digest(
                token.strip().encode(), self.daemon.token.encode()):
            raise ApiError(401, "missing or wrong bearer token; send `Authorization: Bearer TOKEN` with the token "
                                "from the daemon's root (ROOT/token)")

    def _send(self, status: int, body, ctype: str) -> None:
        data = (json.dumps(body) + "\n").encode() if ctype == "application/json" else body.encode()
        unread = not self._body_read and self._content_length() > 0
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        self.send_response(status)
        self.send_header("Content-Type", ctype + ("" if "charset" in ctype else "; charset=utf-8"))
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="diskgraph"')
        if unread or chunked:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)
        if unread:
            self._drain()

    def _drain(self) -> None:
        """Read and drop the refused body (bounded), so closing does not reset the connection under the answer."""
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(2.0)
            left = min(self._content_length(), DRAIN_LIMIT)
            while left > 0:
                chunk = self.rfile.read(min(left, 1 << 16))
                if not chunk:
                    break
                left -= len(chunk)
        except (OSError, ValueError):
            pass

    def _content_length(self) -> int:
        """The request's Content-Length (-1: missing or not a number)."""
        try:
            return int(self.headers.get("Content-Length", ""))
        except ValueError:
            return -1

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise ApiError(400, "chunked request bodies are not accepted; send the body with a Content-Length")
        length = self._content_length()
        if length < 0:
            raise ApiError(400, "the request has no valid Content-Length; send the spec with one")
        cap = self.daemon.max_body
        if length > cap:
            raise ApiError(400, f"the request body of {length} bytes is over the daemon's limit of {cap} bytes; "
                                "send a smaller spec (or start the daemon with a larger --max-body)")
        self._body_read = True
        return self.rfile.read(length)

    def _job(self, job_id: int) -> dict:
        job = self.daemon.store.get(job_id)
        if job is None:
            raise ApiError(404, f"there is no job {job_id}; `diskgraph jobs` lists them")
        return job

    # -- routes ------------------------------------------------------------------------------------

    def list_jobs(self, query):
        state = query.get("state", [None])[-1]
        if state is not None and state not in STATES:
            raise ApiError(400, f"query parameter state={state!r} is not one of {', '.join(STATES)}")
        jobs = self.daemon.store.list(state=state, after=_int_param(query, "after", 0),
                                      limit=_int_param(query, "limit", 1000, 1, 10000))
        return 200, {"jobs": [job_summary(j, self._stage(j)) for j in jobs]}, "application/json"

    def _stage(self, job: dict) -> str | None:
        """The stage of a running job (None for the others, and between stages)."""
        if job["state"] != "running":
            return None
        return JobDir(self.daemon.root.job_path(job["id"])).progress_stage()

    def submit(self, query):
        body = self._read_body()
        try:
            spec = self.daemon.checker.check(parse_body(body, self.headers.get("Content-Type", "")))
        except SpecError as e:
            raise ApiError(400, str(e)) from None
        job_id = self.daemon.store.submit(spec, spec.get("name"))
        self.daemon.scheduler.wake()
        return 201, {"id": job_id, "state": "queued"}, "application/json"

    def get_job(self, query, job_id):
        job = self._job(job_id)
        jd = JobDir(self.daemon.root.job_path(job_id))
        epochs = jd.epochs()
        records = [e for e in epochs if not e.get("summary")]
        progress = jd.progress()
        out = {**job_summary(job, progress["stage"] if job["state"] == "running" else None), "spec": job["spec"],
               "pid": job["pid"], "cancel_requested": job["cancel_requested"],
               "progress": progress, "metrics": records[-1] if records else None,
               "summary": epochs[-1] if epochs and epochs[-1].get("summary") else None,
               "inference": jd.inference(),
               "checkpoint": jd.checkpoint(), "run_dir": str(jd.run), "transitions": self.daemon.store.transitions(job_id)}
        return 200, out, "application/json"

    def get_log(self, query, job_id):
        job = self._job(job_id)
        page = JobDir(self.daemon.root.job_path(job_id)).log_page(_int_param(query, "offset", 0),
                                                                   _int_param(query, "limit", 65536, 1, LOG_PAGE_MAX))
        return 200, {**page, "state": job["state"], "finished": job["state"] in FINAL_STATES}, "application/json"

    def cancel(self, query, job_id):
        job = self._job(job_id)
        if job["state"] in FINAL_STATES:
            raise ApiError(409, f"job {job_id} already {job['state']}; there is nothing to cancel")
        state = self.daemon.store.request_cancel(job_id)
        self.daemon.scheduler.wake()
        return 200, {"id": job_id, "state": state, "cancel_requested": True}, "application/json"

    def metrics(self, query):
        from .prometheus import render

        return 200, render(self.daemon), "text/plain; version=0.0.4; charset=utf-8"

    def openapi(self, query):
        from .openapi import document

        return 200, document(), "application/json"


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    allow_reuse_address = True


def make_server(daemon, host: str, port: int) -> Server:
    """An HTTP server bound to ``host:port`` whose handlers answer from ``daemon``."""
    handler = type("DaemonHandler", (Handler,), {"daemon": daemon})
    return Server((host, port), handler)
