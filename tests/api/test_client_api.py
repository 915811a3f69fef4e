"""The Flamenco v3 client API: shapes, actions and bad input, over real HTTP."""

from __future__ import annotations

import asyncio

from peer.compiler.loader import JobTypeRegistry  # noqa: F401  (import check: compiler is importable)

from .conftest import echo_sleep_job


async def test_version_and_job_types(farm):
    status, version = await farm.client.call("GET", "/api/v3/version")
    assert status == 200 and version["name"] == "test-peer"
    status, types = await farm.client.call("GET", "/api/v3/jobs/types")
    names = [t["name"] for t in types["job_types"]]
    assert {"echo-sleep-test", "simple-blender-render"} <= set(names)
    assert names == sorted(names)
    status, one = await farm.client.call("GET", "/api/v3/jobs/type/echo-sleep-test")
    assert status == 200 and one["etag"] == "eba586e16d6b55baaa43e32f9e78ae514b457fee"


async def test_submit_run_and_inspect_job(farm):
    farm.start_worker("w1")
    status, job = await farm.client.call("POST", "/api/v3/jobs", echo_sleep_job())
    assert status == 200, job
    assert job["status"] == "queued" and job["steps_total"] == 3
    done = await farm.wait_job(job["id"])
    assert done["status"] == "completed"
    assert done["steps_completed"] == done["steps_total"]

    status, tasks = await farm.client.call("GET", f"/api/v3/jobs/{job['id']}/tasks")
    assert [t["name"] for t in tasks["tasks"]] == ["echo", "sleep", "sleep"]
    assert all(t["status"] == "completed" and t["worker"]["name"] == "w1" for t in tasks["tasks"])

    echo_id = tasks["tasks"][0]["id"]
    status, task = await farm.client.call("GET", f"/api/v3/tasks/{echo_id}")
    assert task["commands"] == [{"name": "echo", "parameters": {"message": "hello"}, "total_step_count": 0}]
    status, info = await farm.client.call("GET", f"/api/v3/tasks/{echo_id}/log")
    assert status == 200 and info["size"] > 0
    status, text = await farm.client.call("GET", info["url"])
    assert "task assigned to worker w1" in text and "hello" in text
    assert "task changed status active -> completed" in text
    status, tail = await farm.client.call("GET", f"/api/v3/tasks/{echo_id}/logtail")
    assert status == 200 and "hello" in tail

    status, workers = await farm.client.call("GET", "/api/v3/worker-mgt/workers")
    assert [w["name"] for w in workers["workers"]] == ["w1"]
    assert workers["workers"][0]["status"] == "awake"
    status, jobs = await farm.client.call("GET", "/api/v3/jobs")
    assert [j["id"] for j in jobs["jobs"]] == [job["id"]]


async def test_job_check_stores_nothing(farm):
    status, _ = await farm.client.call("POST", "/api/v3/jobs/check", echo_sleep_job())
    assert status == 204
    status, jobs = await farm.client.call("GET", "/api/v3/jobs")
    assert jobs["jobs"] == []


async def test_cancel_pause_requeue_delete_priority(farm):
    status, job = await farm.client.call("POST", "/api/v3/jobs", {**echo_sleep_job(), "initial_status": "paused"})
    assert job["status"] == "paused"
    jid = job["id"]
    status, _ = await farm.client.call("POST", f"/api/v3/jobs/{jid}/setpriority", {"priority": 80})
    assert status == 204
    status, _ = await farm.client.call("POST", f"/api/v3/jobs/{jid}/setstatus", {"status": "requeueing", "reason": "go"})
    assert status == 204
    status, job = await farm.client.call("GET", f"/api/v3/jobs/{jid}")
    assert job["status"] == "queued" and job["priority"] == 80
    status, _ = await farm.client.call("POST", f"/api/v3/jobs/{jid}/setstatus", {"status": "cancel-requested", "reason": "stop"})
    status, job = await farm.client.call("GET", f"/api/v3/jobs/{jid}")
    assert job["status"] == "canceled"
    status, err = await farm.client.call("POST", f"/api/v3/jobs/{jid}/setstatus", {"status": "active", "reason": "x"},
                                         body_on_bodyless_status=True)
    assert status == 422 and "cannot be set to 'active'" in err["message"]
    status, err = await farm.client.call("POST", f"/api/v3/jobs/{jid}/setstatus", {"status": "cancel-requested", "reason": "x"},
                                         body_on_bodyless_status=True)
    assert status == 422 and "job is 'canceled'" in err["message"]
    status, _ = await farm.client.call("DELETE", f"/api/v3/jobs/{jid}")
    assert status == 204
    # Flamenco answers 404 for a job it does not know; its spec documents only 200.
    status, err = await farm.client.call("GET", f"/api/v3/jobs/{jid}", validate_response=False)
    assert status == 404 and "no job with id" in err["message"]


