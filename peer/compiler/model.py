"""Data types of the job compiler: what goes in, what comes out, what fails."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

CompileErrorKind = Literal[
    "script-error",  # the script threw, or has a syntax error
    "timeout",  # the script ran longer than CompileLimits.timeout_s
    "memory-limit",  # the script used more than CompileLimits.max_memory_bytes
    "no-compile-function",  # the script defines no compileJob(job)
    "invalid-result",  # the job the script built cannot be stored (bad types, cycles...)
    "unknown-dependency",  # a task depends on a task that was never added to the job
]


@dataclass(frozen=True)
class CompileLimits:
    """Resource limits for one run of a job-type script.

    Flamenco has no limits at all (an endless loop hangs the request); a peer
    must not let one bad script take the node down, so we stop it instead.
    """

    timeout_s: float = 5.0
    max_memory_bytes: int = 256 * 1024 * 1024


@dataclass(frozen=True)
class CompileRequest:
    """A submitted job, as the job-type script's ``compileJob(job)`` sees it."""

    job_id: str
    name: str
    job_type: str
    priority: int
    settings: dict[str, Any]
    metadata: dict[str, str]
    worker_tag: str = ""
    shaman_checkout_id: str = ""
    # Must be timezone-aware: ``formatTimestampLocal(job.created)`` renders it
    # in the peer's local time.  A naive value is taken as local time.
    created: datetime = field(default_factory=lambda: datetime.now().astimezone())


@dataclass(slots=True)  # not frozen: a big job makes 10,000s of these, and frozen init is 4x slower
class CompiledCommand:
    name: str
    parameters: dict[str, Any]
    total_step_count: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The stored/dispatched form, with Flamenco's JSON key names."""
        return {
            "name": self.name,
            "parameters": self.parameters,
            "total_step_count": self.total_step_count,
        }


@dataclass(slots=True)
class CompiledTask:
    uuid: str
    name: str
    type: str
    priority: int
    commands: list[CompiledCommand]
    dependencies: list[str]  # UUIDs of tasks of the same job
    index_in_job: int  # 1-based position in the job, like Flamenco's index_in_job

    @property
    def steps_total(self) -> int:
        # A command that does not report steps itself still counts as one step.
        return sum(max(1, c.total_step_count) for c in self.commands)

    def to_dict(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "name": self.name,
            "type": self.type,
            "priority": self.priority,
            "commands": [c.to_dict() for c in self.commands],
            "dependencies": list(self.dependencies),
            "index_in_job": self.index_in_job,
            "steps_total": self.steps_total,
        }


@dataclass(frozen=True)
class CompiledJob:
    """The result of ``compileJob(job)``.

    ``name``, ``priority``, ``settings`` and ``metadata`` are read back after
    the script ran, because scripts may change them (simple-blender-render
    writes the final ``render_output_path`` into the settings).
    """

    name: str
    priority: int
    settings: dict[str, Any]
    metadata: dict[str, str]
    tasks: list[CompiledTask]
    messages: list[str]  # print()/alert() output, alert lines prefixed "alert: "

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "priority": self.priority,
            "settings": self.settings,
            "metadata": self.metadata,
            "tasks": [t.to_dict() for t in self.tasks],
            "messages": list(self.messages),
        }


class CompileError(Exception):
    """Compiling a job failed; ``message`` is meant for the submitting user.

    The message names the script file and line where known, the cause, and
    what to do about it.  ``script``, ``line`` and ``cause`` (the bare reason,
    e.g. the JS exception text) carry the parts on their own for UIs;
    ``messages`` holds what the script printed before failing.
    """

    def __init__(
        self,
        kind: CompileErrorKind,
        message: str,
        *,
        script: str = "",
        line: int | None = None,
        cause: str = "",
        messages: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.kind: CompileErrorKind = kind
        self.message = message
        self.script = script
        self.line = line
        self.cause = cause or message
        self.messages: list[str] = list(messages or [])

    def __repr__(self) -> str:
        return f"CompileError({self.kind!r}, {self.message!r})"
