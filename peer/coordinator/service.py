"""The coordinator: accepts jobs, compiles them, hands tasks to workers.

This is the asyncio face of the job store. Every decision runs as one
function on the DB thread inside one SQLite transaction (see ``_write``), so
decisions are serialised and atomic; the event loop only waits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

from ..compiler.etag import JobTypeEtagMismatch, check_submitted_etag
from ..compiler.loader import JobTypeRegistry
from ..compiler.model import CompileError, CompileLimits, CompileRequest
from ..compiler.runtime import compile_job_async
from ..compiler.validation import validate_settings
from . import events as ev
from . import scheduler, shared_job_types, status_machine
from .dbthread import DBThread
from .store import NO_TERM, GroupedWrite, JobStore, Term, Transaction
from .task_watchers import TaskWatchers
from .tasklogs import TaskLogs

log = logging.getLogger(__name__)
T = TypeVar("T")

WORKER_SETTABLE_TASK_STATUSES = ("active", "completed", "failed")
# Statuses a person may ask a worker for, and the worker reports reaching
# (worker/state-changed). Flamenco also offers "offline" and "restart", which
# would stop or restart someone's flamenco-peer remotely.
SLEEP_STATUSES = ("asleep", "awake")


class APIError(Exception):
    """An error for the client: HTTP status plus a message that says what to do."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


@dataclass
class WorkerPresence:
    profile: scheduler.WorkerProfile
    address: str
    platform: str
    software: str
    last_seen: float = field(default_factory=time.monotonic)
    status: str = "awake"


@dataclass(frozen=True)
class TaskUpdate:
    task_status: str | None = None
    activity: str | None = None
    log: str | None = None
    steps_completed: int | None = None
    # Idempotency key of a buffered update: (worker run, sequence number).
    update_stream: str | None = None
    update_seq: int | None = None


class NotCoordinator(APIError):
    """This peer is (no longer) the farm's coordinator: nothing may be decided here."""

    def __init__(self) -> None:
        super().__init__(
            503, "this peer is not the farm's coordinator right now (the farm may be electing one); "
                 "retry in a few seconds",
            not_coordinator=True,
        )


