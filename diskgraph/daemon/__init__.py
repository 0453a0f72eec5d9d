"""The training daemon: ``diskgraph serve`` runs preprocessing, training and inference jobs that survive crashes.

One concept per module:

* :mod:`.layout`    — the daemon's root directory (token, SQLite store, job directories, address file).
* :mod:`.store`     — jobs and their state transitions in SQLite (WAL), one writer.
* :mod:`.spec`      — validation of job specs (the CLI's options as JSON/TOML) and allowed roots.
* :mod:`.jobdir`    — a job's directory: spec, log, progress, the training run; readers for the API.
* :mod:`.runner`    — the child process that runs one job's stages (``python -m diskgraph.daemon.runner``).
* :mod:`.scheduler` — starts, reaps, retries, cancels and recovers the children.
* :mod:`.server`    — the HTTP + JSON API (stdlib ``http.server``), bearer-token auth.
* :mod:`.openapi`   — the published OpenAPI document of that API.
* :mod:`.prometheus` — ``/metrics`` in the Prometheus text format.
* :mod:`.client`    — what ``diskgraph submit/jobs/logs/cancel`` use to talk to the daemon.

See ``docs/daemon.md``.
"""

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
"""Job states; the last three are final."""

FINAL_STATES = ("succeeded", "failed", "cancelled")
