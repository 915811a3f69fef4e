"""Worker commands, compatible with Flamenco 3's worker.

    validate_command(name, params, settings)  -> None, or raises CommandError
    await run_command(name, params, ctx)      -> None, or raises CommandError

Each command is split into a `prepare` step (check parameters, look up the
executable; no other I/O) that yields a ready-to-run object, and that
object's `run(ctx)`. Validation is therefore exactly the first half of
running, and the two can never disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from . import blender, cleanup, encode, ffmpeg, files, misc, mkvmerge
from .base import CommandContext, CommandError, WorkerSettings


class PreparedCommand(Protocol):
    async def run(self, ctx: CommandContext) -> None: ...


Preparer = Callable[[Any, WorkerSettings], PreparedCommand]

_PREPARERS: Mapping[str, Preparer] = {
    misc.ECHO: misc.prepare_echo,
    misc.SLEEP: misc.prepare_sleep,
    misc.EXEC: misc.prepare_exec,
    blender.NAME: blender.prepare,
    ffmpeg.NAME: ffmpeg.prepare,
    files.MAKE_DIRECTORY: files.prepare_make_directory,
    files.MOVE_DIRECTORY: files.prepare_move_directory,
    files.COPY_FILE: files.prepare_copy_file,
    encode.NAME: encode.prepare,
    mkvmerge.NAME: mkvmerge.prepare,
    cleanup.MOVE_FILE: cleanup.prepare_move_file,
    cleanup.DELETE_FILES: cleanup.prepare_delete_files,
}

COMMAND_NAMES: frozenset[str] = frozenset(_PREPARERS)


def prepare_command(name: str, params: Any, settings: WorkerSettings) -> PreparedCommand:
    preparer = _PREPARERS.get(name)
    if preparer is None:
        supported = ", ".join(sorted(COMMAND_NAMES))
        raise CommandError(
            f'unknown command: "{name}"; this worker supports {supported} '
            "(the job type may need a newer worker)"
        )
    return preparer(params, settings)


def validate_command(name: str, params: dict[str, Any], settings: WorkerSettings) -> None:
    """Raise CommandError if `name` with `params` cannot run on this worker."""
    prepare_command(name, params, settings)


async def run_command(name: str, params: dict[str, Any], ctx: CommandContext) -> None:
    """Validate, then run. Raises CommandError on failure.

    Cancelling the calling task stops any child process (and its process
    group) before CancelledError propagates.
    """
    command = prepare_command(name, params, ctx.settings)
    try:
        await command.run(ctx)
    except OSError as ex:
        # Commands turn the failures they expect into precise messages; this
        # is the net for the ones nobody foresaw, so they still name the command.
        where = f' "{ex.filename}"' if ex.filename else ""
        raise CommandError(f"{name}: unexpected error{where}: {ex.strerror or ex}") from ex


__all__ = [
    "COMMAND_NAMES",
    "CommandContext",
    "CommandError",
    "PreparedCommand",
    "WorkerSettings",
    "prepare_command",
    "run_command",
    "validate_command",
]
