"""Real HTTP between peers: each test peer is an aiohttp server on loopback with its own store."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from peer.files.routes import FilesServer, ServeLimits, add_routes
from peer.files.store import ContentStore


@dataclass
class TestPeer:
    name: str
    store: ContentStore
    server: FilesServer
    url: str
    runner: web.AppRunner
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)  # method, path_qs, headers

    async def stop(self) -> None:
        await self.runner.cleanup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


StartPeer = Callable[..., Awaitable[TestPeer]]


@pytest.fixture
async def start_peer(tmp_path: Path) -> AsyncIterator[StartPeer]:
    peers: list[TestPeer] = []

    async def start(name: str, *, limits: ServeLimits = ServeLimits(), port: int = 0,
                    middlewares: tuple = (), **routes_kwargs: object) -> TestPeer:
        recorded: list[tuple[str, str, dict[str, str]]] = []

        @web.middleware
        async def record(request: web.Request, handler):  # type: ignore[no-untyped-def]
            recorded.append((request.method, request.path_qs, dict(request.headers)))
            return await handler(request)

        store = ContentStore(tmp_path / name / "store", cap_bytes=1 << 30)
        app = web.Application(middlewares=[record, *middlewares], client_max_size=64 << 20)
        server = add_routes(app, store, limits=limits, **routes_kwargs)  # type: ignore[arg-type]
        runner = web.AppRunner(app, shutdown_timeout=1.0)  # do not wait for idle keep-alive clients
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        bound = runner.addresses[0][1]
        peer = TestPeer(name=name, store=store, server=server, url=f"http://127.0.0.1:{bound}", runner=runner,
                        requests=recorded)
        peers.append(peer)
        return peer

    yield start
    for peer in peers:
        await peer.runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s
