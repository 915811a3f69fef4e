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


_PICK_SQL = """
SELECT t.id
FROM tasks t JOIN jobs j ON j.id = t.job_id
LEFT JOIN (SELECT job_id, COUNT(*) AS n FROM tasks WHERE status = 'active' GROUP BY job_id) running
       ON running.job_id = t.job_id
WHERE t.status IN ('queued', 'soft-failed')
  AND j.status IN ('queued', 'active')
  AND t.type IN ({types})
  AND (j.worker_tag = '' OR j.worker_tag IN ({tags}))
  AND NOT EXISTS (
      SELECT 1 FROM task_dependencies d JOIN tasks dt ON dt.id = d.depends_on
      WHERE d.task_id = t.id AND dt.status != 'completed')
  AND NOT EXISTS (
      SELECT 1 FROM task_failures f WHERE f.task_id = t.id AND f.worker_id = :worker)
  AND NOT EXISTS (
      SELECT 1 FROM job_blocks b WHERE b.job_id = t.job_id AND b.worker_id = :worker AND b.task_type = t.type)
ORDER BY j.priority DESC, COALESCE(running.n, 0) ASC, t.priority DESC, j.seq ASC, t.index_in_job ASC
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


def pick_task(tx: Transaction, worker: WorkerProfile) -> str | None:
    if not worker.supported_task_types:
        return None
    params: dict[str, str] = {"worker": worker.worker_id}
    params.update({f"type{i}": t for i, t in enumerate(worker.supported_task_types)})
    params.update({f"tag{i}": t for i, t in enumerate(worker.tags)})
    types = ",".join(f":type{i}" for i in range(len(worker.supported_task_types)))
    tags = ",".join(f":tag{i}" for i in range(len(worker.tags))) or "NULL"
    row = tx.query_one(_PICK_SQL.format(types=types, tags=tags), params)
    return row["id"] if row else None


def assign_next_task(tx: Transaction, worker: WorkerProfile, at: str) -> str | None:
    """Pick a task for ``worker`` and assign it (task → active, job → active)."""
    task_id = pick_task(tx, worker)
    if task_id is None:
        return None
    tx.emit(ev.TaskAssigned(task_id=task_id, worker_id=worker.worker_id, at=at))
    tx.task_log(task_id, f"{at} task assigned to worker {worker.name} ({worker.worker_id})")
    row = tx.query_one("SELECT job_id FROM tasks WHERE id=?", (task_id,))
    # The assignment itself is the queued → active change; apply the job rule.
    status_machine.update_job_after_task_change(tx, row["job_id"], "active", at)
    return task_id
