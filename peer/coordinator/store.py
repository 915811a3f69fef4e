"""The job store: SQLite tables for jobs, tasks, workers, plus the event log.

Writes happen only through :meth:`Transaction.emit`, which applies an
:mod:`events` event to the tables and appends it to the ``events`` table in the
same SQLite transaction. Either both land or neither does, so the event log is
an exact history of the tables and can be replayed on another peer.

All methods here are blocking. The asyncio code reaches the store through
:class:`peer.coordinator.dbthread.DBThread`, which runs them on one dedicated
thread so the event loop never waits on disk.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from . import events as ev

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    idx  INTEGER PRIMARY KEY,
    at   TEXT NOT NULL,
    kind TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    seq                 INTEGER PRIMARY KEY AUTOINCREMENT,
    id                  TEXT NOT NULL UNIQUE,
    name                TEXT NOT NULL,
    type                TEXT NOT NULL,
    type_etag           TEXT NOT NULL DEFAULT '',
    priority            INTEGER NOT NULL,
    status              TEXT NOT NULL,
    activity            TEXT NOT NULL DEFAULT '',
    settings            TEXT NOT NULL,
    metadata            TEXT NOT NULL,
    submitter_platform  TEXT NOT NULL,
    worker_tag          TEXT NOT NULL DEFAULT '',
    shaman_checkout_id  TEXT NOT NULL DEFAULT '',
    created             TEXT NOT NULL,
    updated             TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks (
    id               TEXT PRIMARY KEY,
    job_id           TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    index_in_job     INTEGER NOT NULL,
    name             TEXT NOT NULL,
    type             TEXT NOT NULL,
    priority         INTEGER NOT NULL,
    status           TEXT NOT NULL,
    activity         TEXT NOT NULL DEFAULT '',
    commands         TEXT NOT NULL,
    steps_completed  INTEGER NOT NULL DEFAULT 0,
    steps_total      INTEGER NOT NULL,
    worker_id        TEXT NOT NULL DEFAULT '',
    last_touched     TEXT NOT NULL DEFAULT '',
    created          TEXT NOT NULL,
    updated          TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_by_status ON tasks(status);
CREATE INDEX IF NOT EXISTS tasks_by_job ON tasks(job_id, index_in_job);
CREATE INDEX IF NOT EXISTS tasks_by_worker ON tasks(worker_id);
CREATE TABLE IF NOT EXISTS task_dependencies (
    task_id     TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    depends_on  TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    PRIMARY KEY (task_id, depends_on)
);
CREATE INDEX IF NOT EXISTS deps_reverse ON task_dependencies(depends_on);
CREATE TABLE IF NOT EXISTS task_failures (
    task_id    TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    worker_id  TEXT NOT NULL,
    at         TEXT NOT NULL,
    PRIMARY KEY (task_id, worker_id)
);
-- Local index of task log files (plain text under logs/); not replicated:
-- each peer indexes the logs it holds.
CREATE TABLE IF NOT EXISTS task_logs (
    task_id  TEXT PRIMARY KEY REFERENCES tasks(id) ON DELETE CASCADE,
    job_id   TEXT NOT NULL,
    path     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS workers (
    id                    TEXT PRIMARY KEY,
    name                  TEXT NOT NULL,
    address               TEXT NOT NULL,
    platform              TEXT NOT NULL,
    software              TEXT NOT NULL,
    status                TEXT NOT NULL,
    supported_task_types  TEXT NOT NULL,
    updated               TEXT NOT NULL
);
"""


class StoreError(Exception):
    pass


