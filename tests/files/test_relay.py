"""Peers re-serve a blob while they are still downloading it, over real HTTP between separate stores."""

from __future__ import annotations

import asyncio
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

import aiohttp
import msgpack
import pytest
from aiohttp import web

from peer.files.store import BlobRef, ContentStore
from peer.files.transfer import FetchError, Fetcher
from tests.files.conftest import StartPeer
from tests.files.conftest import TestPeer as FilesPeer

MIB = 1 << 20


def ref_of(data: bytes) -> BlobRef:
    return BlobRef(hashlib.sha256(data).hexdigest(), len(data))


@dataclass
class Gate:
    """A source whose first download of a blob sends ``split`` bytes, then waits for ``opened``.

    Until then it answers other downloads "busy" (503), like a peer at its upload limit.
    ``flip_first`` corrupts one byte of the first download; ``cut_first`` aborts it at the gate.
    """

    data: bytes
    split: int
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    flip_first: bool = False
    cut_first: bool = False
    bodies: int = 0

    @web.middleware
    async def middleware(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
        if "/blob/" not in request.path:
            return await handler(request)
        start = int(request.headers.get("Range", "bytes=0-").removeprefix("bytes=").rstrip("-"))
        first = self.bodies == 0
        if not first and not self.opened.is_set():
            return web.Response(status=503, headers={"Retry-After": "1"})
        self.bodies += 1
        body = bytearray(self.data[start:])
        if first and self.flip_first:
            body[len(body) // 3] ^= 0xFF
        headers = {"Content-Length": str(len(body))}
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(self.data) - 1}/{len(self.data)}"
        response = web.StreamResponse(status=206 if start else 200, headers=headers)
        await response.prepare(request)
        before_gate = max(0, self.split - start)
        await response.write(bytes(body[:before_gate]))
        if first:
            await self.opened.wait()
            if self.cut_first:
                request.transport.abort()  # type: ignore[union-attr]
                return response
        await response.write(bytes(body[before_gate:]))
        await response.write_eof()
        return response


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.01)


def blob_requests(peer: FilesPeer) -> list[dict[str, str]]:
    return [headers for method, path, headers in peer.requests if "/blob/" in path]


async def test_a_peer_serves_a_blob_while_it_is_still_downloading_it(
    start_peer: StartPeer, session: aiohttp.ClientSession, tmp_path: Path,
) -> None:
    data = os.urandom(6 * MIB)
    ref = ref_of(data)
    gate = Gate(data, split=4 * MIB)
    # The owner is busy with the relay's download: the worker must use the relay.
    owner = await start_peer("owner", middlewares=(gate.middleware,))
    owner.store.add_bytes(data)
    relay = await start_peer("relay")
    relaying = asyncio.create_task(Fetcher(relay.store, session, [owner.url]).fetch([ref]))
    await until(lambda: (w := relay.store.receiving(ref)) is not None and w.offset > 0, "the relay has bytes")

    async with session.post(f"{relay.url}/peer/v1/files/have",
                            data=msgpack.packb({"blobs": [ref.to_wire()]})) as resp:
        answer = msgpack.unpackb(await resp.read())
    assert answer["have"] == [] and answer["store"] == relay.store.store_id
    [[sha, size, offset]] = answer["receiving"]
    assert (sha, size) == (ref.sha256, ref.size) and 0 < offset < ref.size

    worker = ContentStore(tmp_path / "worker", cap_bytes=1 << 30)
    fetching = asyncio.create_task(Fetcher(worker, session, [owner.url, relay.url]).fetch([ref]))
    await until(lambda: relay.server.served_bytes > 0, "the relay serves the worker")
    assert not relay.store.has(ref)  # it served bytes it had not finished receiving
    gate.opened.set()
    relayed, report = await asyncio.wait_for(asyncio.gather(relaying, fetching), 30)
    assert relayed.fetched == [ref] and report.fetched == [ref]
    assert report.by_source == {relay.url: 1} and report.corrupt == []
    assert worker.path_of(ref).read_bytes() == data and relay.store.verify(ref)
    assert relay.server.served_bytes == len(data)
    assert gate.bodies == 1  # only the relay's download left the owner (the worker was told "busy")
    assert relay.store.receiving(ref) is None


async def test_when_a_relay_is_cut_off_its_follower_resumes_elsewhere(
    start_peer: StartPeer, session: aiohttp.ClientSession, tmp_path: Path,
) -> None:
    data = os.urandom(5 * MIB)
    ref = ref_of(data)
    gate = Gate(data, split=3 * MIB, cut_first=True)
    owner = await start_peer("owner", middlewares=(gate.middleware,))
    owner.store.add_bytes(data)
    relay = await start_peer("relay")
    relaying = asyncio.create_task(Fetcher(relay.store, session, [owner.url]).fetch([ref]))
    await until(lambda: (w := relay.store.receiving(ref)) is not None and w.offset > 0, "the relay has bytes")
    worker = ContentStore(tmp_path / "worker", cap_bytes=1 << 30)
    fetching = asyncio.create_task(Fetcher(worker, session, [owner.url, relay.url]).fetch([ref]))
    await until(lambda: relay.server.served_bytes > 0, "the relay serves the worker")
    gate.opened.set()  # the owner drops the relay's connection: the relay's download stops short
    relayed, report = await asyncio.wait_for(asyncio.gather(relaying, fetching), 30)
    assert relayed.resumed == 1 and relay.store.verify(ref)
    assert report.resumed >= 1  # the worker kept what the relay had sent and continued from there
    assert worker.path_of(ref).read_bytes() == data
    later = [h for h in blob_requests(owner) + blob_requests(relay) if "Range" in h]
    assert later, "every download after the cut continues with a Range request"