class Coordinator:
    """Decides everything about jobs and tasks, but only while it leads.

    Every peer has one. While the cluster layer says this peer leads (``lead``),
    it accepts jobs and serves workers, and every event it writes carries the
    leader's term. Otherwise (``follow``) its store is a replica that the
    cluster layer fills, and deciding anything raises ``NotCoordinator``.
    Without a cluster layer (tests, tools) it leads from the start.
    """

    def __init__(
        self,
        data_dir: Path,
        registry: JobTypeRegistry,
        *,
        compile_limits: CompileLimits | None = None,
        worker_timeout_s: float = 60.0,
        task_timeout_s: float = 600.0,
        failure_policy: status_machine.FailurePolicy = status_machine.DEFAULT_POLICY,
        leading: bool = True,
    ) -> None:
        self.data_dir = data_dir
        self.registry = registry
        self.compile_limits = compile_limits or CompileLimits()
        self.worker_timeout_s = worker_timeout_s
        self.task_timeout_s = task_timeout_s
        self.failure_policy = failure_policy
        # task id -> when it last made progress (steps, log output); in memory:
        # a new coordinator starts every running task's clock afresh.
        self._task_progress: dict[str, float] = {}
        # Workers waiting to hear that their task must stop (watch_task).
        self._watchers = TaskWatchers()
        self.logs = TaskLogs(data_dir / "logs")
        self.store = JobStore(data_dir / "peer.sqlite", self.logs)
        self.db = DBThread()
        self.term: Term | None = NO_TERM if leading else None
        # Called after each committed write with the new last log index
        # (the cluster layer wakes followers' long-polls with it).
        self.on_commit: list[Callable[[int], None]] = []
        # Set by the cluster layer: wait until another peer holds index N.
        self.replication_barrier: Callable[[int], Awaitable[None]] | None = None
        # Set by the node: share this peer's own job-type folder before a lookup,
        # so an edit there is visible at once.
        self.before_job_types: Callable[[], Awaitable[None]] | None = None
        self._workers: dict[str, WorkerPresence] = {}
        self._work_version = 0
        self._work_changed = asyncio.Condition()
        self._timeout_task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def leading(self) -> bool:
        return self.term is not None

    # --- life cycle ------------------------------------------------------

    async def start(self) -> None:
        await self.db.run(self.store.open)
        await self.db.run(self.registry.refresh)
        if self.leading:
            await self._take_over_workers()
        self._timeout_task = asyncio.create_task(self._timeout_loop(), name="timeout-checker")

    async def _take_over_workers(self) -> None:
        # Workers that held tasks before a restart or a change of coordinator
        # get one timeout period to come back and claim them; then the timeout
        # checker requeues.
        holders = await self.db.run(self._workers_holding_tasks)
        self._workers = {}
        for row in holders:
            self._workers[row["id"]] = WorkerPresence(
                profile=scheduler.WorkerProfile(row["id"], row["name"], tuple(json.loads(row["supported_task_types"]))),
                address=row["address"], platform=row["platform"], software=row["software"],
            )

    async def lead(self, term: Term) -> None:
        """Start deciding, as coordinator of ``term`` (the store is up to date)."""
        await self.db.run(self.store.note_epoch, term[0])
        self.term = term
        await self._take_over_workers()
        await self._wake_waiters()
        log.info("leading the farm as coordinator of epoch %d", term[0])

    async def follow(self) -> None:
        """Stop deciding; long-polls waiting here end now so workers move on."""
        if self.term is None:
            return
        self.term = None
        self._workers = {}
        await self._wake_waiters()

    async def _wake_waiters(self) -> None:
        self._work_version += 1
        async with self._work_changed:
            self._work_changed.notify_all()
        self._watchers.wake_all()

    async def begin_shutdown(self) -> None:
        """Answer every waiting long-poll now, so the HTTP server can close at once."""
        self._closing = True
        await self._wake_waiters()

    async def stop(self) -> None:
        await self.begin_shutdown()
        if self._timeout_task:
            self._timeout_task.cancel()
            try:
                await self._timeout_task
            except asyncio.CancelledError:
                pass
        await self.db.run(self.store.close)
        self.db.shutdown()

    def _workers_holding_tasks(self) -> list[Any]:
        return self.store.read().query(
            """SELECT w.* FROM workers w WHERE w.id IN (SELECT worker_id FROM tasks WHERE status='active')"""
        )

    # --- plumbing ---------------------------------------------------------

    async def _write(self, fn: Callable[[Transaction], T], *, durable: bool = True) -> T:
        """Run ``fn`` in one transaction on the DB thread, as the current leader.

        ``durable=False`` for the worker protocol's frequent writes (see
        ``JobStore.transaction``)."""
        result, _ = await self._write_indexed(fn, durable=durable)
        return result

    async def _write_indexed(self, fn: Callable[[Transaction], T], *, durable: bool = True) -> tuple[T, int]:
        """``_write`` that also returns the log index of the last event written (0: none)."""
        term = self.term
        if term is None:
            raise NotCoordinator()

        def decide(tx: Transaction) -> T:
            # Fencing: a step-down that happened while this waited for the DB
            # thread must not let an old leader's decision in.
            if self.term != term:
                raise NotCoordinator()
            with status_machine.policy_in_effect(self.failure_policy):
                return fn(tx)

        # Writes that queue up while the DB thread is busy share one commit.
        result, tx = await self.db.run_grouped(self.store.transaction_group, GroupedWrite(decide, term, durable))
        if tx.emitted:
            for listener in self.on_commit:
                listener(tx.last_index)
            await self._after_events(tx.emitted)
        return result, tx.last_index

    async def _replicated(self, index: int) -> None:
        """Wait until log entry ``index`` reached another peer (if the cluster asks for that)."""
        if self.replication_barrier is not None and index:
            await self.replication_barrier(index)

    async def _read(self, fn: Callable[[Transaction], T]) -> T:
        return await self.db.run(lambda: fn(self.store.read()))

    async def _wait_for_work_change(self, version: int, remaining: float) -> None:
        await _wait_for_change(self._work_changed, lambda: self._work_version, version, remaining)

    async def _after_events(self, emitted: list[ev.Event]) -> None:
        if any(_may_free_work(e) or isinstance(e, ev.WorkerStatusRequested) for e in emitted):
            self._work_version += 1
            async with self._work_changed:
                self._work_changed.notify_all()
        for e in emitted:
            if isinstance(e, ev.TasksStatusChanged):
                self._watchers.tasks_changed(e.task_ids)
            elif isinstance(e, ev.TaskAssigned):
                self._watchers.tasks_changed((e.task_id,))
            elif isinstance(e, (ev.JobDeleted, ev.JobStatusChanged)):
                self._watchers.job_changed(e.job_id)

    # --- job types --------------------------------------------------------

    async def job_types(self) -> list[dict[str, Any]]:
        await self._refresh_job_types()
        return [s.job_type for s in self.registry.list()]

    async def job_type(self, name: str) -> dict[str, Any]:
        await self._refresh_job_types()
        script = self.registry.get(name)
        if script is None:
            raise APIError(404, self._unknown_job_type_message(name))
        return script.job_type

    def _unknown_job_type_message(self, name: str) -> str:
        known = ", ".join(s.name for s in self.registry.list()) or "none"
        broken = [e for e in self.registry.errors() if e.name == name]
        if broken:
            return f"job type {name!r} failed to load: {broken[0].message}"
        return f"job type unknown: {name!r}; this farm has: {known}"

    async def publish_job_types(self, publisher_id: str, publisher_name: str, scripts: Any) -> dict[str, int]:
        """A peer shares its job-type folder with the farm (see ``shared_job_types``)."""
        try:
            checked = shared_job_types.check_publication(scripts)
        except shared_job_types.PublicationError as exc:
            raise APIError(400, f"cannot share the job types of peer {publisher_name}: {exc}") from None
        at = status_machine.now()
        result = await self._write(
            lambda tx: shared_job_types.publish(tx, publisher_id, publisher_name, checked, at))
        if any(result.values()):
            log.info("job types of peer %s: %s", publisher_name, result)
        return result

    def shared_job_type_scripts(self) -> list[Any]:
        """For ``JobTypeRegistry(shared=...)``: runs on the DB thread, inside ``refresh``."""
        return shared_job_types.shared_scripts(self.store.read())

    async def _refresh_job_types(self) -> None:
        if self.before_job_types is not None:
            await self.before_job_types()
        await self.db.run(self.registry.refresh)

    # --- submission -------------------------------------------------------

    async def submit_job(self, submitted: Any, *, check_only: bool = False) -> dict[str, Any] | None:
        job = _parse_submitted_job(submitted)
        await self._refresh_job_types()
        script = self.registry.get(job["type"])
        if script is None:
            raise APIError(400, self._unknown_job_type_message(job["type"]))
        try:
            check_submitted_etag(script.job_type.get("etag", ""), job["type_etag"])
        except JobTypeEtagMismatch as exc:
            raise APIError(412, f"rejecting job because its settings are outdated, refresh the job type ({exc})") from None
        problems = validate_settings(script.job_type, job["settings"])
        if problems:
            raise APIError(400, f"invalid settings for job type {job['type']!r}: " + "; ".join(problems))

        job_id = str(uuid.uuid4())
        created = datetime.now().astimezone()
        request = CompileRequest(
            job_id=job_id, name=job["name"], job_type=job["type"], priority=job["priority"],
            settings=job["settings"], metadata=job["metadata"], worker_tag=job["worker_tag"],
            shaman_checkout_id=job["shaman_checkout_id"], created=created,
        )
        try:
            compiled = await compile_job_async(script, request, self.compile_limits)
        except CompileError as exc:
            raise APIError(400, exc.message, kind=exc.kind) from None
        if check_only:
            return None

        at = created.astimezone(timezone.utc).isoformat(timespec="milliseconds")
        status = job["initial_status"]
        job_row = {
            "id": job_id, "name": compiled.name, "type": job["type"], "type_etag": job["type_etag"],
            "priority": compiled.priority, "status": status, "activity": "",
            "settings": compiled.settings, "metadata": compiled.metadata,
            "submitter_platform": job["submitter_platform"], "worker_tag": job["worker_tag"],
            "shaman_checkout_id": job["shaman_checkout_id"], "files": job["files"], "created": at,
        }
        tasks = [
            {
                "id": t.uuid, "index_in_job": t.index_in_job, "name": t.name, "type": t.type,
                "priority": t.priority, "commands": [c.to_dict() for c in t.commands],
                "steps_total": t.steps_total,
            }
            for t in compiled.tasks
        ]
        deps = [[t.uuid, d] for t in compiled.tasks for d in t.dependencies]

        def store(tx: Transaction) -> dict[str, Any]:
            tx.emit(ev.JobSubmitted(job=job_row, tasks=tasks, dependencies=deps, at=status_machine.now()))
            if status == "queued" and not tasks:
                status_machine.set_job_status_after_submit(tx, job_id, at)
            return _job_dict(tx, job_id)

        result, index = await self._write_indexed(store)
        # Acknowledge only once another peer holds the job: losing this peer
        # right after the answer must not lose the job.
        await self._replicated(index)
        log.info("job %s %r (%s) stored with %d tasks", job_id, compiled.name, job["type"], len(tasks))
        return result

    # --- queries ----------------------------------------------------------

    async def list_jobs(self) -> list[dict[str, Any]]:
        return await self._read(lambda tx: [
            _job_dict(tx, r["id"]) for r in tx.query("SELECT id FROM jobs ORDER BY seq")
        ])

    async def get_job(self, job_id: str) -> dict[str, Any]:
        job = await self._read(lambda tx: _job_dict(tx, job_id))
        if job is None:
            raise APIError(404, f"no job with id {job_id!r}; list jobs with `flamenco-peer jobs`")
        return job

    async def job_tasks(self, job_id: str) -> list[dict[str, Any]]:
        await self.get_job(job_id)
        return await self._read(lambda tx: [
            _task_summary(r) for r in tx.query(
                """SELECT t.*, w.name AS worker_name, w.address AS worker_address FROM tasks t
                   LEFT JOIN workers w ON w.id = t.worker_id WHERE t.job_id=? ORDER BY t.index_in_job""",
                (job_id,),
            )
        ])

    async def get_task(self, task_id: str) -> dict[str, Any]:
        task = await self._read(lambda tx: _task_dict(tx, task_id))
        if task is None:
            raise APIError(404, f"no task with id {task_id!r}; list a job's tasks with `flamenco-peer tasks JOB`")
        return task

    async def task_log_path(self, task_id: str) -> Path:
        task = await self.get_task(task_id)
        return self.logs.path_for(task["id"], task["job_id"])

    async def task_log_tail(self, task_id: str, max_bytes: int = 2048) -> str:
        path = await self.task_log_path(task_id)
        return await self.db.run(self.logs.tail, path, max_bytes)

    async def list_workers(self) -> list[dict[str, Any]]:
        rows = await self._read(lambda tx: tx.query("SELECT * FROM workers ORDER BY name"))
        out = []
        for r in rows:
            presence = self._workers.get(r["id"])
            status = r["status"]
            if presence is None and status not in ("offline", "error"):
                status = "offline"
            item = {
                "id": r["id"], "name": r["name"], "status": status, "version": r["software"],
                "can_restart": False,
            }
            if presence is not None:
                item["last_seen"] = _monotonic_to_iso(presence.last_seen)
            if r["status_requested"] and r["status_requested"] != status:
                item["status_change"] = {"status": r["status_requested"], "is_lazy": bool(r["lazy_status_request"])}
            out.append(item)
        return out

    async def get_worker(self, worker_id: str) -> dict[str, Any]:
        for item in await self.list_workers():
            if item["id"] == worker_id:
                row = await self._read(lambda tx: tx.query_one("SELECT * FROM workers WHERE id=?", (worker_id,)))
                item.update(
                    ip_address=row["address"], platform=row["platform"],
                    supported_task_types=json.loads(row["supported_task_types"]),
                )
                current = await self._read(lambda tx: tx.query_one(
                    "SELECT * FROM tasks WHERE worker_id=? AND status='active' LIMIT 1", (worker_id,)))
                if current is not None:
                    item["task"] = {**_task_summary(current), "job_id": current["job_id"]}
                return item
        raise APIError(404, f"no worker with id {worker_id!r}; list workers with `flamenco-peer workers`")

    # --- job actions ------------------------------------------------------

    async def set_job_status(self, job_id: str, status: str, reason: str) -> None:
        await self.get_job(job_id)

        def change(tx: Transaction) -> None:
            try:
                status_machine.request_job_status(tx, job_id, status, reason, status_machine.now())
            except status_machine.TransitionRefused as exc:
                raise APIError(422, str(exc)) from None

        await self._write(change)

    async def set_job_priority(self, job_id: str, priority: int) -> None:
        await self.get_job(job_id)
        at = status_machine.now()
        await self._write(lambda tx: tx.emit(ev.JobPriorityChanged(job_id=job_id, priority=priority, at=at)))

    async def delete_job(self, job_id: str) -> None:
        await self.get_job(job_id)
        at = status_machine.now()

        def delete(tx: Transaction) -> None:
            # Workers still running its tasks learn through their next update.
            tx.emit(ev.JobDeleted(job_id=job_id, at=at))

        await self._write(delete)

    async def set_task_status(self, task_id: str, status: str, reason: str) -> None:
        await self.get_task(task_id)
        if status not in ("queued", "canceled"):
            raise APIError(
                422, f"a task can only be requeued ('queued') or canceled ('canceled') by request, not set to {status!r}"
            )
        at = status_machine.now()

        def change(tx: Transaction) -> None:
            if status == "queued":
                tx.emit(ev.TaskFailuresCleared(job_id=tx.query_one("SELECT job_id FROM tasks WHERE id=?", (task_id,))["job_id"], at=at))
            status_machine.set_tasks_status(tx, [task_id], status, reason or f"Set to {status} on request", at)

        await self._write(change)

    # --- worker protocol --------------------------------------------------

    async def sign_on(
        self, worker_id: str, name: str, address: str, platform: str, software: str,
        supported_task_types: list[str], current_task: str | None, tags: list[str] | None = None,
        prefetched_task: str | None = None,
    ) -> None:
        if not self.leading:
            raise NotCoordinator()
        profile = scheduler.WorkerProfile(
            worker_id, name, tuple(t.lower() for t in supported_task_types), tuple(tags or ()))
        if current_task:
            self._task_progress[current_task] = time.monotonic()
        presence = self._workers[worker_id] = WorkerPresence(profile, address, platform, software)
        at = status_machine.now()

        def register(tx: Transaction) -> None:
            tx.emit(_worker_updated(worker_id, presence, "awake", at))
            if current_task:
                _keep_running_task(tx, worker_id, name, current_task, at)
            # Whatever this worker held before and no longer runs (or holds
            # prefetched) is lost: requeue it.
            orphans = [t for t in _tasks_held_by(tx, worker_id) if t not in (current_task, prefetched_task)]
            if orphans:
                status_machine.requeue_tasks(tx, orphans, f"worker {name} restarted and no longer runs it", at)

        await self._write(register)

    async def sign_off(self, worker_id: str) -> None:
        presence = self._workers.pop(worker_id, None)
        if presence is None:
            return
        await self._mark_worker_gone(worker_id, presence, "offline", f"worker {presence.profile.name} signed off")

    async def _mark_worker_gone(self, worker_id: str, presence: WorkerPresence, status: str, why: str) -> None:
        at = status_machine.now()

        def gone(tx: Transaction) -> None:
            tx.emit(_worker_updated(worker_id, presence, status, at))
            active = _tasks_held_by(tx, worker_id)
            if active:
                status_machine.requeue_tasks(tx, active, why, at)

        await self._write(gone)

    def _presence(self, worker_id: str) -> WorkerPresence:
        presence = self._workers.get(worker_id)
        if presence is None:
            raise APIError(403, f"worker {worker_id} is not signed on; it must sign on again", sign_on=True)
        presence.last_seen = time.monotonic()
        return presence

    async def claim_task(self, worker_id: str, wait_s: float, *, prefetch_after: str | None = None
                         ) -> dict[str, Any] | None:
        """Long-poll: as soon as there is something for the worker, return
        ``{"task": <assigned task>}``, or ``{"task": None, "status_change": {...}}``
        when someone asked it to sleep; None after ``wait_s``.

        ``prefetch_after``: the worker runs this task and asks for the one after
        it, to prepare while it renders. It holds at most one such task: asking
        again returns the same one."""
        deadline = time.monotonic() + max(0.0, min(wait_s, 60.0))
        while True:
            if self._closing:
                return None
            presence = self._presence(worker_id)
            version = self._work_version
            at = status_machine.now()
            other_awake = [w for w, p in self._workers.items() if w != worker_id and p.status == "awake"] \
                if prefetch_after is not None else []

            def claim(tx: Transaction) -> str | dict[str, Any] | bool | None:
                if prefetch_after is not None:
                    held = _tasks_held_by(tx, worker_id)
                    if prefetch_after not in held:
                        # That task ended or was taken away: nothing to prefetch for.
                        return False
                    others = [t for t in held if t != prefetch_after]
                    if others:
                        return others[0]
                    if _any_idle(tx, other_awake):
                        # A worker without work takes the next task sooner than
                        # this one, busy with its current one, would.
                        return False
                else:
                    current = scheduler.current_task_of(tx, worker_id)
                    if current is not None:
                        return current
                change = _status_change_for(tx, worker_id)
                if change is not None:
                    return change
                assigned = scheduler.assign_next_task(tx, presence.profile, at)
                if assigned is not None and prefetch_after is not None:
                    tx.emit(ev.TaskProgressed(
                        task_id=assigned, steps_completed=None, at=at,
                        activity=f"Prefetched by {presence.profile.name}: starts when its current task ends"))
                return assigned

            outcome = await self._write(claim, durable=False)
            if outcome is False:
                return None
            if isinstance(outcome, dict):
                return {"task": None, "status_change": outcome}
            if isinstance(outcome, str):
                task_id = outcome
                if prefetch_after is None:
                    self._task_progress.setdefault(task_id, time.monotonic())
                else:
                    log.debug("worker %s prefetched task %s", presence.profile.name, task_id)
                # A prefetched task's clock starts with its first report: it
                # waits for the task before it, however long that renders.
                task = await self._read(lambda tx: _assigned_task(tx, task_id))
                return {"task": task}
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closing:
                return None
            if version != self._work_version:
                continue
            await self._wait_for_work_change(version, remaining)

    async def task_update(
        self, worker_id: str, task_id: str, update: TaskUpdate, *, claim_next: bool = False,
    ) -> dict[str, Any]:
        """Apply a worker's report. Returns ``{"may_keep_running": bool, "reason": str}``.

        With ``claim_next``, a final report also assigns the worker its next task
        in the same transaction (``next_task``): one commit instead of two."""
        presence = self._presence(worker_id)  # refuses unknown workers, records that this one is alive
        if update.task_status is not None and update.task_status not in WORKER_SETTABLE_TASK_STATUSES:
            raise APIError(400, f"a worker may set a task to {', '.join(WORKER_SETTABLE_TASK_STATUSES)}, not {update.task_status!r}")
        at = status_machine.now()
        # Only a failure needs to know who else could retry the task; built on
        # this (event loop) thread because it reads the live worker table.
        eligible = self._eligible_workers_for(task_id, exclude=worker_id) if update.task_status == "failed" else 0

        def next_task(tx: Transaction) -> dict[str, Any]:
            if not claim_next or self._closing:
                return {}
            # A task it prefetched comes first; a worker asked to sleep gets nothing new.
            assigned = scheduler.current_task_of(tx, worker_id)
            if assigned is None and _status_change_for(tx, worker_id) is None:
                assigned = scheduler.assign_next_task(tx, presence.profile, at)
            return {"next_task": _assigned_task(tx, assigned) if assigned else None}

        def apply(tx: Transaction) -> dict[str, Any]:
            result: dict[str, Any] = {}
            row = tx.query_one(
                "SELECT t.status, t.worker_id, t.job_id, t.type, t.steps_completed, t.activity, "
                "j.status AS job_status FROM tasks t JOIN jobs j ON j.id=t.job_id WHERE t.id=?", (task_id,))
            if row is None:
                return {"may_keep_running": False, "reason": "Task not found (its job was deleted)", "code": 404}
            if row["worker_id"] != worker_id:
                return {"may_keep_running": False, "reason": "task not assigned to this worker", "code": 409}
            if update.update_stream and update.update_seq:
                mark = tx.query_one("SELECT seq FROM worker_update_marks WHERE worker_id=? AND stream=?",
                                    (worker_id, update.update_stream))
                if mark is not None and update.update_seq <= mark["seq"]:
                    # Delivered before (the reply was lost): do not apply it twice.
                    return {**_may_keep_running(tx, worker_id, task_id)[0], "duplicate": True, "code": 200}
                tx.emit(ev.WorkerUpdateApplied(worker_id=worker_id, stream=update.update_stream, seq=update.update_seq))
            if update.log:
                tx.task_log(task_id, update.log.rstrip("\n"))
            if row["status"] != "active":
                return {"may_keep_running": False, "reason": f'task is in non-runnable status "{row["status"]}"', "code": 409}
            steps_changed = update.steps_completed is not None and update.steps_completed != row["steps_completed"]
            activity_changed = update.activity is not None and update.activity != row["activity"]
            # A heartbeat that changes nothing is not worth a log entry on every replica.
            if steps_changed or activity_changed:
                tx.emit(ev.TaskProgressed(
                    task_id=task_id, steps_completed=update.steps_completed if steps_changed else None,
                    activity=update.activity if activity_changed else None, at=at))
            result["progressed"] = steps_changed or bool(update.log)
            if update.task_status == "completed":
                status_machine.set_tasks_status(tx, [task_id], "completed", update.activity or "Completed", at)
                return {**result, **next_task(tx), "may_keep_running": False, "reason": "task completed", "code": 200}
            if update.task_status == "failed":
                status_machine.task_failed_by_worker(tx, task_id, worker_id, update.activity or "failed", eligible, at)
                return {**result, **next_task(tx), "may_keep_running": False, "reason": "task failed", "code": 200}
            return {**result, "may_keep_running": True, "reason": "", "code": 200}

        result = await self._write(apply, durable=False)
        if result.pop("progressed", False) or update.task_status == "active":
            self._task_progress[task_id] = time.monotonic()
        if update.task_status in ("completed", "failed"):
            self._task_progress.pop(task_id, None)
        if result.get("next_task"):
            self._task_progress.setdefault(result["next_task"]["uuid"], time.monotonic())
        code = result.pop("code")
        if code in (404, 409):
            raise APIError(code, result["reason"], **result)
        return result

    def _eligible_workers_for(self, task_id: str, exclude: str) -> Callable[[Transaction, str, str], int]:
        """Count live workers (other than ``exclude``) that could retry this task."""
        candidates = [
            wid for wid, p in self._workers.items()
            if wid != exclude and p.status == "awake"
        ]
        profiles = {wid: self._workers[wid].profile for wid in candidates}

        def count(tx: Transaction, job_id: str, task_type: str) -> int:
            failed = {r["worker_id"] for r in tx.query("SELECT worker_id FROM task_failures WHERE task_id=?", (task_id,))}
            blocked = {r["worker_id"] for r in tx.query(
                "SELECT worker_id FROM job_blocks WHERE job_id=? AND task_type=?", (job_id, task_type))}
            tag_row = tx.query_one("SELECT worker_tag FROM jobs WHERE id=?", (job_id,))
            tag = tag_row["worker_tag"] if tag_row else ""
            return sum(
                1 for wid, prof in profiles.items()
                if wid not in failed and wid not in blocked and task_type in prof.supported_task_types
                and (not tag or tag in prof.tags)
            )

        return count

    async def watch_task(self, worker_id: str, task_id: str, wait_s: float) -> dict[str, Any]:
        """Long-poll: answer as soon as ``task_id`` may no longer run on ``worker_id``,
        or after ``wait_s`` with ``may_keep_running``. This is how a worker learns
        of a cancel, pause, deletion or reassignment within a moment."""
        deadline = time.monotonic() + max(0.0, min(wait_s, 60.0))
        with self._watchers.watching(task_id) as watcher:
            while True:
                if self._closing or not self.leading:
                    raise NotCoordinator()
                self._presence(worker_id)
                watcher.woken.clear()
                seen = self._watchers.version
                verdict, job_id = await self._read(lambda tx: _may_keep_running(tx, worker_id, task_id))
                self._watchers.file_under_job(watcher, job_id, seen)
                remaining = deadline - time.monotonic()
                if not verdict["may_keep_running"] or remaining <= 0:
                    return verdict
                try:
                    async with asyncio.timeout(remaining):
                        await watcher.woken.wait()
                except TimeoutError:
                    pass

    # --- worker status: sleep and wake --------------------------------------

    async def request_worker_status(self, worker_id: str, status: str, is_lazy: bool) -> None:
        """A person asks a worker to sleep or wake (Flamenco's worker-mgt setstatus).

        Sleeping at once (not lazy) requeues the worker's tasks; a lazy request
        lets it finish the task it runs first."""
        if status not in SLEEP_STATUSES:
            raise APIError(
                422, f"a worker can be asked to be {' or '.join(map(repr, SLEEP_STATUSES))}, "
                     f"not {status!r}; to stop a peer's worker for good, stop flamenco-peer on that computer "
                     "or set its worker mode to 'never'")
        at = status_machine.now()

        def request(tx: Transaction) -> None:
            row = tx.query_one("SELECT name FROM workers WHERE id=?", (worker_id,))
            if row is None:
                raise APIError(404, f"no worker with id {worker_id!r}; list workers with `flamenco-peer workers`")
            tx.emit(ev.WorkerStatusRequested(worker_id=worker_id, status=status, is_lazy=is_lazy, at=at))
            if status == "asleep" and not is_lazy:
                held = _tasks_held_by(tx, worker_id)
                if held:
                    status_machine.requeue_tasks(tx, held, f"worker {row['name']} was sent to sleep", at)

        await self._write(request)

    async def worker_state(self, worker_id: str, wait_s: float) -> dict[str, Any]:
        """Long-poll for a sleeping worker: answers as soon as it is no longer
        asked to sleep (or after ``wait_s``) with ``{"status_requested": ...}``."""
        deadline = time.monotonic() + max(0.0, min(wait_s, 60.0))
        while True:
            if self._closing or not self.leading:
                raise NotCoordinator()
            self._presence(worker_id)
            version = self._work_version
            change = await self._read(lambda tx: _status_change_for(tx, worker_id))
            remaining = deadline - time.monotonic()
            if change is None or remaining <= 0:
                return {"status_requested": change["status"] if change else "awake",
                        "is_lazy": bool(change and change["is_lazy"])}
            await self._wait_for_work_change(version, remaining)

    async def worker_status_changed(self, worker_id: str, status: str) -> None:
        """The worker says it went to sleep or woke up."""
        if status not in SLEEP_STATUSES:
            raise APIError(400, f"a worker may report itself {' or '.join(map(repr, SLEEP_STATUSES))}, "
                                f"not {status!r}")
        presence = self._presence(worker_id)
        presence.status = status
        at = status_machine.now()
        await self._write(lambda tx: tx.emit(_worker_updated(worker_id, presence, status, at)))

    # --- blocklist --------------------------------------------------------

    async def job_blocklist(self, job_id: str) -> list[dict[str, str]]:
        await self.get_job(job_id)
        return await self._read(lambda tx: [
            {"worker_id": r["worker_id"], "task_type": r["task_type"], "worker_name": r["name"] or r["worker_id"]}
            for r in tx.query(
                """SELECT b.worker_id, b.task_type, w.name FROM job_blocks b LEFT JOIN workers w ON w.id = b.worker_id
                   WHERE b.job_id=? ORDER BY w.name, b.task_type""", (job_id,))
        ])

    async def remove_from_blocklist(self, job_id: str, entries: list[tuple[str, str]] | None) -> int:
        """Remove the given (worker, task type) entries, or all of them (``None``); returns how many."""
        await self.get_job(job_id)
        at = status_machine.now()

        def remove(tx: Transaction) -> int:
            present = {(r["worker_id"], r["task_type"]) for r in tx.query(
                "SELECT worker_id, task_type FROM job_blocks WHERE job_id=?", (job_id,))}
            chosen = sorted(present if entries is None else present & set(entries))
            if chosen:
                tx.emit(ev.BlocklistEntriesRemoved(job_id=job_id, entries=[list(e) for e in chosen], at=at))
            return len(chosen)

        removed = await self._write(remove)
        if removed:  # a blocklisted worker may take this job's tasks again
            await self._wake_waiters()
        return removed

    # --- merging a partition's progress -----------------------------------

    async def merge_diverged(self, events: list[ev.Event], source: str) -> dict[str, int]:
        """Fold in what another coordinator decided while the farm was split.

        ``events`` are the entries of that coordinator's log that this one
        never saw. Jobs submitted there are added, tasks completed there stay
        completed, their logs are kept, and deletions and shared job types are
        applied. Everything else (assignments, progress, worker states) is
        re-established by the workers themselves when they sign on here.
        """
        at = status_machine.now()

        def merge(tx: Transaction) -> dict[str, int]:
            counts = {"jobs": 0, "completed_tasks": 0, "log_batches": 0, "deleted_jobs": 0}
            for e in events:
                if isinstance(e, ev.JobSubmitted):
                    if tx.query_one("SELECT 1 FROM jobs WHERE id=?", (e.job["id"],)) is None:
                        tx.emit(e)
                        counts["jobs"] += 1
                elif isinstance(e, ev.TasksStatusChanged) and e.status == "completed":
                    marks = ",".join("?" * len(e.task_ids))
                    ids = [r["id"] for r in tx.query(
                        f"SELECT id FROM tasks WHERE id IN ({marks}) AND status != 'completed'", tuple(e.task_ids))]
                    status_machine.set_tasks_status(
                        tx, ids, "completed", e.activity or f"completed on {source} while the farm was split", at)
                    counts["completed_tasks"] += len(ids)
                elif isinstance(e, ev.TaskLogged):
                    if tx.query_one("SELECT 1 FROM tasks WHERE id=?", (e.task_id,)) is not None:
                        tx.emit(e)
                        counts["log_batches"] += 1
                elif isinstance(e, ev.JobDeleted):
                    if tx.query_one("SELECT 1 FROM jobs WHERE id=?", (e.job_id,)) is not None:
                        tx.emit(ev.JobDeleted(job_id=e.job_id, at=at))
                        counts["deleted_jobs"] += 1
                elif isinstance(e, (ev.JobTypePublished, ev.JobTypeWithdrawn)):
                    tx.emit(e)
            return counts

        counts = await self._write(merge)
        log.info("merged the progress of %s: %s", source, counts)
        return counts

    # --- timeouts ---------------------------------------------------------

    async def _timeout_loop(self) -> None:
        interval = max(0.2, min(2.0, self.worker_timeout_s / 5))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.check_timeouts()
            except Exception:  # the checker must survive any single failure
                log.exception("timeout check failed")

    async def check_timeouts(self) -> None:
        if not self.leading:
            return
        await self._check_task_progress()
        limit = time.monotonic() - self.worker_timeout_s
        for worker_id, presence in list(self._workers.items()):
            if presence.last_seen < limit:
                self._workers.pop(worker_id, None)
                log.warning("worker %s timed out; requeueing its tasks", presence.profile.name)
                await self._mark_worker_gone(
                    worker_id, presence, "error",
                    f"worker {presence.profile.name} timed out (not seen for {self.worker_timeout_s:.0f} s)",
                )

    async def _check_task_progress(self) -> None:
        """Fail (softly, so another worker retries) tasks that made no progress for too long."""
        stale_before = time.monotonic() - self.task_timeout_s
        stale = [t for t, last in self._task_progress.items() if last < stale_before]
        if not stale:
            return
        at = status_machine.now()
        for task_id in stale:
            self._task_progress.pop(task_id, None)

            def fail(tx: Transaction) -> str | None:
                row = tx.query_one("SELECT worker_id, status FROM tasks WHERE id=?", (task_id,))
                if row is None or row["status"] != "active":
                    return None
                worker_id = row["worker_id"]
                tx.task_log(task_id, f"{at} no progress for {self.task_timeout_s:.0f} s on worker {worker_id}; "
                                     "giving it to another worker")
                eligible = self._eligible_workers_for(task_id, exclude=worker_id)
                return status_machine.task_failed_by_worker(
                    tx, task_id, worker_id, f"Task timed out: no progress for {self.task_timeout_s:.0f} s",
                    eligible, at)

            status = await self._write(fail)
            if status:
                log.warning("task %s made no progress for %.0f s: %s", task_id, self.task_timeout_s, status)

    # --- farm status ------------------------------------------------------

    async def farm_status(self) -> str:
        counts = await self._read(lambda tx: {
            r["status"]: r["n"] for r in tx.query("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status")
        })
        if not self._workers:
            return "inoperative"
        if counts.get("active") or counts.get("queued"):
            return "active"
        return "idle"


