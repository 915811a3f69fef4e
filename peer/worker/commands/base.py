"""Types shared by all worker commands: settings, the task context, errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..warm.pool import WarmBlenderPool


@dataclass
class WorkerSettings:
    """What a worker knows about its own machine, as far as commands care."""

    # Used when a job asks for the bare name "blender"/"ffmpeg": the worker's
    # configured executable wins, and error messages name it.
    blender_exe: str = "blender"
    ffmpeg_exe: str = "ffmpeg"
    # `exec` runs any program a job names, so a worker must opt in.
    enable_exec: bool = False
    # Appended to "not found" errors, e.g. 'set `blender = "/path"` in
    # ~/.config/flamenco-peer/config.toml or pass --blender'.
    config_hint: str = ""
    # Keeps one Blender running between blender-render tasks (peer/worker/warm).
    # None: every task starts a Blender of its own, as Flamenco's worker does.
    # Whoever sets it closes it (`await pool.close()`) when the worker leaves.
    blender_pool: WarmBlenderPool | None = field(default=None, compare=False, repr=False)


class CommandContext(Protocol):
    """The running task, as seen by a command."""

    task_id: str
    settings: WorkerSettings

    async def log(self, text: str) -> None:
        """Append text (one or more lines) to the task log."""
        ...

    def step(self) -> None:
        """One step of the command completed (e.g. a frame rendered)."""
        ...

    def output_produced(self, path: str) -> None:
        """A file was written (e.g. Blender's 'Saved:' line)."""
        ...


class CommandError(Exception):
    """A command failed; `message` names the command, the cause and the fix.

    The worker loop reports it to the coordinator as `Failed: <message>`, so
    it must make sense to someone who only sees the web UI.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message
