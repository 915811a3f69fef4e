"""The worker: ask the coordinator for a task, run its commands, report back.

The worker long-polls for work, so an idle worker starts a queued task within
milliseconds. While a task runs it sends one update at most every
``report_interval_s`` (progress, buffered log lines, a heartbeat), and the
reply says whether it may keep running; if not (job canceled, task taken
away), the running command is cancelled, which kills its process.

Around that loop:

- **Updates go through the upstream buffer** (``upstream.py``): when no
  coordinator answers, the worker keeps rendering and its updates wait on
  disk, to be delivered in order, exactly once, when one answers again, also
  after a restart of the worker.
- **Availability** (``idle/policy.py``): the worker mode, the user's idle time
  and the sleep schedule say whether it may take work. When that turns to no
  while a task runs, the task is stopped and handed back (the worker signs
  off, and the coordinator requeues what it held), unless
  ``finish_task_when_user_returns``.
- **Shutdown** (``shutdown``): finish or requeue the task, deliver the buffer,
  sign off.

``state()`` tells in a word and a sentence what the worker does and why.
"""

from __future__ import annotations

import asyncio
import logging
import platform
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp

from .. import __version__, wire
from .commands import CommandError, run_command
from .commands.base import WorkerSettings
from .idle.policy import ON_SHUTDOWN, AvailabilityPolicy
from .upstream import Delivered, Update, Upstream, UpstreamBuffer, UpstreamError
from .variables import expand_parameters

log = logging.getLogger(__name__)

# What ``state()["state"]`` says, besides the availability states of idle/policy.py.
WORKING = "working"
WAITING = "idle: no task"
UNREACHABLE = "coordinator unreachable"
DELIVERING = "delivering buffered updates"
STOPPING = "stopping"
STOPPED = "stopped"
SENT_TO_SLEEP = "asleep (requested)"


@dataclass
class WorkerIdentity:
    worker_id: str
    name: str
    supported_task_types: list[str]
    address: str = ""
    tags: list[str] = field(default_factory=list)


@dataclass
class WorkerOptions:
    """How the worker behaves when its user comes back and when it is stopped."""

    # SIGTERM: "requeue" stops the task at once and hands it back; "finish"
    # lets it run up to ``shutdown_grace_s`` more, then hands it back.
    on_shutdown: str = "requeue"
    shutdown_grace_s: float = 60.0
    finish_task_when_user_returns: bool = False
    # At shutdown: how long to try delivering buffered updates (what is left
    # stays on disk for the next start).
    delivery_grace_s: float = 5.0
    # One task update may take this long before it counts as lost (and is buffered).
    update_timeout_s: float = 10.0
    # While a task runs, claim the next one and fetch its files, so it starts
    # the moment the current one ends (only while no other worker is idle).
    prefetch: bool = True

    @classmethod
    def from_settings(cls, *, on_shutdown: str, shutdown_grace_s: float,
                      finish_task_when_user_returns: bool, prefetch: bool = True) -> "WorkerOptions":
        """From the config settings; ValueError names the setting and the fix."""
        if on_shutdown not in ON_SHUTDOWN:
            raise ValueError(f"on_shutdown = {on_shutdown!r} is not a choice; use "
                             + " or ".join(f'"{c}"' for c in ON_SHUTDOWN))
        if shutdown_grace_s < 0:
            raise ValueError(f"shutdown_grace_s = {shutdown_grace_s} must be zero or more seconds")
        return cls(on_shutdown=on_shutdown, shutdown_grace_s=float(shutdown_grace_s),
                   finish_task_when_user_returns=finish_task_when_user_returns, prefetch=prefetch)


class CoordinatorGone(Exception):
    """The coordinator cannot be reached right now."""


class TaskTakenAway(Exception):
    """The coordinator says this worker must stop the task (canceled, reassigned, deleted)."""


