"""Running a child program for a worker command.

Behaviour matches Flamenco's worker so task logs look familiar:
- no shell; stdout and stderr are merged into one stream;
- the log first gets `going to run:\\n\\n    <shell-quoted command>\\n`;
- every output line is logged as `pid=<PID> > <line>`;
- lines longer than 40 KiB are split, so one runaway line cannot eat memory.

The child gets its own process group (session on POSIX). Blender may start
helpers of its own, and a cancelled task must not leave any of them
rendering on a machine that is about to take the next task.
"""

from __future__ import annotations

import asyncio
import codecs
import functools
import os
import shlex
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

LogFunc = Callable[[str], Awaitable[None]]
LineCallback = Callable[[str], None]

MAX_LINE_CHARS = 40 * 1024
_READ_SIZE = 64 * 1024
_IS_WINDOWS = sys.platform == "win32"
_EXIT_POLL_SECONDS = 0.05
_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    # Looked up here, in the parent: dlopen in a child forked from a process
    # with threads could wait forever on a loader lock another thread held.
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()


def _die_with_parent(parent_pid: int) -> None:
    """In the child, before exec (Linux): get SIGKILL when the peer dies, even by
    SIGKILL, so a killed peer never leaves a Blender rendering on its own."""
    prctl = _PRCTL
    if prctl is None:
        return
    try:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except Exception:  # best effort: without it the orphan finishes its task and exits
        return
    if os.getppid() != parent_pid:
        # The peer died between fork and prctl: no signal will ever come.
        os.kill(os.getpid(), signal.SIGKILL)


# Windows' equivalent of a new process group (POSIX gets start_new_session).
_CREATION_FLAGS: int = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0) if _IS_WINDOWS else 0


def spawn_kwargs() -> dict[str, Any]:
    """Options for `asyncio.create_subprocess_exec` that every program a worker
    starts gets: its own process group (so `signal_group` stops its helpers
    too) and, on Linux, death by SIGKILL when the peer dies.

    Spawn from the event loop's thread, never from `asyncio.to_thread` or
    another executor: PR_SET_PDEATHSIG fires when the *thread* that forked the
    child ends, and only the loop's thread lives as long as the peer.
    """
    parent_pid = os.getpid()
    preexec = functools.partial(_die_with_parent, parent_pid) if _PRCTL is not None else None
    return {"start_new_session": not _IS_WINDOWS, "creationflags": _CREATION_FLAGS, "preexec_fn": preexec}


@dataclass
class ProcessResult:
    pid: int
    returncode: int
    tail: list[str] = field(default_factory=list)  # the last output lines, oldest first
    line_count: int = 0


@dataclass(frozen=True)
class ProcessOptions:
    # SIGTERM first so the program can clean up, SIGKILL if it does not stop.
    terminate_grace: float = 3.0
    # After the program exits, how long to keep reading output that
    # grandchildren may still hold open before stopping them.
    drain_timeout: float = 5.0
    tail_lines: int = 12


def describe_returncode(returncode: int) -> str:
    """`N`, or `-N (killed by signal SIGx)` when a signal ended the program."""
    if returncode >= 0:
        return str(returncode)
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"{returncode} (killed by {name})"


