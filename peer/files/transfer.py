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

A peer serves a blob it is still downloading, too (``receiving`` in its
``have`` answer, with the bytes it has so far): such a source is taken when it
is ahead of this peer, and its response follows its own download as it grows.
So when the owner is busy, the next workers fetch from the first ones at the
same time instead of waiting for whole copies, and a big file flows down a
tree of peers at once. A source that is behind is never taken, so two peers
never wait on each other; a source whose answer names this peer's own store
is never taken at all.

A cut download leaves a partial file; the next attempt, from any source,
continues with an HTTP ``Range`` request. Every blob is verified (size and
SHA-256) before it enters the store; a blob that fails is thrown away, that
source is not asked for it again, and another source is tried. (When the
failed download had continued a partial file, the bad bytes may be the
earlier source's: the blob is fetched again from the start, blaming nobody.)

Received bytes are hashed as they arrive and written a cache-sized slice at
a time; the OS is asked to start writing them to disk as they come, so the
one fsync at the end is short (see ``store.PartialBlob``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Iterable, Iterator, Sequence

import aiohttp
import msgpack

from ..wire import MSGPACK, pack, unpack
from .store import LIBC, BadBlobRef, BlobBusy, BlobCorrupt, BlobRef, ContentStore, PartialBlob

log = logging.getLogger(__name__)

PREFIX = "/peer/v1/files"
WRITE_BATCH = 2 << 20  # bytes handed to the writer thread at once (also how far peers that re-serve lag)
READ_BUFFER = 4 << 20  # aiohttp buffers up to twice this of a response before it pauses the socket
SOCKET_READ = 4 << 20  # bytes asked of the socket per read during a download (asyncio's default: 256 KiB)
HAVE_TIMEOUT_S = 10.0


def _keep_freed_memory_for_reuse() -> None:
    """Stop glibc from giving freed heap back to the OS after every few MiB (at import, once per process).

    aiohttp hands each socket read of a download to us as a fresh bytes object
    of up to ``SOCKET_READ`` bytes. With glibc's defaults those come from mmap
    or from the top of the heap, which is returned to the OS as soon as a few
    hundred KiB of it are free, so the memory of most reads was faulted in and
    zeroed anew: some 60,000 page faults and a sixth of a CPU second per 512 MiB
    received. Allocations below 16 MiB from the heap, and up to 64 MiB of free
    heap kept, make them reuse memory. A process-wide setting, harmless to the
    rest of a peer; it costs at most those 64 MiB.
    """
    mallopt = getattr(LIBC, "mallopt", None)
    if mallopt is None:
        return  # not Linux, or not glibc (musl has no mallopt): nothing to tune
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 16 << 20)
    mallopt(m_trim_threshold, 64 << 20)


_keep_freed_memory_for_reuse()


@contextlib.contextmanager
def _larger_socket_reads(resp: aiohttp.ClientResponse) -> Iterator[None]:
    """Read the response's socket ``SOCKET_READ`` bytes at a time while in this block.

    asyncio's selector transport reads at most ``max_size`` bytes (256 KiB) per
    wake-up, and every read costs a round of Python calls in the event loop and
    aiohttp: a sixth of the CPU a fast download uses. ``max_size`` is asyncio's
    own attribute; with a transport that has none, nothing changes.
    """
    transport = resp.connection.transport if resp.connection is not None else None
    before = getattr(transport, "max_size", None)
    if transport is None or not isinstance(before, int):
        yield
        return
    transport.max_size = max(before, SOCKET_READ)  # type: ignore[attr-defined]
    try:
        yield
    finally:
        transport.max_size = before  # type: ignore[attr-defined]


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
    receiving: dict[BlobRef, int] = field(default_factory=dict)  # blobs it is downloading: bytes so far
    is_self: bool = False  # the source is this peer (its store answered)


class _Outcome:
    DONE = "done"
    BUSY = "busy"  # the source is at its upload limit
    ABSENT = "absent"  # the source no longer has it
    CUT = "cut"  # connection broke; the partial file stays
    CORRUPT = "corrupt"
    CORRUPT_CONTINUED = "corrupt after continuing an earlier download"  # the partial file is gone
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
        # Among equally good sources, each fetcher has its own order, so that peers
        # starting together spread over the sources instead of all taking the first.
        self._tiebreak = {s: random.random() for s in self.sources}
        self._done_bytes = 0
        self._total_bytes = 0

    async def fetch(self, refs: Iterable[BlobRef], *, deadline_s: float = 300.0) -> FetchReport:
        """Fetch every blob of ``refs`` not yet in the store; raises ``FetchError`` after ``deadline_s``."""
        report = FetchReport()
        pending = await asyncio.to_thread(self.store.missing, refs)
        self._total_bytes = sum(r.size for r in pending)
        self._done_bytes = 0
        refused: dict[BlobRef, set[str]] = defaultdict(set)  # sources that served a corrupt copy
        busy: dict[BlobRef, set[str]] = defaultdict(set)  # sources that were busy in the last round
        said: dict[BlobRef, str] = {}
        started = time.monotonic()
        pause = 0.05
        while pending:
            if time.monotonic() - started > deadline_s:
                # Another fetch in this process may have stored some meanwhile.
                pending = await asyncio.to_thread(self.store.missing, pending)
                if not pending:
                    break
                raise FetchError(self._give_up_message(pending, said, deadline_s), pending)
            availability, unreachable = await self._ask_sources(pending)
            relayed = {ref for a in availability.values() for ref in a.receiving}
            pending, own_offsets = await asyncio.to_thread(self._still_missing, pending, relayed)
            if not pending:
                break
            sem = asyncio.Semaphore(self.concurrency)
            was_busy, busy = busy, defaultdict(set)

            def can_serve(a: _Availability, ref: BlobRef) -> bool:
                # A peer still downloading it helps only when it is ahead of us; taking one
                # that is behind could make two peers wait on each other.
                return ref in a.have or a.receiving.get(ref, -1) > own_offsets.get(ref, 0)

            async def one(ref: BlobRef) -> tuple[BlobRef, str]:
                candidates = [s for s, a in availability.items() if can_serve(a, ref) and s not in refused[ref]]
                if not candidates and any(ref in a.receiving for s, a in availability.items()
                                          if s not in refused[ref]):
                    said[ref] = "only peers still downloading it, and not ahead of this one, have it"
                    return ref, _Outcome.BUSY  # they will have more soon
                if not candidates:
                    if refused[ref] and not any(ref in a.have for s, a in availability.items()
                                                if s not in refused[ref]):
                        said[ref] = f"every source that has it sent corrupt data ({', '.join(sorted(refused[ref]))})"
                    else:
                        said[ref] = "no reachable peer has it" + (
                            f" (unreachable: {', '.join(unreachable)})" if unreachable else "")
                    return ref, _Outcome.ABSENT
                async with sem:
                    # Another source first if this one was busy last time (the owner's load counts all its
                    # uploads, but its limit per blob may be what refused us).
                    source = min(candidates, key=lambda s: (
                        s in was_busy[ref], availability[s].load + self._inflight[s],
                        ref not in availability[s].have, s == self.owner, self._tiebreak[s]))
                    self._inflight[source] += 1
                    try:
                        outcome = await self._download(ref, source, report)
                    finally:
                        self._inflight[source] -= 1
                if outcome == _Outcome.BUSY:
                    busy[ref].add(source)
                if outcome == _Outcome.CORRUPT:
                    refused[ref].add(source)
                    report.corrupt.append((ref, source))
                    log.warning("blob %s from %s failed verification; trying another source", ref.short, source)
                said[ref] = f"{source}: {outcome}"
                return ref, outcome

            results = await asyncio.gather(*(one(ref) for ref in pending))
            done = {ref for ref, outcome in results if outcome == _Outcome.DONE}
            progressed = bool(done) or any(
                o in (_Outcome.CUT, _Outcome.CORRUPT, _Outcome.CORRUPT_CONTINUED) for _, o in results)
            pending = [ref for ref in pending if ref not in done]
            if pending:
                # Busy sources are transferring the blob to someone who will soon serve it
                # too: look again shortly. Blobs nobody has are rechecked more slowly.
                waiting_on_busy = any(o in (_Outcome.BUSY, _Outcome.LOCAL_BUSY) for _, o in results)
                ceiling = 0.25 if waiting_on_busy else 1.0
                pause = 0.05 if progressed else min(pause * 2, ceiling)
                await asyncio.sleep(pause)
        return report

    def _still_missing(self, pending: list[BlobRef], relayed: set[BlobRef]
                       ) -> tuple[list[BlobRef], dict[BlobRef, int]]:
        """The blobs of ``pending`` not in the store (another fetch in this process may have stored
        some), and how many bytes of those that peers are still downloading this peer has itself.
        Blocks on disk: one thread hop per round, with partial files looked at only when they matter."""
        still = self.store.missing(pending)
        return still, {ref: self.store.partial_size(ref) for ref in still if ref in relayed}

    def _give_up_message(self, pending: list[BlobRef], said: dict[BlobRef, str], deadline_s: float) -> str:
        shown = "; ".join(f"{ref.short}: {said.get(ref, 'not tried')}" for ref in pending[:5])
        more = f" and {len(pending) - 5} more" if len(pending) > 5 else ""
        return (
            f"could not fetch {len(pending)} file(s) within {deadline_s:.0f} s: {shown}{more}. The submitting peer "
            f"({self.owner or 'unknown'}) must be online until a peer has fetched every file; start it and retry"
        )

    async def _ask_sources(self, pending: list[BlobRef]) -> tuple[dict[str, _Availability], list[str]]:
        body = pack({"blobs": [r.to_wire() for r in pending]})
        answers = await asyncio.gather(*(self._ask(source, body) for source in self.sources))
        availability = {s: a for s, a in zip(self.sources, answers) if a is not None and not a.is_self}
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
                answer = unpack(raw)
                if answer.get("store") == self.store.store_id:
                    return _Availability(have=set(), load=0, is_self=True)
                have = {BlobRef.parse(item) for item in answer.get("have", [])}
                load = answer.get("load", 0)
                return _Availability(have=have, load=load if isinstance(load, int) else 0,
                                     receiving=_parse_receiving(answer.get("receiving")))
        except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError, TypeError,
                msgpack.UnpackException) as exc:
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
            # Bytes kept from an earlier download may have come from another source.
            continued = writer.offset > 0
            # A partial file already whole (a crash before it was stored) needs no request.
            outcome = _Outcome.DONE if writer.complete else await self._receive(ref, source, writer, report)
            if outcome != _Outcome.DONE:
                return outcome
            # Unless the source sent the whole blob instead of the rest (the download restarted).
            continued = continued and writer.generation == 0
            try:
                await asyncio.to_thread(writer.finish)
            except BlobCorrupt as exc:
                if continued:
                    # The damage may be in the bytes from before: start over, blaming nobody.
                    log.warning("%s (it continued an earlier partial download)", exc)
                    return _Outcome.CORRUPT_CONTINUED
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
                        report.resumed += 1
                    elif resp.status != 200:
                        log.info("%s answered HTTP %s for blob %s", source, resp.status, ref.short)
                        return _Outcome.ABSENT
                    with _larger_socket_reads(resp):
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


def _parse_receiving(value: object) -> dict[BlobRef, int]:
    """``receiving`` of a have answer: [[sha256, size, bytes so far], ...]; absent from older peers."""
    if not isinstance(value, list):
        return {}
    found = {}
    for item in value:
        if isinstance(item, (list, tuple)) and len(item) == 3 and isinstance(item[2], int):
            try:
                found[BlobRef.parse(item[:2])] = item[2]
            except BadBlobRef:
                continue  # one garbled entry does not make the rest of the answer useless
    return found


def _range_starts_at(content_range: str, offset: int) -> bool:
    # "bytes 100-199/200"
    try:
        unit, spec = content_range.split(" ", 1)
        return unit == "bytes" and int(spec.split("-", 1)[0]) == offset
    except ValueError:
        return False
