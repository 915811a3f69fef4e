"""The upstream buffer: a worker's task updates survive coordinator outages and worker restarts.

The queue itself is tested with a scripted ``send``; the worker with a real
coordinator whose HTTP API is taken off loopback and brought back on the same
port, and with real SQLite files that a second Worker object (a restart)
picks up.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import aiohttp
import msgpack
import pytest
from aiohttp import web

from peer.api.app import build_app
from peer.compiler.loader import BUILTIN_JOB_TYPES_DIR, JobTypeRegistry
from peer.compiler.model import CompileLimits
from peer.coordinator.service import Coordinator
from peer.worker.commands.base import WorkerSettings
from peer.worker.loop import CoordinatorGone, Worker, WorkerIdentity, WorkerOptions
from peer.worker.upstream import Update, Upstream, UpstreamBuffer, buffer_path

TICKER_JS = """
const JOB_TYPE = {
    label: "Ticker",
    settings: [
        { key: "ticks", type: "int32", default: 10, required: true },
        { key: "interval", type: "float", default: 0.1, required: true },
        { key: "tasks", type: "int32", default: 1 },
    ],
};
function compileJob(job) {
    const count = job.settings.tasks || 1;
    for (let t = 0; t < count; t++) {
        const task = author.Task(`ticker-${t}`, "misc");
        for (let i = 1; i <= job.settings.ticks; i++) {
            task.addCommand(author.Command("echo", { message: `tick ${i}` }));
            task.addCommand(author.Command("sleep", { duration_in_seconds: job.settings.interval }));
        }
        job.addTask(task);
    }
}
"""


# --- the queue, with a scripted coordinator --------------------------------


class ScriptedSend:
    """Records every update sent; raises CoordinatorGone while ``down``."""

    def __init__(self) -> None:
        self.down = False
        self.sent: list[dict[str, Any]] = []
        self.status = 200

    async def __call__(self, update: Update) -> tuple[int, Any]:
        await asyncio.sleep(0)
        if self.down:
            raise CoordinatorGone("scripted outage")
        self.sent.append(update.wire("w1"))
        return self.status, {"may_keep_running": True}


@pytest.fixture
async def upstream(tmp_path: Path) -> AsyncIterator[Upstream]:
    buffer = UpstreamBuffer(buffer_path(tmp_path))
    await buffer.open()
    yield Upstream(buffer)
    await buffer.close()


def rows(path: Path) -> list[tuple[str, int, str, int, bytes]]:
    """What is on disk, read by another connection, in delivery order."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT stream, seq, task_id, final, body FROM updates ORDER BY position").fetchall()
    finally:
        conn.close()


async def test_an_update_goes_straight_out_while_nothing_is_queued(upstream, tmp_path):
    send = ScriptedSend()
    answer = await upstream.submit(Update("t1", {"log": "a\n"}), send)
    assert answer == (200, {"may_keep_running": True})
    assert send.sent[0]["log"] == "a\n" and send.sent[0]["update_seq"] == 1
    assert send.sent[0]["update_stream"] == upstream.stream
    assert rows(buffer_path(tmp_path)) == [] and upstream.pending == 0


async def test_updates_wait_on_disk_during_an_outage_and_leave_in_order(upstream, tmp_path):
    send = ScriptedSend()
    send.down = True
    with pytest.raises(CoordinatorGone):
        await upstream.submit(Update("t1", {"task_status": "active", "log": "one\n"}), send)
    # Queued behind it, and merged: progress of the same task that was never sent.
    assert await upstream.submit(Update("t1", {"steps_completed": 1, "log": "two\n"}), send) is None
    assert await upstream.submit(Update("t1", {"steps_completed": 2, "log": "three\n"}), send) is None
    assert await upstream.submit(Update("t1", {"task_status": "completed", "log": "four\n"}, final=True), send) is None
    on_disk = rows(buffer_path(tmp_path))
    # The failed row was sent once, so it stays as it was; "two" and "three" merged.
    assert [(r[1], r[3]) for r in on_disk] == [(1, 0), (2, 0), (4, 1)]
    with pytest.raises(CoordinatorGone):
        await upstream.flush(send)
    assert upstream.pending == 3

    send.down = False
    delivered = await upstream.flush(send)
    assert [d.update.seq for d in delivered] == [1, 2, 4]
    assert [s["log"] for s in send.sent] == ["one\n", "two\nthree\n", "four\n"]
    assert send.sent[1]["steps_completed"] == 2  # the newest progress wins in a merged row
    assert send.sent[2]["task_status"] == "completed"
    assert rows(buffer_path(tmp_path)) == [] and upstream.pending == 0
    # Nothing queued any more: the next update goes straight out again.
    assert await upstream.submit(Update("t2", {"log": "next\n"}), send) is not None


