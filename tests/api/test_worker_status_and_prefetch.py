"""Sending workers to sleep and waking them, prefetching the next task, task run
times and last-rendered images: over the real API, with a real coordinator and,
where it matters, real workers."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import pytest

from peer.files.thumbnails import LastRenderedStore, make_thumbnail
from peer.worker.commands.base import WorkerSettings
from peer.worker.loop import SENT_TO_SLEEP, Worker, WorkerIdentity
from tests.scenes import requires_ffmpeg
from tests.web.browser import png

from .conftest import echo_sleep_job
from .test_client_api import _peer_call
from .test_failures import sign_on, submit_sleeps, task_status


async def set_worker_status(farm, worker_id: str, status: str, is_lazy: bool = False) -> tuple[int, Any]:
    return await farm.client.call("POST", f"/api/v3/worker-mgt/workers/{worker_id}/setstatus",
                                  {"status": status, "is_lazy": is_lazy})


async def claim_raw(farm, worker_id: str, **extra: Any) -> tuple[int, Any]:
    return await _peer_call(farm, "worker/claim", {"worker_id": worker_id, "wait_s": 0, **extra})


async def worker(farm, worker_id: str) -> dict[str, Any]:
    status, body = await farm.client.call("GET", f"/api/v3/worker-mgt/workers/{worker_id}")
    assert status == 200, body
    return body


# --- sleep and wake -------------------------------------------------------------------------------


async def test_a_sleep_request_stops_new_work_and_survives_signing_on_again(farm):
    await sign_on(farm, "w")
    job = await submit_sleeps(farm, 3)
    status, body = await claim_raw(farm, "w")
    first = body["task"]["uuid"]

    assert (await set_worker_status(farm, "w", "asleep", is_lazy=True))[0] == 204
    listed = (await worker(farm, "w"))
    assert listed["status_change"] == {"status": "asleep", "is_lazy": True}
    # Lazy: the running task may finish...
    assert await task_status(farm, first) == "active"
    status, reply = await _peer_call(farm, "worker/task-update", {
        "worker_id": "w", "task_id": first, "task_status": "completed", "claim_next": True})
    assert status == 200 and reply["next_task"] is None, reply  # ...but nothing new comes with the report
    status, body = await claim_raw(farm, "w")
    assert status == 200 and body == {"task": None, "status_change": {"status": "asleep", "is_lazy": True}}

    # The worker says it sleeps; a new sign-on (a restart, a new coordinator) is told again.
    assert (await _peer_call(farm, "worker/state-changed", {"worker_id": "w", "status": "asleep"}))[0] == 200
    assert (await worker(farm, "w"))["status"] == "asleep"
    await sign_on(farm, "w")
    assert (await claim_raw(farm, "w"))[1]["status_change"]["status"] == "asleep"

    # A long-poll for its state answers the moment someone wakes it.
    poll = asyncio.ensure_future(_peer_call(farm, "worker/state", {"worker_id": "w", "wait_s": 10}))
    await asyncio.sleep(0.2)
    assert not poll.done()
    assert (await set_worker_status(farm, "w", "awake"))[0] == 204
    async with asyncio.timeout(2):
        status, state = await poll
    assert status == 200 and state == {"status_requested": "awake", "is_lazy": False}
    status, body = await claim_raw(farm, "w")
    assert status == 200 and body["task"]["job"] == job["id"]


async def test_sleeping_at_once_requeues_the_running_task(farm):
    await sign_on(farm, "w")
    await submit_sleeps(farm, 2)
    _, body = await claim_raw(farm, "w")
    task_id = body["task"]["uuid"]
    assert (await set_worker_status(farm, "w", "asleep"))[0] == 204
    assert await task_status(farm, task_id) == "queued"
    _, verdict = await _peer_call(farm, "worker/watch", {"worker_id": "w", "task_id": task_id, "wait_s": 0})
    assert verdict["may_keep_running"] is False


async def test_sleep_requests_that_cannot_be_met_say_why(farm):
    await sign_on(farm, "w")
    status, body = await set_worker_status(farm, "w", "offline")
    assert status == 422 and "'asleep' or 'awake'" in body["message"] and "stop flamenco-peer" in body["message"]
    status, body = await farm.client.call("POST", "/api/v3/worker-mgt/workers/nobody/setstatus",
                                          {"status": "asleep", "is_lazy": False})
    assert status == 404 and "nobody" in body["message"]
    status, body = await farm.client.call("POST", "/api/v3/worker-mgt/workers/w/setstatus", {"status": 3},
                                          validate_request=False)
    assert status == 400 and "is_lazy" in body["message"]
    status, body = await _peer_call(farm, "worker/state-changed", {"worker_id": "w", "status": "error"})
    assert status == 400 and "'asleep' or 'awake'" in body["message"]


async def test_a_real_worker_sleeps_and_wakes_when_asked(farm):
    real = farm.start_worker("render-1")
    status, job = await farm.client.call("POST", "/api/v3/jobs", echo_sleep_job(sleep_duration_seconds=1, sleep_repeats=1))
    await farm.wait_job(job["id"], ("active", "completed"))
    assert (await set_worker_status(farm, "id-render-1", "asleep"))[0] == 204
    async with asyncio.timeout(10):
        while (await worker(farm, "id-render-1"))["status"] != "asleep":
            await asyncio.sleep(0.05)
    assert real.state()["state"] == SENT_TO_SLEEP
    # Asleep, it takes nothing, though work waits.
    _, second = await farm.client.call("POST", "/api/v3/jobs", echo_sleep_job())
    await asyncio.sleep(1.0)
    assert (await farm.client.call("GET", f"/api/v3/jobs/{second['id']}"))[1]["status"] == "queued"
    assert (await set_worker_status(farm, "id-render-1", "awake"))[0] == 204
    await farm.wait_job(second["id"], ("completed",), timeout=15)
    assert (await worker(farm, "id-render-1"))["status"] == "awake"


# --- prefetch ---------------------------------------------------------------------------------------


async def test_prefetch_holds_at_most_one_task_and_only_while_no_worker_idles(farm):
    await sign_on(farm, "a")
    await submit_sleeps(farm, 4)
    _, body = await claim_raw(farm, "a")
    running = body["task"]["uuid"]
    status, body = await claim_raw(farm, "a", prefetch_after=running)
    assert status == 200
    ahead = body["task"]["uuid"]
    assert ahead != running
    _, task = await farm.client.call("GET", f"/api/v3/tasks/{ahead}")
    assert task["status"] == "active" and task["activity"].startswith("Prefetched by a")
    # Asking again returns the same task: never more than one ahead.
    assert (await claim_raw(farm, "a", prefetch_after=running))[1]["task"]["uuid"] == ahead
    # Finishing the running task hands over the prefetched one.
    _, reply = await _peer_call(farm, "worker/task-update", {
        "worker_id": "a", "task_id": running, "task_status": "completed", "claim_next": True})
    assert reply["next_task"]["uuid"] == ahead
    # Another worker idles: it gets the next task, not a prefetch.
    await sign_on(farm, "b")
    assert (await claim_raw(farm, "a", prefetch_after=ahead))[0] == 204
    # Prefetching on behalf of a task the worker does not run gives nothing.
    assert (await claim_raw(farm, "b", prefetch_after=running))[0] == 204


async def test_a_prefetched_task_returns_to_the_queue_when_its_worker_signs_off(farm):
    await sign_on(farm, "a")
    await submit_sleeps(farm, 3)
    running = (await claim_raw(farm, "a"))[1]["task"]["uuid"]
    ahead = (await claim_raw(farm, "a", prefetch_after=running))[1]["task"]["uuid"]
    assert (await _peer_call(farm, "worker/sign-off", {"worker_id": "a"}))[0] == 200
    assert {await task_status(farm, running), await task_status(farm, ahead)} == {"queued"}


async def test_signing_on_again_keeps_the_prefetched_task_and_requeues_what_it_does_not_name(farm):
    await sign_on(farm, "a")
    await submit_sleeps(farm, 3)
    running = (await claim_raw(farm, "a"))[1]["task"]["uuid"]
    ahead = (await claim_raw(farm, "a", prefetch_after=running))[1]["task"]["uuid"]
    status, reply = await _peer_call(farm, "worker/sign-on", {
        "worker_id": "a", "name": "a", "supported_task_types": ["misc"], "current_task": running,
        "prefetched_task": ahead})
    assert status == 200, reply
    assert (await task_status(farm, running), await task_status(farm, ahead)) == ("active", "active")
    await sign_on(farm, "a")  # restarted: names neither
    assert (await task_status(farm, running), await task_status(farm, ahead)) == ("queued", "queued")


async def test_a_real_worker_prefetches_while_it_runs_and_the_job_completes(farm):
    real = farm.start_worker("render-1")
    await submit_sleeps(farm, 1)  # copies the bench-sleep job type into place
    status, job = await farm.client.call("POST", "/api/v3/jobs", {
        "name": "slow sleeps", "type": "bench-sleep", "priority": 50, "submitter_platform": "linux",
        "settings": {"count": 3, "duration_seconds": 0.6}})
    assert status == 200, job
    seen_ahead: set[str] = set()
    async with asyncio.timeout(30):
        while True:
            _, body = await farm.client.call("GET", f"/api/v3/jobs/{job['id']}/tasks")
            active = [t for t in body["tasks"] if t["status"] == "active"]
            assert len(active) <= 2, active  # the running task and at most one ahead
            for t in active:
                _, full = await farm.client.call("GET", f"/api/v3/tasks/{t['id']}")
                if full["activity"].startswith("Prefetched by render-1"):
                    seen_ahead.add(t["id"])
            if all(t["status"] == "completed" for t in body["tasks"]):
                break
            await asyncio.sleep(0.05)
    assert seen_ahead, "the worker never claimed a task ahead while one ran"
    assert real.tasks_done == 4  # the first job's task, then these three


# --- run times and images -----------------------------------------------------------------------------


async def test_tasks_carry_the_start_and_end_of_their_run(farm):
    await sign_on(farm, "w")
    job = await submit_sleeps(farm, 2)
    _, tasks = await farm.client.call("GET", f"/api/v3/jobs/{job['id']}/tasks")
    assert all("started" not in t for t in tasks["tasks"])
    task_id = (await claim_raw(farm, "w"))[1]["task"]["uuid"]
    _, task = await farm.client.call("GET", f"/api/v3/tasks/{task_id}")
    assert "started" in task and "finished" not in task
    await asyncio.sleep(0.05)
    await _peer_call(farm, "worker/task-update", {"worker_id": "w", "task_id": task_id, "task_status": "completed"})
    _, tasks = await farm.client.call("GET", f"/api/v3/jobs/{job['id']}/tasks")
    done = next(t for t in tasks["tasks"] if t["id"] == task_id)
    assert datetime.fromisoformat(done["finished"]) > datetime.fromisoformat(done["started"])
    # Requeued: a new run starts from nothing.
    assert (await farm.client.call("POST", f"/api/v3/tasks/{task_id}/setstatus",
                                   {"status": "queued", "reason": "again"}))[0] == 204
    _, task = await farm.client.call("GET", f"/api/v3/tasks/{task_id}")
    assert "started" not in task and "finished" not in task


@requires_ffmpeg
async def test_last_rendered_images_of_a_job_and_of_the_farm(farm, tmp_path):
    status, first = await farm.client.call("POST", "/api/v3/jobs", echo_sleep_job(initial_status="paused"))
    _, second = await farm.client.call("POST", "/api/v3/jobs", echo_sleep_job(initial_status="paused"))
    assert (await farm.client.call("GET", f"/api/v3/jobs/{first['id']}/last-rendered"))[0] == 204
    assert (await farm.client.call("GET", "/api/v3/jobs/last-rendered"))[0] == 204

    frame = tmp_path / "frame.png"
    frame.write_bytes(png(64, 48))
    jpeg = await make_thumbnail(frame)
    images = LastRenderedStore(farm.coordinator.logs.root)
    images.save(first["id"], jpeg)
    await asyncio.sleep(0.02)  # distinct modification times: "newest" is well defined
    images.save(second["id"], jpeg)

    status, info = await farm.client.call("GET", f"/api/v3/jobs/{first['id']}/last-rendered")
    assert status == 200
    assert info == {"base": f"/job-files/job-{first['id'][:4]}/{first['id']}", "suffixes": ["last-rendered.jpg"]}
    async with farm.client.session.get(f"{farm.url}{info['base']}/{info['suffixes'][0]}") as resp:
        assert resp.status == 200 and resp.content_type == "image/jpeg"
        assert await resp.read() == jpeg
    status, newest = await farm.client.call("GET", "/api/v3/jobs/last-rendered")
    assert status == 200 and second["id"] in newest["base"]
    status, body = await farm.client.call("GET", "/api/v3/jobs/no-such-job/last-rendered", validate_response=False)
    assert status == 404 and "no-such-job" in body["message"]


pytestmark = pytest.mark.timeout(60)


async def test_a_sleeping_worker_stops_at_once_when_shut_down(farm):
    # Long-polls of 60 s: stopping within 10 s shows the wait was cut short, not waited out.
    real = Worker(farm.url, WorkerIdentity("id-render-1", "render-1", ["misc"]), WorkerSettings(), variables={},
                  claim_wait_s=60.0, report_interval_s=0.1)
    farm.workers.append(asyncio.create_task(real.run()))
    async with asyncio.timeout(10):
        while (await farm.client.call("GET", "/api/v3/worker-mgt/workers"))[1]["workers"] == []:
            await asyncio.sleep(0.05)
    assert (await set_worker_status(farm, "id-render-1", "asleep"))[0] == 204
    async with asyncio.timeout(10):
        while real.state()["state"] != SENT_TO_SLEEP:
            await asyncio.sleep(0.05)
    await real.shutdown()
    async with asyncio.timeout(10):
        await farm.workers[-1]
    assert (await worker(farm, "id-render-1"))["status"] == "offline"
    await farm.coordinator.begin_shutdown()  # answers the long-poll the worker left behind, as a stopping peer does
