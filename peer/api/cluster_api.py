"""Peer-to-peer cluster calls (msgpack): heartbeats, log pulls, merges; and the
farm status for local clients (JSON, ``flamenco-peer status``)."""

from __future__ import annotations

import time

from aiohttp import web

from ..cluster.manager import ClusterManager
from ..coordinator.service import APIError
from .peer_protocol import PREFIX, pack_response, read_msgpack

CLUSTER_KEY = web.AppKey("cluster", ClusterManager)

routes = web.RouteTableDef()


@routes.post(f"{PREFIX}/cluster/heartbeat")
async def heartbeat(request: web.Request) -> web.Response:
    body = await read_msgpack(request)
    return pack_response(await request.app[CLUSTER_KEY].handle_heartbeat(body))


@routes.post(f"{PREFIX}/cluster/pull")
async def pull(request: web.Request) -> web.Response:
    body = await read_msgpack(request)
    return pack_response(await request.app[CLUSTER_KEY].log_server.pull(body))


@routes.post(f"{PREFIX}/cluster/entries")
async def entries(request: web.Request) -> web.Response:
    body = await read_msgpack(request)
    return pack_response(await request.app[CLUSTER_KEY].log_server.read_entries(body))


@routes.post(f"{PREFIX}/cluster/merge")
async def merge(request: web.Request) -> web.Response:
    body = await read_msgpack(request)
    return pack_response(await request.app[CLUSTER_KEY].handle_merge(body))


@routes.post(f"{PREFIX}/job-types/publish")
async def publish_job_types(request: web.Request) -> web.Response:
    body = await read_msgpack(request)
    peer_id, name = body.get("peer_id"), body.get("name")
    if not isinstance(peer_id, str) or not peer_id or not isinstance(name, str):
        raise APIError(400, "publishing job types needs 'peer_id' and 'name' strings and a 'scripts' map")
    coordinator = request.app[CLUSTER_KEY].coordinator
    return pack_response(await coordinator.publish_job_types(peer_id, name, body.get("scripts")))


@routes.get(f"{PREFIX}/job-types/errors")
async def job_type_errors(request: web.Request) -> web.Response:
    """Job-type scripts that failed to load, with the reason (JSON, for the CLI and dashboard)."""
    coordinator = request.app[CLUSTER_KEY].coordinator
    await coordinator.job_types()  # refreshes the registry first
    return web.json_response([
        {"name": e.name, "path": str(e.path), "message": e.message} for e in coordinator.registry.errors()
    ])


@routes.get(f"{PREFIX}/cluster/status")
async def status(request: web.Request) -> web.Response:
    """This peer's view of the farm: itself and every peer it hears from."""
    cluster = request.app[CLUSTER_KEY]
    now = time.monotonic()
    me = cluster.state()
    me.pop("known", None)
    peers = []
    for m in sorted(cluster.membership.members.values(), key=lambda m: m.state.get("name", "")):
        state = dict(m.state)
        state.pop("known", None)
        state["last_heard_s"] = round(now - m.last_heard, 2)
        state["alive"] = now - m.last_heard <= cluster.settings.lease_s
        peers.append(state)
    return web.json_response({
        "self": me,
        "coordinator": {"peer_id": cluster.leader_id, "url": cluster.coordinator_url() or "", "epoch": cluster.epoch},
        "peers": peers,
        "contacts": cluster.membership.urls_to_contact(),
    })