async def test_a_retry_carries_the_same_idempotency_key(upstream):
    """A send that failed may have reached the coordinator: its retry must be recognisable as the same update."""
    calls: list[dict[str, Any]] = []

    async def lost_reply(update: Update) -> tuple[int, Any]:
        calls.append(update.wire("w1"))
        if len(calls) == 1:
            raise CoordinatorGone("the reply was lost")
        return 200, {}

    with pytest.raises(CoordinatorGone):
        await upstream.submit(Update("t1", {"log": "x\n", "steps_completed": 3}), lost_reply)
    await upstream.flush(lost_reply)
    assert calls[0] == calls[1]
    assert (calls[0]["update_stream"], calls[0]["update_seq"]) == (upstream.stream, 1)


async def test_refused_updates_leave_the_queue_and_a_transport_error_keeps_them(upstream):
    send = ScriptedSend()
    send.down = True
    with pytest.raises(CoordinatorGone):
        await upstream.submit(Update("t0", {"task_status": "completed"}, final=True), send)
    assert await upstream.submit(Update("t1", {"task_status": "completed"}, final=True), send) is None
    with pytest.raises(CoordinatorGone):
        await upstream.flush(send)
    assert upstream.pending == 2
    send.down = False
    send.status = 409  # e.g. the task was given to another worker meanwhile
    delivered = await upstream.flush(send)
    assert [(d.update.task_id, d.status) for d in delivered] == [("t0", 409), ("t1", 409)]
    assert upstream.pending == 0


async def test_an_update_whose_send_fails_late_still_goes_before_later_ones(upstream):
    """While one update is on its way, the next is queued; if the first then fails it lands in front."""
    release = asyncio.Event()
    order: list[int] = []

    async def slow_then_down(update: Update) -> tuple[int, Any]:
        if update.seq == 1 and not release.is_set():
            await release.wait()
            raise CoordinatorGone("timed out")
        order.append(update.seq)
        return 200, {}

    first = asyncio.create_task(upstream.submit(Update("t1", {"log": "1\n"}), slow_then_down))
    await asyncio.sleep(0.01)
    assert await upstream.submit(Update("t1", {"log": "2\n"}), slow_then_down) is None
    release.set()
    with pytest.raises(CoordinatorGone):
        await first
    await upstream.flush(slow_then_down)
    assert order == [1, 2]


async def test_progress_merges_into_the_newest_row_even_after_a_late_failure(upstream, tmp_path):
    """The row a late-failing send lands in is not the newest one: later progress merges behind it."""
    release = asyncio.Event()

    async def slow_then_down(update: Update) -> tuple[int, Any]:
        if update.seq == 1:
            await release.wait()
        raise CoordinatorGone("down")

    first = asyncio.create_task(upstream.submit(Update("t1", {"log": "1\n"}), slow_then_down))
    await asyncio.sleep(0.01)
    assert await upstream.submit(Update("t1", {"log": "2\n"}), slow_then_down) is None
    release.set()
    with pytest.raises(CoordinatorGone):
        await first
    assert await upstream.submit(Update("t1", {"log": "3\n", "steps_completed": 3}), slow_then_down) is None
    on_disk = rows(buffer_path(tmp_path))
    # Row 1 was sent once, so it is never changed; 3 joins 2, the newest row.
    assert [(r[1], r[3]) for r in on_disk] == [(1, 0), (2, 0)]
    send = ScriptedSend()
    await upstream.flush(send)
    assert [(s["log"], s.get("steps_completed")) for s in send.sent] == [("1\n", None), ("2\n3\n", 3)]


