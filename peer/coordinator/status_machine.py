"""Flamenco's job and task status rules, as event emitters.

The rules follow Flamenco 3's task state machine (see
``docs/architecture.md`` for where we deliberately differ).
Every function reads the current state through a :class:`Transaction` and
emits explicit events; it never writes SQL itself. A follower replaying the
events therefore needs none of this logic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from . import events as ev
from .store import Transaction

JOB_STATUSES = (
    "under-construction", "queued", "active", "paused", "pause-requested",
    "cancel-requested", "canceled", "completed", "failed", "requeueing",
)
TASK_STATUSES = ("queued", "active", "soft-failed", "failed", "completed", "canceled", "paused")



@dataclass(frozen=True)
class FailurePolicy:
    """How many failures a farm tolerates. Defaults are Flamenco's."""

    # Distinct workers that may fail a task before it is failed for good.
    task_fail_after_softfail_count: int = 3
    # Failures of one worker on one job's tasks of one type before it is blocklisted for them.
    blocklist_threshold: int = 3
    # A job fails when at least this percentage of its tasks failed.
    job_fail_percentage: int = 10


DEFAULT_POLICY = FailurePolicy()
# The coordinator decides on one DB thread; it sets the policy there for the
# duration of each decision (see Coordinator._write), so the rules need no
# extra parameter threaded through every call.
_policy: ContextVar[FailurePolicy] = ContextVar("failure_policy", default=DEFAULT_POLICY)


@contextmanager
def policy_in_effect(policy: FailurePolicy) -> Iterator[None]:
    token = _policy.set(policy)
    try:
        yield
    finally:
        _policy.reset(token)


def current_policy() -> FailurePolicy:
    return _policy.get()

# Statuses a human (CLI, add-on, dashboard) may request for a job, and the
# job statuses from which each request makes sense.
JOB_STATUS_REQUESTS: dict[str, frozenset[str]] = {
    "cancel-requested": frozenset({"active", "failed", "paused", "pause-requested", "queued", "requeueing"}),
    "pause-requested": frozenset({"active", "canceled", "queued", "requeueing"}),
    "requeueing": frozenset({"canceled", "completed", "failed", "paused", "pause-requested"}),
}


class TransitionRefused(Exception):
    """A human-requested status change that makes no sense now (HTTP 422)."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _job_status(tx: Transaction, job_id: str) -> str:
    row = tx.query_one("SELECT status FROM jobs WHERE id=?", (job_id,))
    if row is None:
        raise KeyError(job_id)
    return row["status"]


def _task_counts(tx: Transaction, job_id: str) -> dict[str, int]:
    rows = tx.query("SELECT status, COUNT(*) AS n FROM tasks WHERE job_id=? GROUP BY status", (job_id,))
    return {r["status"]: r["n"] for r in rows}


def _has_unfinished_task(tx: Transaction, job_id: str) -> bool:
    """Whether any task of the job is not completed: two seeks into the
    ``tasks_pick`` index (job_id, status, ...) on either side of 'completed',
    where a recount would read every task of the job."""
    return tx.query_one(
        """SELECT 1 FROM tasks WHERE job_id=?1 AND status < 'completed'
           UNION ALL SELECT 1 FROM tasks WHERE job_id=?1 AND status > 'completed' LIMIT 1""", (job_id,)
    ) is not None


def _has_task_with_status(tx: Transaction, job_id: str, status: str) -> bool:
    return tx.query_one("SELECT 1 FROM tasks WHERE job_id=? AND status=? LIMIT 1", (job_id, status)) is not None


def _emit_job_status(tx: Transaction, job_id: str, status: str, activity: str, at: str) -> None:
    previous = _job_status(tx, job_id)
    tx.emit(ev.JobStatusChanged(job_id=job_id, status=status, activity=activity, at=at))
    _after_job_status_change(tx, job_id, status, previous, at)


# --- task status changes ---------------------------------------------------


def _status_line(at: str, old: str, new: str, why: str) -> str:
    # Flamenco's log line, plus the reason so a reader of the log knows why.
    line = f"{at} task changed status {old} -> {new}"
    return f"{line} ({why})" if why else line


def set_tasks_status(tx: Transaction, task_ids: list[str], status: str, activity: str, at: str) -> None:
    """Change tasks' status and then apply the automatic job rules."""
    if status not in TASK_STATUSES:
        raise ValueError(f"unknown task status {status!r}")
    if not task_ids:
        return
    marks = ",".join("?" * len(task_ids))
    rows = tx.query(f"SELECT id, job_id, status FROM tasks WHERE id IN ({marks})", tuple(task_ids))
    changing = [r for r in rows if r["status"] != status]
    if not changing:
        return
    _emit_tasks_status(tx, changing, status, activity, at)
    for job_id in dict.fromkeys(r["job_id"] for r in changing):
        update_job_after_task_change(tx, job_id, status, at)