async def test_cancel_stops_a_running_task(farm):
    farm.start_worker("w1")
    status, job = await farm.client.call("POST", "/api/v3/jobs", echo_sleep_job(sleep_duration_seconds=30, sleep_repeats=1))
    # wait until the sleep task runs
    for _ in range(200):
        _, tasks = await farm.client.call("GET", f"/api/v3/jobs/{job['id']}/tasks")
        if tasks["tasks"][1]["status"] == "active":
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("sleep task never started")
    await farm.client.call("POST", f"/api/v3/jobs/{job['id']}/setstatus", {"status": "cancel-requested", "reason": "stop"})
    done = await farm.wait_job(job["id"], timeout=5)
    assert done["status"] == "canceled"
    # The worker is free again well before the 30 s sleep would have ended.
    status, job2 = await farm.client.call("POST", "/api/v3/jobs", echo_sleep_job(sleep_repeats=0))
    assert (await farm.wait_job(job2["id"], timeout=5))["status"] == "completed"


# --- bad submissions: clear 4xx, the peer stays up ------------------------------


async def assert_still_serving(farm):
    status, _ = await farm.client.call("GET", "/api/v3/version")
    assert status == 200


async def test_unknown_job_type(farm):
    status, err = await farm.client.call("POST", "/api/v3/jobs", {**echo_sleep_job(), "type": "no-such-type"})
    assert status == 400
    assert "no-such-type" in err["message"] and "echo-sleep-test" in err["message"]
    # Flamenco's Manager answers 404 here, though its spec documents only 200.
    status, err = await farm.client.call("GET", "/api/v3/jobs/type/no-such-type", validate_response=False)
    assert status == 404 and "no-such-type" in err["message"]
    await assert_still_serving(farm)


async def test_missing_required_setting_and_wrong_type(farm):
    job = echo_sleep_job()
    del job["settings"]["message"]
    status, err = await farm.client.call("POST", "/api/v3/jobs", job)
    assert status == 400 and "message" in err["message"]
    status, err = await farm.client.call("POST", "/api/v3/jobs", echo_sleep_job(sleep_repeats="lots"))
    assert status == 400 and "sleep_repeats" in err["message"]
    await assert_still_serving(farm)


async def test_malformed_json_and_bad_shapes(farm):
    status, err = await farm.client.call("POST", "/api/v3/jobs", raw=b"{not json", validate_request=False)
    assert status == 400 and "not valid JSON" in err["message"]
    status, err = await farm.client.call("POST", "/api/v3/jobs", [1, 2], validate_request=False)
    assert status == 400 and "JSON object" in err["message"]
    status, err = await farm.client.call("POST", "/api/v3/jobs", {"name": "x", "type": "echo-sleep-test", "priority": 50},
                                         validate_request=False)
    assert status == 400 and "submitter_platform" in err["message"]
    await assert_still_serving(farm)


async def test_etag_mismatch_is_412(farm):
    status, err = await farm.client.call("POST", "/api/v3/jobs", {**echo_sleep_job(), "type_etag": "0" * 40})
    assert status == 412 and "refresh the job type" in err["message"]


