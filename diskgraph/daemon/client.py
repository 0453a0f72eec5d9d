"""Talking to a running daemon: what ``diskgraph submit``, ``jobs``, ``logs`` and ``cancel`` use.

The address and token come from, in order: the flags (``--url``, ``--token-file``), the environment
(``DISKGRAPH_URL``, ``DISKGRAPH_TOKEN``), then the daemon's root (``--root``, ``$DISKGRAPH_ROOT`` or
``~/.diskgraph``: its ``daemon.json`` and ``token``).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

from ..store.errors import InputError
from .layout import Root, default_root

ENV_URL = "DISKGRAPH_URL"
ENV_TOKEN = "DISKGRAPH_TOKEN"


class Client:
    """A small JSON client of the daemon's API; every failure is an :class:`InputError` (one sentence)."""

    def __init__(self, url: str, token: str, timeout: float = 30.0):
        self.url, self.token, self.timeout = url.rstrip("/"), token, timeout

    @classmethod
    def from_options(cls, url: str | None = None, token_file: str | None = None, root: str | None = None) -> "Client":
        r = Root(root) if root else default_root_obj()
        url = url or os.environ.get(ENV_URL) or (r.read_address() or {}).get("url")
        if not url:
            raise InputError(f"no daemon address: pass --url, set {ENV_URL}, or start `diskgraph serve --root {r.path}` "
                             "(it writes its address there)")
        if token_file:
            try:
                token = Path(token_file).read_text().strip()
            except OSError as e:
                raise InputError(f"cannot read the token file {token_file} ({e.strerror}); check --token-file") from None
        else:
            token = os.environ.get(ENV_TOKEN) or r.read_token()
        if not token:
            raise InputError(f"no token: pass --token-file, set {ENV_TOKEN}, or use the daemon's root ({r.token_path})")
        return cls(url, token)

    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read()).get("error")
            except ValueError:
                message = None
            raise InputError(f"the daemon refused {method} {path} ({e.code}): {message or e.reason}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise InputError(f"cannot reach the daemon at {self.url} ({reason}); is `diskgraph serve` running?") from None

    def submit(self, spec: dict) -> int:
        return int(self.request("POST", "/jobs", spec)["id"])

    def jobs(self, state: str | None = None) -> list[dict]:
        return self.request("GET", "/jobs" + (f"?state={state}" if state else ""))["jobs"]

    def job(self, job_id: int) -> dict:
        return self.request("GET", f"/jobs/{int(job_id)}")

    def log(self, job_id: int, offset: int = 0, limit: int = 65536) -> dict:
        return self.request("GET", f"/jobs/{int(job_id)}/log?offset={int(offset)}&limit={int(limit)}")

    def cancel(self, job_id: int) -> dict:
        return self.request("POST", f"/jobs/{int(job_id)}/cancel")


def default_root_obj() -> Root:
    return Root(default_root())
