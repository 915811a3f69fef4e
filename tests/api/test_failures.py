"""Failures, blocklists, timeouts and prompt stops, over the real API with a real coordinator."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from peer.coordinator import status_machine

from .conftest import echo_sleep_job
from .test_client_api import _peer_call


async def sign_on(farm, worker_id: str, types: list[str] | None = None, tags: list[str] | None = None) -> None:
    status, reply = await _peer_call(farm, "worker/sign-on", {
        "worker_id": worker_id, "name": worker_id, "supported_task_types": types or ["misc"], "tags": tags or []})
    assert status == 200, reply


async def claim(farm, worker_id: str) -> dict[str, Any] | None:
    status, reply = await _peer_call(farm, "worker/claim", {"worker_id": worker_id, "wait_s": 0})
    assert status in (200, 204), reply
    return reply["task"] if status == 200 else None


async def fail(farm, worker_id: str, task_id: str, why: str = "Blender crashed") -> None:
    status, reply = await _peer_call(farm, "worker/task-update", {
        "worker_id": worker_id, "task_id": task_id, "task_status": "failed", "activity": why})
    assert status == 200, reply


async def task_status(farm, task_id: str) -> str:
    _, task = await farm.client.call("GET", f"/api/v3/tasks/{task_id}")
    return task["status"]


BENCH_SLEEP = Path(__file__).resolve().parents[2] / "benchmarks" / "job_types" / "bench-sleep.js"


async def submit_sleeps(farm, count: int) -> dict[str, Any]:
    """A job of ``count`` independent "misc" tasks (benchmarks' bench-sleep job type)."""
    target = farm.data_dir / "job_types" / BENCH_SLEEP.name
    if not target.exists():
        shutil.copy(BENCH_SLEEP, target)
    status, job = await farm.client.call("POST", "/api/v3/jobs", {
        "name": f"{count} sleeps", "type": "bench-sleep", "priority": 50, "submitter_platform": "linux",
        "settings": {"count": count, "duration_seconds": 0.01}})
    assert status == 200, job
    return job


async def test_a_worker_failing_three_tasks_of_a_job_is_blocklisted_and_the_list_can_be_cleared(farm):
    for w in ("bad", "good"):
        await sign_on(farm, w)
    job = await submit_sleeps(farm, 5)
    failed_ids = []
    for _ in range(3):
        task = await claim(farm, "bad")
        assert task is not None
        failed_ids.append(task["uuid"])
        await fail(farm, "bad", task["uuid"])
    assert [await task_status(farm, t) for t in failed_ids] == ["soft-failed"] * 3

    status, blocklist = await farm.client.call("GET", f"/api/v3/jobs/{job['id']}/blocklist")
    assert status == 200
    assert blocklist == [{"worker_id": "bad", "task_type": "misc", "worker_name": "bad"}]
    assert await claim(farm, "bad") is None  # blocklisted: no more misc tasks of this job
    assert await claim(farm, "good") is not None  # others still work

    status, _ = await farm.client.call("DELETE", f"/api/v3/jobs/{job['id']}/blocklist",
                                       [{"worker_id": "bad", "task_type": "misc"}])
    assert status == 204
    _, blocklist = await farm.client.call("GET", f"/api/v3/jobs/{job['id']}/blocklist")
    assert blocklist == []
    assert await claim(farm, "bad") is not None  # an untried task of the job again


async def test_when_the_last_capable_worker_is_blocklisted_the_job_fails_and_says_why(farm):
    farm.coordinator.failure_policy = status_machine.FailurePolicy(blocklist_threshold=2, job_fail_percentage=100)
    for w in ("a", "b"):
        await sign_on(farm, w)
    job = await submit_sleeps(farm, 10)
    for worker in ("a", "a", "b", "b"):
        task = await claim(farm, worker)
        await fail(farm, worker, task["uuid"])
    done = await farm.wait_job(job["id"], statuses=("failed",), timeout=5)
    assert "no worker is left to run tasks of type 'misc'" in done["activity"]
    _, blocklist = await farm.client.call("GET", f"/api/v3/jobs/{job['id']}/blocklist")
    assert {e["worker_id"] for e in blocklist} == {"a", "b"}


async def test_a_single_worker_failing_a_task_fails_it_at_once(farm):
    await sign_on(farm, "only")
    job = await submit_sleeps(farm, 20)
    task = await claim(farm, "only")
    await fail(farm, "only", task["uuid"])
    assert await task_status(farm, task["uuid"]) == "failed"  # nobody else could retry it
    _, current = await farm.client.call("GET", f"/api/v3/jobs/{job['id']}")
    assert current["status"] == "active"  # 1 of 20 failed: under Flamenco's 10 %


async def test_blocklist_refusals(farm):
    status, reply = await farm.client.call("GET", "/api/v3/jobs/nope/blocklist", validate_response=False)
    assert status == 404
    job = await submit_sleeps(farm, 1)
    status, reply = await farm.client.call("DELETE", f"/api/v3/jobs/{job['id']}/blocklist", {"worker_id": "x"},
                                           validate_request=False)
    assert status == 400 and "list of" in reply["message"]


async def test_failure_policy_is_configurable(farm):
    farm.coordinator.failure_policy = status_machine.FailurePolicy(
        task_fail_after_softfail_count=1, blocklist_threshold=10, job_fail_percentage=100)
    for w in ("a", "b"):
        await sign_on(farm, w)
    job = await submit_sleeps(farm, 3)
    task = await claim(farm, "a")
    await fail(farm, "a", task["uuid"])
    assert await task_status(farm, task["uuid"]) == "failed"  # one failure is enough now
    _, current = await farm.client.call("GET", f"/api/v3/jobs/{job['id']}")
    assert current["status"] != "failed"  # 1 of 3 is under 100 %


async def test_tagged_jobs_go_to_tagged_workers_only(farm):
    await sign_on(farm, "plain")
    await sign_on(farm, "gpu", tags=["gpu"])
    body = echo_sleep_job(sleep_repeats=0)
    body["worker_tag"] = "gpu"
    status, job = await farm.client.call("POST", "/api/v3/jobs", body)
    assert status == 200, job
    assert await claim(farm, "plain") is None
    assert (await claim(farm, "gpu"))["job"] == job["id"]


async def test_equal_jobs_share_workers(farm):
    for w in ("w1", "w2", "w3", "w4"):
        await sign_on(farm, w)
    long_job = await submit_sleeps(farm, 20)
    short_job = await submit_sleeps(farm, 2)
    jobs = [(await claim(farm, w))["job"] for w in ("w1", "w2", "w3", "w4")]
    assert jobs.count(long_job["id"]) == 2 and jobs.count(short_job["id"]) == 2


@pytest.mark.timeout(30)
async def test_a_task_without_progress_is_given_to_another_worker(farm):
    farm.coordinator.task_timeout_s = 0.5
    for w in ("stuck", "fresh"):
        await sign_on(farm, w)
    job = await submit_sleeps(farm, 1)
    task = await claim(farm, "stuck")
    # "stuck" keeps its heartbeats going, but nothing moves.
    deadline = time.monotonic() + 10
    while await task_status(farm, task["uuid"]) == "active":
        assert time.monotonic() < deadline, "the stuck task was never taken away"
        await _peer_call(farm, "worker/task-update", {
            "worker_id": "stuck", "task_id": task["uuid"], "steps_completed": 0, "activity": "rendering"})
        await farm.coordinator.check_timeouts()
        await asyncio.sleep(0.2)
    assert await task_status(farm, task["uuid"]) == "soft-failed"
    assert (await claim(farm, "fresh"))["uuid"] == task["uuid"]
    _, text = await farm.client.call("GET", f"/api/v3/tasks/{task['uuid']}/logtail")
    assert "no progress" in text
    del job


async def test_heartbeats_that_change_nothing_add_no_events(farm):
    await sign_on(farm, "w")
    await submit_sleeps(farm, 1)
    task = await claim(farm, "w")
    update = {"worker_id": "w", "task_id": task["uuid"], "steps_completed": 0, "activity": "rendering"}
    await _peer_call(farm, "worker/task-update", update)
    before = await farm.coordinator.db.run(farm.coordinator.store.last_event_index)
    for _ in range(5):
        await _peer_call(farm, "worker/task-update", update)
    assert await farm.coordinator.db.run(farm.coordinator.store.last_event_index) == before


async def test_watch_answers_at_once_when_the_task_is_canceled(farm):
    await sign_on(farm, "w")
    job = await submit_sleeps(farm, 1)
    task = await claim(farm, "w")
    watch = asyncio.create_task(_peer_call(farm, "worker/watch", {"worker_id": "w", "task_id": task["uuid"], "wait_s": 30}))
    await asyncio.sleep(0.3)
    assert not watch.done()  # nothing happened: the long-poll waits
    started = time.monotonic()
    await farm.client.call("POST", f"/api/v3/jobs/{job['id']}/setstatus", {"status": "cancel-requested", "reason": "x"})
    status, verdict = await asyncio.wait_for(watch, 10)
    elapsed = time.monotonic() - started
    assert status == 200 and verdict["may_keep_running"] is False and "canceled" in verdict["reason"]
    print(f"watch answered {elapsed * 1000:.0f} ms after the cancel")


async def test_a_task_change_wakes_only_the_watch_of_that_task_and_a_deletion_wakes_all(farm, monkeypatch):
    # Every working worker keeps a watch open: if each task change woke them all,
    # each for a database read, a big farm would pay N reads per change.
    from peer.coordinator import service

    reads: dict[str, int] = {}
    real = service._may_keep_running

    def counted(tx, worker_id, task_id):  # type: ignore[no-untyped-def]
        reads[task_id] = reads.get(task_id, 0) + 1
        return real(tx, worker_id, task_id)

    monkeypatch.setattr(service, "_may_keep_running", counted)
    workers = ["w1", "w2", "w3"]
    for w in workers:
        await sign_on(farm, w)
    job = await submit_sleeps(farm, 3)
    tasks = {w: (await claim(farm, w))["uuid"] for w in workers}
    watches = {w: asyncio.create_task(_peer_call(farm, "worker/watch", {"worker_id": w, "task_id": tasks[w], "wait_s": 30}))
               for w in workers}
    await asyncio.sleep(0.3)
    assert reads == {tasks[w]: 1 for w in workers} and not any(t.done() for t in watches.values())

    assert (await farm.client.call("POST", f"/api/v3/tasks/{tasks['w1']}/setstatus",
                                   {"status": "queued", "reason": "again"}))[0] == 204
    status, verdict = await asyncio.wait_for(watches["w1"], 10)
    assert status == 200 and verdict["may_keep_running"] is False
    await asyncio.sleep(0.3)
    assert reads[tasks["w2"]] == 1 and reads[tasks["w3"]] == 1  # not woken
    assert not watches["w2"].done() and not watches["w3"].done()

    assert (await farm.client.call("DELETE", f"/api/v3/jobs/{job['id']}"))[0] in (200, 204)
    for w in ("w2", "w3"):
        status, verdict = await asyncio.wait_for(watches[w], 10)
        assert status == 200 and verdict == {"may_keep_running": False, "reason": "the task's job was deleted"}
    assert len(farm.coordinator._watchers) == 0  # every watch has left


async def test_watch_with_nothing_to_report_returns_keep_running(farm):
    await sign_on(farm, "w")
    await submit_sleeps(farm, 1)
    task = await claim(farm, "w")
    status, verdict = await _peer_call(farm, "worker/watch", {"worker_id": "w", "task_id": task["uuid"], "wait_s": 0.2})
    assert status == 200 and verdict == {"may_keep_running": True, "reason": ""}


@pytest.mark.timeout(40)
async def test_a_running_worker_stops_a_canceled_task_promptly_through_the_watch(farm):
    from peer.worker.commands.base import WorkerSettings
    from peer.worker.loop import Worker, WorkerIdentity

    # Reports only every 5 s: without the watch the worker would notice late.
    worker = Worker(farm.url, WorkerIdentity("id-slow", "slow", ["misc"]), WorkerSettings(),
                    variables={}, claim_wait_s=2.0, report_interval_s=5.0)
    farm.workers.append(asyncio.create_task(worker.run()))
    status, job = await farm.client.call("POST", "/api/v3/jobs", echo_sleep_job(sleep_duration_seconds=30, sleep_repeats=1))
    deadline = time.monotonic() + 15
    while worker.current_task is None or "sleep" not in (await _task_name(farm, worker.current_task)):
        assert time.monotonic() < deadline, "the sleep task never started"
        await asyncio.sleep(0.05)
    started = time.monotonic()
    await farm.client.call("POST", f"/api/v3/jobs/{job['id']}/setstatus", {"status": "cancel-requested", "reason": "x"})
    while worker.current_task is not None:
        assert time.monotonic() - started < 4, "the worker kept running a canceled task"
        await asyncio.sleep(0.02)
    print(f"worker stopped the canceled task after {(time.monotonic() - started) * 1000:.0f} ms")


async def _task_name(farm, task_id: str) -> str:
    _, task = await farm.client.call("GET", f"/api/v3/tasks/{task_id}")
    return task["name"]


async def test_a_worker_signing_on_with_a_task_the_coordinator_has_queued_keeps_it(farm):
    """After a partition or a lagging replica, the worker is the truth about what it runs."""
    await submit_sleeps(farm, 2)
    _, jobs = await farm.client.call("GET", "/api/v3/jobs")
    _, tasks = await farm.client.call("GET", f"/api/v3/jobs/{jobs['jobs'][0]['id']}/tasks")
    running = tasks["tasks"][1]["id"]
    status, _ = await _peer_call(farm, "worker/sign-on", {
        "worker_id": "w", "name": "w", "supported_task_types": ["misc"], "current_task": running})
    assert status == 200
    _, task = await farm.client.call("GET", f"/api/v3/tasks/{running}")
    assert task["status"] == "active" and task["worker"]["id"] == "w"
    status, reply = await _peer_call(farm, "worker/task-update", {
        "worker_id": "w", "task_id": running, "task_status": "completed"})
    assert status == 200, reply


async def test_a_buffered_update_delivered_twice_is_applied_once(farm):
    await sign_on(farm, "w")
    await submit_sleeps(farm, 1)
    task = await claim(farm, "w")
    update = {"worker_id": "w", "task_id": task["uuid"], "log": "frame 1 rendered\n",
              "update_stream": "run-1", "update_seq": 1}
    for _ in range(2):  # the reply to the first was "lost"; the worker sends it again
        status, reply = await _peer_call(farm, "worker/task-update", update)
        assert status == 200, reply
    assert reply.get("duplicate") is True and reply["may_keep_running"] is True
    _, text = await farm.client.call("GET", f"/api/v3/tasks/{task['uuid']}/logtail")
    assert text.count("frame 1 rendered") == 1
    status, reply = await _peer_call(farm, "worker/task-update", {**update, "update_seq": "x"})
    assert status == 400 and "update_seq" in reply["message"]
