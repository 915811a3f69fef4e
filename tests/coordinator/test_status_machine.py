"""Flamenco's automatic job/task status rules, on a real SQLite store."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from peer.coordinator import events as ev
from peer.coordinator import scheduler, status_machine
from peer.coordinator.store import JobStore

AT = "2026-01-01T00:00:00.000+00:00"


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    s = JobStore(tmp_path / "peer.sqlite")
    s.open()
    yield s
    s.close()


def add_job(store: JobStore, n_tasks: int = 3, *, priority: int = 50, task_type: str = "misc",
            deps: list[tuple[int, int]] = (), status: str = "queued") -> tuple[str, list[str]]:
    job_id = str(uuid.uuid4())
    task_ids = [str(uuid.uuid4()) for _ in range(n_tasks)]
    job = {
        "id": job_id, "name": f"job-{job_id[:4]}", "type": "echo-sleep-test", "priority": priority,
        "status": status, "settings": {}, "metadata": {}, "submitter_platform": "linux", "created": AT,
    }
    tasks = [
        {"id": t, "index_in_job": i + 1, "name": f"t{i}", "type": task_type, "priority": 50,
         "commands": [{"name": "echo", "parameters": {"message": "x"}, "total_step_count": 0}], "steps_total": 2}
        for i, t in enumerate(task_ids)
    ]
    with store.transaction() as tx:
        tx.emit(ev.JobSubmitted(job=job, tasks=tasks,
                                dependencies=[[task_ids[a], task_ids[b]] for a, b in deps]))
    return job_id, task_ids


def job_status(store: JobStore, job_id: str) -> str:
    return store.read().query_one("SELECT status FROM jobs WHERE id=?", (job_id,))["status"]


def task_statuses(store: JobStore, task_ids: list[str]) -> list[str]:
    tx = store.read()
    return [tx.query_one("SELECT status FROM tasks WHERE id=?", (t,))["status"] for t in task_ids]


def set_tasks(store: JobStore, ids: list[str], status: str) -> None:
    with store.transaction() as tx:
        status_machine.set_tasks_status(tx, ids, status, "", AT)


def request(store: JobStore, job_id: str, status: str) -> None:
    with store.transaction() as tx:
        status_machine.request_job_status(tx, job_id, status, "test", AT)


WORKER = scheduler.WorkerProfile("w1", "worker one", ("misc", "blender"))


def test_task_active_makes_queued_job_active(store):
    job, tasks = add_job(store)
    set_tasks(store, [tasks[0]], "active")
    assert job_status(store, job) == "active"


def test_all_tasks_completed_completes_job_and_sets_steps(store):
    job, tasks = add_job(store)
    set_tasks(store, tasks[:2], "completed")
    assert job_status(store, job) == "active"
    set_tasks(store, tasks[2:], "completed")
    assert job_status(store, job) == "completed"
    steps = store.read().query_one("SELECT SUM(steps_completed) AS s FROM tasks WHERE job_id=?", (job,))["s"]
    assert steps == 6


def test_failed_task_fails_job_at_ten_percent(store):
    job, tasks = add_job(store, n_tasks=20)
    set_tasks(store, [tasks[0]], "failed")  # 5 %: job keeps going
    assert job_status(store, job) == "active"
    set_tasks(store, [tasks[1]], "failed")  # 10 %: job fails, the rest is canceled
    assert job_status(store, job) == "failed"
    assert task_statuses(store, tasks[2:]) == ["canceled"] * 18


def test_cancel_cancels_runnable_tasks_and_keeps_completed(store):
    job, tasks = add_job(store)
    set_tasks(store, [tasks[0]], "completed")
    set_tasks(store, [tasks[1]], "active")
    request(store, job, "cancel-requested")
    assert task_statuses(store, tasks) == ["completed", "canceled", "canceled"]
    assert job_status(store, job) == "canceled"


def test_pause_waits_for_active_task(store):
    job, tasks = add_job(store)
    set_tasks(store, [tasks[0]], "active")
    request(store, job, "pause-requested")
    assert job_status(store, job) == "pause-requested"
    assert task_statuses(store, tasks) == ["active", "paused", "paused"]
    set_tasks(store, [tasks[0]], "completed")
    assert job_status(store, job) == "paused"


def test_pause_without_active_tasks_is_immediate(store):
    job, tasks = add_job(store)
    request(store, job, "pause-requested")
    assert job_status(store, job) == "paused"


def test_requeue_of_paused_job_resumes_it(store):
    job, tasks = add_job(store)
    set_tasks(store, [tasks[0]], "completed")
    request(store, job, "pause-requested")
    request(store, job, "requeueing")
    assert job_status(store, job) == "queued"
    assert task_statuses(store, tasks) == ["completed", "queued", "queued"]


def test_requeue_of_completed_job_requeues_everything(store):
    job, tasks = add_job(store)
    set_tasks(store, tasks, "completed")
    request(store, job, "requeueing")
    assert job_status(store, job) == "queued"
    assert task_statuses(store, tasks) == ["queued"] * 3
    assert store.read().query_one("SELECT SUM(steps_completed) AS s FROM tasks")["s"] == 0


def test_requeueing_one_task_of_completed_job_requeues_job(store):
    """Flamenco quirk we keep: it is pinned by Flamenco's own tests."""
    job, tasks = add_job(store)
    set_tasks(store, tasks, "completed")
    set_tasks(store, [tasks[1]], "queued")
    assert job_status(store, job) == "queued"
    assert task_statuses(store, tasks) == ["queued"] * 3


