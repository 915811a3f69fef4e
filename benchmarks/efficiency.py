"""Farm efficiency and dispatch latency, on real peer processes over loopback.

1. Efficiency: N sleep tasks of D seconds on W worker processes. The ideal
   makespan is N*D/W; the measured one runs from the moment the job was stored
   (its tasks queued) to the last task's completion, both taken from the
   coordinator's event log. Goal: ideal/measured >= 0.95.
2. Latency: single-task jobs submitted one at a time to idle workers; for
   each, the time from the task being queued (job stored) to the worker's
   first report that it started. Goal: p99 < 100 ms.

Ends with one JSON line of the figures.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

from peer.coordinator import events as ev
from peer.localfarm import LocalFarm

HERE = Path(__file__).resolve().parent


def _ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def _events(db: Path) -> list[ev.Event]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [ev.from_wire(body) for (body,) in conn.execute("SELECT body FROM events ORDER BY idx")]
    finally:
        conn.close()


def _job_times(events: list[ev.Event], job_id: str) -> tuple[float, dict[str, float], dict[str, float]]:
    """(stored_at, first worker report per task, completion per task)."""
    stored = 0.0
    tasks: set[str] = set()
    started: dict[str, float] = {}
    done: dict[str, float] = {}
    for e in events:
        if isinstance(e, ev.JobSubmitted) and e.job["id"] == job_id:
            stored = _ts(e.at)
            tasks = {t["id"] for t in e.tasks}
        elif isinstance(e, ev.TaskProgressed) and e.task_id in tasks and e.task_id not in started:
            started[e.task_id] = _ts(e.at)
        elif isinstance(e, ev.TasksStatusChanged) and e.status == "completed":
            for t in e.task_ids:
                if t in tasks:
                    done[t] = _ts(e.at)
    return stored, started, done


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1))))
    return ordered[k]


def _submit(client, count: int, duration: float, name: str) -> str:
    job = client.submit({
        "name": name, "type": "bench-sleep", "priority": 50, "submitter_platform": "linux",
        "settings": {"count": count, "duration_seconds": duration},
    })
    return job["id"]


def _wait_done(client, job_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.job(job_id)
        if job["status"] in ("completed", "failed", "canceled"):
            return job
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} did not finish within {timeout} s")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks efficiency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--duration", type=float, default=0.25)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--latency-samples", type=int, default=100)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="flamenco-bench-") as tmp:
        farm = LocalFarm(Path(tmp))
        try:
            farm.start(workers=args.workers, job_types=[HERE / "job_types" / "bench-sleep.js"])
            farm.wait_for_workers(args.workers)
            client = farm.client
            db = farm.coordinator.data_dir / "peer.sqlite"

            # Warm-up: every worker runs once (imports, connections).
            _wait_done(client, _submit(client, args.workers * 2, 0.0, "warm-up"), 60)

            job_id = _submit(client, args.tasks, args.duration, "efficiency")
            _wait_done(client, job_id, 30 + args.tasks * args.duration * 2)
            stored, _, done = _job_times(_events(db), job_id)
            makespan = max(done.values()) - stored
            ideal = args.tasks * args.duration / args.workers
            efficiency = ideal / makespan

            latencies = []
            for i in range(args.latency_samples):
                single = _submit(client, 1, 0.0, f"latency-{i}")
                _wait_done(client, single, 30)
                time.sleep(0.02)  # let the worker go back to waiting: it must be idle
            events = _events(db)
            for job in client.jobs():
                if job["name"].startswith("latency-"):
                    stored_at, started, _ = _job_times(events, job["id"])
                    latencies.extend((t - stored_at) * 1000 for t in started.values())
        finally:
            farm.stop()

    p50, p99 = _percentile(latencies, 50), _percentile(latencies, 99)
    rows = [
        ("tasks x duration", f"{args.tasks} x {args.duration:.2f} s", ""),
        ("worker processes", str(args.workers), ""),
        ("ideal makespan", f"{ideal:.2f} s", ""),
        ("measured makespan", f"{makespan:.2f} s", ""),
        ("efficiency (ideal/measured)", f"{efficiency:.3f}", "goal >= 0.95"),
        ("queued -> started p50", f"{p50:.1f} ms", f"{len(latencies)} samples"),
        ("queued -> started p99", f"{p99:.1f} ms", "goal < 100 ms"),
        ("queued -> started mean", f"{statistics.fmean(latencies):.1f} ms", ""),
    ]
    width = max(len(r[0]) for r in rows)
    print("Flamenco Peer: farm efficiency and dispatch latency (loopback, real processes)")
    for label, value, note in rows:
        print(f"  {label.ljust(width)}  {value:>14}  {note}")
    print(json.dumps({
        "benchmark": "efficiency", "tasks": args.tasks, "duration_s": args.duration, "workers": args.workers,
        "ideal_makespan_s": round(ideal, 3), "makespan_s": round(makespan, 3),
        "efficiency": round(efficiency, 4), "latency_p50_ms": round(p50, 2), "latency_p99_ms": round(p99, 2),
        "latency_samples": len(latencies),
    }))
    return 0
