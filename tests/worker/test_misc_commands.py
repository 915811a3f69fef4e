"""echo, sleep and exec."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from peer.worker.commands import run_command
from peer.worker.commands.base import CommandError

from .conftest import RecordingContext, needs_linux, wait_gone

pytestmark = pytest.mark.timeout(20)


async def test_echo_formats_any_value(ctx: RecordingContext) -> None:
    await run_command("echo", {"message": "Hello, farm"}, ctx)
    await run_command("echo", {"message": 24.0}, ctx)
    await run_command("echo", {"message": ["a", 1]}, ctx)
    assert ctx.logs == ['echo: "Hello, farm"', 'echo: "24"', 'echo: "[a 1]"']
    assert ctx.steps == 0  # per-command steps are the worker loop's business


async def test_sleep_is_not_truncated(ctx: RecordingContext) -> None:
    # Flamenco would sleep 0 s here; we sleep what was asked.
    started = time.monotonic()
    await run_command("sleep", {"duration_in_seconds": 0.3}, ctx)
    assert time.monotonic() - started >= 0.29
    assert ctx.logs == ["slept 0.3s"]


async def test_sleep_zero(ctx: RecordingContext) -> None:
    await run_command("sleep", {"duration_in_seconds": 0}, ctx)
    assert ctx.logs == ["slept 0s"]


async def test_sleep_is_cancellable(ctx: RecordingContext) -> None:
    task = asyncio.create_task(run_command("sleep", {"duration_in_seconds": 60}, ctx))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 1.0
    assert ctx.logs == []


async def test_exec_refused_when_disabled(ctx: RecordingContext) -> None:
    with pytest.raises(CommandError, match="exec: running arbitrary programs is disabled on this worker; "
                                           "start it with --enable-exec to allow it"):
        await run_command("exec", {"exe": "echo", "args": ["hi"]}, ctx)
    assert ctx.logs == []  # nothing was started


@needs_linux
async def test_exec_runs_and_logs(exec_ctx: RecordingContext) -> None:
    await run_command("exec", {"exe": "echo", "args": ["hello", 24, 2.5]}, exec_ctx)
    assert exec_ctx.logs[0].startswith("going to run:\n\n    /")
    assert exec_ctx.logs[0].endswith("echo hello 24 2.5\n")
    assert "> hello 24 2.5" in exec_ctx.log_text


@needs_linux
async def test_exec_nonzero_exit_reports_code_and_output(exec_ctx: RecordingContext) -> None:
    with pytest.raises(CommandError) as info:
        await run_command("exec", {"exe": "/bin/sh", "args": ["-c", "echo working; echo 'Error: disk full' >&2; exit 4"]}, exec_ctx)
    msg = info.value.message
    assert msg.startswith("exec: command exited abnormally with code 4: Error: disk full\n")
    assert "    working\n    Error: disk full" in msg


@needs_linux
async def test_exec_cancellation_kills_the_process_promptly(exec_ctx: RecordingContext) -> None:
    task = asyncio.create_task(run_command("exec", {"exe": "sleep", "args": ["30"]}, exec_ctx))
    await exec_ctx.wait_for_log("going to run:")
    await asyncio.sleep(0.2)  # let the process start
    pids = [int(p) for p in _pids_of_sleep_30()]
    assert pids, "sleep 30 did not start"
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 2.0
    for pid in pids:
        assert await wait_gone(pid, 2.0)


def _pids_of_sleep_30() -> list[str]:
    """Our own `sleep 30` children, found through /proc (`sleep` prints no pid line)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat", encoding="ascii") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if argv[:2] == [b"sleep", b"30"] or (argv[0].endswith(b"/sleep") and argv[1:2] == [b"30"]):
            if ppid == os.getpid():
                found.append(entry)
    return found
