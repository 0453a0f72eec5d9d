"""The daemon's lifecycle: root, token, store, recovery, scheduler and HTTP server together."""

from __future__ import annotations

import logging
import os
import threading

from .layout import Root
from .scheduler import Scheduler
from .server import make_server
from .spec import SpecChecker
from .store import JobStore

log = logging.getLogger("diskgraph")

DEFAULT_MAX_BODY = 1 << 20


def gpu_count() -> int:
    """NVIDIA GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` when set, else the driver's list (no torch import)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and not d.strip().startswith("-")])
    try:
        return len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return 0


class Daemon:
    """``diskgraph serve``: call :meth:`start`, then :meth:`stop` (graceful: running jobs checkpoint).

    Args:
        root: the daemon's root directory (token, ``jobs.db``, job directories).
        allowed_roots: where job paths may point; the first is where relative paths start.
        host, port: where to listen (port 0: any free port; :attr:`url` tells which).
        max_concurrent: jobs running at once (0 holds the queue).
        max_retries: restarts of a job whose process was killed by a signal.
        max_body: request body cap in bytes.
        stop_timeout: seconds a stopping job has to checkpoint before SIGKILL.
        gpus: GPUs to spread jobs over (``CUDA_VISIBLE_DEVICES`` per slot; 0 or 1: leave it alone).
    """

    def __init__(self, root: str | os.PathLike, *, allowed_roots: list, host: str = "127.0.0.1", port: int = 8765,
                 max_concurrent: int = 1, max_retries: int = 3, max_body: int = DEFAULT_MAX_BODY,
                 stop_timeout: float = 60.0, gpus: int = 0):
        self.root = Root(root)
        self.allowed_roots, self.host, self.port = allowed_roots, host, port
        self.max_concurrent, self.max_retries, self.max_body = max_concurrent, max_retries, max_body
        self.stop_timeout, self.gpus = stop_timeout, gpus
        self.store = self.scheduler = self.server = self.token = self.checker = None
        self._lock_fd = None
        self._thread = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}"

    def start(self) -> "Daemon":
        """Take the root, recover the jobs that were running, start the scheduler and listen."""
        self.root.create()
        self._lock_fd = self.root.lock()
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> "Daemon":
        self.token = self.root.ensure_token()
        self.checker = SpecChecker(self.allowed_roots)
        self.store = JobStore(self.root.db_path)
        self.scheduler = Scheduler(self.root, self.store, allowed_roots=self.checker.roots,
                                   max_concurrent=self.max_concurrent, max_retries=self.max_retries,
                                   stop_timeout=self.stop_timeout, gpus=self.gpus)
        recovered = self.scheduler.recover()
        if recovered:
            log.info("recovered %d job(s) that were running: %s", len(recovered), ", ".join(map(str, recovered)))
        self.server = make_server(self, self.host, self.port)
        if self.host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("listening on %s: the API is reachable from other machines (bearer token only, no TLS)", self.host)
        self.scheduler.start()
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="diskgraph-http", daemon=True)
        self._thread.start()
        self.root.write_address(self.url)
        log.info("daemon serving %s on %s (token in %s)", self.root.path, self.url, self.root.token_path)
        return self

    def stop(self) -> None:
        """Stop listening, stop the running jobs resumably, close the store and release the root (idempotent)."""
        if self._lock_fd is None:
            return
        if self._thread is not None and self._thread.is_alive():
            self.server.shutdown()
        if self.server is not None:
            self.server.server_close()
        if self.scheduler is not None:
            self.scheduler.shutdown()
        if self.store is not None:
            self.store.close()
        try:
            self.root.address_path.unlink()
        except FileNotFoundError:
            pass
        os.close(self._lock_fd)
        self._lock_fd = None
        log.info("daemon stopped")
