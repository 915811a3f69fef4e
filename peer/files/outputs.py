"""Rendered outputs travel from the worker to the job's owner (the submitting peer).

Worker side, ``OutputShipper``: a produced file is put in an on-disk outbox
(moved there when possible, so it costs no copy) with a small JSON record, and
delivered in chunks of at most ``chunk_size`` bytes, each a separate signed
request::

    GET /peer/v1/files/outputs/{job_id}?path=REL&size=N&sha256=H     -> {"offset": n, "complete": bool}
    PUT /peer/v1/files/outputs/{job_id}?path=REL&size=N&sha256=H&offset=O   body: the bytes from O

When the owner is offline the items stay in the outbox and are retried with
a growing pause (at most ``max_retry_s``); the outbox survives a restart of
the worker, and a delivery interrupted halfway continues where the owner's
partial file ends. Items the owner refuses for good (the job is unknown
there, the path is refused) move to ``failed/`` with the reason; their files
are kept.

Owner side, ``OutputReceiver``: checks the path (``names.check_relative_path``),
appends each chunk to a partial file under ``<output root>/.flamenco-peer-incoming/``,
and when the last byte arrives checks size and SHA-256 and renames the file
into ``<output root>/<path>`` (replacing an older render of the same frame).
The output root comes from the ``resolve_output_root(job_id)`` callback.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import inspect
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

import aiohttp
import msgpack

from ..wire import MSGPACK, unpack
from .names import UnsafePath, check_relative_path, safe_join

log = logging.getLogger(__name__)

PREFIX = "/peer/v1/files"
INCOMING = ".flamenco-peer-incoming"
DEFAULT_CHUNK = 8 << 20  # one signed request; the signature hashes the whole body in memory
MAX_CHUNK = 32 << 20
MAX_OUTPUT_SIZE = 1 << 40  # 1 TiB
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{3,127}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

OutputRootResolver = Callable[[str], "Path | None | Awaitable[Path | None]"]


class OutputRefused(Exception):
    """The owner refuses an upload; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str, **extra: object) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


def check_job_id(job_id: object) -> str:
    if not isinstance(job_id, str) or not _JOB_ID.match(job_id):
        raise OutputRefused(400, f"job id {job_id!r:.80} is malformed: expected 4-128 of [A-Za-z0-9_-] (a UUID)")
    return job_id


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# --- owner side --------------------------------------------------------------------------


