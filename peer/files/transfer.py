"""Fetching blobs from other peers: the client half of ``routes.py``.

A worker about to run a task fetches the manifest's blobs it lacks. Any peer
that holds a blob can serve it: the submitter (the job's owner) or a peer that
fetched it earlier, since every peer serves what is in its store. For each
blob the fetcher asks every known source which blobs it has and how busy it is
(``POST /peer/v1/files/have``), then downloads from the least loaded one;
between equally loaded sources it prefers other peers over the owner, to spare
the artist's computer. A source at its upload limit answers 503; the blob is
tried again on the next round, when more peers may have it (so a popular blob
spreads like a tree instead of leaving the owner's uplink once per worker).

A cut download leaves a partial file; the next attempt, from any source,
continues with an HTTP ``Range`` request. Every blob is verified (size and
SHA-256) before it enters the store; a blob that fails is thrown away, that
source is not asked for it again, and another source is tried.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Iterable, Sequence

import aiohttp
import msgpack

from .store import BlobBusy, BlobCorrupt, BlobRef, ContentStore, PartialBlob

log = logging.getLogger(__name__)

MSGPACK = "application/msgpack"
PREFIX = "/peer/v1/files"
WRITE_BATCH = 4 << 20  # bytes handed to the writer thread at once
READ_BUFFER = 1 << 20  # aiohttp reads the socket in pieces up to this size (default 64 KiB)
HAVE_TIMEOUT_S = 10.0


def blob_url(source: str, ref: BlobRef) -> str:
    return f"{source.rstrip('/')}{PREFIX}/blob/{ref.sha256}/{ref.size}"


class FetchError(Exception):
    """Some blobs could not be fetched; ``str()`` says which and what each source said."""

    def __init__(self, message: str, missing: Sequence[BlobRef]) -> None:
        super().__init__(message)
        self.missing = list(missing)


@dataclass
class FetchReport:
    fetched: list[BlobRef] = field(default_factory=list)
    bytes_received: int = 0
    resumed: int = 0  # downloads that continued a partial file
    corrupt: list[tuple[BlobRef, str]] = field(default_factory=list)  # (blob, source) that failed verification
    by_source: Counter[str] = field(default_factory=Counter)  # blobs fetched from each source


@dataclass
class _Availability:
    have: set[BlobRef]
    load: int


class _Outcome:
    DONE = "done"
    BUSY = "busy"  # the source is at its upload limit
    ABSENT = "absent"  # the source no longer has it
    CUT = "cut"  # connection broke; the partial file stays
    CORRUPT = "corrupt"
    LOCAL_BUSY = "local-busy"  # another fetch in this process is downloading it


ProgressCallback = Callable[[int, int], Awaitable[None] | None]


class Fetcher:
    """Fetches blobs into ``store`` from ``sources`` (peer base URLs; the owner first).

    ``session`` must be signed for the farm (``peer.cluster.auth.signing_session``)
    when the sources are on other computers.
    """

    def __init__(
        self, store: ContentStore, session: aiohttp.ClientSession, sources: Sequence[str], *,
        owner: str | None = None, concurrency: int = 4, read_timeout_s: float = 30.0,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        self.store = store
        self.session = session
        self.sources = list(dict.fromkeys(s.rstrip("/") for s in sources))
        self.owner = (owner or (self.sources[0] if self.sources else "")).rstrip("/")
        self.concurrency = max(1, concurrency)
        self.read_timeout_s = read_timeout_s
        self.on_progress = on_progress
        self._inflight: Counter[str] = Counter()
        self._done_bytes = 0
        self._total_bytes = 0

    async def fetch(self, refs: Iterable[BlobRef], *, deadline_s: float = 300.0) -> FetchReport:
        """Fetch every blob of ``refs`` not yet in the store; raises ``FetchError`` after ``deadline_s``."""
        report = FetchReport()
        pending = await asyncio.to_thread(self.store.missing, refs)
        self._total_bytes = sum(r.size for r in pending)
        self._done_bytes = 0
        refused: dict[BlobRef, set[str]] = defaultdict(set)  # sources that served a corrupt copy
        said: dict[BlobRef, str] = {}
        started = time.monotonic()
        pause = 0.05
        while pending:
            # Another fetch in this process may have stored some meanwhile.
            pending = await asyncio.to_thread(self.store.missing, pending)
            if not pending:
                break
            if time.monotonic() - started > deadline_s:
                raise FetchError(self._give_up_message(pending, said, deadline_s), pending)
            availability, unreachable = await self._ask_sources(pending)
            sem = asyncio.Semaphore(self.concurrency)

            async def one(ref: BlobRef) -> tuple[BlobRef, str]:
                candidates = [s for s, a in availability.items() if ref in a.have and s not in refused[ref]]
                if not candidates:
                    if refused[ref] and not any(ref in a.have for s, a in availability.items()
                                                if s not in refused[ref]):
                        said[ref] = f"every source that has it sent corrupt data ({', '.join(sorted(refused[ref]))})"
                    else:
                        said[ref] = "no reachable peer has it" + (
                            f" (unreachable: {', '.join(unreachable)})" if unreachable else "")
                    return ref, _Outcome.ABSENT
                async with sem:
                    source = min(candidates, key=lambda s: (
                        availability[s].load + self._inflight[s], s == self.owner, self.sources.index(s)))
                    self._inflight[source] += 1
                    try:
                        outcome = await self._download(ref, source, report)
                    finally:
                        self._inflight[source] -= 1
                if outcome == _Outcome.CORRUPT:
                    refused[ref].add(source)
                    report.corrupt.append((ref, source))
                    log.warning("blob %s from %s failed verification; trying another source", ref.short, source)
                said[ref] = f"{source}: {outcome}"
                return ref, outcome

            results = await asyncio.gather(*(one(ref) for ref in pending))
            done = {ref for ref, outcome in results if outcome == _Outcome.DONE}
            progressed = bool(done) or any(o in (_Outcome.CUT, _Outcome.CORRUPT) for _, o in results)
            pending = [ref for ref in pending if ref not in done]
            if pending:
                # Busy sources are transferring the blob to someone who will soon serve it
                # too: look again shortly. Blobs nobody has are rechecked more slowly.
                waiting_on_busy = any(o in (_Outcome.BUSY, _Outcome.LOCAL_BUSY) for _, o in results)
                ceiling = 0.25 if waiting_on_busy else 1.0
                pause = 0.05 if progressed else min(pause * 2, ceiling)
                await asyncio.sleep(pause)
        return report

    def _give_up_message(self, pending: list[BlobRef], said: dict[BlobRef, str], deadline_s: float) -> str:
        shown = "; ".join(f"{ref.short}: {said.get(ref, 'not tried')}" for ref in pending[:5])
        more = f" and {len(pending) - 5} more" if len(pending) > 5 else ""
        return (
            f"could not fetch {len(pending)} file(s) within {deadline_s:.0f} s: {shown}{more}. The submitting peer "
            f"({self.owner or 'unknown'}) must be online until a peer has fetched every file; start it and retry"
        )

    async def _ask_sources(self, pending: list[BlobRef]) -> tuple[dict[str, _Availability], list[str]]:
        body = msgpack.packb({"blobs": [r.to_wire() for r in pending]}, use_bin_type=True)
        answers = await asyncio.gather(*(self._ask(source, body) for source in self.sources))
        availability = {s: a for s, a in zip(self.sources, answers) if a is not None}
        unreachable = [s for s, a in zip(self.sources, answers) if a is None]
        return availability, unreachable

    async def _ask(self, source: str, body: bytes) -> _Availability | None:
        try:
            async with self.session.post(
                f"{source}{PREFIX}/have", data=body, headers={"Content-Type": MSGPACK},
                timeout=aiohttp.ClientTimeout(total=HAVE_TIMEOUT_S),
            ) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    log.info("%s answered HTTP %s to a have request", source, resp.status)
                    return None
                answer = msgpack.unpackb(raw, raw=False)
                have = {BlobRef.parse(item) for item in answer.get("have", [])}
                load = answer.get("load", 0)
                return _Availability(have=have, load=load if isinstance(load, int) else 0)
        except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError, msgpack.UnpackException) as exc:
            log.debug("have request to %s failed: %s", source, exc)
            return None

    async def _report_progress(self, n: int) -> None:
        self._done_bytes += n
        if self.on_progress is not None:
            result = self.on_progress(self._done_bytes, self._total_bytes)
            if asyncio.iscoroutine(result):
                await result

    async def _download(self, ref: BlobRef, source: str, report: FetchReport) -> str:
        try:
            writer = await asyncio.to_thread(self.store.partial_writer, ref)
        except BlobBusy:
            return _Outcome.LOCAL_BUSY
        try:
            if writer.offset:
                report.resumed += 1
            # A partial file already whole (a crash before it was stored) needs no request.
            outcome = _Outcome.DONE if writer.complete else await self._receive(ref, source, writer, report)
            if outcome != _Outcome.DONE:
                return outcome
            try:
                await asyncio.to_thread(writer.finish)
            except BlobCorrupt as exc:
                log.warning("%s", exc)
                return _Outcome.CORRUPT
            report.fetched.append(ref)
            report.by_source[source] += 1
            return _Outcome.DONE
        finally:
            await asyncio.to_thread(writer.close)

    async def _receive(self, ref: BlobRef, source: str, writer: PartialBlob, report: FetchReport) -> str:
        headers = {"Range": f"bytes={writer.offset}-"} if 0 < writer.offset < ref.size else {}
        chunks: list[bytes] = []
        buffered = 0
        pending_write: asyncio.Future[None] | None = None

        async def flush(*, wait: bool = False) -> None:
            # Hash and write in a thread while the next bytes arrive; ``wait`` for the last one.
            nonlocal chunks, buffered, pending_write
            if pending_write is not None:
                await pending_write
                pending_write = None
            if chunks:
                batch, size, chunks, buffered = chunks, buffered, [], 0
                pending_write = asyncio.ensure_future(asyncio.to_thread(writer.write_many, batch))
                report.bytes_received += size
                await self._report_progress(size)
            if wait and pending_write is not None:
                await pending_write
                pending_write = None

        try:
            try:
                async with self.session.get(
                    blob_url(source, ref), headers=headers, read_bufsize=READ_BUFFER,
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=self.read_timeout_s),
                ) as resp:
                    if resp.status == 503:
                        return _Outcome.BUSY
                    if resp.status == 404:
                        return _Outcome.ABSENT
                    if resp.status == 200 and writer.offset:
                        await asyncio.to_thread(writer.restart)  # the source ignored Range
                    elif resp.status == 206:
                        if not _range_starts_at(resp.headers.get("Content-Range", ""), writer.offset):
                            log.warning("%s answered a range of %s that does not start at %d", source, ref.short,
                                        writer.offset)
                            return _Outcome.CUT
                    elif resp.status != 200:
                        log.info("%s answered HTTP %s for blob %s", source, resp.status, ref.short)
                        return _Outcome.ABSENT
                    async for chunk in resp.content.iter_any():  # no re-chunking copies
                        chunks.append(chunk)
                        buffered += len(chunk)
                        if buffered >= WRITE_BATCH:
                            await flush()
            except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
                log.info("download of %s from %s broke off: %s", ref.short, source, exc or type(exc).__name__)
                await flush(wait=True)  # keep what arrived, for a resume
                return _Outcome.CUT
            await flush(wait=True)
        except BlobCorrupt:
            return _Outcome.CORRUPT  # more bytes than the blob's size
        finally:
            if pending_write is not None:  # never close the file under a running write (cancellation)
                try:
                    await pending_write
                except BaseException:
                    pass
        return _Outcome.DONE if writer.complete else _Outcome.CUT


def _range_starts_at(content_range: str, offset: int) -> bool:
    # "bytes 100-199/200"
    try:
        unit, spec = content_range.split(" ", 1)
        return unit == "bytes" and int(spec.split("-", 1)[0]) == offset
    except ValueError:
        return False