def test_refused_transitions_say_why(store):
    job, tasks = add_job(store)
    set_tasks(store, tasks, "completed")
    with pytest.raises(status_machine.TransitionRefused, match="cannot go to 'cancel-requested'"):
        request(store, job, "cancel-requested")
    with pytest.raises(status_machine.TransitionRefused, match="cannot be set to 'active'"):
        request(store, job, "active")


def test_soft_fail_then_hard_fail_after_three_workers(store):
    job, tasks = add_job(store, n_tasks=30)
    for i, worker in enumerate(("a", "b")):
        with store.transaction() as tx:
            assert status_machine.task_failed_by_worker(tx, tasks[0], worker, "boom", 5, AT) == "soft-failed"
    with store.transaction() as tx:
        assert status_machine.task_failed_by_worker(tx, tasks[0], "c", "boom", 5, AT) == "failed"


def test_failure_with_no_other_worker_fails_at_once(store):
    job, tasks = add_job(store, n_tasks=30)
    with store.transaction() as tx:
        assert status_machine.task_failed_by_worker(tx, tasks[0], "a", "boom", 0, AT) == "failed"


def test_requeue_tasks_of_pausing_job_pauses_them(store):
    job, tasks = add_job(store)
    set_tasks(store, [tasks[0]], "active")
    request(store, job, "pause-requested")
    with store.transaction() as tx:
        status_machine.requeue_tasks(tx, [tasks[0]], "worker vanished", AT)
    assert task_statuses(store, tasks) == ["paused"] * 3
    assert job_status(store, job) == "paused"


# --- scheduler ---------------------------------------------------------------


def assign(store: JobStore, worker: scheduler.WorkerProfile = WORKER) -> str | None:
    with store.transaction() as tx:
        return scheduler.assign_next_task(tx, worker, AT)


def test_scheduler_respects_dependencies(store):
    job, tasks = add_job(store, n_tasks=3, deps=[(1, 0), (2, 0)])
    assert assign(store) == tasks[0]
    assert assign(store) is None  # the others wait for task 0
    set_tasks(store, [tasks[0]], "completed")
    assert assign(store) == tasks[1]
    assert assign(store) == tasks[2]


def test_scheduler_prefers_job_priority_then_shares_equal_jobs_round_robin(store):
    low, low_tasks = add_job(store, n_tasks=2, priority=10)
    old, old_tasks = add_job(store, n_tasks=2, priority=60)
    new, new_tasks = add_job(store, n_tasks=2, priority=60)
    high, high_tasks = add_job(store, n_tasks=1, priority=90)
    order = [assign(store) for _ in range(7)]
    # Equal-priority jobs alternate (the one with fewer running tasks first,
    # the older one on a tie); lower priority waits for both.
    assert order == [*high_tasks, old_tasks[0], new_tasks[0], old_tasks[1], new_tasks[1], *low_tasks]


def test_scheduler_honours_task_types(store):
    job, tasks = add_job(store, n_tasks=1, task_type="blender")
    ffmpeg_only = scheduler.WorkerProfile("w2", "w2", ("ffmpeg",))
    assert assign(store, ffmpeg_only) is None
    assert assign(store) == tasks[0]


def test_scheduler_skips_paused_jobs_and_tasks_the_worker_failed(store):
    paused, _ = add_job(store, n_tasks=1, status="paused")
    job, tasks = add_job(store, n_tasks=1)
    with store.transaction() as tx:
        tx.emit(ev.TaskFailureRecorded(task_id=tasks[0], worker_id=WORKER.worker_id, at=AT))
    assert assign(store) is None
    other = scheduler.WorkerProfile("w9", "w9", ("misc",))
    assert assign(store, other) == tasks[0]


def test_priority_change_reorders(store):
    a, a_tasks = add_job(store, n_tasks=1)
    b, b_tasks = add_job(store, n_tasks=1)
    with store.transaction() as tx:
        tx.emit(ev.JobPriorityChanged(job_id=b, priority=80, at=AT))
    assert assign(store) == b_tasks[0]


# --- replication ---------------------------------------------------------------


def test_replaying_the_event_log_rebuilds_identical_tables(store, tmp_path):
    job, tasks = add_job(store, n_tasks=4, deps=[(3, 0)])
    assign(store)
    set_tasks(store, [tasks[0]], "completed")
    request(store, job, "pause-requested")
    request(store, job, "requeueing")
    with store.transaction() as tx:
        status_machine.task_failed_by_worker(tx, tasks[1], "w1", "boom", 2, AT)

    replica = JobStore(tmp_path / "replica.sqlite")
    replica.open()
    try:
        replica.append_replicated(store.entries_since(0))
        for table in ("jobs", "tasks", "task_dependencies", "task_failures", "events"):
            a = [tuple(r) for r in store.read().query(f"SELECT * FROM {table} ORDER BY 1, 2")]
            b = [tuple(r) for r in replica.read().query(f"SELECT * FROM {table} ORDER BY 1, 2")]
            assert a == b, table
    finally:
        replica.close()


def test_events_round_trip_through_msgpack():
    e = ev.TasksStatusChanged(task_ids=["a", "b"], status="queued", activity="x", at=AT)
    assert ev.from_wire(ev.to_wire(e)) == e
    with pytest.raises(ValueError, match="unknown event kind"):
        ev.event_from_dict({"kind": "nope"})