class ProtocolClient:
    """Calls to whichever peer coordinates the farm right now.

    ``locate`` answers where that is (it changes when the farm elects a new
    coordinator). A worker signed on at one coordinator must sign on again
    before it talks to another, so calls raise ``_SignOnAgain`` once the
    coordinator has moved.
    """

    def __init__(self, locate: str | Callable[[], str | None], session: aiohttp.ClientSession) -> None:
        self.locate: Callable[[], str | None] = (lambda: locate) if isinstance(locate, str) else locate
        self.session = session
        self.signed_on_url: str | None = None

    @property
    def base_url(self) -> str:
        return self.locate() or "(no coordinator yet)"

    def has_moved(self) -> bool:
        base = self.locate()
        return base is not None and self.signed_on_url is not None and base != self.signed_on_url

    async def moved(self, poll_s: float = 0.2) -> None:
        """Returns once the farm's coordinator is another than the one we signed on at.

        A long-poll to a coordinator cut off by a partition would otherwise
        hang until its timeout: the old one never answers nor closes it.
        """
        while not self.has_moved():
            await asyncio.sleep(poll_s)

    async def call(self, path: str, body: dict[str, Any], *, timeout: float = 30.0) -> tuple[int, Any]:
        base = self.locate()
        if base is None:
            raise CoordinatorGone("no coordinator known yet (the farm is electing one)")
        if path == "worker/sign-on":
            self.signed_on_url = base
        elif self.signed_on_url is not None and base != self.signed_on_url and path != "worker/sign-off":
            raise _SignOnAgain()
        url = f"{base.rstrip('/')}/peer/v1/{path}"
        try:
            status, content_type, raw = await wire.post(self.session, url, body, timeout=timeout)
            return status, wire.unpack(raw) if raw and content_type == wire.MSGPACK else None
        except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as exc:
            raise CoordinatorGone(f"{url}: {exc or type(exc).__name__}") from exc


@dataclass
class TaskRun:
    """One task's progress and log, buffered between reports."""

    task_id: str
    settings: WorkerSettings
    steps_completed: int = 0
    activity: str = "Started"
    _log: list[str] = field(default_factory=list)
    dirty: asyncio.Event = field(default_factory=asyncio.Event)
    outputs: list[str] = field(default_factory=list)
    # Set by whoever stops the task on the coordinator's word (watch, reports),
    # or by the worker itself (user back, shutdown).
    stop_reason: str | None = None
    # The worker stopped it and hands it back to the coordinator (sign-off requeues it).
    requeue: bool = False
    # (steps, activity) of the last update sent: an update with the same is a heartbeat.
    last_sent: tuple[int, str] | None = None
    # Sends under way. Stopping the reporter must not cut one short: a
    # request cut off after the coordinator applied it would be sent again.
    in_flight: set[asyncio.Future[Any]] = field(default_factory=set)

    async def sending(self, work: Awaitable[Any]) -> Any:
        """Run ``work`` to its end even if the caller is cancelled meanwhile."""
        future = asyncio.ensure_future(work)
        self.in_flight.add(future)
        future.add_done_callback(self.in_flight.discard)
        # If the caller was cancelled, nobody else looks at the outcome.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        return await asyncio.shield(future)

    async def log(self, text: str) -> None:
        self._log.append(text if text.endswith("\n") else text + "\n")
        self.dirty.set()

    def step(self) -> None:
        self.steps_completed += 1
        self.dirty.set()

    def output_produced(self, path: str) -> None:
        self.outputs.append(path)

    def take_log(self) -> str:
        text = "".join(self._log)
        self._log.clear()
        return text


