"""Glue between commands and the process runner: start errors and exit codes as CommandError."""

from __future__ import annotations

import re
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass

from ..process import LineCallback, ProcessOptions, ProcessResult, describe_returncode, run_process
from .base import CommandContext, CommandError

# Lines worth quoting when a program fails: Blender's `Error: ...`, Python
# tracebacks, crashes. Matched case-insensitively against whole lines.
_ERRORISH = re.compile(
    r"\berror\b|traceback|exception|segmentation fault|fatal|crash|cannot|can't|failed",
    re.IGNORECASE,
)
# Noise that looks like an error but never explains a failure: Blender's
# leak report at exit and the harmless EGL probing of headless EEVEE.
_NOT_THE_CAUSE = re.compile(r"Not freed memory blocks|^EGL Error|^Fra:\d")
TAIL_IN_MESSAGE = 6


class ErrorLineTracker:
    """Remembers the most recent error-looking output line.

    The tail of the output is often just "Blender quit"; the line that
    explains the failure can be further up.
    """

    def __init__(self) -> None:
        self.last: str | None = None

    def __call__(self, line: str) -> None:
        if _ERRORISH.search(line) and not _NOT_THE_CAUSE.search(line):
            line = line.strip()
            # It becomes the task's one-line failure reason; keep that readable.
            self.last = line if len(line) <= 300 else line[:297] + "..."


@dataclass(frozen=True)
class ProgramOutcome:
    result: ProcessResult
    error_line: str | None  # the last error-looking line, even on success


async def run_program(
    cmd_name: str,
    argv: Sequence[str],
    ctx: CommandContext,
    *,
    program: str,
    on_line: LineCallback | None = None,
    options: ProcessOptions = ProcessOptions(),
    ok_returncodes: Container[int] = (0,),
    error_text: Callable[[str], str] | None = None,
) -> ProgramOutcome:
    """Run `argv`; raise CommandError on start failure or an exit code not in `ok_returncodes`.

    `program` names what runs ("Blender") in messages. `error_text` turns an
    output line into the text the error-line search sees (the log keeps the
    line as printed).
    """
    errors = ErrorLineTracker()

    def handle_line(line: str) -> None:
        errors(line if error_text is None else error_text(line))
        if on_line is not None:
            on_line(line)

    try:
        result = await run_process(argv, log=ctx.log, on_line=handle_line, options=options)
    except OSError as ex:
        raise CommandError(
            f"{cmd_name}: could not start {program} ({argv[0]}): {ex.strerror or ex}; "
            "check that the file is a program this worker can run"
        ) from ex

    if result.returncode not in ok_returncodes:
        raise CommandError(abnormal_exit_message(cmd_name, program, result, errors.last))
    return ProgramOutcome(result, errors.last)


def abnormal_exit_message(
    cmd_name: str, program: str, result: ProcessResult, error_line: str | None
) -> str:
    """`<cmd>: command exited abnormally with code N: <cause>` plus the output's last lines."""
    first = f"{cmd_name}: command exited abnormally with code {describe_returncode(result.returncode)}"
    if error_line:
        first += f": {error_line}"
    tail = [line for line in result.tail if line.strip()][-TAIL_IN_MESSAGE:]
    if not tail:
        return first + f"\n{program} printed nothing; run the command from the task log by hand to see why."
    quoted = "\n".join(f"    {line}" for line in tail)
    return f"{first}\nlast output of {program} (pid {result.pid}):\n{quoted}"
