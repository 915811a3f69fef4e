"""``flamenco-peer demo``: a real render on a local three-peer farm."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from .cli import prepare_job, wait_for_job
from .clientlib import ClientError
from .localfarm import FarmError, LocalFarm
from .scenes import SceneError, make_scene


def run_demo(args: argparse.Namespace) -> int:
    out = Path(args.output).resolve()
    if shutil.which(args.blender) is None and not Path(args.blender).is_file():
        print(f"demo: Blender not found ({args.blender!r}). Install it: sudo apt-get install blender", file=sys.stderr)
        return 2
    first, _, last = args.frames.partition("-")
    try:
        frames = (int(first), int(last or first))
    except ValueError:
        print(f"demo: --frames must look like 1-12, not {args.frames!r}", file=sys.stderr)
        return 2

    farm_dir = out / "farm"
    shutil.rmtree(farm_dir, ignore_errors=True)
    print(f"1/4  Generating a {frames[1] - frames[0] + 1}-frame scene with {args.blender} ...", flush=True)
    try:
        scene = make_scene(out / "scene" / "demo-scene.blend", frames=frames, resolution=(160, 120),
                           samples=4, blender=args.blender)
    except SceneError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1

    farm = LocalFarm(farm_dir)
    try:
        print("2/4  Starting a local farm: 1 coordinator + 2 workers on 127.0.0.1 ...", flush=True)
        farm.start(workers=2)
        farm.wait_for_workers(2)
        print(f"     coordinator: {farm.coordinator.url}", flush=True)
        for peer in farm.peers[1:]:
            print(f"     {peer.name}: {peer.url}", flush=True)

        print("3/4  Submitting simple-blender-render and rendering ...", flush=True)
        client = farm.client
        job = prepare_job(
            client, "simple-blender-render",
            sets=[f"render_output_root={out / 'renders'}", f"chunk_size={args.chunk_size}", f"frames={args.frames}"],
            blend=str(scene), name="demo", blender=args.blender,
        )
        submitted = client.submit(job)
        started = time.monotonic()
        final = wait_for_job(client, submitted["id"])
        elapsed = time.monotonic() - started
        if final["status"] != "completed":
            print(f"demo: the job ended {final['status']}: {final['activity']}", file=sys.stderr)
            for task in client.tasks(final["id"]):
                if task["status"] != "completed":
                    print(f"--- log of task {task['name']} ---\n{client.task_log(task['id'])}", file=sys.stderr)
            return 1

        print("4/4  Done.", flush=True)
        frames_dir = Path(final["settings"]["render_output_path"]).parent
        pngs = sorted(frames_dir.glob("*.png"))
        videos = sorted(frames_dir.glob("*.mp4"))
        tasks = client.tasks(final["id"])
        by_worker: dict[str, int] = {}
        for task in tasks:
            name = (task.get("worker") or {}).get("name", "?")
            by_worker[name] = by_worker.get(name, 0) + 1
        print(f"\nRendered {len(pngs)} frames in {elapsed:.1f} s, {len(tasks)} tasks "
              f"({', '.join(f'{n}: {c}' for n, c in sorted(by_worker.items()))})")
        print(f"Frames:        {frames_dir}")
        for video in videos:
            print(f"Preview video: {video}")
        print(f"Farm logs:     {farm_dir}")
        return 0
    except (FarmError, ClientError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    finally:
        print("Stopping the farm ...", flush=True)
        farm.stop()