class Worker:
    def __init__(
        self,
        coordinator_url: str | Callable[[], str | None],
        identity: WorkerIdentity,
        settings: WorkerSettings,
        variables: dict[str, str],
        *,
        claim_wait_s: float = 10.0,
        report_interval_s: float = 0.5,
        session_factory: Callable[[], aiohttp.ClientSession] | None = None,
        upstream_path: Path | None = None,
        availability: AvailabilityPolicy | None = None,
        options: WorkerOptions | None = None,
    ) -> None:
        self.session_factory = session_factory
        # Set by the node: fetches job files from other peers, ships outputs back (peer/files/job_io.py).
        self.job_files: Any = None
        self.coordinator_url = coordinator_url
        self.identity = identity
        self.settings = settings
        self.variables = variables
        self.claim_wait_s = claim_wait_s
        self.report_interval_s = report_interval_s
        self.upstream_path = upstream_path  # None: updates wait in memory only
        self.availability = availability or AvailabilityPolicy("always")
        self.options = options or WorkerOptions()
        self.current_task: str | None = None
        self.tasks_done = 0
        self.upstream: Upstream | None = None
        self._state = "starting"
        self._reason = ""
        self._signed_on = False
        self._sign_on_lock = asyncio.Lock()
        # A task whose buffered updates must still be delivered; named at
        # sign-on so that the coordinator keeps it assigned to us meanwhile.
        self._held_task: str | None = None
        # Tasks this worker no longer runs but whose updates are buffered
        # without a final status (restart, user back while offline): once
        # delivered, signing on again without them makes the coordinator requeue them.
        self._orphans: set[str] = set()
        self._stopping = asyncio.Event()
        self._abandon = asyncio.Event()  # stop the running task and hand it back
        self._abandon_reason = ""
        self._abandon_timer: asyncio.TimerHandle | None = None
        self._next_task: dict[str, Any] | None = None
        # The task claimed ahead while the current one runs (at most one).
        self._prefetched: dict[str, Any] | None = None
        self._wake_flusher = asyncio.Event()

    # --- what it is doing -------------------------------------------------

    def state(self) -> dict[str, Any]:
        """What the worker does and why, for ``status`` (small: it travels in every heartbeat)."""
        source = self.availability.source
        return {
            "state": self._state, "reason": self._reason, "current_task": self.current_task,
            "tasks_done": self.tasks_done, "mode": self.availability.mode,
            "availability": self.availability.describe(),
            "idle_source": source.description if (source is not None and self.availability.uses_idle_time) else "",
            "buffered_updates": self.upstream.pending if self.upstream else 0,
        }

    def _set_state(self, state: str, reason: str = "") -> None:
        if state != self._state:
            log.info("worker %s: %s%s", self.identity.name, state, f" ({reason})" if reason else "")
        self._state, self._reason = state, reason

    # --- life cycle -------------------------------------------------------

    async def run(self) -> None:
        """Work until ``shutdown`` (or cancelled). Survives coordinator outages by retrying."""
        session = self.session_factory() if self.session_factory else aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=8))
        buffer = await self._open_buffer()
        self.upstream = Upstream(buffer)
        await self._note_interrupted_tasks()
        await self.availability.open()
        log.info("worker %s: %s", self.identity.name, self.availability.describe())
        watch = asyncio.create_task(self.availability.watch(), name="worker-availability")
        async with session:
            client = ProtocolClient(self.coordinator_url, session)
            try:
                await self._work(client)
            finally:
                watch.cancel()
                self._set_state(STOPPING, "delivering buffered updates and signing off")
                try:
                    await asyncio.shield(self._leave(client))
                except BaseException:  # cancelled again, or anything: the buffer stays on disk
                    pass
                self._set_state(STOPPED)
                await buffer.close()
                self.availability.close()
                if self.settings.blender_pool is not None:
                    await asyncio.shield(self.settings.blender_pool.close())
                if self.job_files is not None:
                    await asyncio.shield(self.job_files.close())

    async def shutdown(self) -> None:
        """Stop taking work; requeue or finish the running task (``on_shutdown``).

        Returns at once; ``run()`` then delivers the buffer, signs off and ends.
        """
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self.options.on_shutdown == "finish":
            loop = asyncio.get_running_loop()
            self._abandon_timer = loop.call_later(
                self.options.shutdown_grace_s, self._abandon_task,
                f"the worker is shutting down and the task did not finish within {self.options.shutdown_grace_s:g} s")
            if self.current_task:
                log.info("worker %s: shutting down after the current task (at most %g s)",
                         self.identity.name, self.options.shutdown_grace_s)
        else:
            self._abandon_task("the worker is shutting down (on_shutdown = requeue)")

    def _abandon_task(self, reason: str) -> None:
        self._abandon_reason = reason
        self._abandon.set()

    async def _open_buffer(self) -> UpstreamBuffer:
        buffer = UpstreamBuffer(self.upstream_path)
        try:
            await buffer.open()
        except UpstreamError as exc:
            # Work on without it rather than not at all; the log says what to do.
            log.error("worker: %s; buffering updates in memory for now", exc)
            await buffer.close()
            buffer = UpstreamBuffer(None)
            await buffer.open()
        if buffer.count:
            log.info("worker: %d task updates from before the restart wait for delivery", buffer.count)
        return buffer

    async def _note_interrupted_tasks(self) -> None:
        """Buffered updates of a task without its final status: the previous run of
        this worker stopped in the middle of it. Say so in the task's log; the
        coordinator requeues it once the updates are delivered."""
        assert self.upstream is not None
        for task_id, ended in (await self.upstream.buffer.tasks()).items():
            if not ended:
                self._orphans.add(task_id)
                await self.upstream.queue(Update(task_id, {
                    "log": "The worker restarted before this task finished; the task goes back to the queue.\n"}))

    async def _work(self, client: ProtocolClient) -> None:
        backoff = 0.2
        while not self._stopping.is_set():
            try:
                await self._cycle(client)
                backoff = 0.2
            except CoordinatorGone as exc:
                self._set_state(UNREACHABLE, str(exc))
                log.warning("coordinator unreachable (%s); retrying in %.1f s", exc, backoff)
                self._signed_on = False
                await self._until_stopping(backoff * random.uniform(0.8, 1.2))
                # Capped low: a new coordinator is usually elected within 2 s.
                backoff = min(backoff * 2, 1.0)
            except _SignOnAgain:
                self._signed_on = False
            except Exception:  # e.g. the disk under the buffer is full: keep the worker alive, say why
                log.exception("worker %s: unexpected error; retrying in 2 s", self.identity.name)
                self._signed_on = False
                await self._until_stopping(2.0)

    async def _cycle(self, client: ProtocolClient) -> None:
        """One step: sign on, deliver what is buffered, then work or wait for permission."""
        assert self.upstream is not None
        availability = self.availability.current
        if not self._signed_on:
            if not availability.may_work and not self.upstream.pending and self._next_task is None:
                # Nothing to say to the coordinator: wait, signed off, until we may work.
                self._set_state(availability.state, availability.reason)
                await self._first_of(self.availability.wait_for_change(), self._stopping.wait())
                return
            await self._sign_on(client)
        if self.upstream.pending:
            self._set_state(DELIVERING, f"{self.upstream.pending} buffered task updates")
            await self._flush(client)
            return
        availability = self.availability.current
        if not availability.may_work:
            # Hand back whatever we held (a task handed over with the last
            # report, or claimed just as the user came back): sign-off requeues it.
            self._next_task = None
            self._set_state(availability.state, availability.reason)
            await self._sign_off(client, "asleep", availability.reason)
            return
        task, self._next_task = self._next_task, None
        if task is None:
            self._set_state(WAITING)
            task = await self._claim_unless_stopping(client)
            if task is None:
                return
            if not self.availability.current.may_work or self._stopping.is_set():
                self._next_task = task  # not started: the next cycle hands it back
                return
        self._next_task = await self._run_task(client, task)

    async def _first_of(self, *waits: Awaitable[Any], timeout: float | None = None) -> None:
        tasks = [asyncio.ensure_future(w) for w in waits]
        try:
            await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()

    async def _until_stopping(self, seconds: float) -> None:
        await self._first_of(self._stopping.wait(), timeout=seconds)

    # --- talking to the coordinator ---------------------------------------

    async def _sign_on(self, client: ProtocolClient) -> None:
        """Sign on (again), naming the task we run or whose updates we still deliver."""
        async with self._sign_on_lock:
            current = self.current_task or self._held_task
            if current is None and self.upstream is not None and self.upstream.pending:
                # After a restart: keep the task of the buffered updates
                # assigned to us until they are delivered.
                current = next(iter(await self.upstream.buffer.tasks()), None)
                self._held_task = current
            status, body = await client.call("worker/sign-on", {
                "worker_id": self.identity.worker_id, "name": self.identity.name,
                "address": self.identity.address, "platform": platform.system().lower(),
                "software": __version__, "supported_task_types": self.identity.supported_task_types,
                "current_task": current, "tags": self.identity.tags,
                "prefetched_task": self._prefetched["uuid"] if self._prefetched else None,
            })
            if status != 200:
                raise CoordinatorGone(f"sign-on refused ({status}): {body}")
            self._signed_on = True
            log.info("worker %s signed on at %s", self.identity.name, client.signed_on_url)

    async def _sign_off(self, client: ProtocolClient, status: str, reason: str) -> None:
        """Leave the coordinator's list of working workers; it requeues the tasks we held.

        ``status`` and ``reason`` ("asleep" with why, or "offline") are for
        coordinators that record them.
        """
        self._signed_on = False
        code, body = await client.call(
            "worker/sign-off", {"worker_id": self.identity.worker_id, "status": status, "reason": reason},
            timeout=5.0)
        if code != 200:
            raise CoordinatorGone(f"sign-off refused ({code}): {body}")

    async def _claim(self, client: ProtocolClient) -> dict[str, Any] | None:
        status, body = await client.call(
            "worker/claim", {"worker_id": self.identity.worker_id, "wait_s": self.claim_wait_s},
            timeout=self.claim_wait_s + 15,
        )
        if status == 204:
            return None
        if status == 403:
            raise _SignOnAgain()
        if status != 200:
            raise CoordinatorGone(f"claim failed ({status}): {body}")
        if body.get("task") is None:
            change = body.get("status_change")
            if isinstance(change, dict) and change.get("status") == "asleep":
                await self._sleep_as_asked(client)
                return None
            # A coordinator may say why there is nothing for us (e.g. blocklisted).
            why = body.get("why")
            self._set_state(WAITING, why if isinstance(why, str) else "")
            return None
        return body["task"]

    async def _claim_unless_stopping(self, client: ProtocolClient) -> dict[str, Any] | None:
        """Claim; a shutdown abandons the wait at once.

        A user coming back does not cut the claim short: a task that arrives
        meanwhile is handed straight back (never started), which is safe,
        while an abandoned long-poll could assign a task we never learn of.
        """
        claim = asyncio.ensure_future(self._claim(client))
        stop = asyncio.ensure_future(self._stopping.wait())
        moved = asyncio.ensure_future(client.moved())
        try:
            await asyncio.wait([claim, stop, moved], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            moved.cancel()
            if not claim.done():
                claim.cancel()
        if not claim.done() or claim.cancelled():
            # Stopping (the sign-off hands back whatever the claim got), or
            # the coordinator moved (the old one requeues what it assigned).
            await asyncio.gather(claim, return_exceptions=True)
            if not self._stopping.is_set() and client.has_moved():
                raise _SignOnAgain()
            return None
        return claim.result()

    async def _sleep_as_asked(self, client: ProtocolClient) -> None:
        """Someone sent this worker to sleep from the farm (dashboard, API): say so,
        then wait, signed on, until it is asked to wake.

        Runs inside the claim, so a shutdown or a new coordinator cuts the wait
        short as it does a claim's (``_claim_unless_stopping``); a new
        coordinator tells the worker again if it still must sleep."""
        self._set_state(SENT_TO_SLEEP, "sent to sleep from the farm; wake it from the dashboard")
        await self._report_status(client, "asleep")
        while not self._stopping.is_set():
            status, reply = await client.call(
                "worker/state", {"worker_id": self.identity.worker_id, "wait_s": self.claim_wait_s},
                timeout=self.claim_wait_s + 15)
            if status == 403:
                raise _SignOnAgain()
            if status != 200 or not isinstance(reply, dict):
                raise CoordinatorGone(f"worker state refused ({status}): {reply}")
            if reply.get("status_requested") != "asleep":
                break
        if not self._stopping.is_set():
            await self._report_status(client, "awake")
            self._set_state(WAITING)

    async def _report_status(self, client: ProtocolClient, status: str) -> None:
        code, reply = await client.call(
            "worker/state-changed", {"worker_id": self.identity.worker_id, "status": status}, timeout=10.0)
        if code == 403:
            raise _SignOnAgain()
        if code != 200:
            raise CoordinatorGone(f"status report refused ({code}): {reply}")
        log.info("worker %s is %s, as asked", self.identity.name, status)

    async def _prefetch(self, client: ProtocolClient, run: TaskRun, commands_task: asyncio.Task[None]) -> None:
        """Claim the next task while this one runs, and bring its files here.

        The coordinator gives one only while no other worker is idle, and
        never more than one; if this worker stops, signing off requeues it."""
        while not commands_task.done() and self._prefetched is None:
            started = time.monotonic()
            try:
                status, body = await client.call(
                    "worker/claim", {"worker_id": self.identity.worker_id, "wait_s": self.claim_wait_s,
                                     "prefetch_after": run.task_id},
                    timeout=self.claim_wait_s + 15)
            except (CoordinatorGone, _SignOnAgain):
                status, body = 0, None
            task = body.get("task") if status == 200 and isinstance(body, dict) else None
            if task is not None:
                self._prefetched = task
                log.info("worker %s: prefetched task %s", self.identity.name, task["uuid"])
                if self.job_files is not None:
                    try:
                        await self.job_files.prefetch(task)
                    except Exception as exc:  # the task fetches again when it starts, and says why there
                        log.info("task %s: prefetching its files failed (%s); it fetches them when it starts",
                                 task["uuid"], exc)
                return
            if time.monotonic() - started < 1.0:
                await asyncio.sleep(1.0)  # answered at once (another worker idles, or an error): poll gently

    def _take_prefetched(self, handed_over: dict[str, Any] | None) -> dict[str, Any] | None:
        """The task to run next: the one the final report brought, else the prefetched one."""
        prefetched, self._prefetched = self._prefetched, None
        return handed_over or prefetched

    def _sender(self, client: ProtocolClient, *, claim_next_after: str | None = None
                ) -> Callable[[Update], Awaitable[tuple[int, Any]]]:
        """Sends one update; ``claim_next_after``: the final report of this task
        also claims the next task (saves a round trip between tasks)."""
        async def send(update: Update) -> tuple[int, Any]:
            body = update.wire(self.identity.worker_id)
            if update.seq == 0:  # a heartbeat: changes nothing, needs no idempotency key
                body.pop("update_stream"), body.pop("update_seq")
            if update.final and update.task_id == claim_next_after:
                body["claim_next"] = True
            status, reply = await client.call("worker/task-update", body, timeout=self.options.update_timeout_s)
            if status == 403:
                raise _SignOnAgain()
            if status >= 500 or status in (408, 429):
                raise CoordinatorGone(f"task update refused ({status}): {reply}")
            return status, reply

        return send

    async def _flush(self, client: ProtocolClient) -> list[Delivered]:
        """Deliver the buffer (called between tasks). Transport errors propagate."""
        assert self.upstream is not None
        try:
            delivered = await self.upstream.flush(self._sender(client))
        except _SignOnAgain:
            await self._sign_on(client)
            raise
        self._held_task = None
        log.info("worker %s: delivered %d buffered task updates", self.identity.name, len(delivered))
        if self._orphans:
            # Their updates are in; signing on without them makes the coordinator requeue them.
            self._orphans.clear()
            await self._sign_on(client)
        return delivered

    async def _leave(self, client: ProtocolClient) -> None:
        """At shutdown: deliver the buffer (within ``delivery_grace_s``), then sign off."""
        assert self.upstream is not None
        deadline = time.monotonic() + self.options.delivery_grace_s
        while self.upstream.pending and time.monotonic() < deadline:
            try:
                async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                    if not self._signed_on:
                        await self._sign_on(client)
                    await self._flush(client)
            except (CoordinatorGone, _SignOnAgain, TimeoutError):
                self._signed_on = False
                await asyncio.sleep(0.2)
        if self.upstream.pending:
            log.warning("worker %s: %d task updates could not be delivered; they stay in %s for the next start",
                        self.identity.name, self.upstream.pending, self.upstream_path or "memory (lost)")
        try:
            await self._sign_off(client, "offline", "the worker stopped")
        except (CoordinatorGone, _SignOnAgain):
            pass  # the coordinator times us out instead

    # --- one task ---------------------------------------------------------

    async def _run_task(self, client: ProtocolClient, task: dict[str, Any]) -> dict[str, Any] | None:
        """Run one task to its end; returns the next task if the coordinator handed one over."""
        run = TaskRun(task_id=task["uuid"], settings=self.settings)
        self.current_task = run.task_id
        self._set_state(WORKING, f"task {run.task_id}")
        self.availability.working = True
        commands_task = asyncio.create_task(self._prepare_and_run(run, task))
        helpers = [
            asyncio.create_task(self._report_while_running(client, run, commands_task)),
            asyncio.create_task(self._watch(client, run, commands_task)),
            asyncio.create_task(self._guard(run, commands_task)),
            asyncio.create_task(self._deliver_while_running(client, run, commands_task)),
        ]
        if self.options.prefetch:
            helpers.append(asyncio.create_task(self._prefetch(client, run, commands_task)))
        try:
            try:
                await commands_task
            except asyncio.CancelledError:
                if run.stop_reason is None:
                    raise  # the worker itself is being stopped
                log.info("task %s stopped: %s", run.task_id, run.stop_reason)
                await self._stop_helpers(helpers, run)
                if run.requeue:
                    await self._hand_back(client, run)
                return self._take_prefetched(None)
            except CommandError as exc:
                run.activity = f"Failed: {exc.message}"
                await run.log(f"Failed: {exc.message}")
                await self._stop_helpers(helpers, run)
                return self._take_prefetched(await self._report_final(client, run, task_status="failed"))
            except Exception as exc:  # a bug in a command must fail the task, not kill the worker
                log.exception("task %s: command crashed", run.task_id)
                run.activity = f"Failed: internal error in the worker: {type(exc).__name__}: {exc}"
                await run.log(run.activity)
                await self._stop_helpers(helpers, run)
                return self._take_prefetched(await self._report_final(client, run, task_status="failed"))
            await self._stop_helpers(helpers, run)
            run.activity = "Completed"
            self.tasks_done += 1
            return self._take_prefetched(await self._report_final(client, run, task_status="completed"))
        finally:
            self.current_task = None
            self.availability.working = False
            after = self.availability.current
            if self._stopping.is_set():
                self._set_state(STOPPING, "delivering buffered updates and signing off")
            elif not after.may_work:
                self._set_state(after.state, after.reason)
            else:
                self._set_state(WAITING)
            for t in (commands_task, *helpers):
                if not t.done():
                    t.cancel()

    async def _stop_helpers(self, helpers: list[asyncio.Task[Any]], run: TaskRun) -> None:
        for helper in helpers:
            if not helper.done():
                helper.cancel()
        for helper in helpers:
            try:
                await helper
            except (asyncio.CancelledError, Exception):
                pass
        if run.in_flight:
            # Let a send under way finish, so the final report follows it
            # directly; one stuck on an unreachable coordinator is left
            # behind (it holds the send slot, so what follows queues up behind it).
            await asyncio.wait(list(run.in_flight), timeout=2.0)

    async def _prepare_and_run(self, run: TaskRun, task: dict[str, Any]) -> None:
        """Bring the job's files here (when they live on another peer), run the
        commands, then send what they produced to the job's owner."""
        if self.job_files is None:
            await self._run_commands(run, task["commands"])
            return
        run.activity = "Fetching the job's files"
        run.dirty.set()
        try:
            prepared = await self.job_files.before_task(task)
        except Exception as exc:  # FetchError, CheckoutError, OSError: the task cannot run here
            raise CommandError(f"could not get the job's files onto this worker: {exc}") from None
        await self._run_commands(run, prepared.commands)
        try:
            shipped = await self.job_files.after_task(task, prepared, run.outputs)
        except Exception as exc:  # the outputs stay in the staging folder; say so, do not fail the render
            log.warning("task %s: outputs not queued for the job's owner: %s", run.task_id, exc)
            await run.log(f"Warning: the outputs could not be queued for the job's owner: {exc}")
        else:
            if shipped:
                await run.log(f"{shipped} output file(s) queued for the job's owner")

    async def _run_commands(self, run: TaskRun, commands: list[dict[str, Any]]) -> None:
        for index, command in enumerate(commands, start=1):
            name = command["name"]
            params = expand_parameters(command.get("parameters") or {}, self.variables)
            run.activity = f"Running command {index}/{len(commands)}: {name}"
            run.dirty.set()
            await run_command(name, params, run)
            if not command.get("total_step_count"):
                run.step()

    def _progress(self, run: TaskRun, *, first: bool = False) -> Update:
        fields: dict[str, Any] = {"steps_completed": run.steps_completed, "activity": run.activity}
        if first:
            fields["task_status"] = "active"
        text = run.take_log()
        if text:
            fields["log"] = text
        return Update(run.task_id, fields)

    async def _report(self, client: ProtocolClient, run: TaskRun, *, first: bool = False) -> dict[str, Any] | None:
        """Send progress (or a heartbeat). Returns the coordinator's reply, or None when it went to the buffer."""
        assert self.upstream is not None
        update = self._progress(run, first=first)
        progress = (run.steps_completed, run.activity)
        send = self._sender(client)
        if first or "log" in update.fields or progress != run.last_sent:
            run.last_sent = progress
            answer = await self.upstream.submit(update, send)
        else:
            answer = await self.upstream.heartbeat(update, send)
        if answer is None:
            self._wake_flusher.set()
            return None
        status, reply = answer
        if status in (404, 409):
            raise TaskTakenAway((reply or {}).get("message", f"HTTP {status}"))
        if status != 200:
            log.warning("task %s: update refused (%d): %s", run.task_id, status, reply)
            return None
        return reply

    async def _report_final(self, client: ProtocolClient, run: TaskRun, **fields: Any) -> dict[str, Any] | None:
        """Report the end of the task. Returns the next task, claimed in the same request, if one was waiting.

        If no coordinator answers, the report waits in the buffer and the main
        loop delivers it before claiming anything else.
        """
        assert self.upstream is not None
        update = self._progress(run)
        update.fields.update(fields)
        update.final = True
        take_more = self.availability.current.may_work and not self._stopping.is_set()
        try:
            # Shielded: a cancel must not cut off a report the coordinator may
            # already have applied (it would be buffered and sent twice).
            answer = await asyncio.shield(self.upstream.submit(
                update, self._sender(client, claim_next_after=run.task_id if take_more else None)))
        except (CoordinatorGone, _SignOnAgain) as exc:
            log.warning("task %s: could not report result (%s); it waits in the buffer", run.task_id, exc)
            self._signed_on = self._signed_on and not isinstance(exc, _SignOnAgain)
            return None
        if answer is None:
            return None  # queued behind earlier updates; the main loop delivers it
        status, reply = answer
        if status in (404, 409):
            log.info("task %s: final report not needed (%s)", run.task_id, (reply or {}).get("message"))
            return None
        if status != 200 or not isinstance(reply, dict):
            log.warning("task %s: final report refused (%d): %s", run.task_id, status, reply)
            return None
        return reply.get("next_task")

    async def _hand_back(self, client: ProtocolClient, run: TaskRun) -> None:
        """The worker stopped the task itself (user back, shutdown): say why in its log.

        The sign-off that follows (next cycle, or leaving) makes the
        coordinator requeue it. If the note had to be buffered, the task is
        an orphan: once the note is delivered, signing on again without the
        task requeues it.
        """
        assert self.upstream is not None
        await run.log(f"Stopped on the worker: {run.stop_reason}; the task goes back to the queue")
        try:
            answer = await asyncio.shield(self.upstream.submit(self._progress(run), self._sender(client)))
        except (CoordinatorGone, _SignOnAgain):
            answer = None
        if answer is None:
            self._orphans.add(run.task_id)

    async def _report_while_running(
        self, client: ProtocolClient, run: TaskRun, commands_task: asyncio.Task[None]
    ) -> str:
        """Send progress and heartbeats; cancel the commands if told to stop."""
        heartbeat_s = max(self.report_interval_s, 2.0)
        started = False
        while True:
            if started:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow
                # the cancellation that stops this reporter.
                try:
                    async with asyncio.timeout(heartbeat_s):
                        await run.dirty.wait()
                except TimeoutError:
                    pass
            run.dirty.clear()
            try:
                reply = await run.sending(self._report(client, run, first=not started))
                started = True
            except TaskTakenAway as exc:
                run.stop_reason = str(exc)
                commands_task.cancel()
                return str(exc)
            except (CoordinatorGone, _SignOnAgain) as exc:
                # Keep rendering: the update is buffered, and the coordinator
                # may come back (or another take over).
                started = True
                log.warning("task %s: progress report failed (%s); still running", run.task_id, exc or type(exc).__name__)
                await asyncio.sleep(self.report_interval_s)
                if isinstance(exc, _SignOnAgain):
                    try:  # re-attach to the new coordinator, telling it what we run
                        await self._sign_on(client)
                    except CoordinatorGone:
                        pass
                self._wake_flusher.set()
                continue
            if reply is not None and not reply.get("may_keep_running", True):
                run.stop_reason = reply.get("reason", "told to stop")
                commands_task.cancel()
                return run.stop_reason
            await asyncio.sleep(self.report_interval_s)

    async def _deliver_while_running(self, client: ProtocolClient, run: TaskRun,
                                     commands_task: asyncio.Task[None]) -> None:
        """While the task runs, deliver buffered updates whenever the coordinator answers again."""
        assert self.upstream is not None
        delay = self.report_interval_s
        while not commands_task.done():
            if self.upstream.pending:
                try:
                    delivered = await run.sending(self.upstream.flush(self._sender(client)))
                    delay = self.report_interval_s
                    self._held_task = None
                    for d in delivered:
                        if d.update.task_id == run.task_id and d.status in (404, 409):
                            run.stop_reason = str((d.reply or {}).get("message", f"HTTP {d.status}"))
                            commands_task.cancel()
                            return
                except _SignOnAgain:
                    try:
                        await self._sign_on(client)
                    except CoordinatorGone:
                        pass
                except CoordinatorGone:
                    delay = min(delay * 2, 2.0)
            self._wake_flusher.clear()
            await self._first_of(self._wake_flusher.wait(), timeout=delay)

    async def _guard(self, run: TaskRun, commands_task: asyncio.Task[None]) -> None:
        """Stop the task and hand it back when the user returns or the worker shuts down."""
        while not commands_task.done():
            reason = ""
            availability = self.availability.current
            if self._abandon.is_set():
                reason = self._abandon_reason
            elif not availability.may_work and not self.options.finish_task_when_user_returns:
                reason = availability.reason or availability.state
            if reason:
                run.stop_reason = reason
                run.requeue = True
                commands_task.cancel()
                return
            await self._first_of(self.availability.wait_for_change(), self._abandon.wait())

    async def _watch(self, client: ProtocolClient, run: TaskRun, commands_task: asyncio.Task[None]) -> None:
        """Hold a long-poll open while the task runs, so a cancel, pause or
        reassignment stops it within a moment instead of at the next report."""
        while not commands_task.done():
            call = asyncio.ensure_future(client.call(
                "worker/watch", {"worker_id": self.identity.worker_id, "task_id": run.task_id, "wait_s": 10.0},
                timeout=25.0,
            ))
            moved = asyncio.ensure_future(client.moved())
            try:
                await asyncio.wait([call, moved], return_when=asyncio.FIRST_COMPLETED)
            finally:
                moved.cancel()
                if not call.done():
                    call.cancel()
            try:
                status, reply = await call
            except asyncio.CancelledError:
                if not call.cancelled():
                    raise
                await asyncio.sleep(self.report_interval_s)  # moved: the reporter re-attaches; then watch again
                continue
            except (CoordinatorGone, _SignOnAgain):
                await asyncio.sleep(self.report_interval_s)  # the reporter re-attaches; then watch again
                continue
            if status == 200 and isinstance(reply, dict) and not reply.get("may_keep_running", True):
                run.stop_reason = str(reply.get("reason") or "the coordinator stopped this task")
                commands_task.cancel()
                return
            if status != 200:
                await asyncio.sleep(self.report_interval_s)


class _SignOnAgain(Exception):
    pass
