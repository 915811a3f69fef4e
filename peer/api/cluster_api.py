"""Peer-to-peer cluster calls (msgpack): heartbeats, log pulls, merges; and the
farm status for local clients (JSON, ``flamenco-peer status``)."""

from __future__ import annotations

import time

from aiohttp import web

from ..cluster.manager import ClusterManager
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


@routes.post(f"{PREFIX}/cluster/merge")
async def merge(request: web.Request) -> web.Response:
    body = await read_msgpack(request)
    return pack_response(await request.app[CLUSTER_KEY].handle_merge(body))


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
