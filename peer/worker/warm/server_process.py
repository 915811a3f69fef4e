"""One Blender process running the render server: start it, talk to it, stop it.

Requests go to the server's stdin as JSON lines. Its stdout carries
Blender's own output and the server's events (lines starting with a marker
that holds a random token) in one ordered stream, so a task's last output
line always arrives before its "done". The reader routes output lines to the
task that runs (its log and line callback) and events to a queue.

Like a cold Blender, the process is started with `process.spawn_kwargs()`:
it gets its own process group, so stopping it also stops anything it
started, and (on Linux) it dies with the peer even when the peer is killed.
"""

from __future__ import annotations

import asyncio
import atexit
import codecs
import json
import logging
import secrets
import subprocess
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..process import LineCallback, LogFunc, signal_group, spawn_kwargs, split_lines

log = logging.getLogger(__name__)

SERVER_SCRIPT = Path(__file__).with_name("blender_server.py")
_READ_SIZE = 64 * 1024
TAIL_LINES = 12
# Events after which the server's output no longer belongs to the task.
TASK_END_EVENTS = frozenset({"done", "load_failed", "protocol_error"})

# Processes still running, their groups killed if the worker exits without
# closing its pool (a server whose stdin closes also quits, but only between
# tasks).
_LIVE: set[asyncio.subprocess.Process] = set()


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_LIVE):
        signal_group(proc, kill=True)


@dataclass
class LineSink:
    """Where the running task's output goes."""

    log: LogFunc
    on_line: LineCallback
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))


class WarmProcess:
    def __init__(self, proc: asyncio.subprocess.Process, marker: str, argv: list[str]) -> None:
        self._proc = proc
        self._marker = marker
        self.argv = argv
        self.pid = proc.pid
        self.sink: LineSink | None = None
        self.recent: deque[str] = deque(maxlen=TAIL_LINES)  # output of any task or between tasks
        self.hello: dict[str, Any] = {}
        self.tasks_run = 0
        self.ready = True  # no reset in progress
        self._events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read(), name=f"warm-blender-{proc.pid}")
        _LIVE.add(proc)

    @classmethod
    async def start(cls, exe: str, process_args: Sequence[str]) -> WarmProcess:
        """Start Blender with the server; raises OSError if it cannot run."""
        token = secrets.token_hex(8)
        argv = [exe, *process_args, "--python", str(SERVER_SCRIPT), "--", token]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            **spawn_kwargs(),
        )
        return cls(proc, f"@warm-{token}@ ", argv)

    @property
    def alive(self) -> bool:
        return self._proc.returncode is None and not self._reader.done()

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    @property
    def version(self) -> str:
        return str(self.hello.get("version", "?"))

    async def send(self, request: dict[str, Any]) -> bool:
        """Send one request; False if the process no longer listens."""
        stdin = self._proc.stdin
        if stdin is None or stdin.is_closing():
            return False
        try:
            stdin.write(json.dumps(request).encode() + b"\n")
            await stdin.drain()
        except (ConnectionError, RuntimeError):
            return False
        return True

    async def next_event(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next event; None once the process's output has ended.

        Raises TimeoutError after `timeout` seconds without an event.
        """
        if timeout is None:
            return await self._events.get()
        async with asyncio.timeout(timeout):
            return await self._events.get()

    async def wait_exit(self, timeout: float) -> int | None:
        try:
            return await asyncio.wait_for(asyncio.shield(self._proc.wait()), timeout)
        except TimeoutError:
            return None

    async def stop(self, *, graceful: bool, grace: float = 0.5) -> None:
        """Stop the process group: ask the server to quit, or terminate it."""
        try:
            if graceful and self.alive and await self.send({"op": "quit"}):
                if self._proc.stdin is not None:
                    self._proc.stdin.close()
                await self.wait_exit(2.0)
            if self._proc.returncode is None:
                signal_group(self._proc, kill=False)
                await self.wait_exit(grace)
        finally:
            # Also reached when a second cancellation interrupts the above:
            # nothing of the group may outlive the pool's decision to stop it.
            signal_group(self._proc, kill=True)
            _LIVE.discard(self._proc)
            if self._proc.returncode is None:
                try:
                    await self.wait_exit(1.0)
                except asyncio.CancelledError:
                    pass
            if not self._reader.done():
                self._reader.cancel()

    def rss_bytes(self) -> int | None:
        """Resident memory of the Blender process (Linux only; None elsewhere)."""
        try:
            with open(f"/proc/{self.pid}/status", encoding="ascii", errors="replace") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
        return None

    async def _read(self) -> None:
        assert self._proc.stdout is not None
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = ""
        try:
            while True:
                chunk = await self._proc.stdout.read(_READ_SIZE)
                at_eof = not chunk
                pending += decoder.decode(chunk, final=at_eof)
                lines, pending = split_lines(pending, final=at_eof)
                batch: list[str] = []
                for line in lines:
                    event = self._event_of(line)
                    if event is None:
                        batch.append(line)
                        continue
                    # Everything printed before the event belongs before it.
                    await self._deliver(batch)
                    batch = []
                    if event.get("event") in TASK_END_EVENTS:
                        # What follows (the reset) is no longer the task's output.
                        self.sink = None
                    self._events.put_nowait(event)
                await self._deliver(batch)
                if at_eof:
                    return
        finally:
            self._events.put_nowait(None)

    def _event_of(self, line: str) -> dict[str, Any] | None:
        if not line.startswith(self._marker):
            return None
        try:
            event = json.loads(line[len(self._marker):])
        except ValueError:
            return None
        return event if isinstance(event, dict) else None

    async def _deliver(self, lines: list[str]) -> None:
        if not lines:
            return
        self.recent.extend(lines)
        sink = self.sink
        if sink is None:
            for line in lines:
                log.debug("warm Blender pid=%d between tasks > %s", self.pid, line)
            return
        sink.tail.extend(lines)
        try:
            for line in lines:
                sink.on_line(line)
            prefix = f"pid={self.pid} > "
            # One log call per read, as for a cold Blender.
            await sink.log("\n".join(prefix + line for line in lines))
        except Exception:
            log.exception("warm Blender pid=%d: the task's output handler failed", self.pid)

