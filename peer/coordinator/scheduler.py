"""Which task a worker gets next.

Order: job priority (high first); among jobs of equal priority, the job with
the fewest tasks running right now (so equal jobs share the workers round-robin
and a long job cannot starve a short one); then task priority (high first),
the oldest job, and the task's position in it. Flamenco orders by the two
priorities only and leaves ties to SQLite; our tie-breaks make scheduling
reproducible and fair.

A worker never gets a task it failed before, nor a task of a type it is
blocklisted for in that job, nor a task of a job tagged for other workers.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import events as ev
from . import status_machine
from .store import Transaction


@dataclass(frozen=True)
class WorkerProfile:
    worker_id: str
    name: str
    supported_task_types: tuple[str, ...]
    tags: tuple[str, ...] = ()


# Two steps, because one query over every queued task of every job is slow
# for big jobs (it reads and sorts them all): first the runnable jobs with how
# many tasks each runs now, then per job the first eligible task, through the
# tasks_pick index, stopping at the first hit. The running count is a probe of
# that index per runnable job; grouping all active tasks instead costs a
# temporary B-tree per pick, in proportion to the number of busy workers.
_RUNNABLE_JOBS_SQL = """
SELECT j.id, j.priority, j.seq,
       (SELECT COUNT(*) FROM tasks t WHERE t.job_id = j.id AND t.status = 'active') AS running
FROM jobs j
WHERE j.status IN ('queued', 'active')
  AND (j.worker_tag = '' OR j.worker_tag IN ({tags}))
"""

_FIRST_TASK_SQL = """
SELECT t.id, t.priority, t.index_in_job
FROM tasks t
WHERE t.job_id = :job AND t.status = :status
  AND t.type IN ({types})
  AND NOT EXISTS (
      SELECT 1 FROM task_dependencies d JOIN tasks dt ON dt.id = d.depends_on
      WHERE d.task_id = t.id AND dt.status != 'completed')
  AND NOT EXISTS (
      SELECT 1 FROM task_failures f WHERE f.task_id = t.id AND f.worker_id = :worker)
  AND NOT EXISTS (
      SELECT 1 FROM job_blocks b WHERE b.job_id = t.job_id AND b.worker_id = :worker AND b.task_type = t.type)
ORDER BY t.priority DESC, t.index_in_job ASC
LIMIT 1
"""


def current_task_of(tx: Transaction, worker_id: str) -> str | None:
    """The task this worker is already running, if its job still runs (reconnect case)."""
    row = tx.query_one(
        """SELECT t.id FROM tasks t JOIN jobs j ON j.id = t.job_id
           WHERE t.worker_id = ? AND t.status = 'active' AND j.status IN ('queued', 'active', 'pause-requested')
           LIMIT 1""",
        (worker_id,),
    )
    return row["id"] if row else None


def pick_task(tx: Transaction, worker: WorkerProfile) -> tuple[str, str] | None:
    """(task id, job id) of the task ``worker`` should run next."""
    if not worker.supported_task_types:
        return None
    params: dict[str, str] = {"worker": worker.worker_id}
    params.update({f"type{i}": t for i, t in enumerate(worker.supported_task_types)})
    params.update({f"tag{i}": t for i, t in enumerate(worker.tags)})
    types = ",".join(f":type{i}" for i in range(len(worker.supported_task_types)))
    tags = ",".join(f":tag{i}" for i in range(len(worker.tags))) or "NULL"
    first_task = _FIRST_TASK_SQL.format(types=types)
    best: tuple[tuple[int, int, int, int, int], tuple[str, str]] | None = None
    for job in tx.query(_RUNNABLE_JOBS_SQL.format(tags=tags), params):
        for status in ("queued", "soft-failed"):
            row = tx.query_one(first_task, {**params, "job": job["id"], "status": status})
            if row is None:
                continue
            # The documented order: job priority, fewest running, task priority, age, position.
            key = (-job["priority"], job["running"], -row["priority"], job["seq"], row["index_in_job"])
            if best is None or key < best[0]:
                best = (key, (row["id"], job["id"]))
    return best[1] if best else None


def assign_next_task(tx: Transaction, worker: WorkerProfile, at: str) -> str | None:
    """Pick a task for ``worker`` and assign it (task → active, job → active)."""
    picked = pick_task(tx, worker)
    if picked is None:
        return None
    task_id, job_id = picked
    tx.emit(ev.TaskAssigned(task_id=task_id, worker_id=worker.worker_id, at=at))
    tx.task_log(task_id, f"{at} task assigned to worker {worker.name} ({worker.worker_id})")
    # The assignment itself is the queued → active change; apply the job rule.
    status_machine.update_job_after_task_change(tx, job_id, "active", at)
    return task_id