async def test_delivered_updates_are_not_remembered(upstream):
    """Only queued rows that were sent need remembering; a long-running worker must not grow without end."""
    send = ScriptedSend()
    for n in range(50):
        assert await upstream.submit(Update("t1", {"log": f"{n}\n"}), send) is not None
    assert upstream._sent == set()
    send.down = True
    with pytest.raises(CoordinatorGone):
        await upstream.submit(Update("t1", {"log": "lost\n"}), send)
    assert await upstream.submit(Update("t1", {"log": "queued\n"}), send) is None
    assert len(upstream._sent) == 1  # the failed row: never merged into
    send.down = False
    await upstream.flush(send)
    assert upstream._sent == set() and upstream.pending == 0
    # With the queue empty, the next outage starts a new row as before.
    send.down = True
    with pytest.raises(CoordinatorGone):
        await upstream.submit(Update("t1", {"log": "again\n"}), send)
    assert await upstream.submit(Update("t1", {"log": "merged?\n"}), send) is None
    assert upstream.pending == 2


async def open_upstream(path: Path) -> tuple[UpstreamBuffer, Upstream]:
    """The buffer file opened as a worker process (re)starting would: a new stream."""
    buffer = UpstreamBuffer(path)
    await buffer.open()
    return buffer, Upstream(buffer)


async def test_the_queue_survives_a_restart_and_comes_first(tmp_path):
    path = buffer_path(tmp_path)
    send = ScriptedSend()
    send.down = True
    buffer, before = await open_upstream(path)
    with pytest.raises(CoordinatorGone):
        await before.submit(Update("t1", {"log": "before restart\n"}), send)
    await before.submit(Update("t1", {"task_status": "completed"}, final=True), send)
    await buffer.close()

    buffer, after = await open_upstream(path)
    assert after.pending == 2 and after.stream != before.stream
    assert await buffer.tasks() == {"t1": True}
    send.down = False
    # A new update of this run queues behind the old ones (the queue is not empty).
    assert await after.submit(Update("t2", {"log": "after restart\n"}), send) is None
    await after.flush(send)
    assert [(s["task_id"], s.get("log"), s["update_stream"] == before.stream) for s in send.sent] == [
        ("t1", "before restart\n", True), ("t1", None, True), ("t2", "after restart\n", False)]
    await buffer.close()


async def test_progress_after_a_restart_never_merges_into_a_row_of_the_earlier_run(tmp_path):
    # The earlier run may have sent its row just before it crashed: the coordinator
    # applied it and will acknowledge the retry as a duplicate, so anything merged
    # into that row would never be applied.
    path = buffer_path(tmp_path)
    send = ScriptedSend()
    send.down = True
    buffer, before = await open_upstream(path)
    with pytest.raises(CoordinatorGone):
        await before.submit(Update("t1", {"log": "first run\n", "steps_completed": 1}), send)
    await buffer.close()

    buffer, after = await open_upstream(path)
    assert await after.submit(Update("t1", {"log": "second run\n", "steps_completed": 2}), send) is None
    assert [(stream == before.stream, msgpack.unpackb(body)["log"]) for stream, _, _, _, body in rows(path)] == [
        (True, "first run\n"), (False, "second run\n")]
    send.down = False
    await after.flush(send)
    assert [(s["update_stream"] == after.stream, s["log"]) for s in send.sent] == [
        (False, "first run\n"), (True, "second run\n")]
    await buffer.close()


async def test_heartbeats_are_never_queued(upstream):
    send = ScriptedSend()
    send.down = True
    with pytest.raises(CoordinatorGone):
        await upstream.heartbeat(Update("t1", {"steps_completed": 0}), send)
    assert upstream.pending == 0
    with pytest.raises(CoordinatorGone):
        await upstream.submit(Update("t1", {"log": "x\n"}), send)
    # With updates queued, a heartbeat is not sent at all: the queue goes first.
    assert await upstream.heartbeat(Update("t1", {}), send) is None


# --- a worker and a real coordinator that goes away ------------------------


