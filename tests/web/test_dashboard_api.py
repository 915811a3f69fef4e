"""The dashboard's HTTP side: pages, login, every action as the page sends it, refusals, live feed."""

from __future__ import annotations

import asyncio
import html
from typing import Any, AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from peer.cluster.auth import SESSION_COOKIE, issue_session_cookie
from peer.coordinator import events as ev
from peer.coordinator import status_machine
from peer.web.feed import FarmChangeFeed
from peer.web.server import FEED_KEY, OPTIONAL_ENDPOINTS, routed_features

from .conftest import FARM, OTHER_FARM, DashboardFarm, Served, call, dashboard_app, echo_job, serve
from .sse import EventReader

EVENTS = "/peer/v1/events/stream"


async def submit(farm: DashboardFarm, **overrides: Any) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        status, job = await call(session, "POST", farm.local.url + "/api/v3/jobs", {**echo_job(), **overrides})
    assert status == 200, job
    return job


async def job_state(farm: DashboardFarm, job_id: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session:
        return await call(session, "GET", f"{farm.local.url}/api/v3/jobs/{job_id}")


async def task_states(farm: DashboardFarm, job_id: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as session:
        status, body = await call(session, "GET", f"{farm.local.url}/api/v3/jobs/{job_id}/tasks")
    assert status == 200, body
    return body["tasks"]


async def blocklist(farm: DashboardFarm, job_id: str, worker: str = "id-render-1", task_type: str = "misc") -> None:
    """Put a worker on a job's blocklist through the store's own event (as the failure rules do)."""
    at = status_machine.now()
    await farm.coordinator._write(lambda tx: tx.emit(
        ev.WorkerBlocklisted(job_id=job_id, worker_id=worker, task_type=task_type, at=at)))


def dashboard_actions(job_id: str, task_id: str) -> dict[str, tuple[str, str, Any]]:
    """Every job and task action of app.js, exactly as it sends them."""
    job = f"/api/v3/jobs/{job_id}"
    return {
        "resume": ("POST", f"{job}/setstatus", {"status": "requeueing", "reason": "Resume from the dashboard"}),
        "pause": ("POST", f"{job}/setstatus", {"status": "pause-requested", "reason": "Pause from the dashboard"}),
        "cancel": ("POST", f"{job}/setstatus", {"status": "cancel-requested", "reason": "Cancel job from the dashboard"}),
        "requeue task": ("POST", f"/api/v3/tasks/{task_id}/setstatus",
                         {"status": "queued", "reason": "Requeued from the dashboard"}),
        "requeue": ("POST", f"{job}/setstatus", {"status": "requeueing", "reason": "Requeue from the dashboard"}),
        "priority": ("POST", f"{job}/setpriority", {"priority": 80}),
        "clear blocklist": ("DELETE", f"{job}/blocklist", [{"worker_id": "id-render-1", "task_type": "misc"}]),
        "delete": ("DELETE", job, None),
    }


def dashboard_reads(job_id: str, task_id: str) -> list[str]:
    return [
        "/web/info", "/api/v3/status", "/api/v3/jobs", f"/api/v3/jobs/{job_id}", f"/api/v3/jobs/{job_id}/tasks",
        f"/api/v3/tasks/{task_id}", f"/api/v3/tasks/{task_id}/logtail", f"/api/v3/tasks/{task_id}/log",
        f"/api/v3/jobs/{job_id}/blocklist", "/api/v3/worker-mgt/workers",
        f"/api/v3/jobs/{job_id}/last-rendered", "/api/v3/jobs/last-rendered",
    ]


async def logged_in_session(served: Served) -> aiohttp.ClientSession:
    """A browser on another computer after entering the join code (cookies kept, as a browser does)."""
    session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with session.post(served.url + "/login", data={"code": FARM.join_code()}, allow_redirects=False) as resp:
        assert resp.status == 303, await resp.text()
    return session


@pytest.fixture(params=["local", "browser"])
async def viewer(request: pytest.FixtureRequest, dashboard_farm: DashboardFarm) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    """(base URL, session) of a dashboard on this computer, or of a logged-in browser on another one."""
    if request.param == "local":
        async with aiohttp.ClientSession() as session:
            yield dashboard_farm.local.url, session
    else:
        session = await logged_in_session(dashboard_farm.remote)
        async with session:
            yield dashboard_farm.remote.url, session


# --- the page ---------------------------------------------------------------------------------


async def test_this_computer_gets_the_dashboard_without_credentials(dashboard_farm: DashboardFarm) -> None:
    url = dashboard_farm.local.url
    async with aiohttp.ClientSession() as session:
        async with session.get(url + "/") as resp:
            page = await resp.text()
            assert resp.status == 200 and resp.content_type == "text/html"
            assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
            assert resp.headers["X-Frame-Options"] == "DENY"
        assert '<script src="/web/static/app.js"' in page and 'href="/web/static/style.css"' in page
        for name, ctype in (("app.js", "text/javascript"), ("style.css", "text/css")):
            async with session.get(f"{url}/web/static/{name}") as resp:
                assert resp.status == 200 and resp.content_type == ctype
                assert len(await resp.read()) > 1000
        status, body = await call(session, "GET", url + "/web/static/../server.py")
        assert status == 404
        status, body = await call(session, "GET", url + "/web/static/peer.sqlite")
        assert status == 404 and "no dashboard file" in body
        status, info = await call(session, "GET", url + "/web/info")
    assert status == 200
    assert info["viewer"] == "local" and info["peer"] == {"name": "test-peer"}
    assert info["farm"] == {"name": "studio", "id": FARM.farm_id} and info["login_enabled"] is True
    assert info["events"] == EVENTS
    assert info["features"] == routed_features(dashboard_farm.local.app)
    assert info["features"]["cluster"] is False  # no cluster layer in this app
    assert info["features"]["blocklist"] is True


def test_optional_sections_follow_the_routes_a_peer_has() -> None:
    async def nothing(request: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    assert not any(routed_features(app).values())
    app.router.add_get("/api/v3/jobs/{id}/last-rendered", nothing)  # placeholder names do not matter
    app.router.add_post("/api/v3/worker-mgt/workers/{wid}/setstatus", nothing)
    app.router.add_get("/api/v3/jobs/{job_id}/blocklist", nothing)  # GET without DELETE is not enough
    features = routed_features(app)
    assert features["last_rendered"] and features["worker_sleep"]
    assert not features["blocklist"] and not features["global_last_rendered"]
    assert set(features) == set(OPTIONAL_ENDPOINTS)


# --- actions ------------------------------------------------------------------------------------


async def test_every_dashboard_action(dashboard_farm: DashboardFarm, viewer: tuple[str, aiohttp.ClientSession]) -> None:
    base, session = viewer
    job = await submit(dashboard_farm, initial_status="paused")
    tasks = await task_states(dashboard_farm, job["id"])
    actions = dashboard_actions(job["id"], tasks[1]["id"])
    origin = {"Origin": base}  # browsers send it with every POST and DELETE

    async def act(name: str) -> None:
        method, path, body = actions[name]
        status, reply = await call(session, method, base + path, body, headers=dict(origin))
        assert status == 204, (name, status, reply)

    async def expect(status: str, task_statuses: list[str] | None = None) -> dict[str, Any]:
        code, current = await job_state(dashboard_farm, job["id"])
        assert code == 200 and current["status"] == status, current
        if task_statuses is not None:
            assert [t["status"] for t in await task_states(dashboard_farm, job["id"])] == task_statuses
        return current

    await act("resume")
    await expect("queued", ["queued"] * 3)
    await act("pause")
    await expect("paused", ["paused"] * 3)
    await act("cancel")
    await expect("canceled", ["canceled"] * 3)
    await act("requeue task")
    await expect("canceled", ["canceled", "queued", "canceled"])
    await act("requeue")
    await expect("queued", ["queued"] * 3)
    await act("priority")
    assert (await expect("queued"))["priority"] == 80

    await blocklist(dashboard_farm, job["id"])
    status, entries = await call(session, "GET", f"{base}/api/v3/jobs/{job['id']}/blocklist")
    assert status == 200 and entries == [{"worker_id": "id-render-1", "task_type": "misc", "worker_name": "id-render-1"}]
    await act("clear blocklist")
    assert await call(session, "GET", f"{base}/api/v3/jobs/{job['id']}/blocklist") == (200, [])

    await act("delete")
    code, body = await job_state(dashboard_farm, job["id"])
    assert code == 404 and job["id"] in body["message"]


async def test_an_action_that_does_not_apply_says_why(dashboard_farm: DashboardFarm,
                                                      viewer: tuple[str, aiohttp.ClientSession]) -> None:
    base, session = viewer
    job = await submit(dashboard_farm)  # queued: nobody works
    status, body = await call(session, "POST", f"{base}/api/v3/jobs/{job['id']}/setpriority", {"priority": 101},
                              headers={"Origin": base})
    assert status == 400 and "0 to 100" in body["message"]
    status, body = await call(session, "POST", f"{base}/api/v3/jobs/{job['id']}/setstatus",
                              {"status": "requeueing", "reason": "Requeue from the dashboard"}, headers={"Origin": base})
    assert status == 422 and "job is 'queued'" in body["message"]
    status, body = await call(session, "DELETE", f"{base}/api/v3/jobs/no-such-job", headers={"Origin": base})
    assert status == 404 and "no-such-job" in body["message"]


async def test_worker_sleep_and_wake(dashboard_farm: DashboardFarm, viewer: tuple[str, aiohttp.ClientSession]) -> None:
    assert routed_features(dashboard_farm.local.app)["worker_sleep"]
    base, session = viewer
    dashboard_farm.start_worker("render-1")
    async with asyncio.timeout(10):
        while True:
            status, body = await call(session, "GET", base + "/api/v3/worker-mgt/workers")
            if any(w["status"] == "awake" for w in body["workers"]):
                break
            await asyncio.sleep(0.05)
    for wanted in ("asleep", "awake"):
        status, reply = await call(session, "POST", f"{base}/api/v3/worker-mgt/workers/id-render-1/setstatus",
                                   {"status": wanted, "is_lazy": False}, headers={"Origin": base})
        assert status == 204, reply
        async with asyncio.timeout(10):
            while True:
                _, body = await call(session, "GET", base + "/api/v3/worker-mgt/workers/id-render-1")
                if body["status"] == wanted:
                    break
                await asyncio.sleep(0.05)


# --- refusals from other computers ---------------------------------------------------------------


async def test_without_the_join_code_only_the_login_page_answers(dashboard_farm: DashboardFarm) -> None:
    job = await submit(dashboard_farm, initial_status="paused")
    tasks = await task_states(dashboard_farm, job["id"])
    await blocklist(dashboard_farm, job["id"])
    url = dashboard_farm.remote.url
    forged = issue_session_cookie(OTHER_FARM)
    expired = issue_session_cookie(FARM, now=1_000_000.0)
    for cookie in (None, forged, expired, "v1.9999999999.AAAA.AAAA"):
        headers = {"Cookie": f"{SESSION_COOKIE}={cookie}"} if cookie else {}
        async with aiohttp.ClientSession() as session:
            for path in [*dashboard_reads(job["id"], tasks[0]["id"]), EVENTS]:
                status, body = await call(session, "GET", url + path, headers=headers)
                assert status == 401, (path, status, body)
                assert body["code"] == 401 and "carries no farm signature" in body["message"], (path, body)
            actions = {**dashboard_actions(job["id"], tasks[1]["id"]),
                       "sleep": ("POST", "/api/v3/worker-mgt/workers/id-render-1/setstatus",
                                 {"status": "asleep", "is_lazy": False})}
            for name, (method, path, body) in actions.items():
                status, reply = await call(session, method, url + path, body, headers={**headers, "Origin": url})
                assert status == 401, (name, reply)
            # The page explains how to get in, and nothing about the farm.
            status, page = await call(session, "GET", url + "/", headers=headers)
            assert status == 401 and "flamenco-peer farm join-code" in page and 'action="/login"' in page
            assert "studio" not in page and job["id"] not in page
            if cookie == expired:
                assert "session has ended" in page
            # What the login page needs is served to anyone.
            status, css = await call(session, "GET", url + "/web/static/style.css")
            assert status == 200 and "--bg" in css
    # No spelling of a path slips past the auth middleware through the public login and static files.
    async with aiohttp.ClientSession() as session:
        for tricky in ("/web/static/..%2F..%2Fapi%2Fv3%2Fjobs", "/web/static/%2e%2e/%2e%2e/api/v3/jobs",
                       "/login/../api/v3/jobs", "/web/static/../../web/info", "//api/v3/jobs"):
            async with session.get(URL(url + tricky, encoded=True)) as resp:
                text = await resp.text()
            assert resp.status in (401, 404), (tricky, resp.status, text[:200])
            assert job["id"] not in text
    # Nothing changed.
    code, after = await job_state(dashboard_farm, job["id"])
    assert code == 200 and (after["status"], after["priority"]) == ("paused", 50)
    async with aiohttp.ClientSession() as session:
        assert (await call(session, "GET", f"{dashboard_farm.local.url}/api/v3/jobs/{job['id']}/blocklist"))[1] != []


async def test_the_join_code_buys_a_session_cookie(dashboard_farm: DashboardFarm) -> None:
    url = dashboard_farm.remote.url
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        cases = {
            "": "Enter the farm's join code",
            "FP1-AAAA": "not a usable join code",
            FARM.join_code()[:-1] + ("A" if FARM.join_code()[-1] != "A" else "B"): "not a usable join code",
            OTHER_FARM.join_code(): "belongs to another farm",
        }
        for code, message in cases.items():
            status, page = await call(session, "POST", url + "/login", data={"code": code})
            assert status == 401 and message in html.unescape(page), (code, page[:400])
            assert not session.cookie_jar.filter_cookies(url).get(SESSION_COOKIE)
        # Another site's page cannot log a browser in.
        status, page = await call(session, "POST", url + "/login", data={"code": FARM.join_code()},
                                  headers={"Origin": "http://evil.example"})
        assert status == 403 and "another web site" in page
        assert await call(session, "GET", url + "/api/v3/jobs") == (401, await _json_401(session, url))

        async with session.post(url + "/login", data={"code": f"  {FARM.join_code().lower()} "},
                                allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"] == "/"
            set_cookie = resp.headers["Set-Cookie"]
        for attribute in ("HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=2592000"):
            assert attribute in set_cookie, set_cookie
        status, page = await call(session, "GET", url + "/")
        assert status == 200 and "/web/static/app.js" in page
        status, info = await call(session, "GET", url + "/web/info")
        assert status == 200 and info["viewer"] == "browser" and info["farm"]["name"] == "studio"
        assert (await call(session, "GET", url + "/api/v3/jobs"))[0] == 200
        # A page of another site cannot act with the cookie.
        status, body = await call(session, "POST", url + "/api/v3/jobs/x/setpriority", {"priority": 1},
                                  headers={"Origin": "http://evil.example"})
        assert status == 401 and "another site" in body["message"]
        # GET /login just leads to the dashboard.
        assert (await call(session, "GET", url + "/login"))[0] == 303

        status, _ = await call(session, "POST", url + "/logout")
        assert status == 303
        assert (await call(session, "GET", url + "/api/v3/jobs"))[0] == 401
        assert (await call(session, "GET", url + "/"))[0] == 401


async def _json_401(session: aiohttp.ClientSession, url: str) -> Any:
    return (await call(session, "GET", url + "/api/v3/jobs"))[1]


async def test_a_peer_without_a_farm_identity_refuses_logins(dashboard_farm: DashboardFarm) -> None:
    from peer.api.app import build_app
    from peer.cluster.auth import Verifier, auth_middleware

    app = build_app(name="lonely", coordinator=dashboard_farm.coordinator,
                    auth=auth_middleware(Verifier(FARM), trust_loopback=False, accept_session_cookie=True))
    served = await serve(app)
    try:
        async with aiohttp.ClientSession() as session:
            status, page = await call(session, "GET", served.url + "/")
            assert status == 401 and "does not accept logins from other computers" in page
            status, page = await call(session, "POST", served.url + "/login", data={"code": FARM.join_code()})
            assert status == 403 and "does not accept logins" in page
    finally:
        await served.runner.cleanup()


# --- live updates -------------------------------------------------------------------------------


async def test_the_stream_names_what_changed(dashboard_farm: DashboardFarm) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(dashboard_farm.local.url + EVENTS) as resp:
            assert resp.status == 200 and resp.content_type == "text/event-stream"
            stream = EventReader(resp)
            first = await stream.next()
            assert first.retry is not None
            hello = await stream.next()
            assert hello.event == "hello" and hello.data["all"] is True
            start = hello.data["index"]

            job = await submit(dashboard_farm)
            changed = await stream.until(lambda m: m.event == "changed")
            assert "job-submitted" in changed.data["kinds"] and changed.data["index"] > start
            assert changed.data["all"] is False and changed.data["cluster"] is None

            dashboard_farm.start_worker("render-1")
            echo_task = (await task_states(dashboard_farm, job["id"]))[0]["id"]
            logged = await stream.until(lambda m: m.event == "changed" and echo_task in m.data["logged_tasks"])
            assert "task-logged" in logged.data["kinds"]
            await stream.until(lambda m: m.event == "" and m.comment == "keep-alive")


async def test_one_poller_serves_every_browser_and_stops_when_they_leave(dashboard_farm: DashboardFarm) -> None:
    feed = dashboard_farm.local.app[FEED_KEY]
    assert not feed.polling and feed.ticks == 0  # nobody listens: the store is left alone

    def pollers() -> int:
        return sum(1 for t in asyncio.all_tasks() if t.get_name() == "dashboard-change-feed" and not t.done())

    sessions = [aiohttp.ClientSession() for _ in range(3)]
    try:
        responses = [await s.get(dashboard_farm.local.url + EVENTS) for s in sessions]
        streams = [EventReader(r) for r in responses]
        for stream in streams:
            assert (await stream.until(lambda m: m.event == "hello")).data["all"]
        assert feed.subscriber_count == 3 and pollers() == 1
        await submit(dashboard_farm)
        seen = [await s.until(lambda m: m.event == "changed") for s in streams]
        assert len({m.data["index"] for m in seen}) == 1
        assert pollers() == 1
    finally:
        for session in sessions:
            await session.close()
    # Closed browsers are noticed at the next keep-alive (0.3 s here); then polling stops.
    async with asyncio.timeout(10):
        while feed.subscriber_count or feed.polling:
            await asyncio.sleep(0.05)
    ticks = feed.ticks
    await asyncio.sleep(0.6)
    assert feed.ticks == ticks and pollers() == 0


async def test_the_stream_tells_browsers_when_the_coordinator_changes(dashboard_farm: DashboardFarm) -> None:
    view = {"role": "follower", "coordinator": "peer-a", "epoch": 3, "alive": ["peer-a"]}
    feed = FarmChangeFeed(dashboard_farm.coordinator, lambda: dict(view), interval_s=0.05)
    sub = feed.subscribe()
    try:
        assert (await feed.current()).cluster == {"role": "follower", "coordinator": "peer-a", "epoch": 3,
                                                   "alive": ["peer-a"]}
        await asyncio.sleep(0.2)
        assert await sub.next(0.2) is None  # nothing changed
        view.update(role="coordinator", coordinator="me", epoch=4, alive=[])
        change = await sub.next(5)
        assert change is not None and change.kinds == {"cluster"}
        assert change.to_json()["cluster"] == {"role": "coordinator", "coordinator": "me", "epoch": 4, "alive": []}
        # A worker's state travels in heartbeats: a change of state is news, a ticking reason is not.
        view["workers"] = {"me": {"state": "idle", "reason": "user active 1 s ago", "mode": "when-idle"}}
        assert (await sub.next(5)).kinds == {"peers"}
        view["workers"] = {"me": {"state": "idle", "reason": "user active 2 s ago", "mode": "when-idle"}}
        await asyncio.sleep(0.2)
        assert await sub.next(0.2) is None
        view["workers"] = {"me": {"state": "working", "reason": "", "mode": "when-idle", "current_task": "t1"}}
        assert (await sub.next(5)).kinds == {"peers"}
    finally:
        await feed.close()
    assert sub.closed and not feed.polling


async def test_stopping_the_peer_ends_open_streams(dashboard_farm: DashboardFarm) -> None:
    served = await serve(dashboard_app(dashboard_farm.coordinator, remote=False, keepalive_s=60))
    served.runner._shutdown_timeout = 60.0  # what a peer uses: an open stream must not hold shutdown up
    async with aiohttp.ClientSession() as session:
        async with session.get(served.url + EVENTS) as resp:
            stream = EventReader(resp)
            await stream.until(lambda m: m.event == "hello")
            await asyncio.wait_for(served.runner.cleanup(), 10)
            with pytest.raises((EOFError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)):
                await stream.next(5)


@pytest.mark.parametrize("path, target", [
    ("/app", "/"),
    ("/app/", "/"),
    ("/app/jobs", "/"),
    ("/app/jobs/3f2a-job", "/#/job/3f2a-job"),
    ("/app/jobs/3f2a-job/77-task", "/#/job/3f2a-job/task/77-task"),
    ("/app/workers", "/#workers"),
    ("/app/workers/some-id", "/#workers"),
    ("/app/tags", "/"),
])
async def test_links_into_flamencos_web_app_land_on_the_same_view(dashboard_farm: DashboardFarm, path: str,
                                                                   target: str) -> None:
    """The Blender add-on opens Flamenco's /app/jobs/JOB; a peer shows that job."""
    for served in (dashboard_farm.local, dashboard_farm.remote):  # a redirect reveals nothing: no code needed
        async with aiohttp.ClientSession() as session:
            async with session.get(served.url + path, allow_redirects=False) as resp:
                assert resp.status == 303 and resp.headers["Location"] == target
