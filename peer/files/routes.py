"""HTTP routes of the file layer, served by every peer under ``/peer/v1/files/``.

    GET  /peer/v1/files/blob/{sha256}/{size}       a blob's bytes; HTTP Range for resuming
    POST /peer/v1/files/have                       msgpack {blobs: [[sha, size], ...]}
                                                   -> {have: [[sha, size], ...], load, max_uploads,
                                                       receiving: [[sha, size, bytes so far], ...], store}
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

A peer serves a blob it is still downloading, too (``receiving`` in the
``have`` answer): the response streams the bytes written so far and then
follows the download as it grows, so a big file flows through a chain of
peers at once instead of in rounds of whole copies. If that download stops
short, the response is cut and the fetcher resumes from another source.
Those bytes are unverified at this point; every fetcher checks the whole
blob's SHA-256 before it keeps it. ``store`` identifies the store, so a
fetcher never picks its own peer as a source.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

from aiohttp import hdrs, web

from ..wire import msgpack_response, unpack
from .names import UnsafePath, safe_join
from .outputs import INCOMING, MAX_CHUNK, OutputReceiver, OutputRefused, OutputRootResolver, check_job_id
from .store import BadBlobRef, BlobRef, ContentStore, PartialBlob
from .thumbnails import MAX_THUMBNAIL_BYTES, LastRenderedStore

log = logging.getLogger(__name__)

PREFIX = "/peer/v1/files"
MAX_HAVE_BLOBS = 100_000
MAX_LISTED_OUTPUTS = 100_000
# How often a response that follows a growing download looks for new bytes.
FOLLOW_POLL_MIN_S = 0.002
FOLLOW_POLL_MAX_S = 0.05


@dataclass(frozen=True)
class ServeLimits:
    max_uploads: int = 8  # blob downloads this peer serves at once
    max_uploads_per_blob: int = 2  # so a blob many workers want spreads through them


LastRenderedCallback = Callable[[str, Path], "Awaitable[None] | None"]
# Where this peer, as a worker, keeps its outputs of another peer's job; None when it has
# none. Called in a thread (it looks at the disk) with the job id as the request sent it.
WorkerOutputsResolver = Callable[[str], "Path | None"]


class FilesServer:
    """The state behind the routes: the store, upload counters, the output receiver."""

    def __init__(self, store: ContentStore, *, resolve_output_root: OutputRootResolver | None,
                 job_files_root: Path | None, on_last_rendered: LastRenderedCallback | None = None,
                 limits: ServeLimits = ServeLimits(),
                 resolve_worker_outputs: WorkerOutputsResolver | None = None) -> None:
        self.store = store
        self.resolve_worker_outputs = resolve_worker_outputs
        self.limits = limits
        self.receiver = OutputReceiver(resolve_output_root) if resolve_output_root is not None else None
        self.last_rendered = LastRenderedStore(job_files_root) if job_files_root is not None else None
        self.on_last_rendered = on_last_rendered
        self.uploads = 0
        self.uploads_by_blob: Counter[BlobRef] = Counter()
        self.served_bytes = 0


FILES_KEY = web.AppKey("files_server", FilesServer)


_pack = msgpack_response


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
    growing: PartialBlob | None = None
    if not await asyncio.to_thread(server.store.has, ref):
        growing = server.store.receiving(ref)
        if growing is None:
            return _error(404, f"this peer does not have blob {ref.short}; ask another peer")
    limits = server.limits
    if server.uploads >= limits.max_uploads or server.uploads_by_blob[ref] >= limits.max_uploads_per_blob:
        return _error(503, f"this peer is serving {server.uploads} downloads; fetch from a less busy peer or retry",
                      load=server.uploads, headers={"Retry-After": "1"})
    server.uploads += 1
    server.uploads_by_blob[ref] += 1
    try:
        if growing is not None:
            return await _send_growing(request, server, growing)
        return await _send_stored(request, server, ref)
    finally:
        server.uploads -= 1
        server.uploads_by_blob[ref] -= 1
        if server.uploads_by_blob[ref] <= 0:
            del server.uploads_by_blob[ref]


async def _send_stored(request: web.Request, server: FilesServer, ref: BlobRef) -> web.StreamResponse:
    path = await asyncio.to_thread(server.store.path_of, ref)
    response = _BlobResponse(path, chunk_size=1 << 20, headers={"Content-Type": "application/octet-stream"})
    await response.prepare(request)  # sends the file (sendfile where possible), honouring Range
    server.served_bytes += response.content_length or 0
    return response


def _requested_span(request: web.Request, size: int) -> tuple[int, int] | None:
    """``(start, end)`` (end exclusive) of a ``Range: bytes=a-`` or ``bytes=a-b`` header (the whole
    blob without one); None if unusable."""
    header = request.headers.get(hdrs.RANGE)
    if header is None:
        return 0, size
    if "=-" in header:
        return None  # a suffix range, which the fetcher never asks for (aiohttp reads bytes=-0 as bytes=0-)
    try:
        wanted = request.http_range
    except ValueError:
        return None  # not a single "bytes=" range: another unit, a list, or end before start
    end = size if wanted.stop is None else min(wanted.stop, size)
    if wanted.start >= end:
        return None
    return wanted.start, end


async def _send_growing(request: web.Request, server: FilesServer, growing: PartialBlob) -> web.StreamResponse:
    """Stream a blob this peer is still downloading: what is written, then the rest as it arrives."""
    ref = growing.ref
    span = _requested_span(request, ref.size)
    if span is None:
        return _error(416, f"blob {ref.short}: send Range as bytes=START- or bytes=START-END within its size",
                      headers={"Content-Range": f"bytes */{ref.size}"})
    start, end = span
    generation = growing.generation
    try:
        file = await asyncio.to_thread(open, growing.path, "rb")
    except FileNotFoundError:
        # Stored (renamed) or thrown away between our checks.
        if await asyncio.to_thread(server.store.has, ref):
            return await _send_stored(request, server, ref)
        return _error(404, f"this peer does not have blob {ref.short}; ask another peer")
    try:
        headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        if "Range" in request.headers:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{ref.size}"
        response = web.StreamResponse(status=206 if "Range" in request.headers else 200, headers=headers)
        response.content_length = end - start
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        sent = await _follow(request, server, growing, generation, file, start, end)
    finally:
        await asyncio.to_thread(file.close)
    if sent < end:
        # The download stopped short or its bytes were dropped: cut the response, so the
        # fetcher keeps what it got and resumes from another source.
        if request.transport is not None:
            request.transport.abort()
        return response
    await response.write_eof()
    return response


async def _follow(request: web.Request, server: FilesServer, growing: PartialBlob, generation: int,
                  file: Any, start: int, end: int) -> int:
    """Send ``file[start:end]`` as the download writes it; returns where sending stopped."""
    loop = asyncio.get_running_loop()
    sent = start
    pause = FOLLOW_POLL_MIN_S
    while sent < end:
        if growing.generation != generation:
            break  # bytes already sent may no longer be the file's
        state = growing.state
        available = end if state == PartialBlob.STORED else min(growing.offset, end)
        if available > sent:
            transport = request.transport
            if transport is None or transport.is_closing():
                break
            wanted = available - sent
            count = await loop.sendfile(transport, file, sent, wanted)
            server.served_bytes += count
            sent += count
            if count < wanted:
                break  # the file is shorter than its download said: it started over
            pause = FOLLOW_POLL_MIN_S
        elif state != PartialBlob.RECEIVING:
            break
        else:
            await asyncio.sleep(pause)
            pause = min(pause * 2, FOLLOW_POLL_MAX_S)
    return sent


async def have(request: web.Request) -> web.Response:
    server = _server(request)
    try:
        body = unpack(await request.read())
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
    store = server.store
    held = await asyncio.to_thread(lambda: [r for r in refs if store.has(r)])
    held_set = set(held)
    receiving = store.receiving_offsets(r for r in refs if r not in held_set)
    return _pack({
        "have": [r.to_wire() for r in held], "load": server.uploads, "max_uploads": server.limits.max_uploads,
        "receiving": [[r.sha256, r.size, offset] for r, offset in receiving.items()], "store": store.store_id,
    })


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


async def _readable_root(request: web.Request) -> Path | web.Response:
    """The owner's outputs of a job; on a worker, the outputs it rendered for a job
    of another peer (so a task that reads earlier frames finds them while the
    owner is away)."""
    owned = await _owned_root(request)
    resolve = _server(request).resolve_worker_outputs
    if not isinstance(owned, web.Response) or resolve is None:
        return owned
    try:
        job_id = check_job_id(request.match_info["job_id"])
    except OutputRefused as exc:
        return _error(exc.status, exc.message)  # the same 400 as ``owned`` when this peer receives outputs
    found = await asyncio.to_thread(resolve, job_id)
    return found if found is not None else owned


async def output_list(request: web.Request) -> web.Response:
    root = await _readable_root(request)
    if isinstance(root, web.Response):
        return root
    return _pack({"files": await asyncio.to_thread(_list_outputs, root)})


async def output_file(request: web.Request) -> web.StreamResponse:
    root = await _readable_root(request)
    if isinstance(root, web.Response):
        return root
    try:
        path = safe_join(root, request.query.get("path"))
    except UnsafePath as exc:
        return _error(400, f"output path refused: {exc}")
    if not await asyncio.to_thread(lambda: path.is_file() and not path.is_symlink()):
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
    resolve_worker_outputs: WorkerOutputsResolver | None = None,
) -> FilesServer:
    """Serve ``store`` and receive outputs and thumbnails on ``app``; returns the server state.

    ``resolve_output_root(job_id)`` (sync or async) gives the folder where a job's
    outputs go on this peer, or None for a job it does not own; without it the
    outputs routes answer 404. ``job_files_root``: where last-rendered images
    go (the folder ``/job-files/`` serves); ``on_last_rendered(job_id, path)`` runs
    after one was stored. ``resolve_worker_outputs(job_id)`` (sync, run in a thread):
    where this peer, as a worker, keeps its outputs of another peer's job, or None
    (listed and served, never written).
    """
    server = FilesServer(store, resolve_output_root=resolve_output_root, job_files_root=job_files_root,
                         on_last_rendered=on_last_rendered, limits=limits,
                         resolve_worker_outputs=resolve_worker_outputs)
    app[FILES_KEY] = server
    app.router.add_get(PREFIX + r"/blob/{sha256}/{size}", get_blob)
    app.router.add_post(PREFIX + "/have", have)
    app.router.add_get(PREFIX + "/outputs/{job_id}", output_status)
    app.router.add_put(PREFIX + "/outputs/{job_id}", output_put)
    app.router.add_get(PREFIX + "/outputs/{job_id}/list", output_list)
    app.router.add_get(PREFIX + "/outputs/{job_id}/file", output_file)
    app.router.add_post(PREFIX + "/last-rendered/{job_id}", post_last_rendered)
    return server
