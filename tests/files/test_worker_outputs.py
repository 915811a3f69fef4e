"""A worker lists and serves the outputs it rendered for another peer's job, read-only;
malformed job ids are refused with 400 on every outputs route, whoever answers them."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import msgpack
import pytest

from peer.files.job_io import worker_outputs_folder
from tests.files.conftest import StartPeer

OWNED_JOB = "5a1f0c2e-7d3b-4b8e-9c1a-0f2e3d4c5b6a"
OTHERS_JOB = "9b2e1d3f-8c4a-4d9f-a2b1-1e3f4d5c6b7a"  # submitted by another peer; this one rendered frames
BAD_IDS = ["x", "..job..", "a" * 129]


async def _get(session: aiohttp.ClientSession, url: str, **params: str) -> tuple[int, bytes]:
    async with session.get(url, params=params) as resp:
        return resp.status, await resp.read()


@pytest.mark.parametrize("receives_outputs", [True, False])
async def test_malformed_job_ids_are_refused_with_400_when_worker_outputs_are_served(
    start_peer: StartPeer, session: aiohttp.ClientSession, tmp_path: Path, receives_outputs: bool,
) -> None:
    data_dir = tmp_path / "data"
    owned = {OWNED_JOB: tmp_path / "renders"}
    peer = await start_peer(
        "peer", resolve_output_root=(lambda job_id: owned.get(job_id)) if receives_outputs else None,
        resolve_worker_outputs=lambda job_id: worker_outputs_folder(data_dir, job_id))
    for bad in BAD_IDS:
        for suffix, params in (("/list", {}), ("/file", {"path": "frames/0001.png"})):
            status, body = await _get(session, f"{peer.url}/peer/v1/files/outputs/{bad}{suffix}", **params)
            assert status == 400, (bad, suffix, body)
            assert "job id" in msgpack.unpackb(body)["message"]


async def test_a_worker_lists_and_serves_its_outputs_of_another_peers_job_read_only(
    start_peer: StartPeer, session: aiohttp.ClientSession, tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    renders = tmp_path / "renders"
    frame = b"\x89PNG frame one"
    rendered = data_dir / "job-outputs" / OTHERS_JOB
    (rendered / "frames").mkdir(parents=True)
    (rendered / "frames" / "0001.png").write_bytes(frame)
    (renders / "preview.mp4").parent.mkdir(parents=True)
    (renders / "preview.mp4").write_bytes(b"owned video")
    peer = await start_peer(
        "worker", resolve_output_root=lambda job_id: renders if job_id == OWNED_JOB else None,
        resolve_worker_outputs=lambda job_id: worker_outputs_folder(data_dir, job_id))
    base = f"{peer.url}/peer/v1/files/outputs"

    status, body = await _get(session, f"{base}/{OTHERS_JOB}/list")
    assert status == 200 and msgpack.unpackb(body) == {"files": [["frames/0001.png", len(frame)]]}
    assert await _get(session, f"{base}/{OTHERS_JOB}/file", path="frames/0001.png") == (200, frame)
    status, _ = await _get(session, f"{base}/{OTHERS_JOB}/file", path="frames/0002.png")
    assert status == 404
    # The peer's own job still comes from its output root.
    status, body = await _get(session, f"{base}/{OWNED_JOB}/list")
    assert status == 200 and msgpack.unpackb(body) == {"files": [["preview.mp4", len(b"owned video")]]}
    # A job it neither owns nor rendered for.
    status, body = await _get(session, f"{base}/0c0c0c0c-1111-2222-3333-444455556666/list")
    assert status == 404 and "no output folder" in msgpack.unpackb(body)["message"]

    # Read-only: nobody may upload into a worker's outputs of another peer's job.
    async with session.put(f"{base}/{OTHERS_JOB}", data=b"overwrite", params={
            "path": "frames/0001.png", "size": "9", "sha256": "0" * 64, "offset": "0"}) as resp:
        assert resp.status == 404
    assert (rendered / "frames" / "0001.png").read_bytes() == frame
    assert sorted(p.relative_to(rendered).as_posix() for p in rendered.rglob("*")) == ["frames", "frames/0001.png"]
