"""The glue between jobs and files: which paths are rewritten on a worker, and where outputs go."""

from __future__ import annotations

import os
import time
from pathlib import Path

import aiohttp

from peer.files.job_io import PreparedTask, WorkerJobFiles, output_root_of, rewrite_paths, staging_folder
from peer.files.manifest import Manifest
from peer.files.outputs import OutputShipper
from peer.files.store import BlobRef, ContentStore

JOB = "5a1f0c2e-7d3b-4b8e-9c1a-0f2e3d4c5b6a"

REPLACEMENTS = [("/home/ann/shot/main.blend", "/data/checkouts/j/shot/main.blend"),
                ("/home/ann/renders/", "/data/job-outputs/j")]


def test_paths_under_a_replaced_prefix_are_rewritten_at_folder_boundaries_only():
    params = {
        "blendfile": "/home/ann/shot/main.blend",
        "args": ["--render-output", "/home/ann/renders/shot/######", "--render-format", "PNG"],
        "inputGlob": "/home/ann/renders/shot/*.png",
        "nested": {"other": "/home/ann/renders2/x.png", "windows": "/home/ann/renders\\x.png"},
        "exe": "{blender}", "count": 3,
    }
    assert rewrite_paths(params, REPLACEMENTS) == {
        "blendfile": "/data/checkouts/j/shot/main.blend",
        "args": ["--render-output", "/data/job-outputs/j/shot/######", "--render-format", "PNG"],
        "inputGlob": "/data/job-outputs/j/shot/*.png",
        "nested": {"other": "/home/ann/renders2/x.png", "windows": "/data/job-outputs/j\\x.png"},
        "exe": "{blender}", "count": 3,
    }


def test_output_root_comes_from_flamencos_output_settings():
    assert output_root_of({"render_output_root": "/r", "render_output_path": "/x/y/####"}) == "/r"
    assert output_root_of({"render_output_path": "/x/y/####"}) == "/x/y"
    assert output_root_of({"frames": "1-10"}) == ""


async def test_a_worker_ships_what_the_task_wrote_and_what_it_kept_from_an_interrupted_run(tmp_path: Path) -> None:
    # A requeued render skips the frame its interrupted first run wrote (no-overwrite
    # mode). That frame is older than the task's start, but the task reports it,
    # so it is queued for the owner. Frames gathered from other workers for this
    # task are not, even when written after the start as the clock sees it.
    staging = staging_folder(tmp_path / "data", JOB)
    (staging / "shot").mkdir(parents=True)
    kept, old, gathered, fresh = (staging / "shot" / f"{n:06d}.png" for n in (1, 2, 3, 4))
    kept.write_bytes(b"kept from the first run")
    old.write_bytes(b"another worker's frame, from an earlier task")
    started = time.time() + 5  # the files above predate the task's start
    gathered.write_bytes(b"another worker's frame, fetched for this task")
    os.utime(gathered, (started + 0.01, started + 0.01))  # within the start's slack
    async with aiohttp.ClientSession() as session:
        shipper = OutputShipper(tmp_path / "outbox", session, resolve_owner=lambda owner: None)
        job_files = WorkerJobFiles(
            store=ContentStore(tmp_path / "store", cap_bytes=1 << 20), session=session, data_dir=tmp_path / "data",
            peer_id="worker", shipper=shipper, peer_url=lambda peer_id: None, peer_urls=list,
            coordinator_url=lambda: None)
        fresh.write_bytes(b"rendered by this run")
        os.utime(fresh, (started + 1, started + 1))
        task = {"job": JOB, "job_files": {
            "manifest": Manifest("shot", "main.blend", {"main.blend": BlobRef("0" * 64, 1)}).to_dict(),
            "owner_peer_id": "artist", "blend_path": "/home/ann/shot/main.blend", "output_root": "/home/ann/renders"}}
        prepared = PreparedTask([], staging, started, gathered={gathered: gathered.stat().st_mtime_ns})
        shipped = await job_files.after_task(task, prepared, reported=[str(kept)])
        await job_files.close()
    assert shipped == 2
    assert sorted(item.path for item in shipper.pending()) == ["shot/000001.png", "shot/000004.png"]
    assert all(item.owner == "artist" and item.job_id == JOB for item in shipper.pending())