class OutputReceiver:
    """Writes uploaded outputs under each job's output root, atomically and verified."""

    def __init__(self, resolve_output_root: OutputRootResolver, *, max_size: int = MAX_OUTPUT_SIZE) -> None:
        self.resolve_output_root = resolve_output_root
        self.max_size = max_size
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        # Uploads run in threads: creating the upload folder and opening a partial
        # in it must not interleave with removing that folder once it is empty.
        self._incoming_folder = threading.Lock()

    async def _root(self, job_id: str) -> Path:
        root = self.resolve_output_root(job_id)
        if inspect.isawaitable(root):
            root = await root
        if root is None:
            raise OutputRefused(404, f"this peer has no output folder for job {job_id}: it did not submit that job, "
                                     "or the job was deleted")
        return Path(root)  # type: ignore[arg-type]

    def _check(self, path: object, size: object, sha256: object) -> tuple[str, int, str]:
        try:
            rel = check_relative_path(path)
        except UnsafePath as exc:
            raise OutputRefused(400, f"output path refused: {exc}") from None
        if rel.split("/", 1)[0] == INCOMING:
            raise OutputRefused(400, f"output path {rel!r} uses the folder {INCOMING}, which this peer keeps for uploads")
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= self.max_size:
            raise OutputRefused(413 if isinstance(size, int) and size > self.max_size else 400,
                                f"output size {size!r} must be an integer from 0 to {self.max_size}")
        if not isinstance(sha256, str) or not _SHA256.match(sha256):
            raise OutputRefused(400, "sha256 must be 64 lowercase hex digits")
        return rel, size, sha256

    @staticmethod
    def _partial(root: Path, rel: str, size: int, sha256: str) -> Path:
        key = hashlib.sha256(f"{rel}\n{size}\n{sha256}".encode()).hexdigest()[:32]
        return root / INCOMING / f"{key}.part"

    def _lock(self, job_id: str, rel: str) -> asyncio.Lock:
        return self._locks.setdefault((job_id, rel), asyncio.Lock())

    async def status(self, job_id: str, path: object, size: object, sha256: object) -> dict[str, object]:
        job_id = check_job_id(job_id)
        rel, size, sha256 = self._check(path, size, sha256)
        root = await self._root(job_id)
        partial = self._partial(root, rel, size, sha256)
        final = safe_join(root, rel)

        def look() -> dict[str, object]:
            if partial.exists():
                return {"offset": partial.stat().st_size, "complete": False}
            if final.is_file() and final.stat().st_size == size and _hash_file(final) == sha256:
                return {"offset": size, "complete": True}
            return {"offset": 0, "complete": False}

        return await asyncio.to_thread(look)

    async def put_chunk(self, job_id: str, path: object, size: object, sha256: object, offset: object,
                        data: bytes) -> dict[str, object]:
        job_id = check_job_id(job_id)
        rel, size, sha256 = self._check(path, size, sha256)
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise OutputRefused(400, "offset must be a non-negative integer")
        if offset + len(data) > size:
            raise OutputRefused(400, f"{rel}: {offset + len(data)} bytes would exceed the announced size {size}")
        root = await self._root(job_id)
        async with self._lock(job_id, rel):
            return await asyncio.to_thread(self._write, root, rel, size, sha256, offset, data)

    def _write(self, root: Path, rel: str, size: int, sha256: str, offset: int, data: bytes) -> dict[str, object]:
        final = safe_join(root, rel)
        partial = self._partial(root, rel, size, sha256)
        have = partial.stat().st_size if partial.exists() else 0
        if offset != have:
            raise OutputRefused(409, f"{rel}: this peer has {have} bytes of it, the chunk starts at {offset}; "
                                     "continue from the offset given", offset=have)
        with self._incoming_folder:  # another upload that just finished may be removing it
            os.makedirs(partial.parent, exist_ok=True)
            f = open(partial, "ab")
        with f:
            f.write(data)
            if offset + len(data) == size:
                f.flush()
                os.fsync(f.fileno())
        if offset + len(data) < size:
            return {"offset": offset + len(data), "complete": False}
        actual = _hash_file(partial)
        if actual != sha256:
            partial.unlink(missing_ok=True)
            raise OutputRefused(422, f"{rel}: the received bytes have SHA-256 {actual[:12]}, not {sha256[:12]}; "
                                     "discarded, send the file again")
        if final.is_dir():
            raise OutputRefused(409, f"{rel}: a folder of that name exists in the output folder; rename it")
        os.makedirs(final.parent, exist_ok=True)
        try:
            os.replace(partial, final)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp")
            shutil.copyfile(partial, tmp)
            os.replace(tmp, final)
            partial.unlink(missing_ok=True)
        with self._incoming_folder:
            try:
                partial.parent.rmdir()  # only when no other upload is in progress
            except OSError:
                pass
        log.info("received output %s (%d bytes) into %s", rel, size, root)
        return {"offset": size, "complete": True, "stored": rel}


# --- worker side -------------------------------------------------------------------------


@dataclass
class OutboxItem:
    id: str
    owner: str  # the owner's peer id or base URL (see OutputShipper.resolve_owner)
    job_id: str
    path: str  # relative to the job's output root
    size: int
    sha256: str
    created: float
    attempts: int = 0
    failure: str = ""


@dataclass
class DeliveryReport:
    delivered: list[OutboxItem] = field(default_factory=list)
    waiting: list[OutboxItem] = field(default_factory=list)  # owner unreachable; retried later
    failed: list[OutboxItem] = field(default_factory=list)  # refused for good; kept in failed/


class _OwnerAway(Exception):
    pass


class _Refused(Exception):
    pass


