"""Assemble the peer's aiohttp application.

The coordinating peer serves the client API and the peer protocol itself.
Every other peer forwards the client API to the coordinator, so the add-on and
the CLI only ever need their local peer's address.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Awaitable, Callable

import aiohttp
from aiohttp import web

from ..cluster.auth import is_loopback
from ..cluster.election import COORDINATOR
from ..cluster.identity import FarmIdentity
from ..cluster.manager import ClusterManager
from ..coordinator.service import APIError, Coordinator
from ..files.job_io import SubmissionError
from ..web import server as dashboard
from . import client_api, cluster_api, peer_protocol

log = logging.getLogger(__name__)

FORWARD_SESSION_KEY = web.AppKey("forward_session", aiohttp.ClientSession)

# Client-API requests a follower answers itself instead of forwarding.
_ANSWERED_LOCALLY = ("/api/v3/version",)
# How long a forwarded request waits for an election to produce a coordinator.
ELECTION_WAIT_S = 5.0

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


# Peer-protocol paths that are about the farm's coordinator state, for local clients.
_FORWARDED_PEER_PATHS = ("/peer/v1/job-types/errors",)


def _forwarded(path: str) -> bool:
    if path in _FORWARDED_PEER_PATHS:
        return True
    return (path.startswith("/api/v3/") or path.startswith("/job-files/")) and path not in _ANSWERED_LOCALLY


def coordinator_router(cluster: ClusterManager) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Serve the client API here while this peer coordinates; otherwise pass it on.

    So the add-on and the CLI only ever talk to their local peer, whoever
    coordinates the farm at the moment.
    """

    @web.middleware
    async def route(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not _forwarded(request.path) or cluster.role == COORDINATOR:
            return await handler(request)
        target = await cluster.wait_for_coordinator(ELECTION_WAIT_S)
        if target is None or target == cluster.url:
            if cluster.role == COORDINATOR:
                return await handler(request)
            raise APIError(
                503, f"the farm has no coordinator right now ({cluster.waiting_reason}); "
                     "it elects one within seconds when peers are reachable — retry shortly, "
                     "and check `flamenco-peer status`",
            )
        return await _forward(request, target)

    return route


# Only the submission itself is packed: the check compiles the job, which needs
# no files, and packing there too would hash every project twice and pin blobs
# for checks never followed by a submission.
SUBMISSION_PATHS = ("/api/v3/jobs",)


def job_files_packer(
    prepare: Callable[[Any], Awaitable[Any]],
) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Pack a submitted job's .blend on the peer it was submitted to.

    Only for clients on this computer (the add-on, the CLI): the .blend path in
    the job is a path on this machine. ``prepare(body) -> body`` adds the
    job's files (peer/files/job_io.py); the coordinator, wherever it is, then
    stores the job with them.
    """

    @web.middleware
    async def pack(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != "POST" or request.path not in SUBMISSION_PATHS or not is_loopback(request.remote):
            return await handler(request)
        body = await client_api.read_json(request)
        try:
            request[client_api.REWRITTEN_BODY_KEY] = await prepare(body)
        except SubmissionError as exc:
            raise APIError(400, f"cannot send this job's files to the farm: {exc}") from None
        return await handler(request)

    return pack


async def _forward(request: web.Request, base: str) -> web.StreamResponse:
    session = request.app[FORWARD_SESSION_KEY]
    url = base.rstrip("/") + request.rel_url.path_qs
    headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "accept")}
    if client_api.REWRITTEN_BODY_KEY in request:
        data = json.dumps(request[client_api.REWRITTEN_BODY_KEY]).encode()
    else:
        data = await request.read()
    try:
        async with session.request(
            request.method, url, data=data, headers=headers,
            timeout=aiohttp.ClientTimeout(total=120),
        ) as resp:
            body = await resp.read()
            out_headers = {k: v for k, v in resp.headers.items() if k.lower() in ("content-type",)}
            return web.Response(status=resp.status, body=body, headers=out_headers)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise APIError(
            502, f"this peer forwards to the coordinator at {base}, which cannot be reached "
                 f"({exc or type(exc).__name__}); the farm elects a new one within seconds if it is gone — retry",
        ) from None


def build_app(
    *, name: str, coordinator: Coordinator,
    cluster: ClusterManager | None = None,
    forward_session: aiohttp.ClientSession | None = None,
    auth: Callable[[web.Request, Handler], Awaitable[web.StreamResponse]] | None = None,
    extra_routes: list[web.RouteDef] | None = None,
    identity: FarmIdentity | None = None,
    packer: Callable[[web.Request, Handler], Awaitable[web.StreamResponse]] | None = None,
) -> web.Application:
    """The peer's HTTP surface. Without ``cluster`` the coordinator serves
    everything itself (tests and single-process tools). ``identity`` lets
    browsers on other computers log in to the dashboard with the join code."""
    # The dashboard's gate goes first: strangers must reach its login form.
    middlewares: list[Any] = [dashboard.gate, *(m for m in (auth,) if m is not None)]
    middlewares.append(errors_middleware)
    if packer is not None:  # before routing: a follower forwards the packed submission
        middlewares.append(packer)
    app = web.Application(middlewares=middlewares, client_max_size=64 * 1024 * 1024)
    app[client_api.PEER_NAME_KEY] = name
    app[client_api.COORDINATOR_KEY] = coordinator
    app.add_routes(client_api.routes)
    app.add_routes(peer_protocol.routes)
    if cluster is not None:
        if forward_session is None:
            raise ValueError("a peer in a cluster needs a forward_session (signed for the farm)")
        app.middlewares.append(coordinator_router(cluster))
        app[cluster_api.CLUSTER_KEY] = cluster
        app[FORWARD_SESSION_KEY] = forward_session
        app.add_routes(cluster_api.routes)
    if extra_routes:
        app.add_routes(extra_routes)
    dashboard.install(app, name=name, coordinator=coordinator, cluster=cluster, identity=identity)
    return app
