"""End to end: real peer processes on loopback, real Blender 3.4, real FFmpeg."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from peer.cli import prepare_job, wait_for_job
from peer.localfarm import LocalFarm
from peer.scenes import make_scene

from tests.scenes import requires_blender as needs_blender
from tests.scenes import requires_ffmpeg as needs_ffmpeg


def png_ok(path: Path) -> bool:
    data = path.read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and b"IEND" in data[-16:]


def decode_png(path: Path) -> None:
    """Decode fully with FFmpeg: a truncated or corrupt PNG makes it fail."""
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "null", "-"], check=True,
                   capture_output=True, timeout=30)


def video_frames(path: Path) -> int:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
         "-show_entries", "stream=nb_read_frames", "-of", "json", str(path)],
        check=True, capture_output=True, text=True, timeout=30,
    )
    return int(json.loads(out.stdout)["streams"][0]["nb_read_frames"])


@pytest.fixture
def farm(tmp_path: Path):
    farm = LocalFarm(tmp_path / "farm")
    yield farm
    farm.stop()


@needs_blender
@needs_ffmpeg
@pytest.mark.blender
@pytest.mark.timeout(240)
def test_simple_blender_render_on_two_workers(farm, tmp_path):
    scene = make_scene(tmp_path / "shot" / "e2e-scene.blend", frames=(1, 6), resolution=(64, 48))
    farm.start(workers=2)
    farm.wait_for_workers(2)
    client = farm.client
    job = prepare_job(client, "simple-blender-render",
                      sets=[f"render_output_root={tmp_path / 'renders'}", "chunk_size=2"],
                      blend=str(scene), name="e2e", verbose=False)
    assert job["settings"]["frames"] == "1-6"  # evaluated in Blender from the scene
    assert job["settings"]["format"] == "PNG"
    submitted = client.submit(job)
    final = wait_for_job(client, submitted["id"], quiet=True)
    tasks = client.tasks(submitted["id"])
    assert final["status"] == "completed", [(t["name"], t["status"], client.task_log(t["id"])[-2000:]) for t in tasks]

    # Flamenco's frameChunker writes a run of exactly two frames as "A,B".
    assert [t["name"] for t in tasks] == ["render-1,2", "render-3,4", "render-5,6", "preview-video"]
    # Both workers rendered.
    assert {t["worker"]["name"] for t in tasks} == {"worker-1", "worker-2"}

    out_dir = Path(final["settings"]["render_output_path"]).parent
    assert "{timestamp}" not in str(out_dir)
    frames = sorted(out_dir.glob("*.png"))
    assert [f.name for f in frames] == [f"{n:06d}.png" for n in range(1, 7)]
    for frame in frames:
        assert png_ok(frame)
        decode_png(frame)
    videos = list(out_dir.glob("*.mp4"))
    assert [v.name for v in videos] == ["e2e-scene-1-6.mp4"]
    assert video_frames(videos[0]) == 6
    # The render task's log has Blender's own output.
    log = client.task_log(tasks[0]["id"])
    assert "Saved:" in log and "going to run" in log


@pytest.mark.timeout(120)
def test_sigkill_coordinator_recovers_everything(farm, tmp_path):
    """SIGKILL a single peer (coordinator + worker) mid-job; restart it; nothing is lost."""
    farm.root.mkdir(parents=True)
    peer = farm.start_peer("solo")
    client = farm.client
    job = client.submit({
        "name": "crash test", "type": "echo-sleep-test", "priority": 50, "submitter_platform": "linux",
        "settings": {"message": "survive", "sleep_duration_seconds": 1, "sleep_repeats": 6},
    })
    # Wait until something completed and something is running.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        tasks = client.tasks(job["id"])
        states = [t["status"] for t in tasks]
        if "completed" in states and "active" in states:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"never reached a mixed state: {states}")
    completed_before = {t["id"] for t in tasks if t["status"] == "completed"}
    running_before = {t["id"] for t in tasks if t["status"] == "active"}

    os.killpg(peer.process.pid, signal.SIGKILL)
    peer.process.wait(10)

    farm.peers.remove(peer)
    restarted = farm.start_peer("solo")
    farm.peers.insert(0, farm.peers.pop())
    assert restarted.data_dir == peer.data_dir
    client = farm.client

    after = {t["id"]: t for t in client.tasks(job["id"])}
    assert set(after) == {t["id"] for t in tasks}  # the acknowledged job and all tasks survived
    assert all(after[t]["status"] == "completed" for t in completed_before)
    final = wait_for_job(client, job["id"], quiet=True)
    assert final["status"] == "completed"
    # The task that was running when the peer died was requeued and ran again.
    for task_id in running_before:
        log = client.task_log(task_id)
        assert "restarted and no longer runs it" in log, log
