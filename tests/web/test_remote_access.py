"""The dashboard seen from a real other address (a network namespace), with the auth a peer runs:
loopback trusted, everyone else needs the farm's signature or, for browsers, the join code."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
from aiohttp import web

from peer.api.app import build_app
from peer.cluster.auth import Verifier, auth_middleware
from tests.netns import NetnsLab, requires_netns

from .browser import CHROMIUM, artifacts_dir, browser_unavailable_reason
from .conftest import FARM, OTHER_FARM, echo_job, new_coordinator

REPO = Path(__file__).resolve().parents[2]


@requires_netns
@pytest.mark.timeout(90)
async def test_another_computer_needs_the_join_code(tmp_path: Path) -> None:
    coordinator = await new_coordinator(tmp_path / "data")
    lab = await asyncio.to_thread(NetnsLab, 1)
    runner: web.AppRunner | None = None
    try:
        app = build_app(name="studio-peer", coordinator=coordinator, identity=FARM,
                        auth=auth_middleware(Verifier(FARM), accept_session_cookie=True))
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
        await runner.setup()
        await web.TCPSite(runner, lab.host_ip, 0).start()
        url = f"http://{lab.host_ip}:{runner.addresses[0][1]}"
        job = await coordinator.submit_job({**echo_job(), "name": "remote view", "initial_status": "paused"})
        assert job is not None

        argv = [sys.executable, "-m", "tests.web.remote_client", url, FARM.join_code(), OTHER_FARM.join_code(), job["id"]]
        with_browser = browser_unavailable_reason() is None
        if with_browser:
            argv += [str(artifacts_dir()), str(CHROMIUM)]
        proc = await asyncio.create_subprocess_exec(
            *lab.exec_argv(0, argv), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=str(REPO),
        )
        out, err = await asyncio.wait_for(proc.communicate(), 75)
        assert proc.returncode == 0, err.decode()[-3000:]
        results = json.loads(out)
        stored = await coordinator.get_job(job["id"])
    finally:
        if runner is not None:
            await runner.cleanup()
        await asyncio.to_thread(lab.close)
        await coordinator.stop()

    api = results["api"]
    remote = lab.ips[0]
    assert api["page"]["status"] == 401 and "flamenco-peer farm join-code" in api["page"]["text"]
    assert remote in api["page"]["text"]  # the page names the address it sees
    for name in ("jobs", "info", "events", "priority", "cancel", "delete"):
        assert api[name]["status"] == 401, (name, api[name])
        body = json.loads(api[name]["text"])
        assert body["code"] == 401 and f"comes from {remote}" in body["message"], (name, body)
    assert api["static"]["status"] == 200
    assert api["wrong login"]["status"] == 401 and "another farm" in api["wrong login"]["text"]
    assert api["login"]["status"] == 303 and "flamenco_peer_session=" in api["login"]["set_cookie"]
    assert api["jobs after login"]["status"] == 200 and job["id"] in api["jobs after login"]["text"]
    assert json.loads(api["info after login"]["text"])["viewer"] == "browser"
    assert api["priority after login"]["status"] == 204
    assert "event: hello" in api["events after login"]["text"]
    # The refused requests changed nothing; the logged-in one did.
    assert (stored["status"], stored["priority"]) == ("paused", 90), stored

    if with_browser:
        browser = results["browser"]
        assert browser["login page status"] == 401 and "join code" in browser["login page text"]
        assert "studio" in browser["where"] and browser["page errors"] == []