async def _wait_for_change(changed: asyncio.Condition, current: Callable[[], int], version: int,
                           remaining: float) -> None:
    """Wait (at most ``remaining`` s) until ``current()`` moves past ``version``;
    returns at once if it already has (a change between the read and the wait)."""
    async with changed:
        if current() == version:
            try:
                async with asyncio.timeout(remaining):
                    await changed.wait()
            except TimeoutError:
                pass


def _keep_running_task(tx: Transaction, worker_id: str, name: str, task_id: str, at: str) -> None:
    """A worker signs on running a task this coordinator has as queued (it never
    saw the assignment: a partition, or a follower that lagged). Workers are the
    truth about what they run, so hand the task to it instead of running it twice."""
    row = tx.query_one(
        """SELECT t.status, t.worker_id, t.job_id, j.status AS job_status FROM tasks t
           JOIN jobs j ON j.id = t.job_id WHERE t.id=?""", (task_id,))
    if row is None or row["status"] not in ("queued", "soft-failed") or row["job_status"] not in ("queued", "active"):
        return
    if tx.query_one("SELECT 1 FROM task_failures WHERE task_id=? AND worker_id=?", (task_id, worker_id)):
        return
    if tx.query_one(
        """SELECT 1 FROM task_dependencies d JOIN tasks dt ON dt.id = d.depends_on
           WHERE d.task_id=? AND dt.status != 'completed'""", (task_id,)):
        return
    tx.emit(ev.TaskAssigned(task_id=task_id, worker_id=worker_id, at=at))
    tx.task_log(task_id, f"{at} worker {name} ({worker_id}) signed on running this task; it keeps it")
    status_machine.update_job_after_task_change(tx, row["job_id"], "active", at)