class OutputShipper:
    """Delivers produced files to job owners, keeping them on disk until delivered.

    ``resolve_owner(owner) -> base URL or None`` maps an item's owner (e.g. a
    peer id) to where that peer is reachable now; by default the owner *is*
    the base URL. Call ``start()`` once (a background task), ``enqueue`` for
    each produced file, and ``close()`` at shutdown.
    """

    def __init__(
        self, outbox_dir: Path, session: aiohttp.ClientSession, *,
        resolve_owner: Callable[[str], str | None] | None = None,
        chunk_size: int = DEFAULT_CHUNK, min_retry_s: float = 1.0, max_retry_s: float = 30.0,
        request_timeout_s: float = 60.0, connect_timeout_s: float = 3.0, read_timeout_s: float = 15.0,
    ) -> None:
        self.outbox_dir = Path(outbox_dir)
        self.items_dir = self.outbox_dir / "items"
        self.failed_dir = self.outbox_dir / "failed"
        self.tmp_dir = self.outbox_dir / "tmp"
        for folder in (self.items_dir, self.failed_dir, self.tmp_dir):
            os.makedirs(folder, exist_ok=True)
        self.session = session
        self.resolve_owner = resolve_owner or (lambda owner: owner)
        self.chunk_size = max(1, min(chunk_size, MAX_CHUNK))
        self.min_retry_s = min_retry_s
        self.max_retry_s = max_retry_s
        self.request_timeout_s = request_timeout_s
        # An owner cut off mid-connection never answers: notice in seconds, not
        # at the end of the whole request's time.
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._pass_lock = asyncio.Lock()

    # --- the outbox on disk ----------------------------------------------------------------

    async def enqueue(self, owner: str, job_id: str, path: str, source: Path, *, move: bool = True) -> OutboxItem:
        """Put ``source`` in the outbox for ``owner``, as ``path`` under the job's output root.

        ``move``: take the file (a rename when on the same file system, so a
        re-render cannot change it while it waits); otherwise copy it.
        """
        check_job_id(job_id)
        rel = check_relative_path(path)
        item = await asyncio.to_thread(self._store_item, owner, job_id, rel, Path(source), move)
        self._wake.set()
        return item

    def _store_item(self, owner: str, job_id: str, rel: str, source: Path, move: bool) -> OutboxItem:
        item_id = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"  # sorts by creation
        building = self.tmp_dir / item_id
        building.mkdir()
        data = building / "data"
        try:
            moved = False
            if move:
                try:
                    os.replace(source, data)
                    moved = True
                except OSError:
                    pass
            if not moved:
                shutil.copyfile(source, data)
                if move:
                    source.unlink(missing_ok=True)
            item = OutboxItem(id=item_id, owner=owner, job_id=job_id, path=rel, size=data.stat().st_size,
                              sha256=_hash_file(data), created=time.time())
            self._write_record(building, item)
            os.replace(building, self.items_dir / item_id)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
        return item

    @staticmethod
    def _write_record(folder: Path, item: OutboxItem) -> None:
        tmp = folder / "item.json.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(asdict(item), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / "item.json")

    def pending(self) -> list[OutboxItem]:
        return self._read_items(self.items_dir)

    def failed(self) -> list[OutboxItem]:
        return self._read_items(self.failed_dir)

    def _read_items(self, folder: Path) -> list[OutboxItem]:
        items = []
        for entry in sorted(folder.iterdir()):
            try:
                items.append(OutboxItem(**json.loads((entry / "item.json").read_text(encoding="utf-8"))))
            except (OSError, ValueError, TypeError) as exc:
                log.warning("outbox entry %s is unreadable (%s); leaving it alone", entry, exc)
        return items

    # --- delivering ----------------------------------------------------------------------------

    async def deliver_pending(self) -> DeliveryReport:
        """One pass over the outbox, oldest first; an owner found offline is skipped for the rest of the pass."""
        async with self._pass_lock:
            report = DeliveryReport()
            away: set[str] = set()
            for item in await asyncio.to_thread(self.pending):
                if item.owner in away:
                    report.waiting.append(item)
                    continue
                try:
                    await self._deliver(item)
                except _OwnerAway as exc:
                    log.info("output %s of job %s waits: %s", item.path, item.job_id, exc)
                    away.add(item.owner)
                    report.waiting.append(item)
                    continue
                except _Refused as exc:
                    item.failure = str(exc)
                    await asyncio.to_thread(self._move_to_failed, item)
                    log.error("output %s of job %s was refused by its owner: %s; kept in %s",
                              item.path, item.job_id, exc, self.failed_dir / item.id)
                    report.failed.append(item)
                    continue
                await asyncio.to_thread(shutil.rmtree, self.items_dir / item.id, True)
                report.delivered.append(item)
            return report

    def retry_failed(self) -> int:
        """Put refused items back in the queue (e.g. after the owner's problem was fixed)."""
        count = 0
        for item in self.failed():
            item.failure = ""
            folder = self.failed_dir / item.id
            self._write_record(folder, item)
            os.replace(folder, self.items_dir / item.id)
            count += 1
        if count:
            self._wake.set()
        return count

    def _move_to_failed(self, item: OutboxItem) -> None:
        folder = self.items_dir / item.id
        self._write_record(folder, item)
        os.replace(folder, self.failed_dir / item.id)

    async def _call(self, method: str, url: str, params: dict[str, str], data: bytes | None = None) -> tuple[int, dict]:
        try:
            async with self.session.request(
                method, url, params=params, data=data,
                headers={"Content-Type": "application/octet-stream"} if data is not None else None,
                timeout=aiohttp.ClientTimeout(total=self.request_timeout_s, sock_connect=self.connect_timeout_s,
                                              sock_read=self.read_timeout_s),
            ) as resp:
                raw = await resp.read()
                try:
                    body = unpack(raw) if resp.content_type == MSGPACK else json.loads(raw or b"{}")
                except (ValueError, msgpack.UnpackException):
                    body = {}
                return resp.status, body if isinstance(body, dict) else {}
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            raise _OwnerAway(f"{url}: {exc or type(exc).__name__}") from None

    async def _deliver(self, item: OutboxItem) -> None:
        base = self.resolve_owner(item.owner)
        if not base:
            raise _OwnerAway(f"owner {item.owner} is not known to be online")
        url = f"{base.rstrip('/')}{PREFIX}/outputs/{item.job_id}"
        params = {"path": item.path, "size": str(item.size), "sha256": item.sha256}
        status, body = await self._call("GET", url, params)
        self._check_status(status, body, item)
        if body.get("complete"):
            return
        offset = int(body.get("offset", 0) or 0)
        data_path = self.items_dir / item.id / "data"
        corrupt_retries = realigned = 0
        while True:
            chunk = await asyncio.to_thread(_read_chunk, data_path, offset, self.chunk_size)
            status, body = await self._call("PUT", url, {**params, "offset": str(offset)}, chunk)
            if status == 409 and isinstance(body.get("offset"), int) and realigned < 3:
                realigned += 1
                offset = body["offset"]  # the owner has a different amount; continue from there
                continue
            if status == 422 and corrupt_retries < 2:
                corrupt_retries += 1  # damaged on the way; the owner discarded it
                offset = 0
                continue
            self._check_status(status, body, item)
            if body.get("complete"):
                return
            offset = int(body.get("offset", offset + len(chunk)))

    @staticmethod
    def _check_status(status: int, body: dict, item: OutboxItem) -> None:
        if status == 200:
            return
        message = str(body.get("message", "")) or f"HTTP {status}"
        if status in (401, 408, 429) or status >= 500:
            raise _OwnerAway(message)
        raise _Refused(f"HTTP {status}: {message}")

    # --- running in the background -----------------------------------------------------------------

    def wake(self) -> None:
        """Try again now (e.g. the owner was just seen online)."""
        self._wake.set()

    async def run(self) -> None:
        pause = self.min_retry_s
        while True:
            self._wake.clear()
            try:
                report = await self.deliver_pending()
            except Exception:  # keep shipping whatever one pass hit
                log.exception("output delivery pass failed")
                report = DeliveryReport(waiting=[OutboxItem("", "", "", "", 0, "", 0.0)])
            pause = self.min_retry_s if report.delivered or not report.waiting else min(pause * 2, self.max_retry_s)
            try:
                if report.waiting:
                    await asyncio.wait_for(self._wake.wait(), pause)
                else:
                    await self._wake.wait()
            except TimeoutError:
                pass

    def start(self) -> asyncio.Task[None]:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name="output-shipper")
        return self._task

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None


def _read_chunk(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)