def update_job_after_task_change(tx: Transaction, job_id: str, task_status: str, at: str) -> None:
    job_status = _job_status(tx, job_id)
    if task_status in ("active", "soft-failed"):
        # Flamenco also flips a pause-requested job back to active here; we
        # keep the pause request so the user's "pause" is not silently lost.
        if job_status == "queued":
            _emit_job_status(tx, job_id, "active", "", at)
        return

    if task_status == "completed":
        # The common case of every finished task: index probes, not a recount
        # of the whole job (which costs time in proportion to its size).
        if not _has_unfinished_task(tx, job_id):
            _emit_job_status(tx, job_id, "completed", "All tasks completed", at)
        elif _maybe_finish_pause(tx, job_id, job_status, at):
            pass
        elif job_status == "queued":
            _emit_job_status(tx, job_id, "active", "", at)
        return

    if task_status == "failed":
        counts = _task_counts(tx, job_id)
        total = sum(counts.values())
        failed = counts.get("failed", 0)
        percentage = current_policy().job_fail_percentage
        if total and math.floor(failed / total * 100) >= percentage:
            if job_status not in ("failed", "canceled", "cancel-requested"):
                _emit_job_status(
                    tx, job_id, "failed",
                    f"{failed} of {total} tasks failed ({percentage}% or more)", at,
                )
        elif _maybe_finish_pause(tx, job_id, job_status, at):
            pass
        elif job_status == "queued":
            _emit_job_status(tx, job_id, "active", "", at)
        return

    if task_status == "canceled":
        counts = _task_counts(tx, job_id)
        if not any(counts.get(s, 0) for s in ("active", "queued", "soft-failed")):
            if job_status not in ("canceled", "failed", "completed"):
                _emit_job_status(tx, job_id, "canceled", "All tasks were canceled", at)
        else:
            _maybe_finish_pause(tx, job_id, job_status, at)
        return

    if task_status == "paused":
        _maybe_finish_pause(tx, job_id, job_status, at)
        return

    if task_status == "queued":
        if job_status == "completed":
            # Flamenco: requeueing one task of a completed job requeues the job.
            _emit_job_status(tx, job_id, "requeueing", "Task was requeued", at)
        return


def _maybe_finish_pause(tx: Transaction, job_id: str, job_status: str, at: str) -> bool:
    """A pausing job whose last active task stopped is paused; True if that happened now."""
    if job_status != "pause-requested" or _has_task_with_status(tx, job_id, "active"):
        return False
    _emit_job_status(tx, job_id, "paused", "All active tasks finished; job paused", at)
    return True


# --- job status changes ----------------------------------------------------


def request_job_status(tx: Transaction, job_id: str, status: str, reason: str, at: str) -> None:
    """A human asked for ``status``: validate, then change and cascade."""
    current = _job_status(tx, job_id)
    allowed_from = JOB_STATUS_REQUESTS.get(status)
    if allowed_from is None:
        raise TransitionRefused(
            f"a job's status cannot be set to {status!r} by request; "
            f"use one of: {', '.join(sorted(JOB_STATUS_REQUESTS))} (cancel, pause, requeue)"
        )
    if current == status:
        return
    if current not in allowed_from:
        raise TransitionRefused(
            f"job is {current!r}; it cannot go to {status!r} from there "
            f"(allowed from: {', '.join(sorted(allowed_from))})"
        )
    if status == "requeueing":
        # As Flamenco's web UI does: a human requeue forgets earlier failures.
        tx.emit(ev.TaskFailuresCleared(job_id=job_id, at=at))
    _emit_job_status(tx, job_id, status, reason, at)


