"""A warm Blender per worker: one render-server process kept between tasks.

The process is keyed by the Blender executable (path and file identity, so
an upgrade in place counts as another Blender), the process-level arguments
and the .blend file's content hash. A task with another key closes it and
starts a new one. It is also closed when idle for `idle_timeout_s`, when the
loaded file changes on disk, when its memory passes `max_rss_mb`, when a
task's Python changed something only a new process undoes, when a task is
cancelled, and when the worker closes the pool.

After each task the server puts back Python's runtime state and reloads the
file, so every task starts from the file as saved, like a new Blender. The
reload is done right after the task, overlapping the worker's report. (On a
64×64 test scene reloading takes ~5 ms; the alternative, restoring only the
settings the command line touched, takes well under 1 ms but cannot undo
what a --python-expr did, nor notice textures or libraries that changed on
disk; every task of our and Flamenco's render job types runs Python.)

A crash of the process fails only the running task; the next one starts a
new process. A task the server cannot run exactly is returned as `RunCold`,
and the caller runs it in a new Blender of its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .args import RunCold, WarmPlan
from .server_process import TASK_END_EVENTS, LineSink, WarmProcess

if TYPE_CHECKING:
    from ..commands.base import CommandContext

log = logging.getLogger(__name__)

_HASH_CHUNK = 1024 * 1024
_HASH_CACHE_SIZE = 64
# Plain, gzip- and zstd-compressed .blend files.
_BLEND_MAGICS = (b"BLENDER", b"\x1f\x8b", b"\x28\xb5\x2f\xfd")
_TAINT_CLOSE_REASON = "the task's Python {what}, which reloading the file does not undo"


@dataclass(frozen=True)
class WarmOptions:
    # Close the process after this long without a task.
    idle_timeout_s: float = 120.0
    # Close it after a task when its resident memory exceeds this; None:
    # half of this machine's memory.
    max_rss_mb: float | None = None
    # Blender's start-up plus the server's greeting.
    start_timeout_s: float = 60.0
    # How often an idle process is checked (idle time, file changes, exits).
    check_interval_s: float = 2.0


@dataclass(frozen=True)
class WarmKey:
    exe: str
    exe_identity: tuple[int, int, int]  # inode, size, mtime: a replaced executable is another Blender
    process_args: tuple[str, ...]
    content_hash: str

    def why_not(self, other: WarmKey) -> str:
        if self.content_hash != other.content_hash:
            return "the .blend file's content changed (another content hash)"
        if self.exe != other.exe or self.exe_identity != other.exe_identity:
            return "the task uses another Blender executable"
        return f"the task needs Blender started with {' '.join(other.process_args)}"


@dataclass(frozen=True)
class WarmOutcome:
    """How a task ended in the warm process."""

    pid: int
    returncode: int  # Blender's exit code had the task run cold
    tail: list[str]  # the task's last output lines
    crashed: bool  # the process died during the task


@dataclass
class WarmStats:
    processes_started: int = 0
    tasks: int = 0
    cold_fallbacks: int = 0
    reset_seconds: list[float] = field(default_factory=list)
    close_reasons: list[str] = field(default_factory=list)


@dataclass
class _Current:
    process: WarmProcess
    key: WarmKey
    blendfile: str
    file_identity: tuple[int, int, int, int]


class WarmBlenderPool:
    """Keeps at most one render-server process; used by blender-render."""

    def __init__(self, options: WarmOptions | None = None) -> None:
        self.options = options or WarmOptions()
        self.stats = WarmStats()
        self._current: _Current | None = None
        self._busy = False
        self._lock = asyncio.Lock()
        self._last_used = time.monotonic()
        self._watcher: asyncio.Task[None] | None = None
        self._hashes: dict[str, tuple[tuple[int, int, int, int], str]] = {}
        self._closed = False

    @property
    def pid(self) -> int | None:
        """The warm process's pid, if one runs."""
        current = self._current
        return current.process.pid if current is not None and current.process.alive else None

    @property
    def max_rss_bytes(self) -> int | None:
        if self.options.max_rss_mb is not None:
            return int(self.options.max_rss_mb * 1024 * 1024)
        try:
            return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
        except (ValueError, OSError, AttributeError):
            return None

    async def render(
        self, plan: WarmPlan, ctx: CommandContext, on_line: Callable[[str], None]
    ) -> WarmOutcome | RunCold:
        """Run one task in the warm process, or say why it must run cold."""
        if self._busy:
            return RunCold("the warm Blender is busy with another task")
        if self._closed:
            return RunCold("the warm Blender pool is closed (the worker is leaving)")
        self._busy = True
        try:
            async with self._lock:
                result = await self._render(plan, ctx, on_line)
                if isinstance(result, RunCold):
                    self.stats.cold_fallbacks += 1
                return result
        finally:
            self._busy = False
            self._last_used = time.monotonic()

    async def prepare(self, plan: WarmPlan) -> RunCold | None:
        """Start the process for `plan` and load its file, without rendering.

        The hook for a worker that knows its next task early; None when ready.
        """
        if self._busy or self._closed:
            return RunCold("the warm Blender is busy or closed")
        async with self._lock:
            current = await self._process_for(plan, None)
            if isinstance(current, RunCold):
                return current
            if not await current.process.send({"op": "load", "blendfile": plan.blendfile}):
                await self._close("it stopped listening", None)
                return RunCold("the warm Blender stopped listening")
            current.process.ready = False
            return await self._await_ready(current, None)

    async def close(self, reason: str = "the worker is leaving") -> None:
        """Stop the process; the pool refuses further work."""
        self._closed = True
        if self._watcher is not None and self._watcher is not asyncio.current_task():
            self._watcher.cancel()
        await self._close(reason, None, graceful=True)

    # -- running a task ---------------------------------------------------

    async def _render(
        self, plan: WarmPlan, ctx: CommandContext, on_line: Callable[[str], None]
    ) -> WarmOutcome | RunCold:
        current = await self._process_for(plan, ctx)
        if isinstance(current, RunCold):
            return current
        process = current.process
        await ctx.log(f"going to run:\n\n    {_shell_join(plan.cli)}\n")
        await ctx.log(
            f"warm Blender pid={process.pid} ({process.version}) runs this task "
            f"(task {process.tasks_run + 1} of this process)"
        )
        sink = LineSink(ctx.log, on_line)
        process.sink = sink
        request = {
            "op": "render", "task": ctx.task_id, "blendfile": plan.blendfile, "cwd": os.getcwd(),
            "actions": [a.to_wire() for a in plan.actions],
        }
        started = False
        try:
            event = None
            if await process.send(request):
                while True:
                    event = await process.next_event()
                    if event is None or event.get("event") in TASK_END_EVENTS:
                        break
                    started = started or event.get("event") == "started"
        except BaseException:
            # Cancelled (job canceled, task reassigned, worker stopping):
            # stopping the process is the only way to stop a render at once.
            process.sink = None
            await self._close("the task was stopped while it rendered", None, kill=True)
            raise
        finally:
            process.sink = None
        process.tasks_run += 1
        self.stats.tasks += 1

        if event is None:
            returncode = await process.wait_exit(5.0)
            code = returncode if returncode is not None else -1
            if not started:
                # Nothing of the task ran yet; a Blender of its own shows what happens.
                await self._close(f"it stopped before task {ctx.task_id} began (code {code})", ctx)
                return RunCold(f"the warm Blender stopped before the task began (code {code})")
            await self._close(f"it stopped during task {ctx.task_id}", ctx)
            return WarmOutcome(process.pid, code, list(sink.tail), True)
        if event["event"] == "load_failed":
            await self._close("it could not open the .blend file", ctx)
            return RunCold(f"the warm Blender could not open {plan.blendfile}: {event.get('message')}")
        if event["event"] == "protocol_error":
            await self._close(f"the render server did not understand the request: {event.get('message')}", ctx)
            return RunCold("the render server did not understand the request")

        process.ready = False
        if event.get("tainted"):
            await self._close(_TAINT_CLOSE_REASON.format(what=event["tainted"]), ctx)
        else:
            await self._check_memory(current, ctx)
        if event.get("fallback"):
            return RunCold(f"the render server cannot run this task exactly: {event['fallback']}")
        return WarmOutcome(process.pid, int(event.get("exit_code") or 0), list(sink.tail), False)

    # -- the process ------------------------------------------------------

    async def _process_for(self, plan: WarmPlan, ctx: CommandContext | None) -> _Current | RunCold:
        try:
            key, file_identity = await asyncio.to_thread(self._key_for, plan)
        except OSError as ex:
            return RunCold(f"could not read {ex.filename or plan.blendfile}: {ex.strerror or ex}")
        except _NotABlendFile:
            # Not worth replacing a good warm process for: Blender explains.
            return RunCold(f"{plan.blendfile} does not start like a .blend file")

        current = self._current
        if current is not None:
            reason = None
            if not current.process.alive:
                reason = "it exited between tasks (code {})".format(current.process.returncode)
            elif current.key != key:
                reason = current.key.why_not(key)
            if reason is not None:
                await self._close(reason, ctx)
            else:
                ready = await self._await_ready(current, ctx)
                if ready is not None:
                    await self._close(ready.reason, ctx)
        if self._current is not None:
            self._current.blendfile = plan.blendfile
            self._current.file_identity = file_identity
            return self._current

        started = time.monotonic()
        try:
            process = await WarmProcess.start(plan.exe, plan.process_args)
        except OSError as ex:
            return RunCold(f"could not start the warm Blender ({plan.exe}): {ex.strerror or ex}")
        try:
            hello = await process.next_event(timeout=self.options.start_timeout_s)
        except TimeoutError:
            hello = None
        except BaseException:
            await process.stop(graceful=False)
            raise
        if hello is None or hello.get("event") != "hello":
            await process.stop(graceful=False)
            output = "\n".join(f"    {line}" for line in process.recent) or "    (nothing)"
            return RunCold(f"the render server did not start in Blender; its output:\n{output}")
        process.hello = hello
        self.stats.processes_started += 1
        self._current = _Current(process, key, plan.blendfile, file_identity)
        message = (
            f"warm Blender: started pid={process.pid} ({process.version}) in "
            f"{time.monotonic() - started:.2f} s: {_shell_join(process.argv[:-2])}"
        )
        log.info("%s", message)
        if ctx is not None:
            await ctx.log(message)
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.create_task(self._watch(), name="warm-blender-watch")
        return self._current

    async def _await_ready(self, current: _Current, ctx: CommandContext | None) -> RunCold | None:
        """Wait for the reset after the previous task (or a load) to finish."""
        process = current.process
        while not process.ready:
            event = await process.next_event()
            if event is None:
                return RunCold(f"it stopped between tasks (code {await process.wait_exit(5.0)})")
            kind = event.get("event")
            if kind == "ready":
                process.ready = True
                if event.get("reset") == "reload":
                    self.stats.reset_seconds.append(float(event.get("reset_s") or 0.0))
            elif kind == "load_failed":
                process.ready = True  # the server waits for requests again, with no file open
                return RunCold(f"it could not open the .blend file: {event.get('message')}")
        return None

    async def _check_memory(self, current: _Current, ctx: CommandContext) -> None:
        limit = self.max_rss_bytes
        rss = current.process.rss_bytes()
        if limit is not None and rss is not None and rss > limit:
            await self._close(
                f"it uses {rss / 2**20:.0f} MB, more than the limit of {limit / 2**20:.0f} MB", ctx
            )

    async def _close(
        self, reason: str, ctx: CommandContext | None, *, kill: bool = False, graceful: bool = False
    ) -> None:
        current, self._current = self._current, None
        if current is None:
            return
        process = current.process
        message = f"warm Blender: closing pid={process.pid}: {reason}"
        self.stats.close_reasons.append(reason)
        log.info("%s", message)
        if ctx is not None:
            await ctx.log(message)
        await process.stop(graceful=graceful and not kill)

    async def _watch(self) -> None:
        """Close an idle process when it idles too long or its file changes."""
        interval = max(0.05, min(self.options.check_interval_s, self.options.idle_timeout_s))
        while self._current is not None:
            await asyncio.sleep(interval)
            current = self._current
            if current is None or self._busy or self._lock.locked():
                continue
            reason = None
            idle = time.monotonic() - self._last_used
            if not current.process.alive:
                reason = f"it exited between tasks (code {current.process.returncode})"
            elif idle >= self.options.idle_timeout_s:
                reason = f"idle for {idle:.0f} s (limit {self.options.idle_timeout_s:g} s)"
            else:
                reason = await self._file_change(current)
            if reason is not None and not self._busy and not self._lock.locked():
                async with self._lock:
                    if self._current is current:
                        await self._close(reason, None)

    async def _file_change(self, current: _Current) -> str | None:
        """Why the loaded file no longer matches the process, or None."""
        try:
            identity = await asyncio.to_thread(_file_identity, current.blendfile)
            if identity == current.file_identity:
                return None
            # Touched or copied anew, perhaps with the same content.
            plan = _PlanForKey(current.key.exe, current.key.process_args, current.blendfile)
            key, identity = await asyncio.to_thread(self._key_for, plan)
        except (OSError, _NotABlendFile):
            return f"{current.blendfile} is gone or unreadable"
        if key != current.key:
            return f"{current.blendfile} changed on disk ({current.key.why_not(key)})"
        current.file_identity = identity
        return None

    # -- keys ---------------------------------------------------------------

    def _key_for(self, plan: WarmPlan | _PlanForKey) -> tuple[WarmKey, tuple[int, int, int, int]]:
        """Runs in a thread: hashing a big .blend file takes a while.

        Raises OSError if the file cannot be read, _NotABlendFile if it
        does not start like one.
        """
        identity = _file_identity(plan.blendfile)
        cached = self._hashes.get(plan.blendfile)
        if cached is not None and cached[0] == identity:
            digest = cached[1]
        else:
            hasher = hashlib.blake2b(digest_size=20)
            with open(plan.blendfile, "rb") as f:
                first = True
                while chunk := f.read(_HASH_CHUNK):
                    if first and not chunk.startswith(_BLEND_MAGICS):
                        raise _NotABlendFile()
                    first = False
                    hasher.update(chunk)
                if first:
                    raise _NotABlendFile()
            digest = hasher.hexdigest()
            # Only the newest identity per path matters, and only recent paths.
            self._hashes.pop(plan.blendfile, None)
            while len(self._hashes) >= _HASH_CACHE_SIZE:
                self._hashes.pop(next(iter(self._hashes)))
            self._hashes[plan.blendfile] = (identity, digest)
        exe = os.stat(plan.exe)
        exe_identity = (exe.st_ino, exe.st_size, exe.st_mtime_ns)
        return WarmKey(plan.exe, exe_identity, plan.process_args, digest), identity


@dataclass(frozen=True)
class _PlanForKey:
    """What a key is made of."""

    exe: str
    process_args: tuple[str, ...]
    blendfile: str


class _NotABlendFile(Exception):
    pass


def _file_identity(path: str) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _shell_join(argv: tuple[str, ...] | list[str]) -> str:
    return shlex.join(argv)
