"""HTTP routes of the file layer, served by every peer under ``/peer/v1/files/``.

    GET  /peer/v1/files/blob/{sha256}/{size}       a blob's bytes; HTTP Range for resuming
    POST /peer/v1/files/have                       msgpack {blobs: [[sha, size], ...]}
                                                   -> {have: [[sha, size], ...], load, max_uploads}
    GET  /peer/v1/files/outputs/{job_id}?path&size&sha256          -> {offset, complete}
    PUT  /peer/v1/files/outputs/{job_id}?path&size&sha256&offset   body: bytes from offset
    GET  /peer/v1/files/outputs/{job_id}/list      -> {files: [[path, size], ...]} (the owner's outputs so far)
    GET  /peer/v1/files/outputs/{job_id}/file?path a finished output's bytes (for tasks that read
                                                   earlier tasks' outputs, e.g. frames-to-video)
    POST /peer/v1/files/last-rendered/{job_id}     body: a JPEG thumbnail (coordinator)

Other computers reach these only with a farm signature (the peer's auth
middleware). Errors are msgpack ``{code, message}`` maps, like the rest of
the peer protocol. A peer serving as many uploads as ``ServeLimits`` allow
answers 503 with ``Retry-After``: the fetcher then tries a less busy peer.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

import msgpack
from aiohttp import web

from .names import UnsafePath, safe_join
from .outputs import INCOMING, MAX_CHUNK, OutputReceiver, OutputRefused, OutputRootResolver, check_job_id
from .store import BadBlobRef, BlobRef, ContentStore
from .thumbnails import MAX_THUMBNAIL_BYTES, LastRenderedStore

log = logging.getLogger(__name__)

PREFIX = "/peer/v1/files"
MSGPACK = "application/msgpack"
MAX_HAVE_BLOBS = 100_000
MAX_LISTED_OUTPUTS = 100_000


@dataclass(frozen=True)
class ServeLimits:
    max_uploads: int = 8  # blob downloads this peer serves at once
    max_uploads_per_blob: int = 2  # so a blob many workers want spreads through them


LastRenderedCallback = Callable[[str, Path], "Awaitable[None] | None"]


class FilesServer:
    """The state behind the routes: the store, upload counters, the output receiver."""

    def __init__(self, store: ContentStore, *, resolve_output_root: OutputRootResolver | None,
                 job_files_root: Path | None, on_last_rendered: LastRenderedCallback | None = None,
                 limits: ServeLimits = ServeLimits()) -> None:
        self.store = store
        self.limits = limits
        self.receiver = OutputReceiver(resolve_output_root) if resolve_output_root is not None else None
        self.last_rendered = LastRenderedStore(job_files_root) if job_files_root is not None else None
        self.on_last_rendered = on_last_rendered
        self.uploads = 0
        self.uploads_by_blob: Counter[BlobRef] = Counter()
        self.served_bytes = 0


FILES_KEY = web.AppKey("files_server", FilesServer)


def _pack(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=msgpack.packb(body, use_bin_type=True), status=status, content_type=MSGPACK,
                        headers=headers)


def _error(status: int, message: str, *, headers: dict[str, str] | None = None, **extra: object) -> web.Response:
    return _pack({"code": status, "message": message, **extra}, status=status, headers=headers)


class _BlobResponse(web.FileResponse):
    """A FileResponse the handler sends itself (to count the upload while it runs);
    aiohttp's own later ``prepare`` call must then do nothing."""

    async def prepare(self, request: web.BaseRequest):  # type: ignore[no-untyped-def]
        if self.prepared:
            return None
        return await super().prepare(request)


def _server(request: web.Request) -> FilesServer:
    return request.app[FILES_KEY]


async def get_blob(request: web.Request) -> web.StreamResponse:
    server = _server(request)
    try:
        ref = BlobRef(request.match_info["sha256"], int(request.match_info["size"]))
    except (BadBlobRef, ValueError) as exc:
        return _error(400, f"bad blob address: {exc}")
    if not await asyncio.to_thread(server.store.has, ref):
        return _error(404, f"this peer does not have blob {ref.short}; ask another peer")
    limits = server.limits
    if server.uploads >= limits.max_uploads or server.uploads_by_blob[ref] >= limits.max_uploads_per_blob:
        return _error(503, f"this peer is serving {server.uploads} downloads; fetch from a less busy peer or retry",
                      load=server.uploads, headers={"Retry-After": "1"})
    server.uploads += 1
    server.uploads_by_blob[ref] += 1
    try:
        path = await asyncio.to_thread(server.store.path_of, ref)
        response = _BlobResponse(path, chunk_size=1 << 20, headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)  # sends the file (sendfile where possible), honouring Range
        server.served_bytes += response.content_length or 0
        return response
    finally:
        server.uploads -= 1
        server.uploads_by_blob[ref] -= 1
        if server.uploads_by_blob[ref] <= 0:
            del server.uploads_by_blob[ref]


async def have(request: web.Request) -> web.Response:
    server = _server(request)
    try:
        body = msgpack.unpackb(await request.read(), raw=False)
    except Exception as exc:  # msgpack raises several unrelated types
        return _error(400, f"request body is not valid msgpack: {exc}")
    blobs = body.get("blobs") if isinstance(body, dict) else None
    if not isinstance(blobs, list):
        return _error(400, "send {blobs: [[sha256, size], ...]}")
    if len(blobs) > MAX_HAVE_BLOBS:
        return _error(413, f"ask about at most {MAX_HAVE_BLOBS} blobs at once")
    try:
        refs = [BlobRef.parse(item) for item in blobs]
    except BadBlobRef as exc:
        return _error(400, str(exc))
    held = await asyncio.to_thread(lambda: [r.to_wire() for r in refs if server.store.has(r)])
    return _pack({"have": held, "load": server.uploads, "max_uploads": server.limits.max_uploads})


