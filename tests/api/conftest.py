"""A coordinator with its HTTP API on a real loopback port, validated against Flamenco's OpenAPI spec."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest

from peer.api.app import build_app
from peer.compiler.loader import BUILTIN_JOB_TYPES_DIR, JobTypeRegistry
from peer.compiler.model import CompileLimits
from peer.coordinator.service import Coordinator
from peer.worker.commands.base import WorkerSettings
from peer.worker.loop import Worker, WorkerIdentity
from tests.openapi import load_spec


class ApiClient:
    """Calls the client API and checks every request and response against the spec."""

    def __init__(self, base: str, session: aiohttp.ClientSession) -> None:
        self.base = base
        self.session = session
        self.spec = load_spec()

    async def call(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                   validate_request: bool = True, validate_response: bool = True,
                   body_on_bodyless_status: bool = False) -> tuple[int, Any]:
        """``body_on_bodyless_status``: the spec documents the status without a body,
        and we add a Flamenco ``Error`` body so the user learns why (e.g. 422)."""
        if body is not None and validate_request:
            self.spec.validate_request(method, path, body)
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers = {"Content-Type": "application/json"} if data is not None else {}
        async with self.session.request(method, self.base + path, data=data, headers=headers) as resp:
            text = await resp.read()
            ctype = resp.content_type
            payload: Any = None
            if text:
                payload = json.loads(text) if ctype == "application/json" else text.decode()
            if body_on_bodyless_status:
                self.spec.validate_schema("Error", payload)
                self.spec.validate_response(method, path, resp.status, None)
            elif path.startswith("/api/v3/") and validate_response:
                self.spec.validate_response(method, path, resp.status, payload, content_type=ctype)
            return resp.status, payload


class Farm:
    def __init__(self, coordinator: Coordinator, url: str, client: ApiClient, data_dir: Path) -> None:
        self.coordinator = coordinator
        self.url = url
        self.client = client
        self.data_dir = data_dir
        self.workers: list[asyncio.Task[None]] = []

    def start_worker(self, name: str, *, task_types: list[str] | None = None, enable_exec: bool = False) -> Worker:
        worker = Worker(
            self.url,
            WorkerIdentity(f"id-{name}", name, task_types or ["misc", "blender", "ffmpeg", "file-management"]),
            WorkerSettings(enable_exec=enable_exec),
            variables={"blender": "blender", "blenderArgs": "-b -y"},
            claim_wait_s=2.0, report_interval_s=0.1,
        )
        self.workers.append(asyncio.create_task(worker.run()))
        return worker

    async def wait_job(self, job_id: str, statuses: tuple[str, ...] = ("completed", "failed", "canceled"),
                       timeout: float = 30.0) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            status, job = await self.client.call("GET", f"/api/v3/jobs/{job_id}")
            assert status == 200
            if job["status"] in statuses:
                return job
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"job stayed {job['status']!r}; wanted {statuses}")
            await asyncio.sleep(0.05)


@pytest.fixture
async def farm(tmp_path: Path) -> AsyncIterator[Farm]:
    user_types = tmp_path / "data" / "job_types"
    user_types.mkdir(parents=True)
    registry = JobTypeRegistry([BUILTIN_JOB_TYPES_DIR, user_types])
    coordinator = Coordinator(
        tmp_path / "data", registry,
        compile_limits=CompileLimits(timeout_s=1.0, max_memory_bytes=64 * 1024 * 1024),
        worker_timeout_s=3.0,
    )
    await coordinator.start()
    app = build_app(name="test-peer", coordinator=coordinator)
    runner = aiohttp.web.AppRunner(app, access_log=None)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    async with aiohttp.ClientSession() as session:
        farm = Farm(coordinator, url, ApiClient(url, session), tmp_path / "data")
        try:
            yield farm
        finally:
            for task in farm.workers:
                task.cancel()
            await asyncio.gather(*farm.workers, return_exceptions=True)
            await runner.cleanup()
            await coordinator.stop()


def echo_sleep_job(**settings: Any) -> dict[str, Any]:
    return {
        "name": "echo test", "type": "echo-sleep-test", "priority": 50, "submitter_platform": "linux",
        "settings": {"message": "hello", "sleep_duration_seconds": 0, "sleep_repeats": 2, **settings},
        "metadata": {"user.name": "tester"},
    }