class Transaction:
    """One SQLite write transaction; collects the events it applied."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.emitted: list[ev.Event] = []
        # Lines for task log files, written by the caller after COMMIT: log
        # files are plain text outside the database transaction.
        self.task_log_lines: list[tuple[str, str]] = []

    def task_log(self, task_id: str, line: str) -> None:
        self.task_log_lines.append((task_id, line))

    def emit(self, event: ev.Event) -> None:
        _APPLY[type(event)](self.conn, event)
        self.conn.execute(
            "INSERT INTO events (at, kind, body) VALUES (?, ?, ?)",
            (getattr(event, "at", "") or "", event.kind, ev.to_wire(event)),
        )
        self.emitted.append(event)

    def query(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        return self.conn.execute(sql, params).fetchall()

    def query_one(self, sql: str, params: tuple | dict = ()) -> sqlite3.Row | None:
        return self.conn.execute(sql, params).fetchone()


class JobStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # check_same_thread=False because the DBThread that owns the store may
        # be created on a different thread than the one that opens it; only
        # that one thread ever uses the connection afterwards.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: an acknowledged submission survives power loss, not only a
        # process crash. Measured cost is small next to a render task.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.executescript(SCHEMA)
        row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        elif int(row[0]) > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} was written by a newer Flamenco Peer (schema {row[0]}, "
                f"this one understands {SCHEMA_VERSION}); upgrade flamenco-peer or use another --data-dir"
            )
        self._conn = conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("job store is not open")
        return self._conn

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        tx = Transaction(conn)
        try:
            yield tx
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    def read(self) -> Transaction:
        """A handle for read-only queries (autocommit, no events)."""
        return Transaction(self.conn)

    def apply_replicated(self, events: list[ev.Event]) -> None:
        """Apply events decided by another peer (the cluster layer's entry point)."""
        with self.transaction() as tx:
            for event in events:
                tx.emit(event)

    def events_since(self, idx: int, limit: int = 1000) -> list[tuple[int, ev.Event]]:
        rows = self.conn.execute(
            "SELECT idx, body FROM events WHERE idx > ? ORDER BY idx LIMIT ?", (idx, limit)
        ).fetchall()
        return [(r["idx"], ev.from_wire(r["body"])) for r in rows]

    def last_event_index(self) -> int:
        row = self.conn.execute("SELECT COALESCE(MAX(idx), 0) FROM events").fetchone()
        return int(row[0])


# --- applying events -------------------------------------------------------


def _apply_job_submitted(conn: sqlite3.Connection, e: ev.JobSubmitted) -> None:
    j = e.job
    conn.execute(
        """INSERT INTO jobs (id, name, type, type_etag, priority, status, activity, settings, metadata,
                             submitter_platform, worker_tag, shaman_checkout_id, created, updated)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        (
            j["id"], j["name"], j["type"], j.get("type_etag", ""), j["priority"], j["status"],
            j.get("activity", ""), json.dumps(j["settings"]), json.dumps(j["metadata"]),
            j["submitter_platform"], j.get("worker_tag", ""), j.get("shaman_checkout_id", ""),
            j["created"], j["created"],
        ),
    )
    conn.executemany(
        """INSERT INTO tasks (id, job_id, index_in_job, name, type, priority, status, activity,
                              commands, steps_completed, steps_total, created, updated)
           VALUES (?, ?, ?, ?, ?, ?, 'queued', '', ?, 0, ?, ?, ?)""",
        [
            (
                t["id"], j["id"], t["index_in_job"], t["name"], t["type"], t["priority"],
                json.dumps(t["commands"]), t["steps_total"], j["created"], j["created"],
            )
            for t in e.tasks
        ],
    )
    conn.executemany(
        "INSERT INTO task_dependencies (task_id, depends_on) VALUES (?, ?)",
        [tuple(pair) for pair in e.dependencies],
    )


def _apply_job_status(conn: sqlite3.Connection, e: ev.JobStatusChanged) -> None:
    conn.execute(
        "UPDATE jobs SET status=?, activity=?, updated=? WHERE id=?",
        (e.status, e.activity, e.at, e.job_id),
    )


def _apply_job_priority(conn: sqlite3.Connection, e: ev.JobPriorityChanged) -> None:
    conn.execute("UPDATE jobs SET priority=?, updated=? WHERE id=?", (e.priority, e.at, e.job_id))


def _apply_job_deleted(conn: sqlite3.Connection, e: ev.JobDeleted) -> None:
    # Dependencies and failures cascade from tasks, tasks cascade from jobs.
    conn.execute("DELETE FROM jobs WHERE id=?", (e.job_id,))


def _apply_tasks_status(conn: sqlite3.Connection, e: ev.TasksStatusChanged) -> None:
    if not e.task_ids:
        return
    marks = ",".join("?" * len(e.task_ids))
    extra = ""
    if e.status == "completed":
        extra = ", steps_completed=steps_total"
    elif e.status == "queued":
        extra = ", steps_completed=0, worker_id=''"
    conn.execute(
        f"UPDATE tasks SET status=?, activity=?, updated=?{extra} WHERE id IN ({marks})",
        (e.status, e.activity, e.at, *e.task_ids),
    )
    conn.execute(
        f"""UPDATE jobs SET updated=? WHERE id IN (SELECT DISTINCT job_id FROM tasks WHERE id IN ({marks}))""",
        (e.at, *e.task_ids),
    )


def _apply_task_assigned(conn: sqlite3.Connection, e: ev.TaskAssigned) -> None:
    conn.execute(
        """UPDATE tasks SET status='active', worker_id=?, last_touched=?, updated=?,
                            activity='Assigned to worker' WHERE id=?""",
        (e.worker_id, e.at, e.at, e.task_id),
    )


def _apply_task_progressed(conn: sqlite3.Connection, e: ev.TaskProgressed) -> None:
    sets = ["last_touched=?", "updated=?"]
    params: list[Any] = [e.at, e.at]
    if e.steps_completed is not None:
        sets.append("steps_completed=MIN(?, steps_total)")
        params.append(e.steps_completed)
    if e.activity is not None:
        sets.append("activity=?")
        params.append(e.activity)
    conn.execute(f"UPDATE tasks SET {', '.join(sets)} WHERE id=?", (*params, e.task_id))


def _apply_task_failure(conn: sqlite3.Connection, e: ev.TaskFailureRecorded) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO task_failures (task_id, worker_id, at) VALUES (?, ?, ?)",
        (e.task_id, e.worker_id, e.at),
    )


def _apply_failures_cleared(conn: sqlite3.Connection, e: ev.TaskFailuresCleared) -> None:
    conn.execute(
        "DELETE FROM task_failures WHERE task_id IN (SELECT id FROM tasks WHERE job_id=?)", (e.job_id,)
    )


def _apply_worker_updated(conn: sqlite3.Connection, e: ev.WorkerUpdated) -> None:
    conn.execute(
        """INSERT INTO workers (id, name, address, platform, software, status, supported_task_types, updated)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?)
           ON CONFLICT(id) DO UPDATE SET name=excluded.name, address=excluded.address,
               platform=excluded.platform, software=excluded.software, status=excluded.status,
               supported_task_types=excluded.supported_task_types, updated=excluded.updated""",
        (
            e.worker_id, e.name, e.address, e.platform, e.software, e.status,
            json.dumps(e.supported_task_types), e.at,
        ),
    )


_APPLY: dict[type, Callable[[sqlite3.Connection, Any], None]] = {
    ev.JobSubmitted: _apply_job_submitted,
    ev.JobStatusChanged: _apply_job_status,
    ev.JobPriorityChanged: _apply_job_priority,
    ev.JobDeleted: _apply_job_deleted,
    ev.TasksStatusChanged: _apply_tasks_status,
    ev.TaskAssigned: _apply_task_assigned,
    ev.TaskProgressed: _apply_task_progressed,
    ev.TaskFailureRecorded: _apply_task_failure,
    ev.TaskFailuresCleared: _apply_failures_cleared,
    ev.WorkerUpdated: _apply_worker_updated,
}
assert set(_APPLY) == set(ev.EVENT_TYPES.values()), "every event kind needs an apply function"
