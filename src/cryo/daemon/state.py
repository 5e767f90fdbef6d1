"""The daemon's state in SQLite: jobs (with their policy), versions, attempts.

WAL with synchronous=FULL, one transaction per change of state, so that a daemon
killed at any moment (SIGKILL) and started again finds every job and every version it
had committed; what was in flight is an attempt still marked ``running``, which
:meth:`State.interrupted` closes at start.  The store is the truth about versions:
:meth:`State.sync_versions` adds what the store has and the database lacks (a version
written just before the daemon died) and marks what gc removed.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    name TEXT PRIMARY KEY,
    owner INTEGER NOT NULL,          -- uid of the caller who added it
    gid INTEGER NOT NULL,
    pid INTEGER,                     -- its (root) process, when it runs
    start_time INTEGER,              -- that process's start time (/proc/PID/stat field 22)
    state TEXT NOT NULL,             -- running | exited | failed | lost
    status TEXT,                     -- how it ended: "exit N", "signal N", "unknown"
    launched INTEGER NOT NULL,       -- 1: started by the daemon from cmd
    cmd TEXT,                        -- JSON argv
    scope TEXT NOT NULL,             -- process | tree
    store TEXT NOT NULL,
    created REAL NOT NULL,
    next_due REAL,                   -- wall clock of the next periodic checkpoint
    failures INTEGER NOT NULL DEFAULT 0,   -- consecutive failed checkpoints
    restarts INTEGER NOT NULL DEFAULT 0    -- restarts after failure so far
);
CREATE TABLE IF NOT EXISTS policies (
    job TEXT PRIMARY KEY REFERENCES jobs(name) ON DELETE CASCADE,
    every REAL,                      -- seconds between checkpoints, NULL: none
    keep_last INTEGER,               -- retention (cryo.store.gc), NULL: keep all
    keep_every INTEGER,
    restart_on_failure INTEGER NOT NULL DEFAULT 0,
    max_restarts INTEGER NOT NULL DEFAULT 3
);
CREATE TABLE IF NOT EXISTS versions (
    job TEXT NOT NULL,
    version INTEGER NOT NULL,
    created REAL NOT NULL,
    memory INTEGER, stored INTEGER, frozen REAL, seconds REAL,
    deleted INTEGER NOT NULL DEFAULT 0,     -- removed by retention
    PRIMARY KEY (job, version)
);
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job TEXT NOT NULL,
    kind TEXT NOT NULL,              -- checkpoint | restart | staged
    due REAL,                        -- when a periodic one was due
    started REAL NOT NULL,
    finished REAL,
    status TEXT NOT NULL,            -- running | ok | failed | interrupted
    version INTEGER,
    error TEXT, message TEXT,
    daemon INTEGER NOT NULL          -- the daemon's pid that made it
);
CREATE INDEX IF NOT EXISTS attempts_job ON attempts (job, id);
"""

KEEP_ATTEMPTS = 1000  # per job: the last attempts kept (job_history)
KEEP_DELETED = 100  # per job: the last versions gc removed, kept as deleted rows
JOB_COLUMNS = ("name", "owner", "gid", "pid", "start_time", "state", "status", "launched",
               "cmd", "scope", "store", "created", "next_due", "failures", "restarts")
POLICY_COLUMNS = ("every", "keep_last", "keep_every", "restart_on_failure", "max_restarts")


