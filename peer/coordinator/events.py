"""State-change events: the only way the job store changes.

Every change to jobs, tasks and workers is one of these dataclasses. The
coordinator decides (rules in ``status_machine``), emits events, and the store
applies them. Applying an event is deterministic and needs no further
decisions, so a follower peer that receives the same events (msgpack, via
``to_wire``/``from_wire``) ends up with the same SQLite state. That is what the
cluster layer replicates.

Events carry their own timestamps for the same reason: a replica must not use
its own clock when it applies them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgpack


@dataclass(frozen=True)
class Event:
    kind: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class JobSubmitted(Event):
    """A compiled job with all its tasks, stored atomically."""

    kind: ClassVar[str] = "job-submitted"
    job: dict[str, Any]
    tasks: list[dict[str, Any]]
    # (task_id, depends_on_task_id) pairs
    dependencies: list[list[str]]
    # When the job was stored: the moment its tasks became queued.
    at: str = ""


@dataclass(frozen=True)
class JobStatusChanged(Event):
    kind: ClassVar[str] = "job-status-changed"
    job_id: str
    status: str
    activity: str
    at: str


@dataclass(frozen=True)
class JobPriorityChanged(Event):
    kind: ClassVar[str] = "job-priority-changed"
    job_id: str
    priority: int
    at: str


@dataclass(frozen=True)
class JobDeleted(Event):
    kind: ClassVar[str] = "job-deleted"
    job_id: str
    at: str


@dataclass(frozen=True)
class TasksStatusChanged(Event):
    """One or more tasks move to ``status``.

    Side effects applied with it (Flamenco semantics): ``completed`` sets the
    steps to the total, ``queued`` resets them to zero and unassigns the task.
    """

    kind: ClassVar[str] = "tasks-status-changed"
    task_ids: list[str]
    status: str
    activity: str
    at: str


@dataclass(frozen=True)
class TaskAssigned(Event):
    kind: ClassVar[str] = "task-assigned"
    task_id: str
    worker_id: str
    at: str


@dataclass(frozen=True)
class TaskProgressed(Event):
    kind: ClassVar[str] = "task-progressed"
    task_id: str
    steps_completed: int | None
    activity: str | None
    at: str


@dataclass(frozen=True)
class TaskFailureRecorded(Event):
    kind: ClassVar[str] = "task-failure-recorded"
    task_id: str
    worker_id: str
    at: str


@dataclass(frozen=True)
class TaskFailuresCleared(Event):
    kind: ClassVar[str] = "task-failures-cleared"
    job_id: str
    at: str


@dataclass(frozen=True)
class WorkerUpdated(Event):
    """A worker signed on, changed status or signed off."""

    kind: ClassVar[str] = "worker-updated"
    worker_id: str
    name: str
    address: str
    platform: str
    software: str
    status: str
    supported_task_types: list[str] = field(default_factory=list)
    at: str = ""


@dataclass(frozen=True)
class WorkerStatusRequested(Event):
    """Someone asked a worker to change its status ("asleep" or "awake").

    The request is the farm's wish and stays recorded until someone changes it,
    so a worker that restarts, or signs on to a new coordinator, is told again."""

    kind: ClassVar[str] = "worker-status-requested"
    worker_id: str
    status: str
    is_lazy: bool
    at: str


@dataclass(frozen=True)
class WorkerBlocklisted(Event):
    """A worker failed too many tasks of one type in a job: it gets no more of them."""

    kind: ClassVar[str] = "worker-blocklisted"
    job_id: str
    worker_id: str
    task_type: str
    at: str


@dataclass(frozen=True)
class BlocklistEntriesRemoved(Event):
    """Blocklist entries of a job removed by a person; (worker_id, task_type) pairs."""

    kind: ClassVar[str] = "blocklist-entries-removed"
    job_id: str
    entries: list[list[str]]
    at: str


@dataclass(frozen=True)
class WorkerUpdateApplied(Event):
    """The highest update a worker's stream delivered; later copies are duplicates."""

    kind: ClassVar[str] = "worker-update-applied"
    worker_id: str
    stream: str
    seq: int


@dataclass(frozen=True)
class TaskLogged(Event):
    """Lines for a task's log. Logs travel in the event log so that every
    replica holds them: a line that reached one peer survives its death."""

    kind: ClassVar[str] = "task-logged"
    task_id: str
    lines: list[str]


@dataclass(frozen=True)
class JobTypePublished(Event):
    """A peer shares a job-type script with the whole farm (or updates it)."""

    kind: ClassVar[str] = "job-type-published"
    name: str
    file_name: str
    source: str
    publisher_id: str
    publisher_name: str
    at: str


@dataclass(frozen=True)
class JobTypeWithdrawn(Event):
    """The peer that shared a job type no longer has it in its folder."""

    kind: ClassVar[str] = "job-type-withdrawn"
    name: str
    publisher_id: str
    at: str


EVENT_TYPES: dict[str, type[Event]] = {
    cls.kind: cls
    for cls in (
        JobSubmitted,
        JobStatusChanged,
        JobPriorityChanged,
        JobDeleted,
        TasksStatusChanged,
        TaskAssigned,
        TaskProgressed,
        TaskFailureRecorded,
        TaskFailuresCleared,
        WorkerUpdated,
        WorkerStatusRequested,
        TaskLogged,
        WorkerUpdateApplied,
        WorkerBlocklisted,
        BlocklistEntriesRemoved,
        JobTypePublished,
        JobTypeWithdrawn,
    )
}


def event_from_dict(data: dict[str, Any]) -> Event:
    return _build(dict(data))


def _build(data: dict[str, Any]) -> Event:
    """The event ``data`` describes; takes ``data`` over (pops its kind)."""
    kind = data.pop("kind", None)
    try:
        cls = EVENT_TYPES[kind]
    except KeyError:
        raise ValueError(f"unknown event kind {kind!r}") from None
    return cls(**data)


# Field names per event class, in declaration order (the wire order).
_FIELDS: dict[type[Event], tuple[str, ...]] = {
    cls: tuple(f.name for f in dataclasses.fields(cls)) for cls in EVENT_TYPES.values()
}


def to_wire(event: Event) -> bytes:
    """The same bytes as packing ``event.to_dict()``, without its deep copy:
    the coordinator encodes every event it decides, so this is on its hot path."""
    body: dict[str, Any] = {"kind": event.kind}
    names = _FIELDS.get(type(event))
    if names is None:  # not a registered kind (from_wire will refuse it): encode it anyway
        names = tuple(f.name for f in dataclasses.fields(event))
    for name in names:
        body[name] = getattr(event, name)
    return msgpack.packb(body, use_bin_type=True)


def from_wire(blob: bytes) -> Event:
    data = msgpack.unpackb(blob, raw=False)
    if not isinstance(data, dict):
        raise ValueError(f"an event is a msgpack map, not {type(data).__name__}")
    return _build(data)  # a fresh dict: no copy needed, unlike event_from_dict
