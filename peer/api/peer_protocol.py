"""The peer protocol: what workers say to the coordinator (msgpack over HTTP).

Not part of Flamenco's API: peers are all ours, so the wire format is compact
msgpack and the calls are shaped for long-polling. Every body is a msgpack
map; errors are ``{"code", "message"}`` maps with the HTTP status.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..coordinator.service import APIError, TaskUpdate
from ..wire import msgpack_response, unpack
from .client_api import COORDINATOR_KEY

PREFIX = "/peer/v1"

routes = web.RouteTableDef()


def pack_response(body: Any, status: int = 200) -> web.Response:
    return msgpack_response(body, status)


async def read_msgpack(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = unpack(raw) if raw else {}
    except Exception as exc:  # msgpack raises several unrelated types
        raise APIError(400, f"request body is not valid msgpack: {exc}") from None
    if not isinstance(body, dict):
        raise APIError(400, "request body must be a msgpack map")
    return body


def _str(body: dict[str, Any], key: str, required: bool = True) -> str:
    value = body.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise APIError(400, f"field {key!r} is required and must be a string")
    return value


def _wait_s(body: dict[str, Any]) -> float:
    """A long-poll's ``wait_s`` (default 10 s)."""
    wait_s = body.get("wait_s", 10.0)
    if not isinstance(wait_s, (int, float)) or wait_s < 0:
        raise APIError(400, "field 'wait_s' must be a non-negative number")
    return float(wait_s)


@routes.post(f"{PREFIX}/worker/sign-on")
async def sign_on(request: web.Request) -> web.Response:
    body = await read_msgpack(request)
    types = body.get("supported_task_types")
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise APIError(400, "field 'supported_task_types' must be a list of strings")
    current = body.get("current_task")
    prefetched = body.get("prefetched_task")
    tags = body.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise APIError(400, "field 'tags' must be a list of strings")
    await request.app[COORDINATOR_KEY].sign_on(
        worker_id=_str(body, "worker_id"), name=_str(body, "name"),
        address=_str(body, "address", required=False) or (request.remote or ""),
        platform=_str(body, "platform", required=False), software=_str(body, "software", required=False),
        supported_task_types=types, current_task=current if isinstance(current, str) else None, tags=tags,
        prefetched_task=prefetched if isinstance(prefetched, str) else None,
    )
    return pack_response({"ok": True})


@routes.post(f"{PREFIX}/worker/sign-off")
async def sign_off(request: web.Request) -> web.Response:
    body = await read_msgpack(request)
    await request.app[COORDINATOR_KEY].sign_off(_str(body, "worker_id"))
    return pack_response({"ok": True})


@routes.post(f"{PREFIX}/worker/claim")
async def claim(request: web.Request) -> web.Response:
    body = await read_msgpack(request)
    wait_s = _wait_s(body)
    prefetch_after = body.get("prefetch_after")
    if prefetch_after is not None and (not isinstance(prefetch_after, str) or not prefetch_after):
        raise APIError(400, "field 'prefetch_after' must be the id of the task the worker runs")
    answer = await request.app[COORDINATOR_KEY].claim_task(
        _str(body, "worker_id"), wait_s, prefetch_after=prefetch_after)
    if answer is None:
        return web.Response(status=204)
    return pack_response(answer)


@routes.post(f"{PREFIX}/worker/task-update")
async def task_update(request: web.Request) -> web.Response:
    body = await read_msgpack(request)
    steps = body.get("steps_completed")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
        raise APIError(400, "field 'steps_completed' must be a non-negative integer")
    stream, seq = body.get("update_stream"), body.get("update_seq")
    if stream is not None and (not isinstance(stream, str) or not stream):
        raise APIError(400, "field 'update_stream' must be a non-empty string")
    if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int) or seq < 1):
        raise APIError(400, "field 'update_seq' must be a positive integer")
    update = TaskUpdate(
        update_stream=stream, update_seq=seq,
        task_status=body.get("task_status") or None,
        activity=body.get("activity") if isinstance(body.get("activity"), str) else None,
        log=body.get("log") if isinstance(body.get("log"), str) else None,
        steps_completed=steps,
    )
    coordinator = request.app[COORDINATOR_KEY]
    worker_id = _str(body, "worker_id")
    # A final report may also claim the next task, in the same transaction:
    # saves the worker a round trip and the coordinator a commit between tasks.
    claim_next = bool(body.get("claim_next")) and update.task_status in ("completed", "failed")
    result = await coordinator.task_update(worker_id, _str(body, "task_id"), update, claim_next=claim_next)
    return pack_response(result)


@routes.post(f"{PREFIX}/worker/watch")
async def watch(request: web.Request) -> web.Response:
    """Long-poll while a task runs: answers at once when the task must stop."""
    body = await read_msgpack(request)
    wait_s = _wait_s(body)
    verdict = await request.app[COORDINATOR_KEY].watch_task(
        _str(body, "worker_id"), _str(body, "task_id"), wait_s)
    return pack_response(verdict)


@routes.post(f"{PREFIX}/worker/state")
async def worker_state(request: web.Request) -> web.Response:
    """Long-poll for a worker sent to sleep: answers when it is asked to wake."""
    body = await read_msgpack(request)
    wait_s = _wait_s(body)
    return pack_response(await request.app[COORDINATOR_KEY].worker_state(_str(body, "worker_id"), wait_s))


@routes.post(f"{PREFIX}/worker/state-changed")
async def worker_state_changed(request: web.Request) -> web.Response:
    """The worker went to sleep or woke up, as it was asked."""
    body = await read_msgpack(request)
    await request.app[COORDINATOR_KEY].worker_status_changed(_str(body, "worker_id"), _str(body, "status"))
    return pack_response({"ok": True})