def _worker_updated(worker_id: str, p: WorkerPresence, status: str, at: str) -> ev.WorkerUpdated:
    return ev.WorkerUpdated(
        worker_id=worker_id, name=p.profile.name, address=p.address, platform=p.platform, software=p.software,
        status=status, supported_task_types=list(p.profile.supported_task_types), at=at,
    )


def _any_idle(tx: Transaction, worker_ids: list[str]) -> bool:
    """Whether one of these (signed-on, awake) workers holds no task."""
    if not worker_ids:
        return False
    marks = ",".join("?" * len(worker_ids))
    busy = {r[0] for r in tx.query(
        f"SELECT DISTINCT worker_id FROM tasks WHERE status='active' AND worker_id IN ({marks})", tuple(worker_ids))}
    return len(busy) < len(set(worker_ids))


def _tasks_held_by(tx: Transaction, worker_id: str) -> list[str]:
    """The active tasks assigned to a worker: the one it runs, and one it may have prefetched."""
    return [r["id"] for r in tx.query(
        "SELECT id FROM tasks WHERE worker_id=? AND status='active' ORDER BY started, id", (worker_id,))]


def _status_change_for(tx: Transaction, worker_id: str) -> dict[str, Any] | None:
    """The sleep request waiting for this worker, if any."""
    row = tx.query_one("SELECT status_requested, lazy_status_request FROM workers WHERE id=?", (worker_id,))
    if row is None or row["status_requested"] != "asleep":
        return None
    return {"status": "asleep", "is_lazy": bool(row["lazy_status_request"])}


