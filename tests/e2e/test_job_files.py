"""No shared folder: a worker renders a project it never had, and the results
come back to the peer the job was submitted to (real processes, real Blender)."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from peer.cli import prepare_job
from peer.localfarm import LocalFarm
from tests.files.project import GREEN, RED, make_project, region_colour
from tests.scenes import requires_blender, requires_ffmpeg


def close_to(a: tuple[int, ...], b: tuple[int, ...], tolerance: int = 40) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b))


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen within {timeout:.0f} s")


@requires_blender
@requires_ffmpeg
@pytest.mark.timeout(180)
def test_worker_renders_files_it_never_had_and_outputs_reach_the_submitter(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project", tmp_path / "elsewhere")
    out_root = tmp_path / "artist-renders"
    with LocalFarm(tmp_path / "farm") as farm:
        # The artist's peer coordinates and owns the job but renders nothing.
        farm.start(1)
        farm.wait_for_workers(1)
        client = farm.client
        job = prepare_job(client, "simple-blender-render", blend=str(project.main), name="no-nas",
                          sets=["frames=1-2", "chunk_size=1", f"render_output_root={out_root}",
                                "add_path_components=0"], verbose=False)
        submitted = client.submit(job)
        # From now on the original files are out of everyone's reach but the owner's store.
        moved = tmp_path / "moved-away"
        os.rename(tmp_path / "project", moved)
        os.rename(tmp_path / "elsewhere", tmp_path / "elsewhere-gone")

        done = wait_for(lambda: (j := client.job(submitted["id"]))["status"] in ("completed", "failed") and j,
                        150, "the job finishing")
        tasks = client.tasks(submitted["id"])
        assert done["status"] == "completed", [(t["name"], t["status"], t.get("activity")) for t in tasks]
        worker_peer = farm.peers[1]
        renders = [t for t in tasks if t["task_type"] == "blender"]
        assert len(renders) == 2 and all(t["worker"]["name"] == worker_peer.name for t in renders)

        frames = wait_for(lambda: sorted(out_root.rglob("*.png")) if len(list(out_root.rglob("*.png"))) >= 2 else None,
                          30, "both frames arriving in the artist's folder")
        assert len(frames) == 2
        # Rendered with the linked library's textured object and the outside texture.
        assert close_to(region_colour(frames[0], left=True), GREEN)
        assert close_to(region_colour(frames[0], left=False), RED)
        videos = wait_for(lambda: list(out_root.rglob("*.mp4")), 30, "the preview video arriving")
        assert videos[0].stat().st_size > 0
        # The worker's copies live in its own data dir, never in the artist's folders.
        assert (worker_peer.data_dir / "checkouts" / submitted["id"]).is_dir()
        del moved


@requires_blender
@pytest.mark.timeout(180)
def test_outputs_wait_on_the_worker_while_the_submitter_is_away(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project", tmp_path / "elsewhere")
    out_root = tmp_path / "artist-renders"
    # At info level the peers' logs, printed if this fails, say where each output waits.
    with LocalFarm(tmp_path / "farm", global_args=["--log-level", "info"]) as farm:
        owner = farm.start_peer("artist", worker=False)
        worker_a = farm.start_peer("worker-a", join=owner.url)
        worker_b = farm.start_peer("worker-b", join=owner.url)
        farm.wait_for_workers(2)
        client = farm.client
        job = prepare_job(client, "simple-blender-render", blend=str(project.main), name="away",
                          sets=["frames=1-4", "chunk_size=1", f"render_output_root={out_root}",
                                "add_path_components=0"], verbose=False)
        job["settings"]["fps"] = job["settings"].get("fps", 24)
        submitted = client.submit(job)
        shutil.rmtree(tmp_path / "project")
        # Once a worker has fetched the files, the artist's peer goes away.
        wait_for(lambda: any((p.data_dir / "checkouts" / submitted["id"]).is_dir() for p in (worker_a, worker_b)),
                 60, "a worker building its checkout")
        owner.process.send_signal(signal.SIGKILL)
        owner.process.wait(10)
        survivor = worker_a
        from peer.clientlib import FlamencoClient

        status = wait_for(lambda: _job_status(FlamencoClient(survivor.url), submitted["id"]) in ("completed",),
                          150, "the job completing without its submitter")
        assert status
        assert not list(out_root.rglob("*.png")), "nobody could have delivered to the artist yet"
        # The artist's peer returns: the outputs are delivered.
        farm.peers.remove(owner)
        back = farm.start_peer("artist", worker=False)
        assert back.data_dir == owner.data_dir
        wait_for(lambda: len(list(out_root.rglob("*.png"))) >= 4, 60, "the outputs delivered after the return")


def _job_status(client, job_id: str) -> str:
    try:
        return client.job(job_id)["status"]
    except Exception:
        return ""
