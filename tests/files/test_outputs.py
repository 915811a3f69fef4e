"""Outputs back to the owner: traversal refused, chunked verified uploads, an outbox that waits
for an offline owner (across a restart of the shipper), and signed requests between peers."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import msgpack
import pytest

from peer.cluster.auth import Verifier, auth_middleware, signing_session
from peer.cluster.identity import FarmIdentity
from peer.files.outputs import INCOMING, OutputReceiver, OutputShipper
from tests.files.conftest import StartPeer, free_port

JOB = "5a1f0c2e-7d3b-4b8e-9c1a-0f2e3d4c5b6a"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def all_files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


async def _put(session: aiohttp.ClientSession, url: str, job: str, path: str, data: bytes, *,
               offset: int = 0, size: int | None = None, digest: str | None = None) -> tuple[int, dict]:
    params = {"path": path, "size": str(len(data) if size is None else size), "sha256": digest or sha(data),
              "offset": str(offset)}
    async with session.put(f"{url}/peer/v1/files/outputs/{job}", params=params, data=data) as resp:
        return resp.status, msgpack.unpackb(await resp.read())


@pytest.fixture
async def owner(start_peer: StartPeer, tmp_path: Path):  # type: ignore[no-untyped-def]
    roots = {JOB: tmp_path / "artist" / "renders" / "shot010"}
    peer = await start_peer("owner", resolve_output_root=lambda job_id: roots.get(job_id))
    peer.output_root = roots[JOB]  # type: ignore[attr-defined]
    return peer


@pytest.mark.parametrize("path", [
    "../escape.png", "../../etc/passwd", "/etc/passwd", "frames/../../x.png", "C:/Windows/x.png", "C:x.png",
    "\\\\server\\share\\x.png", "frames\\..\\..\\x.png", "con.png", "frames/aux", "a\x00b.png", "", ".",
    "frames/./x.png", "x.png.", f"{INCOMING}/x.part",
])
async def test_traversal_and_unsafe_output_paths_are_refused(owner, session: aiohttp.ClientSession,  # type: ignore[no-untyped-def]
                                                             tmp_path: Path, path: str) -> None:
    status, body = await _put(session, owner.url, JOB, path, b"pixels")
    assert status == 400, body
    assert "refused" in body["message"] or "keeps for uploads" in body["message"]
    async with session.get(f"{owner.url}/peer/v1/files/outputs/{JOB}",
                           params={"path": path, "size": "6", "sha256": sha(b"pixels")}) as resp:
        assert resp.status == 400
    # Nothing was written anywhere under the test folder but the stores.
    written = {f for f in all_files(tmp_path) if "/store/" not in f}
    assert written == set()


async def test_bad_parameters_and_unknown_jobs(owner, session: aiohttp.ClientSession) -> None:  # type: ignore[no-untyped-def]
    status, body = await _put(session, owner.url, "other-job-0000", "a.png", b"x")
    assert status == 404 and "no output folder for job" in body["message"]
    status, body = await _put(session, owner.url, "..job..", "a.png", b"x")
    assert status == 400 and "job id" in body["message"]
    status, body = await _put(session, owner.url, JOB, "a.png", b"x", digest="nothex")
    assert status == 400
    status, body = await _put(session, owner.url, JOB, "a.png", b"xyz", size=2)
    assert status == 400 and "exceed" in body["message"]
    status, body = await _put(session, owner.url, JOB, "a.png", b"x", offset=5, size=10, digest="0" * 64)
    assert status == 409 and body["offset"] == 0


async def test_a_corrupted_upload_is_refused_and_not_stored(owner, session: aiohttp.ClientSession) -> None:  # type: ignore[no-untyped-def]
    status, body = await _put(session, owner.url, JOB, "frames/0001.png", b"pixels", digest=sha(b"pixelz"))
    assert status == 422 and "discarded" in body["message"]
    assert not (owner.output_root / "frames" / "0001.png").exists()


async def test_outputs_arrive_in_chunks_under_the_output_root(owner, session: aiohttp.ClientSession,  # type: ignore[no-untyped-def]
                                                              tmp_path: Path) -> None:
    shipper = OutputShipper(tmp_path / "worker" / "outbox", session, chunk_size=64 * 1024)
    frame, video = os.urandom(200_000), os.urandom(10)
    for name, data in (("0001.png", frame), ("preview.mp4", video)):
        (tmp_path / name).write_bytes(data)
    await shipper.enqueue(owner.url, JOB, "frames/0001.png", tmp_path / "0001.png")
    await shipper.enqueue(owner.url, JOB, "preview.mp4", tmp_path / "preview.mp4")
    assert not (tmp_path / "0001.png").exists()  # moved into the outbox
    report = await shipper.deliver_pending()
    assert [i.path for i in report.delivered] == ["frames/0001.png", "preview.mp4"]
    assert (owner.output_root / "frames" / "0001.png").read_bytes() == frame
    assert (owner.output_root / "preview.mp4").read_bytes() == video
    assert all_files(owner.output_root) == {"frames/0001.png", "preview.mp4"}  # no partial files left
    assert shipper.pending() == []
    puts = [p for m, p, h in owner.requests if m == "PUT"]
    assert len(puts) == 4 + 1  # 200,000 bytes in 64 KiB chunks, plus the video


def test_uploads_starting_while_others_finish_all_land(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Several workers deliver frames of a job together. A finished upload removes the
    # owner's upload folder once it is empty, while another upload is creating it or
    # opening its partial file there: that upload got a 500 and its worker backed off.
    real_makedirs = os.makedirs

    def makedirs_then_pause(*args: object, **kwargs: object) -> None:
        real_makedirs(*args, **kwargs)  # type: ignore[arg-type]
        time.sleep(0.002)  # widen the window in which another upload may remove the folder

    monkeypatch.setattr(os, "makedirs", makedirs_then_pause)
    receiver = OutputReceiver(lambda job_id: None)
    root = tmp_path / "renders"
    workers, frames_each = 3, 40
    barrier = threading.Barrier(workers)

    def deliver(worker: int) -> list[str]:
        barrier.wait()
        failures = []
        for n in range(frames_each):
            data = f"worker {worker} frame {n}".encode()
            try:
                receiver._write(root, f"shot/w{worker}/{n:06d}.png", len(data), sha(data), 0, data)
            except OSError as exc:
                failures.append(repr(exc))
        return failures

    with ThreadPoolExecutor(workers) as pool:
        failures = [f for found in pool.map(deliver, range(workers)) for f in found]
    assert failures == []
    assert len(all_files(root)) == workers * frames_each
    assert not (root / INCOMING).exists()  # nothing left behind in the artist's folder


async def test_the_outbox_waits_for_an_offline_owner_across_a_restart(start_peer: StartPeer,
                                                                      session: aiohttp.ClientSession,
                                                                      tmp_path: Path) -> None:
    port = free_port()
    owner_url = f"http://127.0.0.1:{port}"
    outbox = tmp_path / "worker" / "outbox"
    shipper = OutputShipper(outbox, session, min_retry_s=0.05)
    data = os.urandom(50_000)
    (tmp_path / "f.exr").write_bytes(data)
    await shipper.enqueue(owner_url, JOB, "frames/0001.exr", tmp_path / "f.exr")
    report = await shipper.deliver_pending()
    assert report.delivered == [] and [i.path for i in report.waiting] == ["frames/0001.exr"]
    await shipper.close()

    # The worker restarts; its outbox is still there. Then the owner comes back.
    restarted = OutputShipper(outbox, session, min_retry_s=0.05, max_retry_s=0.2)
    assert [i.path for i in restarted.pending()] == ["frames/0001.exr"]
    restarted.start()
    await asyncio.sleep(0.3)  # a few failed rounds
    root = tmp_path / "artist" / "out"
    await start_peer("owner", port=port, resolve_output_root=lambda job_id: root if job_id == JOB else None)
    for _ in range(100):
        if (root / "frames" / "0001.exr").exists():
            break
        await asyncio.sleep(0.05)
    await restarted.close()
    assert (root / "frames" / "0001.exr").read_bytes() == data
    assert restarted.pending() == []


async def test_an_interrupted_upload_continues_from_the_owners_partial(owner, session: aiohttp.ClientSession,  # type: ignore[no-untyped-def]
                                                                       tmp_path: Path) -> None:
    data = os.urandom(300_000)
    # A first attempt got 100,000 bytes through before the worker went away.
    status, body = await _put(session, owner.url, JOB, "frames/0002.png", data[:100_000], size=len(data),
                              digest=sha(data))
    assert status == 200 and body == {"offset": 100_000, "complete": False}
    (tmp_path / "f.png").write_bytes(data)
    shipper = OutputShipper(tmp_path / "outbox", session, chunk_size=1 << 20)
    await shipper.enqueue(owner.url, JOB, "frames/0002.png", tmp_path / "f.png")
    owner.requests.clear()
    assert len((await shipper.deliver_pending()).delivered) == 1
    assert (owner.output_root / "frames" / "0002.png").read_bytes() == data
    puts = [p for m, p, h in owner.requests if m == "PUT"]
    assert len(puts) == 1 and "offset=100000" in puts[0]


async def test_an_owner_that_refuses_moves_the_item_to_failed(owner, session: aiohttp.ClientSession,  # type: ignore[no-untyped-def]
                                                              tmp_path: Path) -> None:
    (tmp_path / "f.png").write_bytes(b"x")
    shipper = OutputShipper(tmp_path / "outbox", session)
    await shipper.enqueue(owner.url, "deleted-job-1234", "f.png", tmp_path / "f.png")
    report = await shipper.deliver_pending()
    assert [i.path for i in report.failed] == ["f.png"]
    assert shipper.pending() == []
    [failed] = shipper.failed()
    assert "no output folder for job" in failed.failure
    assert (tmp_path / "outbox" / "failed" / failed.id / "data").read_bytes() == b"x"
    assert shipper.retry_failed() == 1
    assert [i.path for i in shipper.pending()] == ["f.png"] and shipper.failed() == []


async def test_enqueue_refuses_unsafe_paths(session: aiohttp.ClientSession, tmp_path: Path) -> None:
    shipper = OutputShipper(tmp_path / "outbox", session)
    (tmp_path / "f.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="'..'"):
        await shipper.enqueue("http://127.0.0.1:1", JOB, "../f.png", tmp_path / "f.png")
    assert (tmp_path / "f.png").exists() and shipper.pending() == []


async def test_signed_requests_between_peers_fetch_and_deliver(start_peer: StartPeer, tmp_path: Path) -> None:
    farm = FarmIdentity(name="studio", secret=bytes(range(16)))
    # trust_loopback=False: the test's requests are treated like another computer's.
    auth = auth_middleware(Verifier(farm), trust_loopback=False)
    root = tmp_path / "out"
    owner = await start_peer("owner", middlewares=(auth,), resolve_output_root=lambda job_id: root)
    ref = owner.store.add_bytes(os.urandom(100_000))
    from peer.files.store import ContentStore
    from peer.files.transfer import Fetcher

    async with aiohttp.ClientSession() as stranger:
        async with stranger.get(f"{owner.url}/peer/v1/files/blob/{ref.sha256}/{ref.size}") as resp:
            assert resp.status == 401
    async with signing_session(farm, "worker-1") as signed:
        worker = ContentStore(tmp_path / "worker", cap_bytes=1 << 30)
        await Fetcher(worker, signed, [owner.url]).fetch([ref])
        assert worker.has(ref)
        (tmp_path / "f.png").write_bytes(b"frame" * 30_000)
        shipper = OutputShipper(tmp_path / "outbox", signed, chunk_size=32 * 1024)
        await shipper.enqueue(owner.url, JOB, "f.png", tmp_path / "f.png")
        assert len((await shipper.deliver_pending()).delivered) == 1
    assert (root / "f.png").read_bytes() == b"frame" * 30_000