class Outage:
    """A real coordinator whose HTTP API can be taken off loopback and brought back on the same port."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def online(self) -> None:
        # shutdown_timeout: going offline cuts the open long-polls instead of waiting for them.
        self.runner = web.AppRunner(build_app(name="test-peer", coordinator=self.coordinator), access_log=None,
                                    shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def offline(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()
        self.runner = None

    async def submit(self, **settings: Any) -> str:
        job = await self.coordinator.submit_job({
            "name": "ticker", "type": "ticker", "priority": 50, "submitter_platform": "linux",
            "settings": {"ticks": 10, "interval": 0.1, **settings}})
        assert job is not None
        return job["id"]

    async def tasks(self, job_id: str) -> list[dict[str, Any]]:
        return await self.coordinator.job_tasks(job_id)

    async def log(self, task_id: str) -> str:
        path = await self.coordinator.task_log_path(task_id)
        return path.read_text() if path.exists() else ""

    async def job_status(self, job_id: str) -> str:
        return (await self.coordinator.get_job(job_id))["status"]


@contextlib.asynccontextmanager
async def running_coordinator(tmp_path: Path) -> AsyncIterator[Outage]:
    """A coordinator that knows the ``ticker`` job type, online on a loopback port."""
    user_types = tmp_path / "data" / "job_types"
    user_types.mkdir(parents=True)
    (user_types / "ticker.js").write_text(TICKER_JS)
    coordinator = Coordinator(
        tmp_path / "data", JobTypeRegistry([BUILTIN_JOB_TYPES_DIR, user_types]),
        compile_limits=CompileLimits(timeout_s=2.0, max_memory_bytes=64 * 1024 * 1024),
        worker_timeout_s=120.0,  # the outages here must not time the worker out
    )
    await coordinator.start()
    farm = Outage(coordinator)
    await farm.online()
    try:
        yield farm
    finally:
        if farm.runner is not None:
            await farm.runner.cleanup()
        await coordinator.stop()


@pytest.fixture
async def outage(tmp_path: Path) -> AsyncIterator[Outage]:
    async with running_coordinator(tmp_path) as farm:
        yield farm


class Workers:
    """Workers of one identity and one buffer file: a new one is that worker after a restart."""

    def __init__(self, url: str, data_dir: Path) -> None:
        self.url = url
        self.data_dir = data_dir
        self.running: list[asyncio.Task[None]] = []

    def start(self, **options: Any) -> Worker:
        worker = Worker(
            self.url, WorkerIdentity("id-w1", "w1", ["misc"]), WorkerSettings(), variables={},
            claim_wait_s=1.0, report_interval_s=0.1, upstream_path=buffer_path(self.data_dir),
            options=WorkerOptions(delivery_grace_s=0.3, **options),
        )
        self.running.append(asyncio.create_task(worker.run()))
        return worker

    async def crash(self) -> None:
        """Stop the newest worker without letting it finish anything (a kill, as far as the task goes)."""
        task = self.running.pop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def stop_all(self) -> None:
        for task in self.running:
            task.cancel()
        await asyncio.gather(*self.running, return_exceptions=True)


@pytest.fixture
async def workers(outage: Outage, tmp_path: Path) -> AsyncIterator[Workers]:
    group = Workers(outage.url, tmp_path / "worker")
    yield group
    await group.stop_all()


async def until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        await asyncio.sleep(0.02)


def ticks(log_text: str) -> list[int]:
    return [int(n) for n in re.findall(r'echo: "tick (\d+)"', log_text)]


async def _task(outage: Outage, job_id: str) -> dict[str, Any]:
    return (await outage.tasks(job_id))[0]


async def test_a_worker_keeps_rendering_through_an_outage_and_delivers_every_line_once(outage, workers, tmp_path):
    worker = workers.start()
    job_id = await outage.submit(ticks=12, interval=0.1)
    task = await until(lambda: _task(outage, job_id), 5, "the job has a task")
    await until(lambda: _log_has_tick(outage, task["id"], 2), 10, "the first ticks reach the coordinator")

    await outage.offline()
    await until(lambda: worker.tasks_done == 1, 15, "the worker finishes the task without a coordinator")
    on_disk = rows(buffer_path(tmp_path / "worker"))
    assert on_disk and on_disk[-1][3] == 1, "the final report waits on disk"
    assert worker.state()["buffered_updates"] == len(on_disk)
    assert await outage.job_status(job_id) == "active"

    await outage.online()
    await until(lambda: _job_is(outage, job_id, "completed"), 15, "the buffered completion arrives")
    assert ticks(await outage.log(task["id"])) == list(range(1, 13))  # every line, once, in order
    await until(lambda: not rows(buffer_path(tmp_path / "worker")), 5, "the buffer empties")


async def test_buffered_updates_of_a_finished_task_are_delivered_after_a_worker_restart(outage, workers, tmp_path):
    workers.start()
    job_id = await outage.submit(ticks=8, interval=0.1)
    task = await until(lambda: _task(outage, job_id), 5, "the job has a task")
    await until(lambda: _log_has_tick(outage, task["id"], 1), 10, "the first tick reaches the coordinator")
    await outage.offline()
    path = buffer_path(tmp_path / "worker")
    await until(lambda: any(r[3] for r in rows(path)), 15, "the final report is buffered")
    await workers.crash()
    assert any(r[3] for r in rows(path)), "the buffer survives the worker"

    restarted = workers.start()  # same identity, same buffer file, nothing else carried over
    await asyncio.sleep(0.3)  # it starts while the coordinator is still away
    await outage.online()
    await until(lambda: _job_is(outage, job_id, "completed"), 15, "the completion from before the restart arrives")
    assert ticks(await outage.log(task["id"])) == list(range(1, 9))
    assert (await _task(outage, job_id))["worker"]["name"] == "w1"
    await until(lambda: not rows(path), 5, "the buffer empties")
    await until(lambda: restarted.state()["state"] == "idle: no task", 5, "the restarted worker waits for work")


async def test_a_task_interrupted_by_a_restart_gets_its_lines_and_goes_back_to_the_queue(outage, workers, tmp_path):
    workers.start()
    job_id = await outage.submit(ticks=30, interval=0.1)
    task = await until(lambda: _task(outage, job_id), 5, "the job has a task")
    await until(lambda: _log_has_tick(outage, task["id"], 2), 10, "the first ticks reach the coordinator")
    await outage.offline()
    path = buffer_path(tmp_path / "worker")
    await until(lambda: sum(ticks(r[4].decode("latin-1")).__len__() for r in rows(path)) >= 3, 10,
                "ticks are buffered on disk")
    await workers.crash()  # in the middle of the task
    buffered = [n for r in rows(path) for n in ticks(r[4].decode("latin-1"))]

    workers.start()
    await outage.online()
    await until(lambda: _job_is(outage, job_id, "completed"), 30, "the requeued task runs again and completes")
    text = await outage.log(task["id"])
    first_run, _, second_run = text.partition("The worker restarted before this task finished")
    assert second_run, text
    seen = ticks(first_run)
    assert seen == sorted(set(seen)) and seen[0] == 1, "the first run's lines: in order, none twice"
    assert set(buffered) <= set(seen), "every buffered line arrived"
    assert "Requeued" in second_run or "queued" in second_run
    assert ticks(second_run) == list(range(1, 31))


async def _log_has_tick(outage: Outage, task_id: str, n: int) -> bool:
    return n in ticks(await outage.log(task_id))


async def _job_is(outage: Outage, job_id: str, status: str) -> bool:
    return await outage.job_status(job_id) == status


async def test_an_unreadable_buffer_file_does_not_stop_the_worker(outage, tmp_path):
    data = tmp_path / "worker"
    data.mkdir()
    buffer_path(data).write_bytes(b"this is not a database" * 100)
    worker = Worker(outage.url, WorkerIdentity("id-w2", "w2", ["misc"]), WorkerSettings(), variables={},
                    claim_wait_s=1.0, report_interval_s=0.1, upstream_path=buffer_path(data))
    running = asyncio.create_task(worker.run())
    try:
        job_id = await outage.submit(ticks=2, interval=0.0)
        await until(lambda: _job_is(outage, job_id, "completed"), 15, "the worker works without its buffer file")
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


async def test_task_updates_name_their_idempotency_key_on_the_wire(outage, tmp_path):
    """What the coordinator receives: update_stream + update_seq on every update that changes something."""
    seen: list[dict[str, Any]] = []
    original = aiohttp.ClientSession._request

    async def spy(self, method, url, **kwargs):  # type: ignore[no-untyped-def]
        if str(url).endswith("/worker/task-update"):
            import msgpack
            seen.append(msgpack.unpackb(kwargs["data"], raw=False))
        return await original(self, method, url, **kwargs)

    aiohttp.ClientSession._request = spy  # type: ignore[method-assign]
    try:
        worker = Worker(outage.url, WorkerIdentity("id-w3", "w3", ["misc"]), WorkerSettings(), variables={},
                        claim_wait_s=1.0, report_interval_s=0.1, upstream_path=buffer_path(tmp_path / "w3"))
        running = asyncio.create_task(worker.run())
        job_id = await outage.submit(ticks=3, interval=0.05)
        await until(lambda: _job_is(outage, job_id, "completed"), 15, "the job completes")
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    finally:
        aiohttp.ClientSession._request = original  # type: ignore[method-assign]
    keyed = [s for s in seen if "update_seq" in s]
    assert keyed and all(s["update_stream"] == keyed[0]["update_stream"] for s in keyed)
    assert [s["update_seq"] for s in keyed] == sorted({s["update_seq"] for s in keyed})
    assert keyed[-1]["task_status"] == "completed"


# --- shutdown: requeue or finish, deliver, sign off -------------------------


def _worker(outage: Outage, tmp_path: Path, **options: Any) -> Worker:
    return Worker(outage.url, WorkerIdentity("id-s", "s", ["misc"]), WorkerSettings(), variables={},
                  claim_wait_s=1.0, report_interval_s=0.1, upstream_path=buffer_path(tmp_path / "s"),
                  options=WorkerOptions(**options))


async def _worker_status(outage: Outage, name: str) -> str:
    return next(w["status"] for w in await outage.coordinator.list_workers() if w["name"] == name)


async def test_shutdown_requeues_the_running_task_and_signs_off(outage, tmp_path):
    worker = _worker(outage, tmp_path, on_shutdown="requeue")
    running = asyncio.create_task(worker.run())
    job_id = await outage.submit(ticks=100, interval=0.1)
    task = await until(lambda: _task(outage, job_id), 5, "the job has a task")
    await until(lambda: _log_has_tick(outage, task["id"], 2), 10, "the task runs")
    started = time.monotonic()
    await worker.shutdown()
    await asyncio.wait_for(running, 10)
    print(f"shutdown with requeue took {time.monotonic() - started:.2f} s")
    assert (await _task(outage, job_id))["status"] == "queued"
    assert await _worker_status(outage, "s") == "offline"
    assert "Stopped on the worker: the worker is shutting down" in await outage.log(task["id"])
    assert worker.state()["state"] == "stopped"


async def test_shutdown_with_finish_completes_the_task_and_takes_no_other(outage, tmp_path):
    worker = _worker(outage, tmp_path, on_shutdown="finish", shutdown_grace_s=30.0)
    running = asyncio.create_task(worker.run())
    job_id = await outage.submit(ticks=6, interval=0.1, tasks=2)
    await until(lambda: worker.current_task, 10, "a task runs")
    first = worker.current_task
    await worker.shutdown()
    await asyncio.wait_for(running, 15)
    statuses = {t["id"]: t["status"] for t in await outage.tasks(job_id)}
    assert statuses.pop(first) == "completed"
    assert list(statuses.values()) == ["queued"]  # the other task was not started
    assert await _worker_status(outage, "s") == "offline"


async def test_shutdown_with_finish_hands_the_task_back_after_the_grace(outage, tmp_path):
    worker = _worker(outage, tmp_path, on_shutdown="finish", shutdown_grace_s=0.3)
    running = asyncio.create_task(worker.run())
    job_id = await outage.submit(ticks=100, interval=0.1)
    await until(lambda: worker.current_task, 10, "the task runs")
    await worker.shutdown()
    await asyncio.wait_for(running, 10)
    task = await _task(outage, job_id)
    assert task["status"] == "queued"
    assert "did not finish within 0.3 s" in await outage.log(task["id"])
