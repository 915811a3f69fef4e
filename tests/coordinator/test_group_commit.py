"""Group commit: writes that queue up on the DB thread share one SQLite transaction,
yet each keeps its own result, its own failure and its own log entries."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Sequence

import msgpack
import pytest

from peer.coordinator import events as ev
from peer.coordinator import scheduler, status_machine
from peer.coordinator.dbthread import DBThread, GroupDone, Outcome
from peer.coordinator.store import GroupedWrite, JobStore, Transaction

from .test_status_machine import AT, add_job, job_status, task_statuses

TERM = (1, "peer-a")


@pytest.fixture
def store(tmp_path: Path):
    s = JobStore(tmp_path / "peer.sqlite")
    s.open()
    yield s
    s.close()


@pytest.fixture
def db():
    thread = DBThread("test-db")
    yield thread
    thread.shutdown()


class Recorder:
    """A group function that records the groups it was given."""

    def __init__(self, fail_on: object = None) -> None:
        self.groups: list[list[Any]] = []
        self.fail_on = fail_on
        self.then_ran = threading.Event()

    def __call__(self, items: Sequence[Any]) -> GroupDone:
        self.groups.append(list(items))
        outcomes = [Outcome(error=ValueError(f"refused {i}")) if i == self.fail_on else Outcome(value=i * 10)
                    for i in items]
        return GroupDone(outcomes, self.then_ran.set)


async def block(db: DBThread) -> tuple[threading.Event, asyncio.Future[Any]]:
    """Keep the DB thread busy until the returned event is set."""
    release, started = threading.Event(), threading.Event()

    def busy() -> None:
        started.set()
        release.wait(10)

    blocker = asyncio.ensure_future(db.run(busy))
    assert await asyncio.to_thread(started.wait, 10)
    return release, blocker


async def test_calls_that_queue_up_run_as_one_group_each_with_its_own_outcome(db):
    group = Recorder(fail_on=3)
    release, blocker = await block(db)
    calls = [asyncio.ensure_future(db.run_grouped(group, i)) for i in range(1, 6)]
    await asyncio.sleep(0.05)  # all queued behind the blocker
    release.set()
    await blocker
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert group.groups == [[1, 2, 3, 4, 5]]
    assert results[:2] == [10, 20] and results[3:] == [40, 50]
    assert isinstance(results[2], ValueError) and str(results[2]) == "refused 3"
    await db.run(lambda: None)  # a plain call comes after the group's after-commit work
    assert group.then_ran.is_set()


async def test_a_plain_call_between_grouped_ones_keeps_its_place(db):
    group = Recorder()
    seen: list[str] = []
    release, blocker = await block(db)
    first = asyncio.ensure_future(db.run_grouped(group, 1))
    await asyncio.sleep(0.01)
    middle = asyncio.ensure_future(db.run(lambda: seen.append(f"plain after {len(group.groups)} groups")))
    await asyncio.sleep(0.01)
    last = asyncio.ensure_future(db.run_grouped(group, 2))
    await asyncio.sleep(0.05)
    release.set()
    await asyncio.gather(blocker, first, middle, last)
    assert group.groups == [[1], [2]]
    assert seen == ["plain after 1 groups"]


async def test_work_after_a_group_is_done_before_the_next_plain_call_but_not_before_the_next_group(db):
    order: list[str] = []
    may_finish = threading.Event()

    def slow_then() -> None:
        may_finish.wait(10)
        order.append("then")

    def group(items: Sequence[Any]) -> GroupDone:
        order.append(f"group {items[0]}")
        return GroupDone([Outcome(value=None)] * len(items), slow_then if items[0] == 1 else None)

    await db.run_grouped(group, 1)  # answered before its after-commit work is done
    await db.run_grouped(group, 2)  # the next group need not wait for it either
    assert await db.run_unordered(lambda: list(order)) == ["group 1", "group 2"]
    plain = asyncio.ensure_future(db.run(lambda: order.append("plain")))
    await asyncio.sleep(0.05)
    assert not plain.done()  # a plain call sees everything before it, log files included
    may_finish.set()
    await plain
    assert order == ["group 1", "group 2", "then", "plain"]


async def test_a_failing_group_function_fails_each_call_and_the_thread_goes_on(db):
    def broken(items: Sequence[Any]) -> GroupDone:
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        await db.run_grouped(broken, 1)
    assert await db.run(lambda: 42) == 42


async def test_a_call_cancelled_before_its_turn_is_not_run(db):
    ran: list[int] = []
    release, blocker = await block(db)
    doomed = asyncio.ensure_future(db.run(lambda: ran.append(1)))
    await asyncio.sleep(0.01)
    doomed.cancel()
    await asyncio.sleep(0.01)
    release.set()
    await blocker
    await db.run(lambda: None)
    assert ran == []


def test_run_sync_and_shutdown_finish_queued_work(db):
    assert db.run_sync(lambda a, b: a + b, 2, 3) == 5
    with pytest.raises(ZeroDivisionError):
        db.run_sync(lambda: 1 / 0)
    db.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        db.run_sync(lambda: None)


# --- the store's side ------------------------------------------------------------------


def emit_priority(job_id: str, priority: int):
    def write(tx: Transaction) -> int:
        tx.emit(ev.JobPriorityChanged(job_id=job_id, priority=priority, at=AT))
        return priority
    return write


def test_a_failing_write_is_rolled_back_alone(store):
    job, tasks = add_job(store)
    before = store.last_event_index()

    def fails_halfway(tx: Transaction) -> None:
        tx.emit(ev.JobPriorityChanged(job_id=job, priority=99, at=AT))
        tx.task_log(tasks[0], "this line must not survive")
        raise ValueError("refused")

    done = store.transaction_group([
        GroupedWrite(emit_priority(job, 10), TERM, durable=False),
        GroupedWrite(fails_halfway, TERM, durable=False),
        GroupedWrite(emit_priority(job, 30), TERM, durable=False),
    ])
    first, failed, last = done.outcomes
    assert isinstance(failed.error, ValueError) and failed.value is None
    assert first.value[0] == 10 and last.value[0] == 30
    # Each write's own events and index; nothing of the failed one.
    assert [e.priority for e in first.value[1].emitted] == [10]
    assert first.value[1].last_index == before + 1 and last.value[1].last_index == before + 2
    entries = store.entries_since(before)
    assert [msgpack.unpackb(e.body)["priority"] for e in entries] == [10, 30]
    assert all(e.term == TERM for e in entries)
    assert store.read().query_one("SELECT priority FROM jobs WHERE id=?", (job,))["priority"] == 30
    done.then()
    assert not store.logs.path_for(tasks[0], job).exists()


def test_each_write_sees_the_writes_before_it_and_logs_after_commit(store):
    job, tasks = add_job(store, n_tasks=2)
    worker = scheduler.WorkerProfile("w1", "one", ("misc",))

    def claim(tx: Transaction) -> str | None:
        return scheduler.assign_next_task(tx, worker, AT)

    done = store.transaction_group([GroupedWrite(claim, TERM), GroupedWrite(claim, TERM), GroupedWrite(claim, TERM)])
    claimed = [o.value[0] for o in done.outcomes]
    assert claimed == [tasks[0], tasks[1], None]  # never the same task twice
    assert task_statuses(store, tasks) == ["active", "active"]
    assert not store.logs.path_for(tasks[0], job).exists()  # files come after the answers
    done.then()
    assert "task assigned to worker one" in store.logs.path_for(tasks[1], job).read_text()


def test_a_group_that_cannot_commit_fails_every_write(store):
    job, _ = add_job(store)
    store.conn.execute("CREATE TRIGGER refuse BEFORE UPDATE OF priority ON jobs WHEN NEW.priority = 13 "
                       "BEGIN SELECT RAISE(ROLLBACK, 'unlucky'); END")
    before = store.last_event_index()
    done = store.transaction_group([
        GroupedWrite(emit_priority(job, 10), TERM), GroupedWrite(emit_priority(job, 13), TERM),
        GroupedWrite(emit_priority(job, 20), TERM),
    ])
    assert all(o.error is not None for o in done.outcomes)
    assert "unlucky" in str(done.outcomes[1].error)
    assert store.last_event_index() == before
    assert not store.conn.in_transaction


def test_completing_tasks_of_a_pausing_job_pauses_it_after_the_last_active_one(store):
    job, tasks = add_job(store, n_tasks=3)
    with store.transaction() as tx:
        status_machine.set_tasks_status(tx, tasks[:2], "active", "", AT)
    with store.transaction() as tx:
        status_machine.request_job_status(tx, job, "pause-requested", "test", AT)
    with store.transaction() as tx:
        status_machine.set_tasks_status(tx, [tasks[0]], "completed", "", AT)
    assert job_status(store, job) == "pause-requested"
    with store.transaction() as tx:
        status_machine.set_tasks_status(tx, [tasks[1]], "completed", "", AT)
    assert job_status(store, job) == "paused"
    assert task_statuses(store, tasks) == ["completed", "completed", "paused"]


def test_event_encoding_is_byte_for_byte_the_generic_one():
    samples = [
        ev.JobSubmitted(job={"id": "j", "settings": {"a": [1, 2]}}, tasks=[{"id": "t"}], dependencies=[["t", "u"]],
                        at=AT),
        ev.TasksStatusChanged(task_ids=["a", "b"], status="completed", activity="Completed", at=AT),
        ev.TaskProgressed(task_id="t", steps_completed=None, activity="x", at=AT),
        ev.WorkerUpdated(worker_id="w", name="n", address="a", platform="linux", software="s", status="awake",
                         supported_task_types=["misc"], at=AT),
        ev.WorkerStatusRequested(worker_id="w", status="asleep", is_lazy=True, at=AT),
        ev.WorkerUpdateApplied(worker_id="w", stream="s", seq=3),
        ev.TaskLogged(task_id="t", lines=["one", "two"]),
    ]
    for event in samples:
        assert ev.to_wire(event) == msgpack.packb(event.to_dict(), use_bin_type=True), event.kind
        assert ev.from_wire(ev.to_wire(event)) == event
    with pytest.raises(ValueError, match="unknown event kind"):
        ev.from_wire(msgpack.packb({"kind": "nope"}))
    with pytest.raises(ValueError, match="msgpack map"):
        ev.from_wire(msgpack.packb([1, 2]))


async def test_shutdown_finishes_the_work_after_the_last_group():
    db = DBThread("test-db")
    written = threading.Event()

    def slow_then() -> None:
        threading.Event().wait(0.05)
        written.set()

    await db.run_grouped(lambda items: GroupDone([Outcome(value=None)] * len(items), slow_then), "x")
    await asyncio.to_thread(db.shutdown)
    assert written.is_set()


def test_threads_share_one_exit_hook_that_finishes_their_work(tmp_path: Path):
    """An interpreter that exits without shutdown() still finishes each DBThread's
    after-commit work; making more threads registers no more exit hooks."""
    marks = [tmp_path / f"written-{i}" for i in range(3)]
    script = f"""
import asyncio, atexit, pathlib, threading
from peer.coordinator.dbthread import DBThread, GroupDone, Outcome

hooks = atexit._ncallbacks()
threads = [DBThread(f"exit-test-{{i}}") for i in range(3)]
assert atexit._ncallbacks() == hooks, (hooks, atexit._ncallbacks())

def late_write(mark):
    def then():
        threading.Event().wait(0.2)  # still running when the interpreter starts to exit
        pathlib.Path(mark).write_text("done")
    return then

async def main():
    for thread, mark in zip(threads, {[str(m) for m in marks]!r}):
        await thread.run_grouped(lambda items, mark=mark: GroupDone([Outcome()] * len(items), late_write(mark)), 0)

asyncio.run(main())
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[2],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert [m.read_text() for m in marks] == ["done"] * 3