def _tasks_with_status(tx: Transaction, job_id: str, statuses: tuple[str, ...]) -> list[str]:
    marks = ",".join("?" * len(statuses))
    rows = tx.query(
        f"SELECT id FROM tasks WHERE job_id=? AND status IN ({marks}) ORDER BY index_in_job",
        (job_id, *statuses),
    )
    return [r["id"] for r in rows]


def _emit_tasks_status(tx: Transaction, rows: list[Any], status: str, activity: str, at: str) -> None:
    """One event for all ``rows`` (each with ``id`` and old ``status``), plus their log lines."""
    tx.emit(ev.TasksStatusChanged(task_ids=[r["id"] for r in rows], status=status, activity=activity, at=at))
    for r in rows:
        tx.task_log(r["id"], _status_line(at, r["status"], status, activity))


def _bulk_task_status(tx: Transaction, task_ids: list[str], status: str, activity: str, at: str) -> None:
    """Job-driven change of many tasks: no job rules run (the job change drives them)."""
    if not task_ids:
        return
    rows = tx.query(
        f"SELECT id, status FROM tasks WHERE id IN ({','.join('?' * len(task_ids))})", tuple(task_ids)
    )
    _emit_tasks_status(tx, rows, status, activity, at)


def _after_job_status_change(tx: Transaction, job_id: str, status: str, previous: str, at: str) -> None:
    if status in ("cancel-requested", "failed"):
        remaining = _tasks_with_status(tx, job_id, ("active", "queued", "soft-failed", "paused"))
        why = "Job was canceled" if status == "cancel-requested" else "Job failed"
        _bulk_task_status(tx, remaining, "canceled", why, at)
        if status == "cancel-requested":
            _emit_job_status(tx, job_id, "canceled", "Canceled on request", at)
        return

    if status == "pause-requested":
        _bulk_task_status(
            tx, _tasks_with_status(tx, job_id, ("queued", "soft-failed")), "paused", "Job was paused", at
        )
        if not _tasks_with_status(tx, job_id, ("active",)):
            _emit_job_status(tx, job_id, "paused", "Job paused", at)
        return

    if status == "requeueing":
        if previous == "completed":
            to_queue = _tasks_with_status(tx, job_id, ("completed",))
        else:
            to_queue = _tasks_with_status(tx, job_id, ("canceled", "failed", "paused", "soft-failed"))
        _bulk_task_status(tx, to_queue, "queued", "Requeued", at)
        _emit_job_status(tx, job_id, "queued", "Requeued", at)
        return

    if status == "queued":
        counts = _task_counts(tx, job_id)
        total = sum(counts.values())
        if total and counts.get("completed", 0) == total:
            _emit_job_status(tx, job_id, "completed", "All tasks completed", at)
        return


# --- failures ----------------------------------------------------------------


EligibleWorkers = Callable[[Transaction, str, str], int]


