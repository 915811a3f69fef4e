"""`echo`, `sleep` and `exec`."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from . import executables, params
from .base import CommandContext, CommandError, WorkerSettings
from .runner import run_program

ECHO = "echo"
SLEEP = "sleep"
EXEC = "exec"

EXEC_DISABLED_MESSAGE = (
    "exec: running arbitrary programs is disabled on this worker; "
    "start it with --enable-exec to allow it"
)


@dataclass(frozen=True)
class Echo:
    message: Any

    async def run(self, ctx: CommandContext) -> None:
        await ctx.log(f'echo: "{params.go_format(self.message)}"')


def prepare_echo(raw: Any, settings: WorkerSettings) -> Echo:
    p: Mapping[str, Any] = params.require_mapping(ECHO, raw)
    if "message" not in p:
        raise params.missing(ECHO, "message")
    return Echo(p["message"])


@dataclass(frozen=True)
class Sleep:
    """Sleeps for exactly `seconds`.

    Flamenco truncates the duration to whole seconds (0.5 sleeps 0 s); we
    sleep the given float, which only differs for fractional durations and
    is what a job author writing 0.5 means.
    """

    seconds: float | int

    async def run(self, ctx: CommandContext) -> None:
        # asyncio.sleep is cancellable, so an aborted task stops at once.
        await asyncio.sleep(self.seconds)
        await ctx.log(f"slept {params.go_format(self.seconds)}s")


def prepare_sleep(raw: Any, settings: WorkerSettings) -> Sleep:
    p: Mapping[str, Any] = params.require_mapping(SLEEP, raw)
    seconds = params.number(SLEEP, p, "duration_in_seconds")
    if seconds < 0:
        raise params.invalid(SLEEP, "duration_in_seconds", seconds, "must be zero or more seconds")
    return Sleep(seconds)


@dataclass(frozen=True)
class Exec:
    exe: str
    args: list[str]

    def cli(self) -> list[str]:
        return [self.exe, *self.args]

    async def run(self, ctx: CommandContext) -> None:
        await run_program(EXEC, self.cli(), ctx, program="the program")


def parse_exec(raw: Any, settings: WorkerSettings) -> Exec:
    """Check the parameters without touching the disk (the exe is not looked up)."""
    # Checked first: a worker that does not run arbitrary programs should say
    # so, whatever the parameters look like.
    if not settings.enable_exec:
        raise CommandError(EXEC_DISABLED_MESSAGE)
    p: Mapping[str, Any] = params.require_mapping(EXEC, raw)
    return Exec(
        exe=params.mandatory_str(EXEC, p, "exe"),
        args=params.string_list(EXEC, p, "args"),
    )


def prepare_exec(raw: Any, settings: WorkerSettings) -> Exec:
    command = parse_exec(raw, settings)
    exe = executables.resolve(EXEC, command.exe, executables.ANY_PROGRAM, settings)
    return replace(command, exe=exe)
