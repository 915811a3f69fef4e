"""The client API: Flamenco Manager API v3 paths and payloads (JSON).

The add-on and the CLI use this, exactly as they would talk to a real
Flamenco Manager. Error bodies are Flamenco's ``{"code", "message"}``.
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
from pathlib import Path
from typing import Any

from aiohttp import web

from .. import __version__
from ..coordinator.service import APIError, Coordinator
from ..files.routes import FILES_KEY
from ..files.thumbnails import LastRenderedStore

COORDINATOR_KEY = web.AppKey("coordinator", Coordinator)
PEER_NAME_KEY = web.AppKey("peer_name", str)

FLAMENCO_API_VERSION = "3.9"


def error_response(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"code": status, "message": message, **extra}, status=status)


# A submission this peer rewrote before handling or forwarding it (it packed the
# job's files, see peer/files/job_io.py); read_json returns it instead of the body.
REWRITTEN_BODY_KEY = web.RequestKey("rewritten_body", object)


async def read_json(request: web.Request) -> Any:
    if REWRITTEN_BODY_KEY in request:
        return request[REWRITTEN_BODY_KEY]
    raw = await request.read()
    if not raw:
        raise APIError(400, "the request body is empty; send a JSON document")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise APIError(400, f"the request body is not valid JSON: {exc}") from None


def _coordinator(request: web.Request) -> Coordinator:
    return request.app[COORDINATOR_KEY]


routes = web.RouteTableDef()


@routes.get("/api/v3/version")
async def get_version(request: web.Request) -> web.Response:
    return web.json_response({
        "version": f"{FLAMENCO_API_VERSION} (flamenco-peer {__version__})",
        "shortversion": FLAMENCO_API_VERSION,
        "name": request.app[PEER_NAME_KEY],
        "git": f"flamenco-peer-{__version__}",
    })


@routes.get("/api/v3/status")
async def get_farm_status(request: web.Request) -> web.Response:
    return web.json_response({"status": await _coordinator(request).farm_status()})


@routes.get("/api/v3/configuration")
async def get_configuration(request: web.Request) -> web.Response:
    return web.json_response({"storageLocation": "", "shamanEnabled": False, "isFirstRun": False})


@routes.get("/api/v3/jobs/types")
async def get_job_types(request: web.Request) -> web.Response:
    return web.json_response({"job_types": await _coordinator(request).job_types()})


@routes.get("/api/v3/jobs/last-rendered")
async def fetch_global_last_rendered(request: web.Request) -> web.Response:
    """The most recently rendered image of any job (registered before /jobs/{job_id})."""
    coordinator = _coordinator(request)
    newest = await asyncio.to_thread(_last_rendered_store(request).newest)
    if newest is None:
        return web.Response(status=204)
    return web.json_response(_last_rendered_info(coordinator.logs.root, newest))


@routes.get("/api/v3/jobs/type/{name}")
async def get_job_type(request: web.Request) -> web.Response:
    return web.json_response(await _coordinator(request).job_type(request.match_info["name"]))


@routes.get("/api/v3/jobs")
async def fetch_jobs(request: web.Request) -> web.Response:
    return web.json_response({"jobs": await _coordinator(request).list_jobs()})


@routes.post("/api/v3/jobs")
async def submit_job(request: web.Request) -> web.Response:
    job = await _coordinator(request).submit_job(await read_json(request))
    return web.json_response(job)


@routes.post("/api/v3/jobs/check")
async def submit_job_check(request: web.Request) -> web.Response:
    await _coordinator(request).submit_job(await read_json(request), check_only=True)
    return web.Response(status=204)


@routes.get("/api/v3/jobs/{job_id}")
async def fetch_job(request: web.Request) -> web.Response:
    return web.json_response(await _coordinator(request).get_job(request.match_info["job_id"]))


@routes.delete("/api/v3/jobs/{job_id}")
async def delete_job(request: web.Request) -> web.Response:
    await _coordinator(request).delete_job(request.match_info["job_id"])
    return web.Response(status=204)


@routes.get("/api/v3/jobs/{job_id}/tasks")
async def fetch_job_tasks(request: web.Request) -> web.Response:
    return web.json_response({"tasks": await _coordinator(request).job_tasks(request.match_info["job_id"])})


@routes.post("/api/v3/jobs/{job_id}/setstatus")
async def set_job_status(request: web.Request) -> web.Response:
    body = await read_json(request)
    if not isinstance(body, dict) or not isinstance(body.get("status"), str):
        raise APIError(400, "send {\"status\": \"cancel-requested|pause-requested|requeueing\", \"reason\": \"...\"}")
    reason = body.get("reason") or ""
    if not isinstance(reason, str):
        raise APIError(400, "'reason' must be a string")
    await _coordinator(request).set_job_status(request.match_info["job_id"], body["status"], reason)
    return web.Response(status=204)


@routes.post("/api/v3/jobs/{job_id}/setpriority")
async def set_job_priority(request: web.Request) -> web.Response:
    body = await read_json(request)
    priority = body.get("priority") if isinstance(body, dict) else None
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 100:
        raise APIError(400, f"'priority' must be an integer from 0 to 100, got {priority!r}")
    await _coordinator(request).set_job_priority(request.match_info["job_id"], priority)
    return web.Response(status=204)


@routes.get("/api/v3/jobs/{job_id}/last-rendered")
async def fetch_job_last_rendered(request: web.Request) -> web.Response:
    coordinator = _coordinator(request)
    job = await coordinator.get_job(request.match_info["job_id"])
    image = _last_rendered_store(request).path_for(job["id"])
    if not await asyncio.to_thread(image.is_file):
        return web.Response(status=204)
    return web.json_response(_last_rendered_info(coordinator.logs.root, image))


def _last_rendered_info(root: Path, image: Path) -> dict[str, Any]:
    """Flamenco's JobLastRenderedImageInfo: ``{base}/{suffix}`` is the image's URL.
    Workers send one size (a thumbnail), so there is one suffix."""
    return {"base": "/job-files/" + image.parent.relative_to(root).as_posix(), "suffixes": [image.name]}


def _last_rendered_store(request: web.Request) -> LastRenderedStore:
    """The store the file routes save workers' thumbnails with (it knows the newest
    without a scan); a peer without file routes reads the same folder afresh."""
    files = request.app.get(FILES_KEY)
    if files is not None and files.last_rendered is not None:
        return files.last_rendered
    return LastRenderedStore(_coordinator(request).logs.root)


@routes.get("/api/v3/jobs/{job_id}/blocklist")
async def fetch_job_blocklist(request: web.Request) -> web.Response:
    return web.json_response(await _coordinator(request).job_blocklist(request.match_info["job_id"]))


@routes.delete("/api/v3/jobs/{job_id}/blocklist")
async def remove_job_blocklist(request: web.Request) -> web.Response:
    """Flamenco removes the listed (worker, task type) entries; an empty or missing
    body removes them all (what a person clearing the blocklist wants)."""
    raw = await request.read()
    entries: list[tuple[str, str]] | None = None
    if raw.strip():
        body = await read_json(request)
        if not isinstance(body, list) or not all(
            isinstance(e, dict) and isinstance(e.get("worker_id"), str) and isinstance(e.get("task_type"), str)
            for e in body
        ):
            raise APIError(400, "the body must be a list of {\"worker_id\": ..., \"task_type\": ...} entries "
                                "(or empty, to clear the whole blocklist)")
        entries = [(e["worker_id"], e["task_type"]) for e in body] or None
    await _coordinator(request).remove_from_blocklist(request.match_info["job_id"], entries)
    return web.Response(status=204)


@routes.get("/api/v3/tasks/{task_id}")
async def fetch_task(request: web.Request) -> web.Response:
    return web.json_response(await _coordinator(request).get_task(request.match_info["task_id"]))


@routes.get("/api/v3/tasks/{task_id}/logtail")
async def fetch_task_log_tail(request: web.Request) -> web.Response:
    tail = await _coordinator(request).task_log_tail(request.match_info["task_id"])
    if not tail:
        return web.Response(status=204)
    return web.Response(text=tail, content_type="text/plain")


@routes.get("/api/v3/tasks/{task_id}/log")
async def fetch_task_log_info(request: web.Request) -> web.Response:
    coordinator = _coordinator(request)
    task = await coordinator.get_task(request.match_info["task_id"])
    path = coordinator.logs.path_for(task["id"], task["job_id"])
    size = await coordinator.db.run(coordinator.logs.size, path)
    if size == 0:
        return web.Response(status=204)
    url = "/job-files/" + path.relative_to(coordinator.logs.root).as_posix()
    return web.json_response({"task_id": task["id"], "job_id": task["job_id"], "url": url, "size": size})


@routes.post("/api/v3/tasks/{task_id}/setstatus")
async def set_task_status(request: web.Request) -> web.Response:
    body = await read_json(request)
    if not isinstance(body, dict) or not isinstance(body.get("status"), str):
        raise APIError(400, "send {\"status\": \"queued|canceled\", \"reason\": \"...\"}")
    await _coordinator(request).set_task_status(
        request.match_info["task_id"], body["status"], str(body.get("reason") or ""))
    return web.Response(status=204)


@routes.get("/api/v3/worker-mgt/workers")
async def fetch_workers(request: web.Request) -> web.Response:
    return web.json_response({"workers": await _coordinator(request).list_workers()})


@routes.get("/api/v3/worker-mgt/workers/{worker_id}")
async def fetch_worker(request: web.Request) -> web.Response:
    return web.json_response(await _coordinator(request).get_worker(request.match_info["worker_id"]))


@routes.post("/api/v3/worker-mgt/workers/{worker_id}/setstatus")
async def request_worker_status(request: web.Request) -> web.Response:
    """Send a worker to sleep or wake it (Flamenco's WorkerStatusChangeRequest)."""
    body = await read_json(request)
    if not isinstance(body, dict) or not isinstance(body.get("status"), str) \
            or not isinstance(body.get("is_lazy", False), bool):
        raise APIError(400, "send {\"status\": \"asleep\" or \"awake\", \"is_lazy\": true or false}; "
                            "is_lazy lets the worker finish its current task first")
    await _coordinator(request).request_worker_status(
        request.match_info["worker_id"], body["status"], bool(body.get("is_lazy", False)))
    return web.Response(status=204)


@routes.get("/job-files/{path:.+}")
async def job_files(request: web.Request) -> web.StreamResponse:
    coordinator = _coordinator(request)
    root = coordinator.logs.root.resolve()
    target = (root / request.match_info["path"]).resolve()
    # File names come from the network: never serve anything outside logs/.
    if root not in target.parents or not target.is_file():
        raise APIError(404, "no such job file")
    content_type = mimetypes.guess_type(target.name)[0] or "text/plain"
    if content_type.startswith("text/"):
        content_type += "; charset=utf-8"
    return web.FileResponse(target, headers={"Content-Type": content_type})

