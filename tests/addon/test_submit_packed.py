"""From the add-on to a worker that never had the project: the artist's own peer
packs the .blend and what it uses, a worker on another peer fetches them and
renders with Debian's Blender 3.4, and the frames come back to the folder the
artist chose (real processes: bpy 5.0.1, two peers, Blender, FFmpeg).

The project is written by Debian's Blender (bpy 5.0 files are unreadable to
3.4) and the add-on submits it without saving: nothing in it is edited, the
settings live on the add-on's property group, so the packed file is the 3.4
file as written.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from blender_addon.client import PACKING_SUBMIT_TIMEOUT_S, FarmClient, FarmError, FarmTimeout
from peer.localfarm import LocalFarm
from tests.addon.conftest import requires_bpy, run_in_blender
from tests.files.project import GREEN, RED, make_project, region_colour
from tests.polling import eventually
from tests.scenes import requires_blender, requires_ffmpeg


def close_to(a: tuple[int, ...], b: tuple[int, ...], tolerance: int = 40) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b))


def at_least(count: int, found: list[Path]) -> list[Path] | None:
    return found if len(found) >= count else None


@requires_bpy
@requires_blender
@requires_ffmpeg
@pytest.mark.blender
@pytest.mark.timeout(90)
def test_addon_submission_is_packed_by_its_peer_and_rendered_by_another(blender_home: Path, tmp_path: Path) -> None:
    project = make_project(tmp_path / "project", tmp_path / "elsewhere")
    out_root = tmp_path / "artist-renders"
    with LocalFarm(tmp_path / "farm") as farm:
        # The artist's peer only submits; the other peer is the farm's only worker.
        artist = farm.start_peer("artist", worker=False)
        worker = farm.start_peer("worker", join=artist.url)
        farm.wait_for_workers(1)

        r = run_in_blender("submit_paused", {
            "scene": str(project.main), "data_dir": str(artist.data_dir), "job_type": "simple-blender-render",
            "job_name": "packed", "settings": {
                "frames": "1-2", "chunk_size": 1, "render_output_root": str(out_root), "add_path_components": 0},
        }, blender_home, timeout=60).result
        assert r["status"] == "paused" and r["error"] == "", r
        # The local peer packs while it answers: the add-on waits for it as long as packing may take.
        assert r["submit_timeout"] == PACKING_SUBMIT_TIMEOUT_S
        # Submitted as it is on disk: bpy 5.0 did not re-save the 3.4 file.
        assert r["file_untouched"] and not r["is_dirty"]
        # What the scene uses, as bpy 5.0 read it: one library, whose image is relative to the library.
        assert r["libraries"] == ["//../libs/lib.blend"]
        assert r["images"] == ["//../textures/green.png", str(project.outside_texture)]
        job_id = r["job_id"]
        client = farm.client
        job = client.job(job_id)
        assert job["settings"]["blendfile"] == str(project.main) and job["settings"]["frames"] == "1-2"

        # The files are in the artist's store now; the originals go out of everyone's reach.
        os.rename(project.root, tmp_path / "moved-away")
        os.rename(project.outside_texture.parent, tmp_path / "elsewhere-gone")
        client.set_job_status(job_id, "requeueing", "the project has been moved away")

        done = eventually(lambda: (j := client.job(job_id))["status"] in ("completed", "failed") and j,
                          70, "the job finishing")
        tasks = client.tasks(job_id)
        assert done["status"] == "completed", [(t["name"], t["status"], t.get("activity")) for t in tasks]
        assert [t["name"] for t in tasks] == ["render-1", "render-2", "preview-video"]
        assert all(t["worker"]["name"] == worker.name for t in tasks)

        frames = eventually(lambda: at_least(2, sorted(out_root.rglob("*.png"))), 30,
                            "both frames arriving in the artist's folder")
        videos = eventually(lambda: list(out_root.rglob("*.mp4")), 30, "the preview video arriving")
        render_log = client.task_log(tasks[0]["id"])

    # The worker opened its own checkout of the project, not the artist's path.
    checkout = worker.data_dir / "checkouts" / job_id / project.root.name
    assert str(checkout / "scenes" / "main.blend") in render_log, render_log
    assert str(project.main) not in render_log
    assert (checkout / "libs" / "lib.blend").is_file() and (checkout / "textures" / "green.png").is_file()
    assert list((checkout / "_outside_project").rglob("red.png"))

    # Everything landed where the add-on said: <root>/<job name>/<timestamp>/.
    render_dir = frames[0].parent
    assert render_dir.parent == out_root / "packed"
    assert [f.name for f in frames] == ["000001.png", "000002.png"]
    assert videos[0].parent == render_dir and videos[0].stat().st_size > 0
    # The linked library's texture (green, inside the project) and the absolute one (red, outside it).
    for frame in frames:
        assert close_to(region_colour(frame, left=True), GREEN), frame
        assert close_to(region_colour(frame, left=False), RED), frame
    # It rendered into its own staging folder and shipped the files; the artist's peer rendered nothing.
    staged = sorted(p.name for p in (worker.data_dir / "job-outputs" / job_id).rglob("*.png"))
    assert staged == ["000001.png", "000002.png"]
    assert not (artist.data_dir / "checkouts" / job_id).exists()


# --- a peer still packing when the add-on stops waiting ---------------------------------


class SlowFarm:
    """Answers the job check and the submission only after ``delay`` seconds, as a peer packing a big project."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.received: list[str] = []
        farm = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                farm.received.append(self.path)
                time.sleep(farm.delay)
                body = json.dumps({"id": "job-1"}).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up; the server still did the work

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def slow_farm() -> Iterator[SlowFarm]:
    farm = SlowFarm(delay=0.8)
    thread = threading.Thread(target=farm.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield farm
    finally:
        farm.server.shutdown()
        farm.server.server_close()
        thread.join(5)


@pytest.mark.timeout(30)
def test_a_submission_that_outlasts_the_wait_warns_the_job_may_still_appear(slow_farm: SlowFarm) -> None:
    client = FarmClient(slow_farm.url, submit_timeout=0.2)
    with pytest.raises(FarmTimeout, match="no answer within"):
        client.check_job({"name": "big"})
    with pytest.raises(FarmError) as raised:
        client.submit_job({"name": "big"})
    message = str(raised.value)
    assert f"{slow_farm.url} did not confirm the job within 0.2 s" in message
    assert "may yet appear on the farm" in message and "check the dashboard before submitting again" in message
    assert slow_farm.received == ["/api/v3/jobs/check", "/api/v3/jobs"]
    # Waiting long enough, the same submission succeeds.
    assert FarmClient(slow_farm.url, submit_timeout=10).submit_job({"name": "big"})["id"] == "job-1"