def _may_keep_running(tx: Transaction, worker_id: str, task_id: str) -> tuple[dict[str, Any], str | None]:
    """The watch's verdict, and the task's job (None: gone)."""
    row = tx.query_one("SELECT status, worker_id, job_id FROM tasks WHERE id=?", (task_id,))
    if row is None:
        return {"may_keep_running": False, "reason": "the task's job was deleted"}, None
    if row["worker_id"] != worker_id:
        return {"may_keep_running": False, "reason": "the task was given to another worker"}, row["job_id"]
    if row["status"] != "active":
        return {"may_keep_running": False, "reason": f'the task is now "{row["status"]}"'}, row["job_id"]
    return {"may_keep_running": True, "reason": ""}, row["job_id"]


def _may_free_work(e: ev.Event) -> bool:
    if isinstance(e, ev.JobSubmitted):
        return True
    if isinstance(e, ev.TasksStatusChanged):
        return e.status in ("queued", "soft-failed", "completed")
    if isinstance(e, ev.JobStatusChanged):
        return e.status in ("queued", "active")
    return isinstance(e, (ev.JobPriorityChanged, ev.TaskFailuresCleared, ev.BlocklistEntriesRemoved))


def _monotonic_to_iso(mono: float) -> str:
    wall = time.time() - (time.monotonic() - mono)
    return datetime.fromtimestamp(wall, timezone.utc).isoformat(timespec="milliseconds")