def _write_type(farm, name: str, body: str) -> None:
    (farm.data_dir / "job_types" / f"{name}.js").write_text(
        'const JOB_TYPE = {label: "T", settings: []};\n' + body)


async def test_script_that_throws_loops_or_allocates(farm):
    _write_type(farm, "thrower", "function compileJob(job) {\n  throw new Error('no frames given');\n}\n")
    _write_type(farm, "looper", "function compileJob(job) { while (true) {} }\n")
    _write_type(farm, "hog", "function compileJob(job) { const a = []; while (true) a.push(new Array(100000).fill(1)); }\n")
    base = {"name": "bad", "priority": 50, "submitter_platform": "linux", "settings": {}}

    status, err = await farm.client.call("POST", "/api/v3/jobs", {**base, "type": "thrower"})
    assert status == 400 and "no frames given" in err["message"] and "thrower.js:3" in err["message"]
    status, err = await farm.client.call("POST", "/api/v3/jobs", {**base, "type": "looper"})
    assert status == 400 and "looper.js" in err["message"] and err["kind"] == "timeout"
    status, err = await farm.client.call("POST", "/api/v3/jobs", {**base, "type": "hog"})
    assert status == 400 and "hog.js" in err["message"] and err["kind"] == "memory-limit"
    await assert_still_serving(farm)
    status, jobs = await farm.client.call("GET", "/api/v3/jobs")
    assert jobs["jobs"] == []


async def _peer_call(farm, path: str, body: dict) -> tuple[int, dict | None]:
    import msgpack

    async with farm.client.session.post(
        f"{farm.url}/peer/v1/{path}", data=msgpack.packb(body), headers={"Content-Type": "application/msgpack"}
    ) as resp:
        raw = await resp.read()
        return resp.status, (msgpack.unpackb(raw) if raw else None)


async def test_silent_worker_times_out_and_its_task_is_requeued(farm):
    """A worker that vanishes mid-task (no sign-off) loses the task after the worker timeout (3 s here)."""
    status, _ = await _peer_call(farm, "worker/sign-on", {
        "worker_id": "ghost", "name": "ghost", "supported_task_types": ["misc"]})
    assert status == 200
    status, job = await farm.client.call("POST", "/api/v3/jobs", echo_sleep_job(sleep_repeats=0))
    status, claimed = await _peer_call(farm, "worker/claim", {"worker_id": "ghost", "wait_s": 2})
    assert status == 200 and claimed["task"]["name"] == "echo"
    # ... and the ghost never speaks again. A real worker arrives and gets the task once the ghost times out.
    farm.start_worker("w1")
    done = await farm.wait_job(job["id"], timeout=15)
    assert done["status"] == "completed"
    _, tasks = await farm.client.call("GET", f"/api/v3/jobs/{job['id']}/tasks")
    assert tasks["tasks"][0]["worker"]["name"] == "w1"
    _, text = await farm.client.call("GET", f"/api/v3/tasks/{tasks['tasks'][0]['id']}/logtail")
    assert "worker ghost timed out" in text
    _, workers = await farm.client.call("GET", "/api/v3/worker-mgt/workers")
    assert {w["name"]: w["status"] for w in workers["workers"]}["ghost"] == "error"
    # A late report from the ghost is refused: the task is no longer its.
    status, reply = await _peer_call(farm, "worker/task-update", {
        "worker_id": "ghost", "task_id": tasks["tasks"][0]["id"], "task_status": "completed"})
    assert status == 403 and "sign on" in reply["message"]


async def test_peer_protocol_rejects_garbage(farm):
    async with farm.client.session.post(f"{farm.url}/peer/v1/worker/claim", data=b"\xc1\xc1",
                                        headers={"Content-Type": "application/msgpack"}) as resp:
        assert resp.status == 400
    status, reply = await _peer_call(farm, "worker/sign-on", {"worker_id": "x"})
    assert status == 400 and "supported_task_types" in reply["message"]
    await assert_still_serving(farm)