class State:
    """One SQLite database, shared by the daemon's threads under one lock.

    The jobs are read from it once per change: :meth:`jobs` answers from a copy that
    every transaction drops (the scheduler asks for them at each of its wake-ups, and
    querying SQLite each time cost the idle daemon more CPU than its checkpoints).
    ``on_change`` is called after each transaction (the scheduler's wake-up)."""

    def __init__(self, directory: str) -> None:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self.path = os.path.join(directory, "cryod.db")
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        os.chmod(self.path, 0o600)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)
        self._jobs: list[dict[str, Any]] | None = None  # the jobs as last read
        self.on_change: Callable[[], None] = lambda: None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction: all of it committed, or none."""
        with self._lock:
            self._jobs = None
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        self.on_change()

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._db.execute(sql, args).fetchall()]

    # -- jobs ---------------------------------------------------------------------

    def add_job(self, job: dict[str, Any], policy: dict[str, Any]) -> None:
        with self.tx() as db:
            cols = [c for c in JOB_COLUMNS if c in job]
            db.execute(f"INSERT INTO jobs ({','.join(cols)}) VALUES"  # noqa: S608 (our names)
                       f" ({','.join('?' * len(cols))})", [_enc(c, job[c]) for c in cols])
            db.execute("INSERT INTO policies (job, every, keep_last, keep_every,"
                       " restart_on_failure, max_restarts) VALUES (?,?,?,?,?,?)",
                       (job["name"], *[policy.get(c) for c in POLICY_COLUMNS[:3]],
                        int(bool(policy.get("restart_on_failure"))),
                        policy.get("max_restarts", 3)))  # fmt: skip

    def update_job(self, name: str, **fields: Any) -> None:
        for c in fields:
            if c not in JOB_COLUMNS or c == "name":
                raise KeyError(c)
        with self.tx() as db:
            sets = ", ".join(f"{c} = ?" for c in fields)
            db.execute(f"UPDATE jobs SET {sets} WHERE name = ?",  # noqa: S608 (our names)
                       [*[_enc(c, v) for c, v in fields.items()], name])

    def remove_job(self, name: str) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM jobs WHERE name = ?", (name,))
            db.execute("DELETE FROM versions WHERE job = ?", (name,))
            db.execute("DELETE FROM attempts WHERE job = ?", (name,))

    def jobs(self) -> list[dict[str, Any]]:
        """Every job with its policy (each a new dict: the caller's to change)."""
        with self._lock:
            if self._jobs is None:
                rows = self._rows("SELECT j.*, p.every, p.keep_last, p.keep_every,"
                                  " p.restart_on_failure, p.max_restarts FROM jobs j JOIN"
                                  " policies p ON p.job = j.name ORDER BY j.created, j.name")
                for r in rows:
                    r["cmd"] = json.loads(r["cmd"]) if r["cmd"] else None
                    r["launched"] = bool(r["launched"])
                    r["restart_on_failure"] = bool(r["restart_on_failure"])
                self._jobs = rows
            return [{**r, "cmd": list(r["cmd"]) if r["cmd"] else r["cmd"]} for r in self._jobs]

    def job(self, name: str) -> dict[str, Any] | None:
        return next((j for j in self.jobs() if j["name"] == name), None)

    # -- versions -----------------------------------------------------------------

    def add_version(self, job: str, version: int, *, memory: int | None = None,
                    stored: int | None = None, frozen: float | None = None,
                    seconds: float | None = None, created: float | None = None,
                    attempt: int | None = None) -> None:  # fmt: skip
        """A new version, and the attempt that made it closed as ok, in one transaction."""
        now = time.time()
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO versions (job, version, created, memory,"
                       " stored, frozen, seconds) VALUES (?,?,?,?,?,?,?)",
                       (job, version, created or now, memory, stored, frozen, seconds))
            if attempt is not None:
                db.execute("UPDATE attempts SET status = 'ok', finished = ?, version = ?"
                           " WHERE id = ?", (now, version, attempt))
            db.execute("UPDATE jobs SET failures = 0 WHERE name = ?", (job,))

    def versions(self, job: str, *, deleted: bool = False) -> list[dict[str, Any]]:
        extra = "" if deleted else " AND deleted = 0"
        sql = f"SELECT * FROM versions WHERE job = ?{extra} ORDER BY version"  # noqa: S608
        return self._rows(sql, (job,))

    def sync_versions(self, job: str, in_store: dict[int, dict[str, Any]]) -> tuple[
            list[int], list[int]]:  # fmt: skip
        """Make the versions of ``job`` those of the store: returns (added, deleted)."""
        # (only the versions kept are read: the rows of versions gc removed pile up,
        # and reading them all after every checkpoint made the daemon's memory grow)
        have = {v["version"] for v in self.versions(job)}
        added = [v for v in in_store if v not in have]
        gone = [v for v in have if v not in in_store]
        if not added and not gone:
            return [], []
        with self.tx() as db:
            for v in added:
                info = in_store[v]
                db.execute("INSERT OR REPLACE INTO versions (job, version, created, memory,"
                           " stored) VALUES (?,?,?,?,?)",
                           (job, v, info.get("created") or time.time(), info.get("memory"),
                            info.get("stored")))  # fmt: skip
            for v in gone:
                db.execute("UPDATE versions SET deleted = 1 WHERE job = ? AND version = ?",
                           (job, v))
        return added, gone

    # -- attempts -----------------------------------------------------------------

    def begin(self, job: str, kind: str, due: float | None = None, *,
              job_fields: dict[str, Any] | None = None) -> int:  # fmt: skip
        """A new attempt, running; the job's history beyond the last
        :data:`KEEP_ATTEMPTS` attempts and :data:`KEEP_DELETED` deleted versions is
        dropped in the same transaction, so that the database (and the daemon's
        memory, which reads it) does not grow with the daemon's age; ``job_fields``
        are changed in it too (a periodic checkpoint's next due time)."""
        with self.tx() as db:
            if job_fields:
                sets = ", ".join(f"{c} = ?" for c in job_fields)
                db.execute(f"UPDATE jobs SET {sets} WHERE name = ?",  # noqa: S608 (our names)
                           [*[_enc(c, v) for c, v in job_fields.items()], job])
            cur = db.execute("INSERT INTO attempts (job, kind, due, started, status, daemon)"
                             " VALUES (?,?,?,?,'running',?)",
                             (job, kind, due, time.time(), os.getpid()))  # fmt: skip
            db.execute("DELETE FROM attempts WHERE job = ? AND status != 'running' AND id <="
                       " (SELECT id FROM attempts WHERE job = ? ORDER BY id DESC LIMIT 1"
                       " OFFSET ?)", (job, job, KEEP_ATTEMPTS))  # fmt: skip
            db.execute("DELETE FROM versions WHERE job = ? AND deleted = 1 AND version <="
                       " (SELECT version FROM versions WHERE job = ? AND deleted = 1 ORDER BY"
                       " version DESC LIMIT 1 OFFSET ?)", (job, job, KEEP_DELETED))  # fmt: skip
            return int(cur.lastrowid or 0)

    def finish(self, attempt: int, status: str, *, version: int | None = None,
               error: str | None = None, message: str | None = None,
               job_fields: dict[str, Any] | None = None) -> None:  # fmt: skip
        """Close an attempt, and change its job's fields in the same transaction."""
        with self.tx() as db:
            db.execute("UPDATE attempts SET status = ?, finished = ?, version = ?, error = ?,"
                       " message = ? WHERE id = ?",
                       (status, time.time(), version, error, message, attempt))
            if job_fields:
                row = db.execute("SELECT job FROM attempts WHERE id = ?", (attempt,)).fetchone()
                sets = ", ".join(f"{c} = ?" for c in job_fields)
                db.execute(f"UPDATE jobs SET {sets} WHERE name = ?",  # noqa: S608 (our names)
                           [*[_enc(c, v) for c, v in job_fields.items()], row["job"]])

    def interrupted(self) -> list[dict[str, Any]]:
        """Attempts a dead daemon left running: closed as interrupted; returned."""
        rows = self._rows("SELECT * FROM attempts WHERE status = 'running'")
        if rows:
            with self.tx() as db:
                db.execute("UPDATE attempts SET status = 'interrupted', finished = ?,"
                           " message = 'the daemon stopped during it' WHERE status = 'running'",
                           (time.time(),))  # fmt: skip
        return rows

    def history(self, job: str, limit: int = 100) -> list[dict[str, Any]]:
        rows = self._rows("SELECT * FROM attempts WHERE job = ? ORDER BY id DESC LIMIT ?",
                          (job, limit))
        return rows[::-1]


def _enc(column: str, value: Any) -> Any:
    if column == "cmd" and value is not None:
        return json.dumps(value)
    if isinstance(value, bool):
        return int(value)
    return value


__all__ = ["State"]
