"""Assemble the peer's aiohttp application.

A coordinating peer serves the client API and the peer protocol itself. A
peer that joined another forwards the client API to the coordinator, so the
add-on and the CLI only ever need their local peer's address.
"""

from __future__ import annotations

import logging
from typing import Awaitable, Callable

import aiohttp
from aiohttp import web

from ..coordinator.service import APIError, Coordinator
from . import client_api, peer_protocol

log = logging.getLogger(__name__)

FORWARD_TO_KEY = web.AppKey("forward_to", str)
FORWARD_SESSION_KEY = web.AppKey("forward_session", aiohttp.ClientSession)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(request: web.Request, status: int, message: str, **extra: object) -> web.Response:
    if request.path.startswith(peer_protocol.PREFIX):
        return peer_protocol.pack_response({"code": status, "message": message, **extra}, status=status)
    return client_api.error_response(status, message, **extra)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into a clear error response; the peer never crashes on input."""
    try:
        return await handler(request)
    except APIError as exc:
        return _error(request, exc.status, exc.message, **exc.extra)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.text or exc.reason
        if exc.status == 404:
            message = f"no such endpoint: {request.method} {request.path}"
        elif exc.status == 405:
            message = f"method {request.method} is not allowed on {request.path}"
        return _error(request, exc.status, message)
    except Exception as exc:  # last line of defence: report, keep serving
        log.exception("unexpected error handling %s %s", request.method, request.path)
        return _error(request, 500, f"internal error in flamenco-peer: {type(exc).__name__}: {exc}; see the peer's log")


async def _forward(request: web.Request) -> web.StreamResponse:
    base = request.app[FORWARD_TO_KEY]
    session = request.app[FORWARD_SESSION_KEY]
    url = base.rstrip("/") + request.rel_url.path_qs
    headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "accept")}
    try:
        async with session.request(request.method, url, data=await request.read(), headers=headers) as resp:
            body = await resp.read()
            out_headers = {k: v for k, v in resp.headers.items() if k.lower() in ("content-type",)}
            return web.Response(status=resp.status, body=body, headers=out_headers)
    except aiohttp.ClientError as exc:
        raise APIError(
            502, f"this peer forwards to the coordinator at {base}, which cannot be reached ({exc}); "
                 "check that the coordinator peer is running",
        ) from None


def build_app(
    *, name: str, coordinator: Coordinator | None, forward_to: str | None = None,
    extra_routes: list[web.RouteDef] | None = None,
) -> web.Application:
    app = web.Application(middlewares=[errors_middleware], client_max_size=64 * 1024 * 1024)
    app[client_api.PEER_NAME_KEY] = name
    if coordinator is not None:
        app[client_api.COORDINATOR_KEY] = coordinator
        app.add_routes(client_api.routes)
        app.add_routes(peer_protocol.routes)
    elif forward_to:
        app[FORWARD_TO_KEY] = forward_to

        async def open_session(app: web.Application) -> None:
            app[FORWARD_SESSION_KEY] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))

        async def close_session(app: web.Application) -> None:
            await app[FORWARD_SESSION_KEY].close()

        app.on_startup.append(open_session)
        app.on_cleanup.append(close_session)
        app.router.add_route("*", "/api/v3/{tail:.*}", _forward)
        app.router.add_route("*", "/job-files/{tail:.*}", _forward)
    if extra_routes:
        app.add_routes(extra_routes)
    return app

