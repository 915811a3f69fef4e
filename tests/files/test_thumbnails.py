"""Last-rendered thumbnails: made with FFmpeg, stored where /job-files/ serves them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import aiohttp
import msgpack
import pytest

from peer.files.thumbnails import ThumbnailError, make_thumbnail, post_last_rendered
from tests.files.conftest import StartPeer
from tests.scenes import requires_ffmpeg

JOB = "5a1f0c2e-7d3b-4b8e-9c1a-0f2e3d4c5b6a"


def _image(path: Path, size: str) -> Path:
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", "-f", "lavfi", "-i", f"testsrc=size={size}",
                    "-frames:v", "1", str(path)], check=True, timeout=30)
    return path


def _size(jpeg: bytes, tmp_path: Path) -> tuple[int, int]:
    path = tmp_path / "probe.jpg"
    path.write_bytes(jpeg)
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                          "stream=width,height", "-of", "json", str(path)],
                         check=True, capture_output=True, timeout=30).stdout
    stream = json.loads(out)["streams"][0]
    return stream["width"], stream["height"]


@requires_ffmpeg
async def test_thumbnails_are_jpegs_at_most_320_wide(tmp_path: Path) -> None:
    big = await make_thumbnail(_image(tmp_path / "big.png", "1280x720"))
    assert big.startswith(b"\xff\xd8\xff")
    assert _size(big, tmp_path) == (320, 180)
    small = await make_thumbnail(_image(tmp_path / "small.png", "101x51"))
    assert _size(small, tmp_path) == (100, 50)  # never enlarged; even sizes
    tiff = await make_thumbnail(_image(tmp_path / "frame.tif", "640x480"))
    assert _size(tiff, tmp_path) == (320, 240)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ThumbnailError, match="could not make a thumbnail"):
        await make_thumbnail(tmp_path / "broken.png")


@requires_ffmpeg
async def test_last_rendered_is_stored_in_flamencos_layout(start_peer: StartPeer, session: aiohttp.ClientSession,
                                                           tmp_path: Path) -> None:
    seen: list[tuple[str, Path]] = []
    peer = await start_peer("coordinator", job_files_root=tmp_path / "job-files",
                            on_last_rendered=lambda job_id, path: seen.append((job_id, path)))
    jpeg = await make_thumbnail(_image(tmp_path / "f.png", "64x48"))
    url = f"{peer.url}/peer/v1/files/last-rendered"
    async with session.post(f"{url}/{JOB}", data=jpeg, headers={"Content-Type": "image/jpeg"}) as resp:
        assert resp.status == 200
    target = tmp_path / "job-files" / f"job-{JOB[:4]}" / JOB / "last-rendered.jpg"
    assert target.read_bytes() == jpeg
    assert seen == [(JOB, target)]
    assert await post_last_rendered(session, peer.url, JOB, jpeg)
    assert len(seen) == 2
    assert not await post_last_rendered(session, "http://127.0.0.1:9", JOB, jpeg)
    async with session.post(f"{url}/{JOB}", data=b"GIF89a...") as resp:
        assert resp.status == 415
        assert "must be a JPEG" in msgpack.unpackb(await resp.read())["message"]
    async with session.post(f"{url}/bad.id", data=jpeg) as resp:
        assert resp.status == 400
    async with session.post(f"{url}/{JOB}", data=b"\xff\xd8\xff" + bytes(5 << 20)) as resp:
        assert resp.status == 413
    assert target.read_bytes() == jpeg
