"""Jobs and their state transitions in SQLite (WAL), written through one connection.

Two tables: ``jobs`` (one row per job: spec, state, attempts, the running child's pid) and
``transitions`` (every state change with its time and reason, in order). Ids come from
``AUTOINCREMENT``: they increase with submission order and are never reused. Every change is one
``BEGIN IMMEDIATE`` transaction with ``synchronous=FULL``, so a job the API acknowledged is on disk,
and a state change and its transition row land together or not at all.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

from . import FINAL_STATES

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    submitted_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    retries INTEGER NOT NULL DEFAULT 0,
    pid INTEGER,
    pid_started REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    reason TEXT
);
CREATE TABLE IF NOT EXISTS transitions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    at REAL NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state, id);
CREATE INDEX IF NOT EXISTS transitions_by_job ON transitions(job_id, seq);
"""

ALLOWED = {
    "queued": {"running", "cancelled"},
    "running": {"queued", "succeeded", "failed", "cancelled"},
}
"""State → the states it may change to (final states change no more)."""


class JobStore:
    """The daemon's job table. Thread-safe: one connection behind a lock."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        with self._write():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- transactions ------------------------------------------------------------------------------

    class _Tx:
        def __init__(self, store: "JobStore"):
            self.store = store

        def __enter__(self):
            self.store._lock.acquire()
            self.store._db.execute("BEGIN IMMEDIATE")
            return self.store._db

        def __exit__(self, exc_type, exc, tb):
            try:
                self.store._db.execute("ROLLBACK" if exc_type else "COMMIT")
            finally:
                self.store._lock.release()

    def _write(self) -> "JobStore._Tx":
        return JobStore._Tx(self)

    def _read(self, sql: str, args=()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # -- writes ------------------------------------------------------------------------------------

    def submit(self, spec: dict, name: str | None = None) -> int:
        """Record a queued job; returns its id (the next in submission order)."""
        with self._write() as db:
            now = time.time()  # taken under the lock: times increase with ids and transition numbers
            cur = db.execute("INSERT INTO jobs (name, spec, state, submitted_at) VALUES (?, ?, 'queued', ?)",
                             (name, json.dumps(spec, sort_keys=True), now))
            job_id = int(cur.lastrowid)
            db.execute("INSERT INTO transitions (job_id, at, from_state, to_state, reason) VALUES (?, ?, NULL, 'queued', ?)",
                       (job_id, now, "submitted"))
        return job_id

    def transition(self, job_id: int, to: str, reason: str | None = None, **fields) -> bool:
        """Move a job to ``to`` (when its current state allows it) and set ``fields``; returns whether it moved.

        Entering ``running`` counts an attempt and stamps ``started_at``; a final state stamps ``finished_at``
        and clears the pid.
        """
        with self._write() as db:
            now = time.time()
            row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or to not in ALLOWED.get(row["state"], ()):
                return False
            sets = dict(fields, state=to, reason=reason)
            if to == "running":
                sets.setdefault("started_at", now)
            if to in FINAL_STATES:
                sets.update(finished_at=now, pid=None, pid_started=None)
            if to == "queued":
                sets.update(pid=None, pid_started=None)
            assign = ", ".join(f"{k} = ?" for k in sets)
            extra = ", attempts = attempts + 1" if to == "running" else ""
            db.execute(f"UPDATE jobs SET {assign}{extra} WHERE id = ?", (*sets.values(), job_id))
            db.execute("INSERT INTO transitions (job_id, at, from_state, to_state, reason) VALUES (?, ?, ?, ?, ?)",
                       (job_id, now, row["state"], to, reason))
        return True

    def update(self, job_id: int, **fields) -> None:
        """Set fields without a state change (the child's pid once it started)."""
        with self._write() as db:
            db.execute(f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?", (*fields.values(), job_id))

    def request_cancel(self, job_id: int) -> str | None:
        """Cancel a queued job at once, or flag a running one for the scheduler; returns the state (None: no such job)."""
        with self._write() as db:
            now = time.time()
            row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            if row["state"] == "queued":
                db.execute("UPDATE jobs SET state = 'cancelled', finished_at = ?, reason = ? WHERE id = ?",
                           (now, "cancelled before it started", job_id))
                db.execute("INSERT INTO transitions (job_id, at, from_state, to_state, reason) "
                           "VALUES (?, ?, 'queued', 'cancelled', ?)", (job_id, now, "cancelled before it started"))
                return "cancelled"
            if row["state"] == "running":
                db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
            return row["state"]

    # -- reads -------------------------------------------------------------------------------------

    def get(self, job_id: int) -> dict | None:
        rows = self._read("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    def list(self, state: str | None = None, after: int = 0, limit: int = 1000) -> list[dict]:
        """Jobs in submission (id) order, optionally of one state, with ids above ``after``."""
        where, args = "id > ?", [after]
        if state:
            where += " AND state = ?"
            args.append(state)
        return [_job(r) for r in self._read(f"SELECT * FROM jobs WHERE {where} ORDER BY id LIMIT ?", (*args, limit))]

    def transitions(self, job_id: int) -> list[dict]:
        return [dict(r) for r in self._read("SELECT * FROM transitions WHERE job_id = ? ORDER BY seq", (job_id,))]

    def counts(self) -> dict[str, int]:
        """Jobs per state."""
        return {r["state"]: r["n"] for r in self._read("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")}

    def total_retries(self) -> int:
        return int(self._read("SELECT COALESCE(SUM(retries), 0) AS n FROM jobs")[0]["n"])


def _job(row: sqlite3.Row) -> dict:
    d = dict(row)
    d["spec"] = json.loads(d["spec"])
    d["cancel_requested"] = bool(d["cancel_requested"])
    return d