async def test_corrupt_bytes_passed_on_by_a_relay_are_caught_and_fetched_again(
    start_peer: StartPeer, session: aiohttp.ClientSession, tmp_path: Path,
) -> None:
    data = os.urandom(4 * MIB)
    ref = ref_of(data)
    bad_gate = Gate(data, split=3 * MIB, flip_first=True)
    bad = await start_peer("bad", middlewares=(bad_gate.middleware,))  # sends a damaged copy once
    bad.store.add_bytes(data)
    owner_busy = True

    @web.middleware
    async def busy_at_first(request: web.Request, handler):  # type: ignore[no-untyped-def]
        if "/blob/" in request.path and owner_busy:
            return web.Response(status=503, headers={"Retry-After": "1"})
        return await handler(request)

    owner = await start_peer("owner", middlewares=(busy_at_first,))
    owner.store.add_bytes(data)
    relay = await start_peer("relay")
    relaying = asyncio.create_task(Fetcher(relay.store, session, [bad.url]).fetch([ref], deadline_s=1))
    await until(lambda: (w := relay.store.receiving(ref)) is not None and w.offset > 0, "the relay has bytes")
    worker = ContentStore(tmp_path / "worker", cap_bytes=1 << 30)
    fetching = asyncio.create_task(Fetcher(worker, session, [owner.url, relay.url]).fetch([ref]))
    await until(lambda: relay.server.served_bytes > 0, "the relay serves the worker")
    owner_busy = False
    bad_gate.opened.set()
    with pytest.raises(FetchError, match="corrupt"):
        await relaying  # its only source sent a damaged copy; it was thrown away
    report = await asyncio.wait_for(fetching, 30)
    assert not relay.store.has(ref) and relay.store.partial_size(ref) == 0
    assert worker.path_of(ref).read_bytes() == data
    assert report.by_source == {owner.url: 1}  # the owner was not blamed for the relay's bytes


async def test_a_source_behind_this_peer_is_not_taken(
    start_peer: StartPeer, session: aiohttp.ClientSession, tmp_path: Path,
) -> None:
    data = os.urandom(4 * MIB)
    ref = ref_of(data)
    gate = Gate(data, split=2 * MIB)
    owner = await start_peer("owner", middlewares=(gate.middleware,))
    owner.store.add_bytes(data)
    relay = await start_peer("relay")
    relaying = asyncio.create_task(Fetcher(relay.store, session, [owner.url]).fetch([ref]))
    await until(lambda: (w := relay.store.receiving(ref)) is not None and w.offset > 0, "the relay has bytes")
    # This worker already holds more of the blob than the relay: waiting on the relay could only
    # slow it down (and two such peers could wait on each other), so it waits for the owner.
    worker = ContentStore(tmp_path / "worker", cap_bytes=1 << 30)
    with worker.partial_writer(ref) as w:
        w.write(data[:3 * MIB])
    fetching = asyncio.create_task(Fetcher(worker, session, [owner.url, relay.url]).fetch([ref]))
    await asyncio.sleep(0.5)
    assert blob_requests(relay) == [] and not fetching.done()
    gate.opened.set()  # now either may serve it: the relay once it is ahead
    _, report = await asyncio.wait_for(asyncio.gather(relaying, fetching), 30)
    assert report.resumed == 1 and report.bytes_received == len(data) - 3 * MIB
    assert worker.path_of(ref).read_bytes() == data


async def test_a_fetcher_never_asks_its_own_peer_for_a_blob(
    start_peer: StartPeer, session: aiohttp.ClientSession,
) -> None:
    owner = await start_peer("owner")
    me = await start_peer("me")
    ref = owner.store.add_bytes(os.urandom(3 * MIB))
    fetcher = Fetcher(me.store, session, [me.url, owner.url], owner=owner.url)
    # Peers list every live peer as a source, themselves too: their own answer is recognised.
    availability, unreachable = await fetcher._ask_sources([ref])
    assert list(availability) == [owner.url] and unreachable == []
    report = await fetcher.fetch([ref])
    assert report.by_source == {owner.url: 1}
    assert blob_requests(me) == []


async def test_ranges_and_head_of_a_blob_being_received(start_peer: StartPeer, session: aiohttp.ClientSession) -> None:
    peer = await start_peer("p")
    data = os.urandom(100_000)
    ref = ref_of(data)
    url = f"{peer.url}/peer/v1/files/blob/{ref.sha256}/{ref.size}"
    with peer.store.partial_writer(ref) as writer:
        writer.write(data[:1000])
        async with session.get(url, headers={"Range": "bytes=10-19"}) as resp:
            assert resp.status == 206 and resp.headers["Content-Range"] == f"bytes 10-19/{ref.size}"
            assert await resp.read() == data[10:20]
        async with session.head(url) as resp:
            assert resp.status == 200 and resp.headers["Content-Length"] == str(ref.size)
        for bad in ("bytes=-5", "bytes=-0", "bytes=5-2", f"bytes={ref.size}-", "bytes=1-2,5-6", "lines=1-",
                    "bytes=\u00b2-"):  # a superscript two is a digit to str.isdigit, not to int()
            async with session.get(url, headers={"Range": bad}) as resp:
                assert resp.status == 416, bad
        # A response that follows the download: it ends when the download stops short.
        async with session.get(url) as resp:
            assert resp.status == 200
            got = await resp.content.readexactly(1000)
            assert got == data[:1000]
            writer.write(data[1000:2000])
            assert await resp.content.readexactly(1000) == data[1000:2000]
            writer.close()
            with pytest.raises((aiohttp.ClientPayloadError, asyncio.IncompleteReadError)):
                await resp.content.read()
    async with session.get(url) as resp:
        assert resp.status == 404  # neither stored nor being received
