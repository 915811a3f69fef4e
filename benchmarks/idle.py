"""User returns -> the worker stops rendering, on real peer processes over loopback.

A coordinator peer (no worker) and a worker peer in ``--worker-mode
when-idle``, whose idle time comes from the file idle source
(``FLAMENCO_PEER_IDLE_FILE``). Each round: the user is away (idle 600 s), the
worker runs a long sleep task; then the user "touches the keyboard" (idle
0 s) and the clock runs until

1. the worker peer reports that it no longer runs the task (it stopped
   rendering), polled every 5 ms through ``/api/v3/...`` status, and
2. the coordinator has the task queued again.

Goal: (1) <= 2 s. Ends with one JSON line of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from peer.clientlib import ClientError, FlamencoClient
from peer.localfarm import LocalFarm
from peer.worker.idle import IDLE_FILE_ENV

HERE = Path(__file__).resolve().parent
GOAL_S = 2.0


def _wait(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.005) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
        except ClientError:
            result = None
        if result:
            return result
        time.sleep(interval)
    raise TimeoutError(f"{what} did not happen within {timeout} s")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks idle", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)

    stopped: list[float] = []
    requeued: list[float] = []
    with tempfile.TemporaryDirectory(prefix="flamenco-bench-idle-") as tmp:
        idle = Path(tmp) / "idle-seconds"
        idle.write_text("600")
        previous = os.environ.get(IDLE_FILE_ENV)
        os.environ[IDLE_FILE_ENV] = str(idle)  # inherited by the peer processes
        farm = LocalFarm(Path(tmp) / "farm")
        try:
            types = farm.root / "coordinator" / "job_types"
            types.mkdir(parents=True)
            (types / "bench-sleep.js").write_bytes((HERE / "job_types" / "bench-sleep.js").read_bytes())
            coordinator = farm.start_peer("coordinator", worker=False)
            worker = farm.start_peer("worker-1", join=coordinator.url, extra_args=["--worker-mode", "when-idle"])
            farm.wait_for_workers(1)
            client, on_worker = farm.client, FlamencoClient(worker.url)
            job = client.submit({"name": "idle", "type": "bench-sleep", "priority": 50, "submitter_platform": "linux",
                                 "settings": {"count": 1, "duration_seconds": 3600.0}})
            task_id = _wait(lambda: client.tasks(job["id"])[0]["id"], 10, "the job's task")

            def running() -> bool:
                return on_worker.farm_status()["self"]["worker"]["current_task"] == task_id

            for _ in range(args.rounds):
                idle.write_text("600")  # the user left
                _wait(running, 20, "the worker runs the task")
                time.sleep(0.3)  # rendering for a moment
                started = time.monotonic()
                idle.write_text("0")  # the user is back
                _wait(lambda: not running(), 20, "the worker stops")
                stopped.append(time.monotonic() - started)
                _wait(lambda: client.task(task_id)["status"] == "queued", 20, "the task is requeued")
                requeued.append(time.monotonic() - started)
        finally:
            farm.stop()
            if previous is None:
                os.environ.pop(IDLE_FILE_ENV, None)
            else:
                os.environ[IDLE_FILE_ENV] = previous

    rows = [
        ("rounds", str(len(stopped)), ""),
        ("user back -> stopped rendering, median", f"{statistics.median(stopped) * 1000:.0f} ms", ""),
        ("user back -> stopped rendering, max", f"{max(stopped) * 1000:.0f} ms", f"goal <= {GOAL_S * 1000:.0f} ms"),
        ("user back -> task requeued, median", f"{statistics.median(requeued) * 1000:.0f} ms", ""),
        ("user back -> task requeued, max", f"{max(requeued) * 1000:.0f} ms", ""),
    ]
    width = max(len(r[0]) for r in rows)
    print("Flamenco Peer: a returning user stops the worker (file idle source, loopback, real processes)")
    for label, value, note in rows:
        print(f"  {label.ljust(width)}  {value:>8}  {note}")
    print(json.dumps({
        "benchmark": "idle", "rounds": len(stopped),
        "stopped_median_ms": round(statistics.median(stopped) * 1000, 1),
        "stopped_max_ms": round(max(stopped) * 1000, 1),
        "requeued_median_ms": round(statistics.median(requeued) * 1000, 1),
        "requeued_max_ms": round(max(requeued) * 1000, 1), "goal_ms": GOAL_S * 1000,
    }))
    return 0 if max(stopped) <= GOAL_S else 1
