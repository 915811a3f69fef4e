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
import os
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from . import events as ev
from .dbthread import GroupDone, Outcome
from .tasklogs import TaskLogs

SCHEMA_VERSION = 3

Term = tuple[int, str]  # (epoch, leader peer id)
NO_TERM: Term = (0, "")


@dataclass(frozen=True)
class LogEntry:
    """One replicated event as it travels between peers (body stays msgpack)."""

    idx: int
    epoch: int
    leader: str
    at: str
    kind: str
    body: bytes

    @property
    def term(self) -> Term:
        return (self.epoch, self.leader)

    def to_wire(self) -> list[Any]:
        return [self.idx, self.epoch, self.leader, self.at, self.kind, self.body]

    @classmethod
    def from_wire(cls, data: list[Any]) -> LogEntry:
        idx, epoch, leader, at, kind, body = data
        return cls(int(idx), int(epoch), str(leader), str(at), str(kind), bytes(body))


@dataclass(frozen=True)
class TermSegment:
    """A run of consecutive log entries decided by one coordinator term."""

    epoch: int
    leader: str
    first: int
    last: int

    @property
    def term(self) -> Term:
        return (self.epoch, self.leader)

# Every event lands in the log through this one statement (decided here or replicated).
_INSERT_EVENT = "INSERT INTO events (idx, at, kind, body, epoch, leader) VALUES (?, ?, ?, ?, ?, ?)"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- The replicated log. (epoch, leader) is the term of the coordinator that
-- decided the event: two logs that hold the same term at the same index agree
-- on everything up to there (see peer/cluster/replication.py).
CREATE TABLE IF NOT EXISTS events (
    idx    INTEGER PRIMARY KEY,
    at     TEXT NOT NULL,
    kind   TEXT NOT NULL,
    body   BLOB NOT NULL,
    epoch  INTEGER NOT NULL DEFAULT 0,
    leader TEXT NOT NULL DEFAULT ''
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
    -- JSON: the job's files on its submitting peer (see peer/files); '' when none travel
    files               TEXT NOT NULL DEFAULT '',
    created             TEXT NOT NULL,
    updated             TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs(status);
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
    -- When the current run began (assigned) and ended: the dashboard's duration.
    started          TEXT NOT NULL DEFAULT '',
    finished         TEXT NOT NULL DEFAULT '',
    created          TEXT NOT NULL,
    updated          TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_by_status ON tasks(status);
CREATE INDEX IF NOT EXISTS tasks_by_job ON tasks(job_id, index_in_job);
-- A worker's active tasks, asked on every claim: without status in the index,
-- the lookup reads the worker's whole history. It also serves lookups by
-- worker alone (its leading column).
CREATE INDEX IF NOT EXISTS tasks_by_worker_status ON tasks(worker_id, status);
-- The scheduler's per-job lookup of the next runnable task (scheduler.pick_task).
CREATE INDEX IF NOT EXISTS tasks_pick ON tasks(job_id, status, priority DESC, index_in_job);
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
-- (worker, task type) pairs that may no longer run tasks of a job (Flamenco's job_blocks).
CREATE TABLE IF NOT EXISTS job_blocks (
    job_id     TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    worker_id  TEXT NOT NULL,
    task_type  TEXT NOT NULL,
    at         TEXT NOT NULL,
    PRIMARY KEY (job_id, worker_id, task_type)
);
-- Per worker run (stream), the last update applied: a retried update is a duplicate.
CREATE TABLE IF NOT EXISTS worker_update_marks (
    worker_id  TEXT NOT NULL,
    stream     TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    PRIMARY KEY (worker_id, stream)
);
-- Local index of task log files (plain text under logs/); not replicated:
-- each peer indexes the logs it holds.
CREATE TABLE IF NOT EXISTS task_logs (
    task_id  TEXT PRIMARY KEY REFERENCES tasks(id) ON DELETE CASCADE,
    job_id   TEXT NOT NULL,
    path     TEXT NOT NULL
);
-- Job-type scripts shared with the whole farm (see peer/compiler/farm_types.py).
CREATE TABLE IF NOT EXISTS shared_job_types (
    name            TEXT NOT NULL,
    publisher_id    TEXT NOT NULL,
    publisher_name  TEXT NOT NULL,
    file_name       TEXT NOT NULL,
    source          TEXT NOT NULL,
    at              TEXT NOT NULL,
    PRIMARY KEY (name, publisher_id)
);
CREATE TABLE IF NOT EXISTS workers (
    id                    TEXT PRIMARY KEY,
    name                  TEXT NOT NULL,
    address               TEXT NOT NULL,
    platform              TEXT NOT NULL,
    software              TEXT NOT NULL,
    status                TEXT NOT NULL,
    supported_task_types  TEXT NOT NULL,
    -- What a person asked this worker to be ("asleep"/"awake"; '' for nothing).
    -- It stays until changed, so a restarted worker is told again.
    status_requested      TEXT NOT NULL DEFAULT '',
    lazy_status_request   INTEGER NOT NULL DEFAULT 0,
    updated               TEXT NOT NULL
);
"""


class StoreError(Exception):
    pass


class Transaction:
    """One SQLite write transaction; collects the events it applied."""

    def __init__(self, conn: sqlite3.Connection, term: Term = NO_TERM) -> None:
        self.conn = conn
        self.term = term
        self.emitted: list[ev.Event] = []
        self.last_index = 0
        # Log lines wait here until the end of the transaction, then become
        # one TaskLogged event per task.
        self._pending_log: dict[str, list[str]] = {}

    def task_log(self, task_id: str, line: str) -> None:
        self._pending_log.setdefault(task_id, []).append(line)

    def flush_task_logs(self) -> None:
        pending, self._pending_log = self._pending_log, {}
        for task_id, lines in pending.items():
            self.emit(ev.TaskLogged(task_id=task_id, lines=lines))

    def emit(self, event: ev.Event) -> None:
        _APPLY[type(event)](self.conn, event)
        epoch, leader = self.term
        cur = self.conn.execute(
            _INSERT_EVENT,
            (None, getattr(event, "at", "") or "", event.kind, ev.to_wire(event), epoch, leader),
        )
        self.last_index = int(cur.lastrowid or 0)
        self.emitted.append(event)

    def _append_replicated(self, entries: list[LogEntry]) -> None:
        """Apply entries decided elsewhere, in order, then log them in one statement."""
        for entry in entries:
            event = ev.from_wire(entry.body)
            _APPLY[type(event)](self.conn, event)
            self.emitted.append(event)
        self.conn.executemany(_INSERT_EVENT, [(e.idx, e.at, e.kind, e.body, e.epoch, e.leader) for e in entries])
        if entries:
            self.last_index = entries[-1].idx

    def query(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        return self.conn.execute(sql, params).fetchall()

    def query_one(self, sql: str, params: tuple | dict = ()) -> sqlite3.Row | None:
        return self.conn.execute(sql, params).fetchone()


@dataclass(frozen=True)
class GroupedWrite:
    """One write of a group commit (``JobStore.transaction_group``): ``fn``
    runs as a transaction of ``term``; ``durable`` as for ``JobStore.transaction``."""

    fn: Callable[[Transaction], Any]
    term: Term = NO_TERM
    durable: bool = True


class JobStore:
    def __init__(self, path: Path, logs: TaskLogs | None = None) -> None:
        self.path = path
        self.logs = logs or TaskLogs(path.parent / "logs")
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
        if row is not None and int(row[0]) > SCHEMA_VERSION:
            conn.close()
            raise StoreError(
                f"{self.path} was written by a newer Flamenco Peer (schema {row[0]}, "
                f"this one understands {SCHEMA_VERSION}); upgrade flamenco-peer or use another --data-dir"
            )
        # Superseded by tasks_by_worker_status (same leading column): stores
        # written before it lose the copy that only cost time on every write.
        conn.execute("DROP INDEX IF EXISTS tasks_by_worker")
        _add_missing_columns(conn, {
            "jobs": ["files TEXT NOT NULL DEFAULT ''"],
            "tasks": ["started TEXT NOT NULL DEFAULT ''", "finished TEXT NOT NULL DEFAULT ''"],
            "workers": ["status_requested TEXT NOT NULL DEFAULT ''",
                        "lazy_status_request INTEGER NOT NULL DEFAULT 0"],
        })
        columns = {r[1] for r in conn.execute("PRAGMA table_info(events)")}
        if "epoch" not in columns:  # schema 1: events had no term yet
            conn.execute("ALTER TABLE events ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0")
            conn.execute("ALTER TABLE events ADD COLUMN leader TEXT NOT NULL DEFAULT ''")
        conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
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
    def transaction(self, term: Term = NO_TERM, *, durable: bool = True) -> Iterator[Transaction]:
        """One atomic change. Task-log lines are written to their files after
        COMMIT: the event log is the truth, the files are its readable copy.

        ``durable=False`` skips the fsync at COMMIT (SQLite ``synchronous=NORMAL``
        in WAL mode): still atomic and safe against a crash of the process, but
        a power cut may lose it. The coordinator uses it for the worker
        protocol's high-rate writes, which a worker repeats or a task rerun
        recovers; submissions and people's actions stay fully durable."""
        conn = self.conn
        with _synchronous(conn, durable):
            conn.execute("BEGIN IMMEDIATE")
            tx = Transaction(conn, term)
            try:
                yield tx
                log_paths = self._finish_write(tx)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            else:
                conn.execute("COMMIT")
        self._write_log_files(tx, log_paths)

    def transaction_group(self, writes: Sequence[GroupedWrite]) -> GroupDone:
        """Several writes in one SQLite transaction: group commit (see ``dbthread``).

        They run in order, each seeing what the ones before it wrote, each in
        its own SAVEPOINT: one that raises is rolled back alone and gets its
        exception; the others commit together, with one COMMIT (and one fsync
        if any of them is durable). Each gets ``(its result, its Transaction)``.
        Their task-log files are written after the callers have their answers
        (``GroupDone.then``): the event log is the truth, the files its copy.
        """
        conn = self.conn
        with _synchronous(conn, any(w.durable for w in writes)):
            return self._group(conn, writes)

    def _group(self, conn: sqlite3.Connection, writes: Sequence[GroupedWrite]) -> GroupDone:
        outcomes: list[Outcome[tuple[Any, Transaction]] | None] = [None] * len(writes)
        landed: list[tuple[Transaction, dict[str, Path]]] = []
        alone = len(writes) == 1  # nothing to keep apart: no savepoint needed
        try:
            conn.execute("BEGIN IMMEDIATE")
            for i, write in enumerate(writes):
                tx = Transaction(conn, write.term)
                if not alone:
                    conn.execute("SAVEPOINT write")
                try:
                    result = write.fn(tx)
                    paths = self._finish_write(tx)
                except BaseException as exc:
                    outcomes[i] = Outcome(error=exc)
                    if alone or not conn.in_transaction:  # (SQLite itself gave up the transaction)
                        raise
                    conn.execute("ROLLBACK TO write")
                    conn.execute("RELEASE write")
                else:
                    if not alone:
                        conn.execute("RELEASE write")
                    outcomes[i] = Outcome(value=(result, tx))
                    landed.append((tx, paths))
            conn.execute("COMMIT")
        except BaseException as exc:
            # Nothing of the group landed: each write fails, with its own error if it had one.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return GroupDone([o if o is not None and o.error is not None else Outcome(error=exc) for o in outcomes])

        def write_log_files() -> None:
            failed: Exception | None = None
            for tx, paths in landed:  # one write's failing files must not stop the others'
                try:
                    self._write_log_files(tx, paths)
                except Exception as exc:
                    failed = failed or exc
            if failed is not None:
                raise failed

        return GroupDone([o for o in outcomes if o is not None], write_log_files if landed else None)

    def _finish_write(self, tx: Transaction) -> dict[str, Path]:
        """The last step of a write, inside its transaction: its buffered log
        lines become events and their files get indexed; task id -> log path."""
        tx.flush_task_logs()
        return self._index_task_logs(tx)

    def _index_task_logs(self, tx: Transaction) -> dict[str, Path]:
        """Record (once) where each logged task's file lives; task id -> path."""
        paths: dict[str, Path] = {}
        for task_id in dict.fromkeys(e.task_id for e in tx.emitted if isinstance(e, ev.TaskLogged)):
            row = tx.query_one(
                "SELECT l.path, t.job_id FROM tasks t LEFT JOIN task_logs l ON l.task_id=t.id WHERE t.id=?",
                (task_id,),
            )
            if row is None:  # deleted job: nothing to log to
                continue
            if row["path"] is None:
                path = self.logs.path_for(task_id, row["job_id"])
                tx.conn.execute(
                    "INSERT INTO task_logs (task_id, job_id, path) VALUES (?, ?, ?)",
                    (task_id, row["job_id"], str(path.relative_to(self.logs.root))),
                )
                paths[task_id] = path
            else:
                paths[task_id] = self.logs.root / row["path"]
        return paths

    def _write_log_files(self, tx: Transaction, paths: dict[str, Path]) -> None:
        for event in tx.emitted:
            if isinstance(event, ev.TaskLogged) and event.task_id in paths:
                self.logs.append(paths[event.task_id], "".join(line + "\n" for line in event.lines))
            elif isinstance(event, ev.JobDeleted):
                self.logs.delete_job(event.job_id)

    def read(self) -> Transaction:
        """A handle for read-only queries (autocommit, no events)."""
        return Transaction(self.conn)

    # --- replication (used by peer.cluster) --------------------------------

    def append_replicated(self, entries: list[LogEntry]) -> list[ev.Event]:
        """Apply entries decided by the coordinator, keeping their index and term.

        Entries must continue this log exactly; anything else means the caller
        mixed up logs, which must never be papered over.
        """
        with self.transaction() as tx:
            expected = self.last_event_index() + 1
            for entry in entries:
                if entry.idx != expected:
                    raise StoreError(f"replicated entry {entry.idx} does not follow local entry {expected - 1}")
                expected += 1
            tx._append_replicated(entries)
        return tx.emitted

    def entries_since(self, idx: int, limit: int = 1000) -> list[LogEntry]:
        cursor = self.conn.cursor()
        cursor.row_factory = None  # plain tuples, in LogEntry's order: a follower pulls after every commit
        rows = cursor.execute(
            "SELECT idx, epoch, leader, at, kind, body FROM events WHERE idx > ? ORDER BY idx LIMIT ?",
            (idx, limit),
        ).fetchall()
        return [LogEntry(*row) for row in rows]

    def events_since(self, idx: int, limit: int = 1000) -> list[tuple[int, ev.Event]]:
        return [(e.idx, ev.from_wire(e.body)) for e in self.entries_since(idx, limit)]

    def last_event_index(self) -> int:
        row = self.conn.execute("SELECT COALESCE(MAX(idx), 0) FROM events").fetchone()
        return int(row[0])

    def term_at(self, idx: int) -> Term | None:
        """The term of entry ``idx``; NO_TERM for 0 (the empty prefix); None if absent."""
        if idx == 0:
            return NO_TERM
        row = self.conn.execute("SELECT epoch, leader FROM events WHERE idx=?", (idx,)).fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    def last_term(self) -> Term:
        return self.term_at(self.last_event_index()) or NO_TERM

    def segments(self) -> list[TermSegment]:
        rows = self.conn.execute(
            """SELECT epoch, leader, MIN(idx) AS first, MAX(idx) AS last FROM events
               GROUP BY epoch, leader ORDER BY first"""
        ).fetchall()
        return [TermSegment(int(r[0]), str(r[1]), int(r[2]), int(r[3])) for r in rows]

    def max_epoch(self) -> int:
        row = self.conn.execute("SELECT value FROM meta WHERE key='max_epoch'").fetchone()
        logged = self.conn.execute("SELECT COALESCE(MAX(epoch), 0) FROM events").fetchone()[0]
        return max(int(row[0]) if row else 0, int(logged))

    def note_epoch(self, epoch: int) -> None:
        """Remember the highest epoch seen, so a restarted peer never reuses one."""
        if epoch > self.max_epoch():
            self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('max_epoch', ?)", (str(epoch),))

    def rebuild_from_prefix(self, keep: int) -> list[LogEntry]:
        """Throw away entries after ``keep`` and rebuild the tables from the rest.

        Used when this peer's log diverged from the coordinator's (it led a
        partition of its own). Returns the removed entries so their progress
        can be merged into the coordinator's log. The old database is kept
        beside the new one as ``*.diverged`` for inspection.
        """
        suffix = self.entries_since(keep, limit=1_000_000_000)
        prefix = [e for e in self.entries_since(0, limit=keep)] if keep else []
        max_epoch = self.max_epoch()
        self.close()
        backup = self.path.with_name(self.path.name + ".diverged")
        for ext in ("", "-wal", "-shm"):
            src = Path(str(self.path) + ext)
            if src.exists():
                os.replace(src, Path(str(backup) + ext))
        self.open()
        self.note_epoch(max_epoch)
        if prefix:
            # Logs already hold these lines; rebuild tables without re-appending.
            saved, self.logs = self.logs, _NullLogs()
            try:
                self.append_replicated(prefix)
            finally:
                self.logs = saved
            # task_logs indexes files that still exist; rebuild it from the tasks.
            with self.transaction() as tx:
                for row in tx.query("SELECT id, job_id FROM tasks"):
                    path = self.logs.path_for(row["id"], row["job_id"])
                    if path.exists():
                        tx.conn.execute(
                            "INSERT OR IGNORE INTO task_logs (task_id, job_id, path) VALUES (?, ?, ?)",
                            (row["id"], row["job_id"], str(path.relative_to(self.logs.root))),
                        )
        return suffix


@contextmanager
def _synchronous(conn: sqlite3.Connection, durable: bool) -> Iterator[None]:
    """``synchronous=NORMAL`` for a non-durable write (no fsync at COMMIT),
    back to the store's FULL afterwards (see ``JobStore.transaction``)."""
    if durable:
        yield
        return
    conn.execute("PRAGMA synchronous=NORMAL")
    try:
        yield
    finally:
        conn.execute("PRAGMA synchronous=FULL")


def _add_missing_columns(conn: sqlite3.Connection, wanted: dict[str, list[str]]) -> None:
    """Bring a store written by an older version up to this schema (columns only ever get added)."""
    for table, columns in wanted.items():
        present = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
        for column in columns:
            if column.split()[0] not in present:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column}")


class _NullLogs(TaskLogs):
    def __init__(self) -> None:
        super().__init__(Path(os.devnull))

    def append(self, path: Path, text: str) -> None:
        pass

    def delete_job(self, job_id: str) -> None:
        pass


# --- applying events -------------------------------------------------------


def _apply_job_submitted(conn: sqlite3.Connection, e: ev.JobSubmitted) -> None:
    j = e.job
    conn.execute(
        """INSERT INTO jobs (id, name, type, type_etag, priority, status, activity, settings, metadata,
                             submitter_platform, worker_tag, shaman_checkout_id, files, created, updated)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        (
            j["id"], j["name"], j["type"], j.get("type_etag", ""), j["priority"], j["status"],
            j.get("activity", ""), json.dumps(j["settings"]), json.dumps(j["metadata"]),
            j["submitter_platform"], j.get("worker_tag", ""), j.get("shaman_checkout_id", ""),
            json.dumps(j["files"]) if j.get("files") else "",
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
    params: tuple[Any, ...] = ()
    if e.status == "queued":
        extra = ", steps_completed=0, worker_id='', started='', finished=''"
    elif e.status != "active":
        if e.status == "completed":
            extra = ", steps_completed=steps_total"
        # A run ends when its task leaves 'active' (the SET sees the old status).
        extra += ", finished=CASE WHEN status='active' THEN ? ELSE finished END"
        params = (e.at,)
    conn.execute(
        f"UPDATE tasks SET status=?, activity=?, updated=?{extra} WHERE id IN ({marks})",
        (e.status, e.activity, e.at, *params, *e.task_ids),
    )
    conn.execute(
        f"""UPDATE jobs SET updated=? WHERE id IN (SELECT DISTINCT job_id FROM tasks WHERE id IN ({marks}))""",
        (e.at, *e.task_ids),
    )


def _apply_task_assigned(conn: sqlite3.Connection, e: ev.TaskAssigned) -> None:
    conn.execute(
        """UPDATE tasks SET status='active', worker_id=?, last_touched=?, updated=?, started=?, finished='',
                            activity='Assigned to worker' WHERE id=?""",
        (e.worker_id, e.at, e.at, e.at, e.task_id),
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


def _apply_blocklisted(conn: sqlite3.Connection, e: ev.WorkerBlocklisted) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO job_blocks (job_id, worker_id, task_type, at) VALUES (?, ?, ?, ?)",
        (e.job_id, e.worker_id, e.task_type, e.at),
    )


def _apply_blocklist_removed(conn: sqlite3.Connection, e: ev.BlocklistEntriesRemoved) -> None:
    conn.executemany(
        "DELETE FROM job_blocks WHERE job_id=? AND worker_id=? AND task_type=?",
        [(e.job_id, worker_id, task_type) for worker_id, task_type in e.entries],
    )


def _apply_update_mark(conn: sqlite3.Connection, e: ev.WorkerUpdateApplied) -> None:
    conn.execute(
        """INSERT INTO worker_update_marks (worker_id, stream, seq) VALUES (?, ?, ?)
           ON CONFLICT(worker_id, stream) DO UPDATE SET seq = MAX(seq, excluded.seq)""",
        (e.worker_id, e.stream, e.seq),
    )


def _apply_nothing(conn: sqlite3.Connection, e: ev.Event) -> None:
    """Events whose effect lives outside the tables (log files)."""


def _apply_job_type_published(conn: sqlite3.Connection, e: ev.JobTypePublished) -> None:
    conn.execute(
        """INSERT OR REPLACE INTO shared_job_types (name, publisher_id, publisher_name, file_name, source, at)
           VALUES (?, ?, ?, ?, ?, ?)""",
        (e.name, e.publisher_id, e.publisher_name, e.file_name, e.source, e.at),
    )


def _apply_job_type_withdrawn(conn: sqlite3.Connection, e: ev.JobTypeWithdrawn) -> None:
    conn.execute("DELETE FROM shared_job_types WHERE name=? AND publisher_id=?", (e.name, e.publisher_id))


def _apply_worker_status_requested(conn: sqlite3.Connection, e: ev.WorkerStatusRequested) -> None:
    conn.execute(
        "UPDATE workers SET status_requested=?, lazy_status_request=?, updated=? WHERE id=?",
        (e.status, int(e.is_lazy), e.at, e.worker_id),
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
    ev.WorkerStatusRequested: _apply_worker_status_requested,
    ev.TaskLogged: _apply_nothing,
    ev.WorkerUpdateApplied: _apply_update_mark,
    ev.WorkerBlocklisted: _apply_blocklisted,
    ev.BlocklistEntriesRemoved: _apply_blocklist_removed,
    ev.JobTypePublished: _apply_job_type_published,
    ev.JobTypeWithdrawn: _apply_job_type_withdrawn,
}
assert set(_APPLY) == set(ev.EVENT_TYPES.values()), "every event kind needs an apply function"
