"""Warm Blender: frame-sized tasks at batch speed.

A tiny Cycles scene (64×64, 4 samples, made at run time by the Blender under
test) is rendered frame by frame, as simple-blender-render's tasks with chunk
size 1 on one worker, three ways:

  (a) cold:  one Blender process per task, as Flamenco's worker does;
  (b) warm:  the same tasks through the worker's warm Blender;
  (c) batch: one `blender -a` process for all frames (the speed to aim for).

The tasks are compiled from the built-in job type and run through the
worker's blender-render command, so (a) and (b) include everything a worker
does per task except talking to the coordinator. Then, inside one Blender,
the two ways to reset the file between tasks are timed: reloading it, and
restoring only the settings the command-line arguments touch (cheaper, but
blind to what a --python-expr changed). Ends with one JSON line of the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peer.compiler import CompileRequest, JobTypeRegistry, compile_job
from peer.scenes import make_scene
from peer.worker.commands import run_command
from peer.worker.commands.base import WorkerSettings
from peer.worker.variables import expand_parameters
from peer.worker.warm import WarmBlenderPool

JOB_TYPE = "simple-blender-render"

# Runs inside Blender: median seconds of N reloads and of N restores.
_RESET_COST_SCRIPT = r'''
import json, statistics, sys, time
import bpy
path, runs = sys.argv[sys.argv.index("--") + 1:][:2]
bpy.ops.wm.open_mainfile(filepath=path)
reloads, restores = [], []
for _ in range(int(runs)):
    started = time.perf_counter()
    bpy.ops.wm.open_mainfile(filepath=path)
    reloads.append(time.perf_counter() - started)
    scene = bpy.context.scene
    r = scene.render
    saved = (r.filepath, r.image_settings.file_format, r.image_settings.color_mode, r.image_settings.color_depth,
             r.engine, scene.frame_start, scene.frame_end, scene.frame_current, bpy.context.window.scene)
    r.filepath, r.image_settings.file_format, r.engine = "/tmp/elsewhere_####", "JPEG", "BLENDER_WORKBENCH"
    started = time.perf_counter()
    (r.filepath, r.image_settings.file_format, r.image_settings.color_mode, r.image_settings.color_depth,
     r.engine, scene.frame_start, scene.frame_end, scene.frame_current, bpy.context.window.scene) = saved
    restores.append(time.perf_counter() - started)
print("RESET-COST " + json.dumps({"reload_s": statistics.median(reloads), "restore_s": statistics.median(restores)}))
'''


@dataclass
class _Context:
    """The CommandContext of one task; the log is kept but not shown."""

    settings: WorkerSettings
    task_id: str = ""
    steps: int = 0
    outputs: list[str] = field(default_factory=list)
    log_lines: int = 0

    async def log(self, text: str) -> None:
        self.log_lines += text.count("\n") + 1

    def step(self) -> None:
        self.steps += 1

    def output_produced(self, path: str) -> None:
        self.outputs.append(path)


def render_commands(blendfile: Path, out_dir: Path, frames: int, blender: str) -> list[dict[str, Any]]:
    """The blender-render parameters of each render task, as a worker would run them."""
    registry = JobTypeRegistry.with_builtins()
    registry.refresh()
    script = registry.get(JOB_TYPE)
    if script is None:
        raise SystemExit(f"the built-in job type {JOB_TYPE} did not load: {registry.errors()}")
    settings = {
        "frames": f"1-{frames}", "chunk_size": 1, "render_output_root": str(out_dir), "add_path_components": 0,
        "render_output_path": str(out_dir / "{timestamp}" / "######"), "blendfile": str(blendfile),
        "fps": 24.0, "format": "PNG", "image_file_extension": ".png", "has_previews": False, "scene": "Scene",
    }
    request = CompileRequest(job_id=str(uuid.uuid4()), name="warm-bench", job_type=JOB_TYPE, priority=50,
                             settings=settings, metadata={})
    variables = {"blender": blender, "blenderArgs": "-b -y"}
    return [
        expand_parameters(command.parameters, variables)
        for task in compile_job(script, request).tasks
        for command in task.commands
        if command.name == "blender-render"
    ]


def _with_output_dir(params: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    args = list(params["args"])
    i = args.index("--render-output")
    args[i + 1] = str(out_dir / Path(args[i + 1]).name)
    return {**params, "args": args}


async def run_tasks(commands: list[dict[str, Any]], out_dir: Path, settings: WorkerSettings) -> tuple[list[float], int]:
    """Seconds per task, and the number of frames saved."""
    times, saved = [], 0
    for index, params in enumerate(commands):
        ctx = _Context(settings, task_id=f"task-{index + 1}")
        started = time.perf_counter()
        await run_command("blender-render", _with_output_dir(params, out_dir), ctx)
        times.append(time.perf_counter() - started)
        saved += len(ctx.outputs)
    return times, saved


def run_batch(blender: str, blendfile: Path, out_dir: Path, frames: int, python_expr: str) -> tuple[float, int]:
    cmd = [blender, "-b", "-y", str(blendfile), "--scene", "Scene", "--python-expr", python_expr,
           "--render-output", str(out_dir / "######"), "--render-format", "PNG",
           "-s", "1", "-e", str(frames), "-a"]
    started = time.perf_counter()
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace", timeout=600)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"the batch render failed (exit code {proc.returncode}):\n{proc.stdout[-2000:]}")
    return seconds, proc.stdout.count("Saved: '")


def reset_costs(blender: str, blendfile: Path, tmp: Path, runs: int = 20) -> dict[str, float]:
    script = tmp / "reset_cost.py"
    script.write_text(_RESET_COST_SCRIPT, encoding="utf-8")
    proc = subprocess.run([blender, "-b", "-y", "--python", str(script), "--", str(blendfile), str(runs)],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace", timeout=300)
    for line in proc.stdout.splitlines():
        if line.startswith("RESET-COST "):
            return json.loads(line.removeprefix("RESET-COST "))
    raise SystemExit(f"could not measure the reset cost; Blender printed:\n{proc.stdout[-2000:]}")


async def measure(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    blendfile = make_scene(tmp / "scene.blend", frames=(1, args.frames), resolution=(64, 64), samples=4,
                           blender=args.blender)
    # Job-type scripts run off the event loop.
    commands = await asyncio.to_thread(render_commands, blendfile, tmp / "job", args.frames, args.blender)
    python_expr = commands[0]["args"][commands[0]["args"].index("--python-expr") + 1]

    cold_times, cold_saved = await run_tasks(commands, tmp / "cold", WorkerSettings(blender_exe=args.blender))
    pool = WarmBlenderPool()
    try:
        warm_times, warm_saved = await run_tasks(
            commands, tmp / "warm", WorkerSettings(blender_exe=args.blender, blender_pool=pool))
        stats = pool.stats
    finally:
        await pool.close()
    batch_s, batch_saved = run_batch(args.blender, blendfile, tmp / "batch", args.frames, python_expr)
    costs = reset_costs(args.blender, blendfile, tmp)
    version = subprocess.run([args.blender, "--version"], capture_output=True, text=True, timeout=60).stdout
    return {
        "blender": version.splitlines()[0] if version else args.blender,
        "cold_s": sum(cold_times), "cold_saved": cold_saved,
        "warm_s": sum(warm_times), "warm_saved": warm_saved,
        "warm_first_s": warm_times[0], "warm_next_median_s": statistics.median(warm_times[1:] or warm_times),
        "warm_processes": stats.processes_started, "warm_cold_fallbacks": stats.cold_fallbacks,
        "warm_reload_median_s": statistics.median(stats.reset_seconds) if stats.reset_seconds else 0.0,
        "batch_s": batch_s, "batch_saved": batch_saved,
        "reset_reload_s": costs["reload_s"], "reset_restore_s": costs["restore_s"],
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks warm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=20, help="frames, one task each (default %(default)s)")
    parser.add_argument("--blender", default="blender", help="the Blender executable (default %(default)s)")
    args = parser.parse_args(argv)
    if shutil.which(args.blender) is None:
        raise SystemExit(f"Blender not found: {args.blender!r} (install it with `apt install blender` or pass --blender)")

    with tempfile.TemporaryDirectory(prefix="flamenco-warm-bench-") as tmp:
        r = asyncio.run(measure(args, Path(tmp)))

    n = args.frames
    for way in ("cold", "warm", "batch"):
        if r[f"{way}_saved"] != n:
            raise SystemExit(f"{way}: {r[f'{way}_saved']} frames saved instead of {n}")
    rows = [
        ("(a) cold, one process per task", f"{r['cold_s']:.2f} s", f"{r['cold_s'] / n * 1000:.0f} ms per frame"),
        ("(b) warm", f"{r['warm_s']:.2f} s",
         f"first task {r['warm_first_s']:.2f} s (starts Blender), then {r['warm_next_median_s'] * 1000:.0f} ms per task"),
        ("(c) batch, one blender -a", f"{r['batch_s']:.2f} s", f"{r['batch_s'] / n * 1000:.0f} ms per frame"),
        ("warm vs cold", f"{r['cold_s'] / r['warm_s']:.1f}x faster", f"{r['warm_processes']} process(es), "
         f"{r['warm_cold_fallbacks']} cold fallback(s)"),
        ("reset between tasks: reload", f"{r['reset_reload_s'] * 1000:.1f} ms",
         f"in the warm process: {r['warm_reload_median_s'] * 1000:.1f} ms incl. state checks (chosen: correct after any Python)"),
        ("reset: restore CLI settings", f"{r['reset_restore_s'] * 1000:.2f} ms", "blind to --python-expr changes"),
    ]
    width = max(len(row[0]) for row in rows)
    print(f"Flamenco Peer: warm Blender, {n} frames of a 64x64 Cycles scene, chunk size 1, one worker ({r['blender']})")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"  (machine: {os.cpu_count()} CPUs, load average {load:.1f} at the end)")
    for label, value, note in rows:
        print(f"  {label.ljust(width)}  {value:>16}  {note}")
    print(json.dumps({"benchmark": "warm", "frames": n, **{k: (round(v, 6) if isinstance(v, float) else v)
                                                            for k, v in r.items()}}))
    return 0