async def run_process(
    cmd: Sequence[str],
    *,
    log: LogFunc,
    on_line: LineCallback | None = None,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    options: ProcessOptions = ProcessOptions(),
) -> ProcessResult:
    """Run `cmd` to completion, streaming its output to `log` and `on_line`.

    Raises OSError when the program cannot be started. On cancellation the
    whole process group is stopped before CancelledError propagates.
    """
    argv = list(cmd)
    await log(f"going to run:\n\n    {shlex.join(argv)}\n")
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        env=env,
        **spawn_kwargs(),
    )
    result = ProcessResult(pid=proc.pid, returncode=0)
    tail: deque[str] = deque(maxlen=options.tail_lines)
    reader = asyncio.create_task(_pump_output(proc, log, on_line, tail, result))
    waiter = asyncio.create_task(_leader_exited(proc))
    try:
        done, _ = await asyncio.wait({reader, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if reader in done:
            reader.result()  # re-raise a failing log sink or parser
            await proc.wait()
        else:
            # The program is gone (its return code is known); only leftovers
            # that inherited its output may still be writing.
            await _drain_leftovers(proc, reader, log, options.drain_timeout)
    except BaseException:
        await _stop(proc, options.terminate_grace)
        raise
    finally:
        for task in (reader, waiter):
            if not task.done():
                task.cancel()
    assert proc.returncode is not None
    result.returncode = proc.returncode
    result.tail = list(tail)
    return result


async def _drain_leftovers(
    proc: asyncio.subprocess.Process, reader: asyncio.Task[None], log: LogFunc, timeout: float
) -> None:
    try:
        await asyncio.wait_for(asyncio.shield(reader), timeout)
        return
    except TimeoutError:
        pass
    await log(
        f"pid={proc.pid}: the program exited but processes it started still hold "
        "its output open; stopping them"
    )
    signal_group(proc, kill=True)
    try:
        await asyncio.wait_for(reader, timeout)
    except TimeoutError:
        pass  # could not stop them (Windows has no process groups); stop reading instead


async def _leader_exited(proc: asyncio.subprocess.Process) -> None:
    """Return once the child itself has exited, even if its output is still open.

    On Python 3.11 `proc.wait()` only returns after all pipes are closed, so a
    grandchild holding stdout would make it wait forever; the return code,
    however, is set as soon as the child is reaped.
    """
    while proc.returncode is None:
        await asyncio.sleep(_EXIT_POLL_SECONDS)


async def _pump_output(
    proc: asyncio.subprocess.Process,
    log: LogFunc,
    on_line: LineCallback | None,
    tail: deque[str],
    result: ProcessResult,
) -> None:
    assert proc.stdout is not None
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    prefix = f"pid={proc.pid} > "
    while True:
        chunk = await proc.stdout.read(_READ_SIZE)
        at_eof = not chunk
        pending += decoder.decode(chunk, final=at_eof)
        lines, pending = split_lines(pending, final=at_eof)
        if lines:
            for line in lines:
                tail.append(line)
                if on_line is not None:
                    on_line(line)
            result.line_count += len(lines)
            # One log call per read keeps a chatty Blender (≈40 lines per
            # frame) from turning into thousands of tiny log appends.
            await log("\n".join(prefix + line for line in lines))
        if at_eof:
            return


def split_lines(text: str, *, final: bool) -> tuple[list[str], str]:
    """Split complete lines off `text`; return (lines, unfinished remainder)."""
    parts = text.split("\n")
    rest = parts.pop()
    lines = [p[:-1] if p.endswith("\r") else p for p in parts]
    while len(rest) > MAX_LINE_CHARS:
        lines.append(rest[:MAX_LINE_CHARS])
        rest = rest[MAX_LINE_CHARS:]
    if final and rest:
        lines.append(rest.removesuffix("\r"))
        rest = ""
    # Splitting at a character (not byte) index never cuts a UTF-8 sequence.
    out: list[str] = []
    for line in lines:
        while len(line) > MAX_LINE_CHARS:
            out.append(line[:MAX_LINE_CHARS])
            line = line[MAX_LINE_CHARS:]
        out.append(line)
    return out, rest


def signal_group(proc: asyncio.subprocess.Process, *, kill: bool) -> None:
    """Signal the whole process group of a child started with `spawn_kwargs()`
    (SIGKILL or SIGTERM); a group that is gone is fine."""
    if _IS_WINDOWS:
        # No process groups to signal; Windows has no SIGTERM either.
        if proc.returncode is None:
            try:
                proc.kill()
            except ProcessLookupError:
                pass
        return
    sig = signal.SIGKILL if kill else signal.SIGTERM
    try:
        # start_new_session made the child a group leader: pgid == pid. The
        # kernel does not reuse a pid while it is still some group's id, so
        # this cannot hit an unrelated process while our group lives.
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


async def _stop(proc: asyncio.subprocess.Process, grace: float) -> None:
    try:
        if proc.returncode is None:
            signal_group(proc, kill=False)
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                pass
    finally:
        # Also reached when a second cancellation interrupts the grace period:
        # whatever is left of the group must not outlive the task.
        signal_group(proc, kill=True)
        if proc.returncode is None:
            try:
                await asyncio.wait_for(asyncio.shield(proc.wait()), 1.0)
            except (TimeoutError, asyncio.CancelledError):
                pass
