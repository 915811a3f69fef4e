"""A coordinator whose dashboard is served twice on loopback: as this computer sees it
(loopback needs nothing) and as a browser on another computer sees it (the same
auth middleware with loopback trust off, so only a session cookie gets in)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from peer.api.app import build_app
from peer.cluster.auth import Verifier, auth_middleware
from peer.cluster.identity import FarmIdentity
from peer.compiler.loader import BUILTIN_JOB_TYPES_DIR, JobTypeRegistry
from peer.compiler.model import CompileLimits
from peer.coordinator.service import Coordinator
from peer.web.server import KEEPALIVE_KEY
from peer.worker.commands.base import WorkerSettings
from peer.worker.loop import Worker, WorkerIdentity

FARM = FarmIdentity(name="studio", secret=bytes(range(16)))
OTHER_FARM = FarmIdentity(name="studio", secret=bytes(16))


@dataclass
class Served:
    app: web.Application
    runner: web.AppRunner
    url: str


@dataclass
class DashboardFarm:
    coordinator: Coordinator
    local: Served      # what a browser on this computer gets
    remote: Served     # what a browser on another computer gets
    data_dir: Path
    workers: list[asyncio.Task[None]] = field(default_factory=list)

    def start_worker(self, name: str) -> Worker:
        worker = Worker(
            self.local.url,
            WorkerIdentity(f"id-{name}", name, ["misc"]),
            WorkerSettings(), variables={}, claim_wait_s=2.0, report_interval_s=0.1,
        )
        self.workers.append(asyncio.create_task(worker.run()))
        return worker


async def serve(app: web.Application) -> Served:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return Served(app, runner, f"http://127.0.0.1:{runner.addresses[0][1]}")


def dashboard_app(coordinator: Coordinator, *, remote: bool, keepalive_s: float = 15.0,
                  extra_routes: list[web.RouteDef] | None = None) -> web.Application:
    auth = auth_middleware(Verifier(FARM), trust_loopback=not remote, accept_session_cookie=True)
    app = build_app(name="test-peer", coordinator=coordinator, auth=auth, identity=FARM, extra_routes=extra_routes)
    app[KEEPALIVE_KEY] = keepalive_s
    return app


async def new_coordinator(data_dir: Path) -> Coordinator:
    coordinator = Coordinator(
        data_dir, JobTypeRegistry([BUILTIN_JOB_TYPES_DIR]),
        compile_limits=CompileLimits(timeout_s=2.0, max_memory_bytes=64 * 1024 * 1024),
        worker_timeout_s=5.0,
    )
    await coordinator.start()
    return coordinator


@pytest.fixture
async def dashboard_farm(tmp_path: Path) -> AsyncIterator[DashboardFarm]:
    coordinator = await new_coordinator(tmp_path / "data")
    local = await serve(dashboard_app(coordinator, remote=False, keepalive_s=0.3))
    remote = await serve(dashboard_app(coordinator, remote=True, keepalive_s=0.3))
    farm = DashboardFarm(coordinator, local, remote, tmp_path / "data")
    try:
        yield farm
    finally:
        for task in farm.workers:
            task.cancel()
        await asyncio.gather(*farm.workers, return_exceptions=True)
        await coordinator.begin_shutdown()
        for served in (local, remote):
            await served.runner.cleanup()
        await coordinator.stop()


def echo_job(**settings: Any) -> dict[str, Any]:
    return {
        "name": "dashboard test", "type": "echo-sleep-test", "priority": 50, "submitter_platform": "linux",
        "settings": {"message": "hello dashboard", "sleep_duration_seconds": 0, "sleep_repeats": 2, **settings},
        "metadata": {"user.name": "tester"},
    }


async def call(session: aiohttp.ClientSession, method: str, url: str, body: Any = None,
               **kw: Any) -> tuple[int, Any]:
    """One request; JSON bodies are parsed, anything else is returned as text."""
    if body is not None:
        kw["data"] = json.dumps(body).encode()
        kw.setdefault("headers", {})["Content-Type"] = "application/json"
    async with session.request(method, url, allow_redirects=False, **kw) as resp:
        raw = await resp.read()
        if resp.content_type == "application/json" and raw:
            return resp.status, json.loads(raw)
        return resp.status, raw.decode(errors="replace")