# --- payload parsing and shaping -------------------------------------------


def _parse_submitted_job(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object (a Flamenco SubmittedJob)")
    problems = []
    for key in ("name", "type", "submitter_platform"):
        if not isinstance(body.get(key), str) or not body.get(key).strip():
            problems.append(f"'{key}' is required and must be a non-empty string")
    priority = body.get("priority", 50)
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 100:
        problems.append(f"'priority' must be an integer from 0 to 100, got {priority!r}")
    settings = body.get("settings", {})
    if settings is None:
        settings = {}
    if not isinstance(settings, dict):
        problems.append("'settings' must be an object")
    metadata = body.get("metadata", {}) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        problems.append("'metadata' must be an object of strings")
    storage = body.get("storage") or {}
    if not isinstance(storage, dict):
        problems.append("'storage' must be an object")
        storage = {}
    initial = body.get("initial_status", "queued") or "queued"
    if initial not in ("queued", "paused"):
        problems.append(f"'initial_status' must be 'queued' or 'paused', got {initial!r}")
    etag = body.get("type_etag") or ""
    if not isinstance(etag, str):
        problems.append("'type_etag' must be a string")
    tag = body.get("worker_tag") or ""
    if not isinstance(tag, str):
        problems.append("'worker_tag' must be a string")
    files = body.get(JOB_FILES_KEY) or None
    if files is not None:
        problems.extend(_job_files_problems(files))
    if problems:
        raise APIError(400, "invalid job submission: " + "; ".join(problems))
    return {
        "name": body["name"], "type": body["type"], "priority": priority, "settings": dict(settings),
        "metadata": dict(metadata), "submitter_platform": body["submitter_platform"],
        "type_etag": etag, "worker_tag": tag,
        "shaman_checkout_id": str(storage.get("shaman_checkout_id") or ""), "initial_status": initial,
        "files": files,
    }


# Our extension of Flamenco's SubmittedJob: the job's files live on the peer the
# job was submitted to (it adds this when it packs the .blend; see peer/files).
JOB_FILES_KEY = "x_peer_files"


def _job_files_problems(files: Any) -> list[str]:
    if not isinstance(files, dict):
        return [f"'{JOB_FILES_KEY}' must be an object"]
    problems = []
    for key in ("owner_peer_id", "blend_path"):
        if not isinstance(files.get(key), str) or not files.get(key):
            problems.append(f"'{JOB_FILES_KEY}.{key}' must be a non-empty string")
    if not isinstance(files.get("output_root", ""), str):
        problems.append(f"'{JOB_FILES_KEY}.output_root' must be a string")
    if not isinstance(files.get("manifest"), dict):
        problems.append(f"'{JOB_FILES_KEY}.manifest' must be an object (a file manifest)")
    return problems


def _job_dict(tx: Transaction, job_id: str) -> dict[str, Any] | None:
    r = tx.query_one("SELECT * FROM jobs WHERE id=?", (job_id,))
    if r is None:
        return None
    steps = tx.query_one(
        "SELECT COALESCE(SUM(steps_completed),0) AS done, COALESCE(SUM(steps_total),0) AS total FROM tasks WHERE job_id=?",
        (job_id,),
    )
    job: dict[str, Any] = {
        "id": r["id"], "name": r["name"], "type": r["type"], "priority": r["priority"],
        "settings": json.loads(r["settings"]), "metadata": json.loads(r["metadata"]),
        "submitter_platform": r["submitter_platform"], "created": r["created"], "updated": r["updated"],
        "status": r["status"], "activity": r["activity"],
        "steps_completed": steps["done"], "steps_total": steps["total"],
    }
    if r["type_etag"]:
        job["type_etag"] = r["type_etag"]
    if r["worker_tag"]:
        job["worker_tag"] = r["worker_tag"]
    if r["shaman_checkout_id"]:
        job["storage"] = {"shaman_checkout_id": r["shaman_checkout_id"]}
    return job


def _task_worker(r: Any) -> dict[str, str] | None:
    if not r["worker_id"]:
        return None
    keys = r.keys()
    return {
        "id": r["worker_id"],
        "name": (r["worker_name"] if "worker_name" in keys else None) or r["worker_id"],
        "address": (r["worker_address"] if "worker_address" in keys else None) or "",
    }


def _task_summary(r: Any) -> dict[str, Any]:
    item = {
        "id": r["id"], "name": r["name"], "status": r["status"], "index_in_job": r["index_in_job"],
        "priority": r["priority"], "task_type": r["type"], "updated": r["updated"],
        "steps_completed": r["steps_completed"], "steps_total": r["steps_total"],
    }
    worker = _task_worker(r)
    if worker:
        item["worker"] = worker
    _add_run_times(item, r)
    return item


def _add_run_times(item: dict[str, Any], r: Any) -> None:
    """``started``/``finished`` of the task's current run (extensions to Flamenco's schema)."""
    if r["started"]:
        item["started"] = r["started"]
        if r["finished"]:
            item["finished"] = r["finished"]


def _task_dict(tx: Transaction, task_id: str) -> dict[str, Any] | None:
    r = tx.query_one(
        """SELECT t.*, w.name AS worker_name, w.address AS worker_address FROM tasks t
           LEFT JOIN workers w ON w.id = t.worker_id WHERE t.id=?""", (task_id,))
    if r is None:
        return None
    task = {
        "id": r["id"], "created": r["created"], "updated": r["updated"], "job_id": r["job_id"],
        "index_in_job": r["index_in_job"], "name": r["name"], "status": r["status"],
        "priority": r["priority"], "task_type": r["type"], "activity": r["activity"],
        "commands": json.loads(r["commands"]), "steps_completed": r["steps_completed"],
        "steps_total": r["steps_total"],
    }
    worker = _task_worker(r)
    if worker:
        task["worker"] = worker
    if r["last_touched"]:
        task["last_touched"] = r["last_touched"]
    _add_run_times(task, r)
    failed = tx.query(
        """SELECT f.worker_id, w.name, w.address FROM task_failures f LEFT JOIN workers w ON w.id=f.worker_id
           WHERE f.task_id=? ORDER BY f.at""", (task_id,))
    task["failed_by_workers"] = [
        {"id": f["worker_id"], "name": f["name"] or f["worker_id"], "address": f["address"] or ""} for f in failed
    ]
    task["dependencies"] = [
        d["depends_on"] for d in tx.query("SELECT depends_on FROM task_dependencies WHERE task_id=?", (task_id,))
    ]
    return task


def _assigned_task(tx: Transaction, task_id: str) -> dict[str, Any]:
    r = tx.query_one(
        """SELECT t.*, j.priority AS job_priority, j.type AS job_type, j.name AS job_name, j.files AS job_files,
                  EXISTS (SELECT 1 FROM task_dependencies d WHERE d.task_id = t.id) AS has_dependencies
           FROM tasks t JOIN jobs j ON j.id = t.job_id WHERE t.id=?""", (task_id,))
    return {
        "job_files": json.loads(r["job_files"]) if r["job_files"] else None,
        "has_dependencies": bool(r["has_dependencies"]),
        "uuid": r["id"], "job": r["job_id"], "name": r["name"], "status": r["status"],
        "priority": r["priority"], "job_priority": r["job_priority"], "job_type": r["job_type"],
        "task_type": r["type"], "commands": json.loads(r["commands"]),
        "steps_completed": r["steps_completed"], "steps_total": r["steps_total"],
    }
