"""The last rendered image of a job, as a small JPEG for the dashboard and the add-on.

The worker makes the thumbnail with FFmpeg (``make_thumbnail``) and posts it to
the coordinator, which keeps one per job at Flamenco's place,
``<job files>/job-<first 4 of the id>/<job id>/last-rendered.jpg``, so
``/job-files/...`` serves it.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from .outputs import OutputRefused, check_job_id

THUMBNAIL_WIDTH = 320
MAX_THUMBNAIL_BYTES = 4 << 20
FILENAME = "last-rendered.jpg"
_JPEG_MAGIC = b"\xff\xd8\xff"

if TYPE_CHECKING:
    import aiohttp


class ThumbnailError(Exception):
    """FFmpeg could not make a thumbnail; ``str()`` has its message."""


async def make_thumbnail(image_path: Path, *, ffmpeg: str = "ffmpeg", width: int = THUMBNAIL_WIDTH,
                         timeout_s: float = 30.0) -> bytes:
    """A JPEG of ``image_path`` at most ``width`` pixels wide (never enlarged), aspect kept."""
    # Even sizes: the JPEG encoder's 4:2:0 chroma wants them.
    scale = f"scale='max(2,trunc(min({width},iw)/2)*2)':-2"
    proc = await asyncio.create_subprocess_exec(
        ffmpeg, "-v", "error", "-nostdin", "-i", str(image_path), "-frames:v", "1", "-vf", scale,
        "-pix_fmt", "yuvj420p", "-q:v", "3", "-f", "image2pipe", "-c:v", "mjpeg", "-",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise ThumbnailError(f"ffmpeg took longer than {timeout_s:.0f} s to make a thumbnail of {image_path}") from None
    if proc.returncode != 0 or not out.startswith(_JPEG_MAGIC):
        message = err.decode("utf-8", "replace").strip() or f"exit code {proc.returncode}"
        raise ThumbnailError(f"ffmpeg could not make a thumbnail of {image_path}: {message}")
    return out


class LastRenderedStore:
    """Keeps the latest thumbnail of each job under ``root`` (the coordinator's job-files folder)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._newest: Path | None = None  # the farm's last rendered image, once known

    def newest(self) -> Path | None:
        """The most recently saved image of any job. Known from ``save``; found by
        a scan only when nothing was saved here since the start (a restart, a new
        coordinator) or that job's images are gone. Blocks: use a thread."""
        if self._newest is None or not self._newest.is_file():
            self._newest = self._scan()
        return self._newest

    def _scan(self) -> Path | None:
        newest: tuple[float, Path] | None = None
        for image in self.root.glob(f"job-*/*/{FILENAME}"):
            try:
                mtime = image.stat().st_mtime
            except OSError:  # replaced or deleted meanwhile
                continue
            if newest is None or mtime > newest[0]:
                newest = (mtime, image)
        return newest[1] if newest else None

    def path_for(self, job_id: str) -> Path:
        job_id = check_job_id(job_id)
        return self.root / f"job-{job_id[:4]}" / job_id / FILENAME

    def save(self, job_id: str, jpeg: bytes) -> Path:
        """Write atomically; raises ``OutputRefused`` (400/413/415) for a bad image. Blocks: use a thread."""
        target = self.path_for(job_id)
        if len(jpeg) > MAX_THUMBNAIL_BYTES:
            raise OutputRefused(413, f"a thumbnail may be at most {MAX_THUMBNAIL_BYTES} bytes, got {len(jpeg)}; "
                                     f"send a JPEG at most {THUMBNAIL_WIDTH} pixels wide")
        if not jpeg.startswith(_JPEG_MAGIC):
            raise OutputRefused(415, "the last-rendered image must be a JPEG (make it with make_thumbnail)")
        os.makedirs(target.parent, exist_ok=True)
        tmp = target.with_name(f".{FILENAME}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            tmp.write_bytes(jpeg)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        self._newest = target
        return target


async def post_last_rendered(session: aiohttp.ClientSession, coordinator_url: str, job_id: str, jpeg: bytes, *,
                             timeout_s: float = 30.0) -> bool:
    """Send a thumbnail to the coordinator; False when it could not be delivered (not worth retrying:
    the next frame brings a newer one)."""
    import aiohttp

    url = f"{coordinator_url.rstrip('/')}/peer/v1/files/last-rendered/{check_job_id(job_id)}"
    try:
        async with session.post(url, data=jpeg, headers={"Content-Type": "image/jpeg"},
                                timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            await resp.read()
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False
