"""The store as a replica: terms on entries, continuity, logs, rebasing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from peer.coordinator import events as ev
from peer.coordinator import status_machine
from peer.coordinator.store import SCHEMA_VERSION, JobStore, LogEntry, StoreError, TermSegment

from .test_status_machine import AT, add_job, job_status

LATER = "2026-01-01T00:01:30+00:00"


def open_store(path: Path) -> JobStore:
    s = JobStore(path)
    s.open()
    return s


@pytest.fixture
def leader(tmp_path: Path):
    s = open_store(tmp_path / "leader" / "peer.sqlite")
    yield s
    s.close()


@pytest.fixture
def replica(tmp_path: Path):
    s = open_store(tmp_path / "replica" / "peer.sqlite")
    yield s
    s.close()


def log_line(store: JobStore, task_id: str, line: str, term=(1, "a")) -> None:
    with store.transaction(term) as tx:
        tx.task_log(task_id, line)


def test_entries_carry_the_term_they_were_written_in(leader):
    with leader.transaction((3, "peer-a")) as tx:
        tx.emit(ev.JobPriorityChanged(job_id="x", priority=1, at=AT))
        tx.emit(ev.JobPriorityChanged(job_id="x", priority=2, at=AT))
    with leader.transaction((4, "peer-b")) as tx:
        tx.emit(ev.JobPriorityChanged(job_id="x", priority=3, at=AT))
    assert [e.term for e in leader.entries_since(0)] == [(3, "peer-a"), (3, "peer-a"), (4, "peer-b")]
    assert leader.term_at(0) == (0, "")
    assert leader.term_at(2) == (3, "peer-a")
    assert leader.term_at(9) is None
    assert leader.last_term() == (4, "peer-b")
    assert leader.segments() == [TermSegment(3, "peer-a", 1, 2), TermSegment(4, "peer-b", 3, 3)]
    assert leader.max_epoch() == 4


def test_replica_gets_the_same_tables_entries_and_log_files(leader, replica):
    job, tasks = add_job(leader, n_tasks=2)
    log_line(leader, tasks[0], "rendering frame 1")
    log_line(leader, tasks[0], "rendering frame 2")
    replica.append_replicated(leader.entries_since(0))
    for table in ("jobs", "tasks", "events"):
        a = [tuple(r) for r in leader.read().query(f"SELECT * FROM {table} ORDER BY 1")]
        b = [tuple(r) for r in replica.read().query(f"SELECT * FROM {table} ORDER BY 1")]
        assert a == b, table
    log = replica.logs.path_for(tasks[0], job)
    assert log.read_text() == "rendering frame 1\nrendering frame 2\n"
    assert leader.logs.path_for(tasks[0], job).read_text() == log.read_text()


def test_replica_refuses_entries_that_do_not_continue_its_log(leader, replica):
    add_job(leader)
    add_job(leader)
    entries = leader.entries_since(0)
    with pytest.raises(StoreError, match="does not follow"):
        replica.append_replicated(entries[1:])
    assert replica.last_event_index() == 0  # nothing half-applied


def test_deleting_a_job_removes_its_logs_on_every_replica(leader, replica):
    job, tasks = add_job(leader)
    log_line(leader, tasks[0], "hello")
    with leader.transaction() as tx:
        tx.emit(ev.JobDeleted(job_id=job, at=AT))
    replica.append_replicated(leader.entries_since(0))
    assert not replica.logs.job_dir(job).exists()
    assert not leader.logs.job_dir(job).exists()


def test_log_entries_survive_the_wire():
    entry = LogEntry(7, 2, "peer-a", AT, "job-deleted", ev.to_wire(ev.JobDeleted(job_id="j", at=AT)))
    assert LogEntry.from_wire(entry.to_wire()) == entry


def test_rebuild_from_prefix_returns_the_diverged_suffix_and_keeps_the_rest(leader):
    job, tasks = add_job(leader)
    log_line(leader, tasks[0], "before the split")
    keep = leader.last_event_index()
    with leader.transaction((5, "lonely")) as tx:
        status_machine.set_tasks_status(tx, [tasks[0]], "completed", "", AT)
    suffix = leader.rebuild_from_prefix(keep)
    assert suffix and all(e.term == (5, "lonely") for e in suffix)
    assert leader.last_event_index() == keep
    assert job_status(leader, job) == "queued"
    # Rebuilding did not append the kept lines a second time; the file stays indexed.
    assert leader.logs.path_for(tasks[0], job).read_text().count("before the split") == 1
    assert leader.read().query_one("SELECT path FROM task_logs WHERE task_id=?", (tasks[0],)) is not None
    # The epoch seen is remembered, so this peer never reuses it.
    assert leader.max_epoch() == 5
    assert leader.path.with_name("peer.sqlite.diverged").exists()


def test_schema_1_database_is_upgraded_in_place(tmp_path):
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "INSERT INTO meta VALUES ('schema_version', '1');"
        "CREATE TABLE events (idx INTEGER PRIMARY KEY, at TEXT NOT NULL, kind TEXT NOT NULL, body BLOB NOT NULL);"
    )
    conn.execute("INSERT INTO events (at, kind, body) VALUES (?, ?, ?)",
                 (AT, "job-deleted", ev.to_wire(ev.JobDeleted(job_id="j", at=AT))))
    conn.commit()
    conn.close()
    store = open_store(path)
    try:
        assert store.term_at(1) == (0, "")
        assert store.read().query_one("SELECT value FROM meta WHERE key='schema_version'")[0] == str(SCHEMA_VERSION)
    finally:
        store.close()


def test_schema_2_database_gains_run_times_and_status_requests(tmp_path):
    path = tmp_path / "v2.sqlite"
    conn = sqlite3.connect(path)
    # The version-2 shapes of the tables that grew columns in version 3.
    conn.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "INSERT INTO meta VALUES ('schema_version', '2');"
        "CREATE TABLE tasks (id TEXT PRIMARY KEY, job_id TEXT NOT NULL, index_in_job INTEGER NOT NULL,"
        " name TEXT NOT NULL, type TEXT NOT NULL, priority INTEGER NOT NULL, status TEXT NOT NULL,"
        " activity TEXT NOT NULL DEFAULT '', commands TEXT NOT NULL, steps_completed INTEGER NOT NULL DEFAULT 0,"
        " steps_total INTEGER NOT NULL, worker_id TEXT NOT NULL DEFAULT '', last_touched TEXT NOT NULL DEFAULT '',"
        " created TEXT NOT NULL, updated TEXT NOT NULL);"
        "CREATE TABLE workers (id TEXT PRIMARY KEY, name TEXT NOT NULL, address TEXT NOT NULL,"
        " platform TEXT NOT NULL, software TEXT NOT NULL, status TEXT NOT NULL,"
        " supported_task_types TEXT NOT NULL, updated TEXT NOT NULL);"
    )
    conn.commit()
    conn.close()
    store = open_store(path)
    try:
        job, tasks = add_job(store)
        with store.transaction() as tx:
            tx.emit(ev.TaskAssigned(task_id=tasks[0], worker_id="w", at=AT))
            status_machine.set_tasks_status(tx, [tasks[0]], "completed", "", LATER)
        row = store.read().query_one("SELECT started, finished FROM tasks WHERE id=?", (tasks[0],))
        assert (row["started"], row["finished"]) == (AT, LATER)
        columns = {r[1] for r in store.read().query("PRAGMA table_info(workers)")}
        assert {"status_requested", "lazy_status_request"} <= columns
    finally:
        store.close()


def test_a_store_loses_the_index_that_tasks_by_worker_status_superseded(tmp_path):
    path = tmp_path / "peer.sqlite"
    open_store(path).close()
    conn = sqlite3.connect(path)
    conn.execute("CREATE INDEX tasks_by_worker ON tasks(worker_id)")  # as stores written before it have
    conn.commit()
    conn.close()
    store = open_store(path)
    try:
        indexes = {r[0] for r in store.read().query("SELECT name FROM sqlite_master WHERE type='index'")}
        assert "tasks_by_worker_status" in indexes
        assert "tasks_by_worker" not in indexes
        plan = " ".join(r["detail"] for r in store.read().query(
            "EXPLAIN QUERY PLAN SELECT id FROM tasks WHERE worker_id=?", ("w",)))
        assert "tasks_by_worker_status" in plan  # lookups by worker alone still use an index
    finally:
        store.close()