def _int_param(request: web.Request, name: str) -> int | None:
    value = request.query.get(name)
    if value is None or not value.isdigit() or len(value) > 16:
        return None
    return int(value)


async def output_status(request: web.Request) -> web.Response:
    server = _server(request)
    if server.receiver is None:
        return _error(404, "this peer does not receive outputs")
    try:
        answer = await server.receiver.status(
            request.match_info["job_id"], request.query.get("path"), _int_param(request, "size"),
            request.query.get("sha256"))
    except OutputRefused as exc:
        return _error(exc.status, exc.message, **exc.extra)
    return _pack(answer)


async def output_put(request: web.Request) -> web.Response:
    server = _server(request)
    if server.receiver is None:
        return _error(404, "this peer does not receive outputs")
    if request.content_length is not None and request.content_length > MAX_CHUNK:
        return _error(413, f"send outputs in chunks of at most {MAX_CHUNK} bytes")
    data = await request.read()
    if len(data) > MAX_CHUNK:
        return _error(413, f"send outputs in chunks of at most {MAX_CHUNK} bytes")
    try:
        answer = await server.receiver.put_chunk(
            request.match_info["job_id"], request.query.get("path"), _int_param(request, "size"),
            request.query.get("sha256"), _int_param(request, "offset"), data)
    except OutputRefused as exc:
        return _error(exc.status, exc.message, **exc.extra)
    return _pack(answer)


async def _owned_root(request: web.Request) -> Path | web.Response:
    server = _server(request)
    if server.receiver is None:
        return _error(404, "this peer does not keep outputs")
    try:
        return await server.receiver._root(check_job_id(request.match_info["job_id"]))
    except OutputRefused as exc:
        return _error(exc.status, exc.message)


def _list_outputs(root: Path) -> list[list[object]]:
    found: list[list[object]] = []
    if not root.is_dir():
        return found
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] == INCOMING or not path.is_file() or path.is_symlink():
            continue
        found.append([rel.as_posix(), path.stat().st_size])
        if len(found) >= MAX_LISTED_OUTPUTS:
            break
    return found


async def output_list(request: web.Request) -> web.Response:
    root = await _owned_root(request)
    if isinstance(root, web.Response):
        return root
    return _pack({"files": await asyncio.to_thread(_list_outputs, root)})


async def output_file(request: web.Request) -> web.StreamResponse:
    root = await _owned_root(request)
    if isinstance(root, web.Response):
        return root
    try:
        path = safe_join(root, request.query.get("path"))
    except UnsafePath as exc:
        return _error(400, f"output path refused: {exc}")
    if not path.is_file() or path.is_symlink():
        return _error(404, f"no output {request.query.get('path')!r} for this job (yet)")
    return web.FileResponse(path)


async def post_last_rendered(request: web.Request) -> web.Response:
    server = _server(request)
    if server.last_rendered is None:
        return _error(404, "this peer does not keep last-rendered images")
    if request.content_length is not None and request.content_length > MAX_THUMBNAIL_BYTES:
        return _error(413, f"a thumbnail may be at most {MAX_THUMBNAIL_BYTES} bytes")
    data = await request.read()
    job_id = request.match_info["job_id"]
    try:
        path = await asyncio.to_thread(server.last_rendered.save, job_id, data)
    except OutputRefused as exc:
        return _error(exc.status, exc.message)
    if server.on_last_rendered is not None:
        result = server.on_last_rendered(job_id, path)
        if inspect.isawaitable(result):
            await result
    return _pack({"ok": True})


def add_routes(
    app: web.Application, store: ContentStore, *,
    resolve_output_root: OutputRootResolver | None = None,
    job_files_root: Path | None = None,
    on_last_rendered: LastRenderedCallback | None = None,
    limits: ServeLimits = ServeLimits(),
) -> FilesServer:
    """Serve ``store`` and receive outputs and thumbnails on ``app``; returns the server state.

    ``resolve_output_root(job_id)`` (sync or async) gives the folder where a job's
    outputs go on this peer, or None for a job it does not own; without it the
    outputs routes answer 404. ``job_files_root``: where last-rendered images
    go (the folder ``/job-files/`` serves); ``on_last_rendered(job_id, path)`` runs
    after one was stored.
    """
    server = FilesServer(store, resolve_output_root=resolve_output_root, job_files_root=job_files_root,
                         on_last_rendered=on_last_rendered, limits=limits)
    app[FILES_KEY] = server
    app.router.add_get(PREFIX + r"/blob/{sha256}/{size}", get_blob)
    app.router.add_post(PREFIX + "/have", have)
    app.router.add_get(PREFIX + "/outputs/{job_id}", output_status)
    app.router.add_put(PREFIX + "/outputs/{job_id}", output_put)
    app.router.add_get(PREFIX + "/outputs/{job_id}/list", output_list)
    app.router.add_get(PREFIX + "/outputs/{job_id}/file", output_file)
    app.router.add_post(PREFIX + "/last-rendered/{job_id}", post_last_rendered)
    return server
