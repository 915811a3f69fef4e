"""`blender-render`: run Blender, count rendered frames, report saved files.

CLI: exe + shlex.split(exeArgs) + argsBefore + [blendfile, if not ""] + args.

When the worker keeps a warm Blender (`WorkerSettings.blender_pool`) and the
task's arguments are ones its render server replays exactly, the task runs
there instead of in a new Blender; its output is parsed the same way.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from ..blender_output import BlenderOutputParser, FrameSaved, FrameSkipped, StepCounter
from ..process import ProcessResult
from ..warm.args import RunCold, plan_warm_render
from . import executables, params
from .base import CommandContext, CommandError, WorkerSettings
from .runner import ErrorLineTracker, abnormal_exit_message, run_program

NAME = "blender-render"
LineCallback = Callable[[str], None]


@dataclass(frozen=True)
class _WarmRun:
    error_line: str | None  # the last error-looking output line


@dataclass(frozen=True)
class BlenderRender:
    exe: str
    exe_args: list[str]
    args_before: list[str]
    blendfile: str  # "" means the job passes the file some other way (or none at all)
    args: list[str]

    def cli(self) -> list[str]:
        blend = [self.blendfile] if self.blendfile else []
        return [self.exe, *self.exe_args, *self.args_before, *blend, *self.args]

    async def run(self, ctx: CommandContext) -> None:
        # Off the event loop: blend files often live on a network share.
        await asyncio.to_thread(self._check_blendfile)
        parser = BlenderOutputParser()
        steps = StepCounter()

        def on_line(line: str) -> None:
            for event in parser.feed(line):
                if isinstance(event, FrameSaved | FrameSkipped) and event.path:
                    # Blender's cwd is ours, so relative paths resolve the same. A
                    # skipped frame counts too: an interrupted earlier run of this
                    # task wrote it, and only this task will ever send it on.
                    ctx.output_produced(os.path.abspath(event.path))
                if steps.feed(event):
                    ctx.step()

        warm = await self._run_warm(ctx, on_line)
        if warm is None:
            outcome = await run_program(NAME, self.cli(), ctx, program="Blender", on_line=on_line)
            error_line = outcome.error_line
        else:
            error_line = warm.error_line

        if steps.saved == 0 and steps.skipped == 0:
            # Success is the exit code, not stdout (Blender 5.x logs differently
            # and a script may write files itself), but a render that saved
            # nothing is usually a mistake worth pointing at.
            warning = (
                f"{NAME}: warning: Blender exited successfully but reported no saved files "
                "(no 'Saved:' lines); if this task should produce frames, check the "
                "output path and file format in the job settings"
            )
            if error_line:
                warning += (
                    f". Blender also printed: {error_line!r}; Python errors do not "
                    "change Blender's exit code unless it runs with --python-exit-code"
                )
            await ctx.log(warning)

    async def _run_warm(self, ctx: CommandContext, on_line: LineCallback) -> _WarmRun | None:
        """Run in the worker's warm Blender if it can run this task exactly.

        None: the task still has to run, in a Blender of its own.
        """
        pool = ctx.settings.blender_pool
        if pool is None:
            return None
        plan = plan_warm_render(self.exe, self.exe_args, self.args_before, self.blendfile, self.args)
        errors = ErrorLineTracker()

        def handle_line(line: str) -> None:
            errors(line)
            on_line(line)

        result = plan if isinstance(plan, RunCold) else await pool.render(plan, ctx, handle_line)
        if isinstance(result, RunCold):
            await ctx.log(f"{NAME}: starting a Blender for this task only: {result.reason}")
            return None
        if result.returncode != 0 or result.crashed:
            message = abnormal_exit_message(
                NAME, "Blender", ProcessResult(result.pid, result.returncode, result.tail), errors.last
            )
            if result.crashed:
                message += (
                    "\nThe warm Blender process stopped during this task; the task can be retried, "
                    "and the next task starts a new Blender."
                )
            raise CommandError(message)
        return _WarmRun(errors.last)

    def _check_blendfile(self) -> None:
        if not self.blendfile:
            return
        if os.path.isdir(self.blendfile):
            raise CommandError(
                f'{NAME}: blend file "{self.blendfile}" is a directory, not a .blend file; '
                "fix the blendfile setting of the job"
            )
        if not os.path.isfile(self.blendfile):
            raise CommandError(
                f'{NAME}: blend file "{self.blendfile}" does not exist on this worker; '
                "make sure the job's files are available here (shared storage mounted at "
                "the same path, or the files transferred to this worker) before rendering"
            )


def parse_params(raw: Any, settings: WorkerSettings) -> BlenderRender:
    """Check the parameters without touching the disk (the exe is not looked up)."""
    p: Mapping[str, Any] = params.require_mapping(NAME, raw)
    exe = params.mandatory_str(NAME, p, "exe")
    if "blendfile" not in p:
        # Flamenco (3.5+) requires the key so that forgetting it is an error,
        # while "" explicitly means "no blend file on the command line".
        raise params.missing(NAME, "blendfile")
    blendfile = p["blendfile"]
    if not isinstance(blendfile, str):
        raise params.invalid(NAME, "blendfile", blendfile, 'must be a string (use "" to leave it out)')
    return BlenderRender(
        exe=executables.configured_exe(exe, executables.BLENDER, settings.blender_exe),
        exe_args=params.shell_split(NAME, p, "exeArgs"),
        args_before=params.string_list(NAME, p, "argsBefore"),
        blendfile=blendfile,
        args=params.string_list(NAME, p, "args"),
    )


def prepare(raw: Any, settings: WorkerSettings) -> BlenderRender:
    command = parse_params(raw, settings)
    exe = executables.resolve(NAME, command.exe, executables.BLENDER, settings)
    return replace(command, exe=exe)
