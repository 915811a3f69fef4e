"""The subprocess runner: logging format, line handling, process-group cleanup."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import sys
import time

import pytest

from peer.worker.process import (
    MAX_LINE_CHARS,
    ProcessOptions,
    describe_returncode,
    run_process,
    split_lines,
)

from .conftest import RecordingContext, needs_linux, wait_gone

pytestmark = [pytest.mark.timeout(20), needs_linux]


async def test_logs_command_then_prefixed_merged_output(ctx: RecordingContext) -> None:
    seen: list[str] = []
    result = await run_process(
        ["/bin/sh", "-c", "echo out; echo err >&2; exit 3"], log=ctx.log, on_line=seen.append
    )
    assert ctx.logs[0] == "going to run:\n\n    /bin/sh -c 'echo out; echo err >&2; exit 3'\n"
    assert result.returncode == 3
    assert sorted(seen) == ["err", "out"]  # stderr merged into the same stream
    body = "\n".join(ctx.logs[1:]).splitlines()
    assert sorted(body) == [f"pid={result.pid} > err", f"pid={result.pid} > out"]
    assert sorted(result.tail) == ["err", "out"]
    assert result.line_count == 2


async def test_output_without_final_newline_and_bad_utf8(ctx: RecordingContext) -> None:
    seen: list[str] = []
    await run_process(["/bin/sh", "-c", r"printf 'caf\303\251\r\nbad \377 byte\nlast'"], log=ctx.log, on_line=seen.append)
    assert seen == ["café", "bad \ufffd byte", "last"]


async def test_very_long_line_is_split(ctx: RecordingContext) -> None:
    seen: list[str] = []
    n = MAX_LINE_CHARS * 2 + 10
    await run_process([sys.executable, "-c", f"print('é' * {n})"], log=ctx.log, on_line=seen.append)
    assert [len(s) for s in seen] == [MAX_LINE_CHARS, MAX_LINE_CHARS, 10]
    assert set("".join(seen)) == {"é"}


async def test_missing_program_raises_oserror(ctx: RecordingContext) -> None:
    with pytest.raises(FileNotFoundError):
        await run_process(["/nonexistent/program"], log=ctx.log)


async def test_cancellation_kills_the_whole_process_group(ctx: RecordingContext) -> None:
    # The shell starts a background grandchild, like Blender starting helpers.
    seen: list[str] = []
    task = asyncio.create_task(
        run_process(["/bin/sh", "-c", "sleep 30 & echo child=$!; wait"], log=ctx.log, on_line=seen.append)
    )
    await ctx.wait_for_log("> child=")  # the output line, not the "going to run" echo
    shell_pid = int(next(line for line in ctx.logs if "> child=" in line).split("pid=")[1].split(" ")[0])
    child_pid = int(seen[0].split("=")[1])
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 2.0
    assert await wait_gone(shell_pid, 2.0)
    assert await wait_gone(child_pid, 2.0)


async def test_cancellation_escalates_to_sigkill(ctx: RecordingContext) -> None:
    # SIG_IGN is inherited across exec, so `sleep` ignores SIGTERM too.
    task = asyncio.create_task(
        run_process(["/bin/sh", "-c", "trap '' TERM; echo ready; sleep 30"], log=ctx.log,
                    options=ProcessOptions(terminate_grace=0.3))
    )
    await ctx.wait_for_log("> ready")  # the output line, not the "going to run" echo
    pid = int(next(line for line in ctx.logs if "> ready" in line).split("pid=")[1].split(" ")[0])
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 2.0
    assert await wait_gone(pid, 2.0)


async def test_lingering_grandchild_does_not_hang_the_command(ctx: RecordingContext) -> None:
    seen: list[str] = []
    started = time.monotonic()
    result = await run_process(
        ["/bin/sh", "-c", "sleep 30 & echo child=$!"], log=ctx.log, on_line=seen.append,
        options=ProcessOptions(drain_timeout=0.3),
    )
    assert result.returncode == 0
    assert time.monotonic() - started < 5.0
    assert "still hold its output open; stopping them" in ctx.log_text
    assert await wait_gone(int(seen[0].split("=")[1]), 2.0)


async def test_failing_line_callback_stops_the_process(ctx: RecordingContext) -> None:
    def explode(line: str) -> None:
        raise RuntimeError("parser bug")

    started = time.monotonic()
    with pytest.raises(RuntimeError, match="parser bug"):
        await run_process(["/bin/sh", "-c", "echo hi; sleep 30"], log=ctx.log, on_line=explode)
    assert time.monotonic() - started < 5.0


def test_split_lines() -> None:
    assert split_lines("a\nb\r\nc", final=False) == (["a", "b"], "c")
    assert split_lines("a\nb\r\nc", final=True) == (["a", "b", "c"], "")
    assert split_lines("", final=True) == ([], "")
    assert split_lines("x" * (MAX_LINE_CHARS + 1), final=False) == (["x" * MAX_LINE_CHARS], "x")


def test_describe_returncode() -> None:
    assert describe_returncode(1) == "1"
    assert describe_returncode(-11) == "-11 (killed by SIGSEGV)"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
@pytest.mark.timeout(30)
def test_a_child_dies_with_its_killed_parent(tmp_path):
    """A peer killed with SIGKILL must not leave its Blender rendering on its own."""
    import subprocess
    import textwrap

    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import asyncio, sys
        from peer.worker.process import run_process, ProcessOptions

        async def main():
            async def log(text): pass
            await run_process([sys.executable, "-c",
                "import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"],
                log=log)
        asyncio.run(main())
    """)])
    try:
        deadline = time.monotonic() + 15
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline, "the child never started"
            time.sleep(0.05)
        child = int(pid_file.read_text())
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 5
        while _alive(child):
            assert time.monotonic() < deadline, "the child outlived its SIGKILLed parent"
            time.sleep(0.05)
    finally:
        parent.kill()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
@pytest.mark.timeout(30)
def test_a_child_whose_parent_died_before_it_asked_for_the_signal_ends_at_once() -> None:
    # The peer may die between fork and prctl: the death signal would then never
    # come, so the child checks that its parent is still the one that forked it.
    import subprocess

    from peer.worker.process import _die_with_parent, spawn_kwargs

    # As if the peer had died: the child's parent is not the process named.
    not_the_parent = os.getppid()
    child = subprocess.run([sys.executable, "-c", "print('ran')"], capture_output=True, timeout=20,
                           preexec_fn=functools.partial(_die_with_parent, not_the_parent))
    assert child.returncode == -signal.SIGKILL and child.stdout == b""
    # Forked by the process it names, it runs normally.
    assert subprocess.run([sys.executable, "-c", "print('ran')"], capture_output=True, timeout=20,
                          **spawn_kwargs()).stdout == b"ran\n"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie waiting for init to reap it counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
