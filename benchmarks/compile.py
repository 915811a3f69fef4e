"""Job compilation speed: the job-type script in V8 plus the checks of its result.

1. One big job: simple-blender-render over 10,000 frames with chunk size 1
   (10,000 render tasks + the preview video). Goal: < 150 ms.
2. Throughput: 100 ordinary jobs (by default 250 frames, chunk size 5: 51 tasks each)
   compiled back to back, as a busy farm's submissions would be, in jobs/s.

Each figure is the median of --runs runs after one warm-up run. What is timed
is what a peer does on submission once the job type is loaded: the settings
check and the compile (fresh V8 context, script, compileJob, result checks);
not HTTP nor storage. Ends with one JSON line of the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

from peer.compiler import CompiledJob, CompileRequest, JobTypeRegistry, JobTypeScript, compile_job, validate_settings

JOB_TYPE = "simple-blender-render"
BIG_JOB_FRAMES = 10_000
BIG_JOB_GOAL_MS = 150.0


def render_settings(frames: str, chunk_size: int) -> dict[str, Any]:
    """Settings as the add-on would send them for a generated shot."""
    return {
        "frames": frames, "chunk_size": chunk_size, "render_output_root": "/render/out",
        "add_path_components": 0, "render_output_path": "/render/out/shot/{timestamp}/######",
        "blendfile": "/projects/shot.blend", "fps": 24.0, "format": "PNG", "image_file_extension": ".png",
        "has_previews": False, "scene": "Scene",
    }


def compile_once(script: JobTypeScript, settings: dict[str, Any]) -> CompiledJob:
    problems = validate_settings(script.job_type, settings)
    if problems:
        raise SystemExit(f"benchmark settings rejected: {problems}")
    request = CompileRequest(job_id=str(uuid.uuid4()), name="bench", job_type=script.name, priority=50,
                             settings=settings, metadata={})
    return compile_job(script, request)


def timed_runs(runs: int, action: Callable[[], Any]) -> list[float]:
    """Seconds per run, after one untimed warm-up run."""
    action()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return times


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks compile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=BIG_JOB_FRAMES, help="frames of the big job (default %(default)s)")
    parser.add_argument("--jobs", type=int, default=100, help="jobs compiled back to back (default %(default)s)")
    parser.add_argument("--batch-frames", type=int, default=250, help="frames of each back-to-back job (default %(default)s)")
    parser.add_argument("--batch-chunk", type=int, default=5, help="chunk size of those jobs (default %(default)s)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each, median reported (default %(default)s)")
    args = parser.parse_args(argv)

    registry = JobTypeRegistry.with_builtins()
    registry.refresh()
    script = registry.get(JOB_TYPE)
    if script is None:
        raise SystemExit(f"the built-in job type {JOB_TYPE} did not load: {registry.errors()}")

    big_settings = render_settings(f"1-{args.frames}", 1)
    big_tasks = len(compile_once(script, big_settings).tasks)
    big_times = timed_runs(args.runs, lambda: compile_once(script, big_settings))
    big_ms = statistics.median(big_times) * 1000

    small_settings = render_settings(f"1-{args.batch_frames}", args.batch_chunk)
    small_tasks = len(compile_once(script, small_settings).tasks)

    def many() -> None:
        for _ in range(args.jobs):
            compile_once(script, small_settings)

    batch_times = timed_runs(args.runs, many)
    rate = args.jobs / statistics.median(batch_times)

    # The goal is set for 10,000 frames; other sizes are for exploring.
    met = ("met" if big_ms < BIG_JOB_GOAL_MS else "NOT met") if args.frames == BIG_JOB_FRAMES else "n/a, not 10,000 frames"
    rows = [
        (f"{args.frames:,} frames, chunk 1", f"{big_tasks:,} tasks", ""),
        ("  compile time, median", f"{big_ms:.1f} ms", f"goal < {BIG_JOB_GOAL_MS:.0f} ms: {met}"),
        ("  compile time, min / max", f"{min(big_times) * 1000:.0f} / {max(big_times) * 1000:.0f} ms", ""),
        (f"{args.jobs} jobs back to back", f"{small_tasks} tasks each",
         f"{args.batch_frames} frames, chunk {args.batch_chunk}"),
        ("  rate, median", f"{rate:.1f} jobs/s", f"{1000 / rate:.1f} ms per job"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"Flamenco Peer: job compilation ({JOB_TYPE}, median of {args.runs} runs after a warm-up)")
    for label, value, note in rows:
        print(f"  {label.ljust(width)}  {value:>14}  {note}".rstrip())
    print(json.dumps({
        "benchmark": "compile", "job_type": JOB_TYPE, "runs": args.runs,
        "big_job_frames": args.frames, "big_job_tasks": big_tasks, "big_job_ms": round(big_ms, 1),
        "big_job_goal_ms": BIG_JOB_GOAL_MS, "big_job_goal_met": met == "met",
        "batch_jobs": args.jobs, "batch_job_tasks": small_tasks, "jobs_per_s": round(rate, 1),
    }))
    return 0
