"""The worker: ask the coordinator for a task, run its commands, report back.

The worker long-polls for work, so an idle worker starts a queued task within
milliseconds. While a task runs it sends one update at most every
``report_interval_s`` (progress, buffered log lines, a heartbeat), and the
reply says whether it may keep running; if not (job canceled, task taken
away), the running command is cancelled, which kills its process.
"""

from __future__ import annotations

import asyncio
import logging
import platform
import random
from dataclasses import dataclass, field
from typing import Any, Callable

import aiohttp
import msgpack

from .. import __version__
from .commands import CommandError, run_command
from .commands.base import WorkerSettings
from .variables import expand_parameters

log = logging.getLogger(__name__)
MSGPACK = "application/msgpack"


@dataclass
class WorkerIdentity:
    worker_id: str
    name: str
    supported_task_types: list[str]
    address: str = ""
    tags: list[str] = field(default_factory=list)


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
            async with self.session.post(
                url, data=msgpack.packb(body, use_bin_type=True), headers={"Content-Type": MSGPACK},
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                raw = await resp.read()
                data = msgpack.unpackb(raw, raw=False) if raw and resp.content_type == MSGPACK else None
                return resp.status, data
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
    # Set by whoever stops the task on the coordinator's word (watch, reports).
    stop_reason: str | None = None

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

    def put_back_log(self, text: str) -> None:
        if text:
            self._log.insert(0, text)


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
    ) -> None:
        self.session_factory = session_factory
        self.coordinator_url = coordinator_url
        self.identity = identity
        self.settings = settings
        self.variables = variables
        self.claim_wait_s = claim_wait_s
        self.report_interval_s = report_interval_s
        self.current_task: str | None = None
        self.tasks_done = 0

    async def run(self) -> None:
        """Work until cancelled. Survives coordinator outages by retrying."""
        session = self.session_factory() if self.session_factory else aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=4))
        async with session:
            client = ProtocolClient(self.coordinator_url, session)
            backoff = 0.2
            signed_on = False
            task: dict[str, Any] | None = None
            try:
                while True:
                    try:
                        if not signed_on:
                            await self._sign_on(client)
                            signed_on = True
                            backoff = 0.2
                        if task is None:
                            task = await self._claim(client)
                        if task is None:
                            continue
                        task = await self._run_task(client, task)
                    except CoordinatorGone as exc:
                        log.warning("coordinator unreachable (%s); retrying in %.1f s", exc, backoff)
                        signed_on = False
                        await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
                        # Capped low: a new coordinator is usually elected within 2 s.
                        backoff = min(backoff * 2, 1.0)
                    except _SignOnAgain:
                        signed_on = False
            finally:
                # Best effort: tell the coordinator now rather than let it time us out.
                try:
                    await asyncio.shield(client.call("worker/sign-off", {"worker_id": self.identity.worker_id}, timeout=2))
                except BaseException:
                    pass

    async def _sign_on(self, client: ProtocolClient) -> None:
        status, body = await client.call("worker/sign-on", {
            "worker_id": self.identity.worker_id, "name": self.identity.name,
            "address": self.identity.address, "platform": platform.system().lower(),
            "software": __version__, "supported_task_types": self.identity.supported_task_types,
            "current_task": self.current_task, "tags": self.identity.tags,
        })
        if status != 200:
            raise CoordinatorGone(f"sign-on refused ({status}): {body}")
        log.info("worker %s signed on at %s", self.identity.name, client.signed_on_url)

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
        return body["task"]

    async def _report(self, client: ProtocolClient, run: TaskRun, **fields: Any) -> dict[str, Any]:
        text = run.take_log()
        body = {
            "worker_id": self.identity.worker_id, "task_id": run.task_id,
            "steps_completed": run.steps_completed, "activity": run.activity, **fields,
        }
        if text:
            body["log"] = text
        try:
            status, reply = await client.call("worker/task-update", body)
        except CoordinatorGone:
            run.put_back_log(text)
            raise
        if status == 403:
            run.put_back_log(text)
            raise _SignOnAgain()
        if status in (404, 409):
            raise TaskTakenAway((reply or {}).get("message", f"HTTP {status}"))
        if status != 200:
            raise CoordinatorGone(f"task update refused ({status}): {reply}")
        return reply

    async def _report_final(self, client: ProtocolClient, run: TaskRun, **fields: Any) -> dict[str, Any] | None:
        """The final status must arrive: retry through coordinator outages.

        Returns the next task, claimed in the same request, if one was waiting.
        """
        delay = 0.2
        while True:
            try:
                reply = await self._report(client, run, claim_next=True, **fields)
                return reply.get("next_task")
            except TaskTakenAway as exc:
                log.info("task %s: final report not needed (%s)", run.task_id, exc)
                return None
            except (CoordinatorGone, _SignOnAgain) as exc:
                log.warning("task %s: could not report result (%s); retrying", run.task_id, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                if isinstance(exc, _SignOnAgain):
                    try:
                        await self._sign_on(client)
                    except CoordinatorGone:
                        pass

    async def _run_task(self, client: ProtocolClient, task: dict[str, Any]) -> dict[str, Any] | None:
        """Run one task to its end; returns the next task if the coordinator handed one over."""
        run = TaskRun(task_id=task["uuid"], settings=self.settings)
        self.current_task = run.task_id
        commands_task = asyncio.create_task(self._run_commands(run, task["commands"]))
        reporter = asyncio.create_task(self._report_while_running(client, run, commands_task))
        watcher = asyncio.create_task(self._watch(client, run, commands_task))
        try:
            try:
                await commands_task
            except asyncio.CancelledError:
                if run.stop_reason is None:
                    raise  # the worker itself is being stopped
                log.info("task %s stopped: %s", run.task_id, run.stop_reason)
                return None
            except CommandError as exc:
                run.activity = f"Failed: {exc.message}"
                await run.log(f"Failed: {exc.message}")
                await self._stop_reporter(reporter)
                return await self._report_final(client, run, task_status="failed")
            except Exception as exc:  # a bug in a command must fail the task, not kill the worker
                log.exception("task %s: command crashed", run.task_id)
                run.activity = f"Failed: internal error in the worker: {type(exc).__name__}: {exc}"
                await run.log(run.activity)
                await self._stop_reporter(reporter)
                return await self._report_final(client, run, task_status="failed")
            await self._stop_reporter(reporter)
            run.activity = "Completed"
            self.tasks_done += 1
            return await self._report_final(client, run, task_status="completed")
        finally:
            self.current_task = None
            for t in (commands_task, reporter, watcher):
                if not t.done():
                    t.cancel()

    async def _stop_reporter(self, reporter: asyncio.Task[Any]) -> None:
        if not reporter.done():
            reporter.cancel()
        try:
            await reporter
        except (asyncio.CancelledError, Exception):
            pass

    async def _run_commands(self, run: TaskRun, commands: list[dict[str, Any]]) -> None:
        for index, command in enumerate(commands, start=1):
            name = command["name"]
            params = expand_parameters(command.get("parameters") or {}, self.variables)
            run.activity = f"Running command {index}/{len(commands)}: {name}"
            run.dirty.set()
            await run_command(name, params, run)
            if not command.get("total_step_count"):
                run.step()

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
                reply = await self._report(client, run, task_status=None if started else "active")
                started = True
            except TaskTakenAway as exc:
                run.stop_reason = str(exc)
                commands_task.cancel()
                return str(exc)
            except (CoordinatorGone, _SignOnAgain) as exc:
                # Keep rendering: the coordinator may come back (or another take over).
                log.warning("task %s: progress report failed (%s); still running", run.task_id, exc or type(exc).__name__)
                await asyncio.sleep(self.report_interval_s)
                if isinstance(exc, _SignOnAgain):
                    try:  # re-attach to the new coordinator, telling it what we run
                        await self._sign_on(client)
                    except CoordinatorGone:
                        pass
                continue
            if not reply.get("may_keep_running", True):
                run.stop_reason = reply.get("reason", "told to stop")
                commands_task.cancel()
                return run.stop_reason
            await asyncio.sleep(self.report_interval_s)

    async def _watch(self, client: ProtocolClient, run: TaskRun, commands_task: asyncio.Task[None]) -> None:
        """Hold a long-poll open while the task runs, so a cancel, pause or
        reassignment stops it within a moment instead of at the next report."""
        while not commands_task.done():
            try:
                status, reply = await client.call(
                    "worker/watch", {"worker_id": self.identity.worker_id, "task_id": run.task_id, "wait_s": 10.0},
                    timeout=25.0,
                )
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