def task_failed_by_worker(
    tx: Transaction, task_id: str, worker_id: str, message: str,
    eligible_workers: int | EligibleWorkers, at: str,
) -> str:
    """Record a worker's failure of a task; soft-fail or fail it. Returns the new status.

    ``eligible_workers`` counts the other workers that could still run this
    task (live, supporting its type, not failed on it, not blocklisted);
    as a function it gets ``(tx, job_id, task_type)``, so it sees a blocklist
    entry made here. Flamenco's rules (compat §5.4) with its two counting
    quirks fixed (see docs/architecture.md):

    1. the failure is recorded for (task, worker);
    2. a worker that failed ``blocklist_threshold`` tasks of this job and type
       is blocklisted for them; if then no worker is left for that type, the
       task and the job fail;
    3. a task failed by ``task_fail_after_softfail_count`` workers fails;
    4. a task no other worker can run fails;
    5. otherwise it is soft-failed and retried on another worker.
    """
    policy = current_policy()
    row = tx.query_one("SELECT job_id, type FROM tasks WHERE id=?", (task_id,))
    job_id, task_type = row["job_id"], row["type"]

    def others() -> int:
        if isinstance(eligible_workers, int):
            return eligible_workers
        return eligible_workers(tx, job_id, task_type)

    tx.emit(ev.TaskFailureRecorded(task_id=task_id, worker_id=worker_id, at=at))
    if _maybe_blocklist(tx, job_id, task_type, worker_id, policy, at) and others() <= 0:
        why = f"no worker is left to run tasks of type {task_type!r} (the last one was blocklisted)"
        set_tasks_status(tx, [task_id], "failed", f"Failed: {message}; {why}", at)
        if _job_status(tx, job_id) not in ("failed", "canceled", "cancel-requested", "completed"):
            _emit_job_status(tx, job_id, "failed", f"Job failed: {why}", at)
        return "failed"

    failures = tx.query_one("SELECT COUNT(*) AS n FROM task_failures WHERE task_id=?", (task_id,))["n"]
    if failures >= policy.task_fail_after_softfail_count:
        status = "failed"
        activity = f"Failed by {failures} workers: {message}"
    elif others() <= 0:
        status = "failed"
        activity = f"Failed, and no other worker can run it: {message}"
    else:
        status = "soft-failed"
        left = policy.task_fail_after_softfail_count - failures
        activity = f"Soft failure ({left} more failures will fail it): {message}"
    set_tasks_status(tx, [task_id], status, activity, at)
    return status


def _maybe_blocklist(
    tx: Transaction, job_id: str, task_type: str, worker_id: str, policy: FailurePolicy, at: str,
) -> bool:
    """Blocklist the worker for (job, task type) once it failed enough of them; True if it happened now."""
    if tx.query_one(
        "SELECT 1 FROM job_blocks WHERE job_id=? AND worker_id=? AND task_type=?", (job_id, worker_id, task_type)
    ):
        return False
    failed = tx.query_one(
        """SELECT COUNT(*) AS n FROM task_failures f JOIN tasks t ON t.id = f.task_id
           WHERE f.worker_id=? AND t.job_id=? AND t.type=?""",
        (worker_id, job_id, task_type),
    )["n"]
    if failed < policy.blocklist_threshold:
        return False
    tx.emit(ev.WorkerBlocklisted(job_id=job_id, worker_id=worker_id, task_type=task_type, at=at))
    # Tasks this worker failed for good may succeed elsewhere: give them another chance.
    hard_failed = [
        r["id"] for r in tx.query(
            """SELECT t.id FROM tasks t JOIN task_failures f ON f.task_id = t.id
               WHERE t.job_id=? AND t.type=? AND t.status='failed' AND f.worker_id=?""",
            (job_id, task_type, worker_id))
    ]
    requeue_tasks(tx, hard_failed, f"worker {worker_id} was blocklisted for {task_type!r} tasks of this job", at)
    return True


def requeue_tasks(tx: Transaction, task_ids: list[str], reason: str, at: str) -> None:
    """Give tasks whose worker vanished back to the queue; no failure is recorded.

    A task of a job that is pausing goes to ``paused`` instead, so the pause
    completes rather than the task starting again elsewhere.
    """
    if not task_ids:
        return
    marks = ",".join("?" * len(task_ids))
    rows = tx.query(
        f"SELECT t.id, j.status AS job_status FROM tasks t JOIN jobs j ON j.id=t.job_id WHERE t.id IN ({marks})",
        tuple(task_ids),
    )
    to_pause = [r["id"] for r in rows if r["job_status"] in ("pause-requested", "paused")]
    to_queue = [r["id"] for r in rows if r["id"] not in to_pause]
    if to_queue:
        set_tasks_status(tx, to_queue, "queued", f"Requeued: {reason}", at)
    if to_pause:
        set_tasks_status(tx, to_pause, "paused", f"Paused: {reason}", at)


def set_job_status_after_submit(tx: Transaction, job_id: str, at: str) -> None:
    """A job without tasks has nothing to do: it is complete at once."""
    counts = _task_counts(tx, job_id)
    if sum(counts.values()) == 0:
        tx.emit(ev.JobStatusChanged(job_id=job_id, status="completed", activity="Job has no tasks", at=at))
