"""Fetching blobs over real HTTP between peers with separate stores."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import aiohttp
import msgpack
import pytest
from aiohttp import web

from peer.files.checkout import build_checkout
from peer.files.manifest import Manifest
from peer.files.routes import ServeLimits
from peer.files.store import BlobRef, ContentStore
from peer.files.transfer import FetchError, Fetcher
from tests.files.conftest import StartPeer


def ref_of(data: bytes) -> BlobRef:
    return BlobRef(hashlib.sha256(data).hexdigest(), len(data))


async def test_a_worker_fetches_a_manifest_and_checks_it_out(start_peer: StartPeer, session: aiohttp.ClientSession,
                                                             tmp_path: Path) -> None:
    owner = await start_peer("owner")
    blend, tex = os.urandom(300_000), os.urandom(5_000_000)
    manifest = Manifest(root_name="proj", blend="main.blend", files={
        "main.blend": owner.store.add_bytes(blend), "tex/a.png": owner.store.add_bytes(tex),
        "tex/same.png": owner.store.add_bytes(tex), "empty.txt": owner.store.add_bytes(b""),
    })
    worker = ContentStore(tmp_path / "worker", cap_bytes=1 << 30)
    progress: list[tuple[int, int]] = []
    report = await Fetcher(worker, session, [owner.url], on_progress=lambda d, t: progress.append((d, t))).fetch(
        manifest.refs())
    assert sorted(report.fetched) == sorted(manifest.refs())
    assert report.bytes_received == len(blend) + len(tex)
    assert progress[-1] == (len(blend) + len(tex), len(blend) + len(tex))
    co = build_checkout(manifest, worker, tmp_path / "co")
    assert co.blend.read_bytes() == blend and (co.root / "tex" / "same.png").read_bytes() == tex
    # Nothing is fetched twice.
    again = await Fetcher(worker, session, [owner.url]).fetch(manifest.refs())
    assert again.fetched == [] and again.bytes_received == 0


async def test_have_answers_which_blobs_and_the_load(start_peer: StartPeer, session: aiohttp.ClientSession) -> None:
    peer = await start_peer("p")
    held = peer.store.add_bytes(b"held")
    absent = ref_of(b"absent")
    body = msgpack.packb({"blobs": [held.to_wire(), absent.to_wire()]})
    async with session.post(f"{peer.url}/peer/v1/files/have", data=body) as resp:
        answer = msgpack.unpackb(await resp.read())
    assert answer == {"have": [held.to_wire()], "load": 0, "max_uploads": 8, "receiving": [],
                      "store": peer.store.store_id}
    async with session.post(f"{peer.url}/peer/v1/files/have", data=msgpack.packb({"blobs": [["x", 1]]})) as resp:
        assert resp.status == 400 and "SHA-256" in msgpack.unpackb(await resp.read())["message"]
    async with session.get(f"{peer.url}/peer/v1/files/blob/{absent.sha256}/{absent.size}") as resp:
        assert resp.status == 404
    async with session.get(f"{peer.url}/peer/v1/files/blob/{held.sha256}/nope") as resp:
        assert resp.status == 400
    async with session.get(f"{peer.url}/peer/v1/files/blob/{'Z' * 64}/4") as resp:
        assert resp.status == 400


async def test_a_cut_download_resumes_where_it_stopped(start_peer: StartPeer, session: aiohttp.ClientSession,
                                                      tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    cuts = {"left": 1}

    @web.middleware
    async def serve_half_then_drop(request: web.Request, handler):  # type: ignore[no-untyped-def]
        if "/blob/" in request.path and cuts["left"]:
            cuts["left"] -= 1
            response = web.StreamResponse(headers={"Content-Length": str(len(data))})
            await response.prepare(request)
            await response.write(data[: len(data) // 2])
            request.transport.abort()  # type: ignore[union-attr]
            return response
        return await handler(request)

    owner = await start_peer("owner", middlewares=(serve_half_then_drop,))
    ref = owner.store.add_bytes(data)
    worker = ContentStore(tmp_path / "worker", cap_bytes=1 << 30)
    report = await Fetcher(worker, session, [owner.url]).fetch([ref])
    assert report.fetched == [ref] and report.resumed == 1
    assert worker.path_of(ref).read_bytes() == data
    blob_requests = [headers for method, path, headers in owner.requests if "/blob/" in path]
    assert len(blob_requests) == 2
    assert "Range" not in blob_requests[0]
    resumed_at = int(blob_requests[1]["Range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= len(data) // 2  # only the rest was sent again
    assert report.bytes_received == len(data)


async def test_a_corrupt_copy_is_detected_and_fetched_from_another_source(
    start_peer: StartPeer, session: aiohttp.ClientSession, tmp_path: Path,
) -> None:
    data = os.urandom(1 << 20)
    owner = await start_peer("owner")
    cache = await start_peer("cache")  # a peer whose copy was damaged on disk
    ref = owner.store.add_bytes(data)
    cache.store.add_bytes(data)
    damaged = cache.store.blob_path(ref)
    os.chmod(damaged, 0o600)
    with open(damaged, "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02")
    worker = ContentStore(tmp_path / "worker", cap_bytes=1 << 30)
    # The cache is preferred over the owner (equal load), so it is asked first.
    report = await Fetcher(worker, session, [owner.url, cache.url]).fetch([ref])
    assert report.corrupt == [(ref, cache.url)]
    assert report.by_source == {owner.url: 1}
    assert worker.verify(ref)
    assert [p for m, p, h in cache.requests if "/blob/" in p] and [p for m, p, h in owner.requests if "/blob/" in p]


async def test_peers_re_serve_what_they_fetched(start_peer: StartPeer, session: aiohttp.ClientSession) -> None:
    owner = await start_peer("owner")
    first = await start_peer("first")
    second = await start_peer("second")
    ref = owner.store.add_bytes(os.urandom(200_000))
    await Fetcher(first.store, session, [owner.url]).fetch([ref])
    report = await Fetcher(second.store, session, [owner.url, first.url]).fetch([ref])
    assert report.by_source == {first.url: 1}  # spares the owner
    assert first.server.served_bytes == ref.size


async def test_a_busy_source_is_waited_for_and_a_missing_blob_fails_with_a_reason(
    start_peer: StartPeer, session: aiohttp.ClientSession, tmp_path: Path,
) -> None:
    owner = await start_peer("owner", limits=ServeLimits(max_uploads=0))
    ref = owner.store.add_bytes(b"wanted")
    worker = ContentStore(tmp_path / "worker", cap_bytes=1 << 30)
    with pytest.raises(FetchError, match="could not fetch 1 file.*busy") as err:
        await Fetcher(worker, session, [owner.url]).fetch([ref], deadline_s=0.5)
    assert err.value.missing == [ref]
    statuses = [p for m, p, h in owner.requests if "/blob/" in p]
    assert len(statuses) >= 2  # retried while busy
    nowhere = ref_of(b"nobody has this")
    with pytest.raises(FetchError, match="no reachable peer has it"):
        await Fetcher(worker, session, [owner.url, "http://127.0.0.1:9"]).fetch([nowhere], deadline_s=0.3)


async def test_the_owner_leaving_after_a_peer_fetched_does_not_stop_others(
    start_peer: StartPeer, session: aiohttp.ClientSession, tmp_path: Path,
) -> None:
    owner = await start_peer("owner")
    early = await start_peer("early")
    ref = owner.store.add_bytes(os.urandom(100_000))
    await Fetcher(early.store, session, [owner.url]).fetch([ref])
    await owner.stop()
    late = ContentStore(tmp_path / "late", cap_bytes=1 << 30)
    report = await Fetcher(late, session, [owner.url, early.url]).fetch([ref], deadline_s=10)
    assert report.by_source == {early.url: 1}


async def test_two_fetches_of_one_blob_in_one_process_share_the_download(
    start_peer: StartPeer, session: aiohttp.ClientSession, tmp_path: Path,
) -> None:
    owner = await start_peer("owner")
    ref = owner.store.add_bytes(os.urandom(2 << 20))
    worker = ContentStore(tmp_path / "worker", cap_bytes=1 << 30)
    a, b = await asyncio.gather(Fetcher(worker, session, [owner.url]).fetch([ref]),
                                Fetcher(worker, session, [owner.url]).fetch([ref]))
    assert sorted([len(a.fetched), len(b.fetched)]) == [0, 1]
    assert worker.verify(ref)


async def test_partial_files_are_looked_at_only_for_blobs_a_peer_is_still_downloading(
    start_peer: StartPeer, session: aiohttp.ClientSession, tmp_path: Path,
) -> None:
    owner = await start_peer("owner")
    refs = [owner.store.add_bytes(os.urandom(1000)) for _ in range(40)]
    worker = ContentStore(tmp_path / "worker", cap_bytes=1 << 30)
    looked_at: list[BlobRef] = []
    partial_size = worker.partial_size

    def counted_partial_size(ref: BlobRef) -> int:
        looked_at.append(ref)
        return partial_size(ref)

    worker.partial_size = counted_partial_size  # type: ignore[method-assign]
    report = await Fetcher(worker, session, [owner.url], concurrency=2).fetch(refs)
    assert sorted(report.fetched) == sorted(refs)
    # No source was downloading any of them, so whose copy is ahead never mattered.
    assert looked_at == []
