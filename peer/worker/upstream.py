"""Task updates on their way to the coordinator, kept on disk until acknowledged.

A worker that cannot reach any coordinator keeps rendering. Its updates (log
lines, progress, the final status) wait in a small SQLite file in the peer's
data dir (``worker-upstream.sqlite``) and are delivered in order once a
coordinator answers, even after the worker process restarted.

How it stays in order and exactly-once:

- While nothing is queued, an update is sent straight away: the usual case
  costs no disk write. If that send fails it is queued, and from then on
  every new update is queued behind it until the queue is empty again.
- Each update carries ``update_stream`` (random, one per worker process run)
  and ``update_seq`` (growing within the stream). A send that timed out may
  still have reached the coordinator, so the retry is a duplicate; the
  coordinator recognises it by (worker, stream, seq) and acknowledges it
  without applying it again.
- While the coordinator is away, progress updates for the same task are
  merged into the newest queued one that was never sent (logs appended,
  latest steps and activity kept), so an hour offline is a handful of rows,
  not thousands. A row that was sent once is never changed: its retry must
  be byte-for-byte the same update. Nor is a row of an earlier run: it may
  have been sent just before the crash.

Heartbeats (updates that change nothing) are never queued.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import sqlite3
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Awaitable, Callable

import msgpack

log = logging.getLogger(__name__)

FILE_NAME = "worker-upstream.sqlite"
# A merged row stops growing here; later log text starts a new row.
MAX_MERGED_LOG_CHARS = 1 << 20

_SCHEMA = """
CREATE TABLE IF NOT EXISTS updates (
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    task_id TEXT NOT NULL,
    final INTEGER NOT NULL,
    body BLOB NOT NULL,
    position INTEGER PRIMARY KEY  -- the delivery order
);
"""


@dataclass
class Update:
    """One task update: the fields of a ``worker/task-update`` body for one task."""

    task_id: str
    fields: dict[str, Any] = field(default_factory=dict)  # task_status, activity, steps_completed, log
    final: bool = False
    # Given by Upstream when the update is submitted: the idempotency key.
    stream: str = ""
    seq: int = 0

    def wire(self, worker_id: str) -> dict[str, Any]:
        return {"worker_id": worker_id, "task_id": self.task_id, **self.fields,
                "update_stream": self.stream, "update_seq": self.seq}

    @property
    def key(self) -> tuple[str, int]:
        return (self.stream, self.seq)


Send = Callable[[Update], Awaitable[tuple[int, Any]]]


@dataclass
class Delivered:
    """What the coordinator answered to one update taken from the queue."""

    update: Update
    status: int
    reply: Any


class UpstreamBuffer:
    """The on-disk queue (SQLite, WAL, ``synchronous=FULL``): rows survive a crash once appended.

    All SQLite work runs on one dedicated thread, so the event loop never
    waits for the disk. ``path=None`` keeps the queue in memory (tests, tools).
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="upstream")
        self._conn: sqlite3.Connection | None = None
        self.count = 0  # rows queued; kept in memory so callers need no disk read
        self._base = 1
        # The row with the highest position, mirrored in memory: while the
        # coordinator is away every queued update looks at it, and reading it
        # from disk each time would cost a read per log line.
        self._last: Update | None = None
        self._last_position = 0
        self._last_known = True

    async def _run(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def open(self) -> None:
        def open_db() -> int:
            target = str(self.path) if self.path is not None else ":memory:"
            if self.path is not None:
                os.makedirs(self.path.parent, exist_ok=True)
            conn = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(_SCHEMA)
            self._conn = conn
            (count,) = conn.execute("SELECT COUNT(*) FROM updates").fetchone()
            self._last, self._last_position = _read_last(conn)
            self._last_known = True
            # This run's rows go after every earlier run's, ordered by seq: an
            # update whose direct send failed late still lands before the
            # ones queued while it was on its way.
            self._base = self._last_position + 1
            return count

        try:
            self.count = await self._run(open_db)
        except sqlite3.Error as exc:
            raise UpstreamError(
                f"cannot open the worker's update buffer {self.path} ({exc}); if the file is damaged, move it "
                "away (updates still in it are lost) and start the peer again") from exc

    async def close(self) -> None:
        def close_db() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await self._run(close_db)
        self._executor.shutdown(wait=False)

    async def append(self, update: Update) -> None:
        body = msgpack.packb(update.fields, use_bin_type=True)
        position = self._base + update.seq

        def insert() -> None:
            assert self._conn is not None
            self._conn.execute(
                "INSERT INTO updates (position, stream, seq, task_id, final, body) VALUES (?, ?, ?, ?, ?, ?)",
                (position, update.stream, update.seq, update.task_id, int(update.final), body))

        await self._run(insert)
        self.count += 1
        # A direct send that failed late lands before rows queued meanwhile:
        # the appended row is not always the last one.
        if self._last_known and position > self._last_position:
            self._last, self._last_position = _copy(update), position

    async def replace(self, update: Update) -> None:
        """Rewrite a queued row (a merge into a row that was never sent)."""
        body = msgpack.packb(update.fields, use_bin_type=True)

        def rewrite() -> None:
            assert self._conn is not None
            self._conn.execute("UPDATE updates SET body=?, final=? WHERE stream=? AND seq=?",
                               (body, int(update.final), update.stream, update.seq))

        await self._run(rewrite)
        if self._last is not None and self._last.key == update.key:
            self._last = _copy(update)

    async def first(self, limit: int = 32) -> list[Update]:
        def read() -> list[Update]:
            assert self._conn is not None
            rows = self._conn.execute(
                "SELECT stream, seq, task_id, final, body FROM updates ORDER BY position LIMIT ?", (limit,))
            return [Update(task_id, _unpack(body), bool(final), stream, seq)
                    for stream, seq, task_id, final, body in rows]

        return await self._run(read)

    async def last(self) -> Update | None:
        """The newest row (a copy: changing it changes nothing until `replace`)."""
        if not self._last_known:
            def read() -> tuple[Update | None, int]:
                assert self._conn is not None
                return _read_last(self._conn)

            self._last, self._last_position = await self._run(read)
            self._last_known = True
        return _copy(self._last) if self._last is not None else None

    async def remove(self, update: Update) -> None:
        def delete() -> int:
            assert self._conn is not None
            return self._conn.execute("DELETE FROM updates WHERE stream=? AND seq=?", (update.stream, update.seq)).rowcount

        removed = await self._run(delete)
        self.count = max(0, self.count - removed)
        if self.count == 0:
            self.emptied()
        elif self._last is not None and self._last.key == update.key:
            self._last_known = False  # read again when next needed

    def emptied(self) -> None:
        """Note that no row is queued (the table was found empty)."""
        self.count = 0
        self._last, self._last_position, self._last_known = None, 0, True

    async def tasks(self) -> dict[str, bool]:
        """Tasks with queued updates, oldest first: task id -> whether its final status is queued."""
        def read() -> dict[str, bool]:
            assert self._conn is not None
            result: dict[str, bool] = {}
            for task_id, final in self._conn.execute("SELECT task_id, final FROM updates ORDER BY position"):
                result[task_id] = result.get(task_id, False) or bool(final)
            return result

        return await self._run(read)


class UpstreamError(Exception):
    pass


def _read_last(conn: sqlite3.Connection) -> tuple[Update | None, int]:
    """The row with the highest position and that position (0 when the queue is empty)."""
    row = conn.execute(
        "SELECT stream, seq, task_id, final, body, position FROM updates ORDER BY position DESC LIMIT 1").fetchone()
    if row is None:
        return None, 0
    stream, seq, task_id, final, body, position = row
    return Update(task_id, _unpack(body), bool(final), stream, seq), position


def _copy(update: Update) -> Update:
    return replace(update, fields=dict(update.fields))


def _unpack(body: bytes) -> dict[str, Any]:
    value = msgpack.unpackb(body, raw=False)
    return value if isinstance(value, dict) else {}


class Upstream:
    """Delivers a worker's task updates in order, exactly once, through outages and restarts.

    ``submit`` sends at once while nothing is queued (and returns the answer),
    otherwise queues on disk (and returns None); ``flush`` delivers the queue.
    Two locks: the queue lock covers every decision about the queue and each
    write to it (short); the send lock lets one update travel at a time, which
    is what keeps them in order.
    """

    def __init__(self, buffer: UpstreamBuffer) -> None:
        self.buffer = buffer
        # One stream per process run: after a restart the sequence starts
        # again, so (stream, seq) must be new even though seq is not.
        self.stream = uuid.uuid4().hex
        self._next_seq = 1
        self._queue_lock = asyncio.Lock()
        self._send_lock = asyncio.Lock()
        # Keys of updates on their way or sent at least once and still
        # queued: their rows are never merged into. Dropped once delivered.
        self._sent: set[tuple[str, int]] = set()

    @property
    def pending(self) -> int:
        return self.buffer.count

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing on its way."""
        return self.buffer.count == 0 and not self._send_lock.locked()

    def _number(self, update: Update) -> Update:
        update.stream, update.seq = self.stream, self._next_seq
        self._next_seq += 1
        return update

    async def submit(self, update: Update, send: Send) -> tuple[int, Any] | None:
        """Send ``update`` now if nothing is queued or on its way (returns the answer), else queue it (None).

        If the direct send fails, the update is queued on disk and the
        transport's exception propagates.
        """
        async with self._queue_lock:
            self._number(update)
            if not self.idle:
                await self._enqueue(update)
                return None
            await self._send_lock.acquire()  # free: taken without yielding, so the queue stays ours
        try:
            self._sent.add(update.key)
            try:
                answer = await send(update)
            except BaseException:
                # Even when cancelled (shutdown): the update must not be lost.
                await asyncio.shield(self._append(update))
                raise
            # Delivered and never queued: no row can be merged into by mistake.
            self._sent.discard(update.key)
            return answer
        finally:
            self._send_lock.release()

    async def queue(self, update: Update) -> None:
        """Queue ``update`` behind everything else without trying to send it."""
        async with self._queue_lock:
            self._number(update)
            await self._enqueue(update)

    async def heartbeat(self, update: Update, send: Send) -> tuple[int, Any] | None:
        """Send an update that changes nothing, unless updates are queued or on their way (then None).

        A heartbeat is not numbered and never queued.
        """
        async with self._queue_lock:
            if not self.idle:
                return None
            await self._send_lock.acquire()
        try:
            return await send(update)
        finally:
            self._send_lock.release()

    async def flush(self, send: Send) -> list[Delivered]:
        """Deliver the queue, oldest first. A transport error stops it (raised); that row stays queued."""
        answers: list[Delivered] = []
        async with self._send_lock:
            while True:
                async with self._queue_lock:
                    batch = await self.buffer.first(1) if self.buffer.count else []
                    if not batch:
                        self.buffer.emptied()
                        return answers
                    queued = batch[0]
                    self._sent.add(queued.key)
                status, reply = await send(queued)
                # Any answer means the coordinator decided about this update
                # (applied it, or refused it for good): it leaves the queue.
                async with self._queue_lock:
                    await self.buffer.remove(queued)
                # Its row is gone, so nothing can be merged into it any more.
                self._sent.discard(queued.key)
                answers.append(Delivered(queued, status, reply))
                if status >= 400:
                    message = reply.get("message") if isinstance(reply, dict) else reply
                    log.warning("buffered update %d of task %s refused (%d): %s; dropped",
                                queued.seq, queued.task_id, status, message)

    async def _append(self, update: Update) -> None:
        async with self._queue_lock:
            await self.buffer.append(update)

    async def _enqueue(self, update: Update) -> None:
        """Queue ``update``, merged into the newest row when that row is progress of
        the same task that was never sent. Call with the queue lock held."""
        progress_only = not update.final and update.fields.get("task_status") is None
        last = await self.buffer.last() if progress_only else None
        # Only rows of this run: one queued before a restart may have reached the
        # coordinator before the crash, which then acknowledges its retry as a
        # duplicate, and whatever was merged into it would be lost.
        if (last is not None and last.stream == self.stream and last.task_id == update.task_id and not last.final
                and last.key not in self._sent
                and len(last.fields.get("log", "")) + len(update.fields.get("log", "")) <= MAX_MERGED_LOG_CHARS):
            merged = dict(last.fields)
            for key, value in update.fields.items():
                if key == "log":
                    merged["log"] = merged.get("log", "") + value
                elif value is not None:
                    merged[key] = value
            last.fields = merged
            await self.buffer.replace(last)
            return
        await self.buffer.append(update)


def buffer_path(data_dir: Path) -> Path:
    return data_dir / FILE_NAME
