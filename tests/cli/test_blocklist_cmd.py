"""``flamenco-peer blocklist``: see and clear the workers a job no longer gives tasks to."""

from __future__ import annotations

import json
from pathlib import Path

import msgpack
import urllib.request

from .conftest import Cli, assert_clean_error

BENCH_SLEEP = Path(__file__).resolve().parents[2] / "benchmarks" / "job_types" / "bench-sleep.js"


def peer_call(url: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(f"{url}/peer/v1/{path}", data=msgpack.packb(body), method="POST",
                                 headers={"Content-Type": "application/msgpack"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        raw = resp.read()
        return msgpack.unpackb(raw) if raw else {}


def test_blocklist_shows_and_clears_entries(idle_solo, tmp_path: Path) -> None:
    # No worker of the peer's own: it would race the scripted ones for the tasks.
    farm, url = idle_solo
    peer = farm.peers[0]
    (peer.data_dir / "job_types" / BENCH_SLEEP.name).write_bytes(BENCH_SLEEP.read_bytes())
    cli = Cli(tmp_path / "cli", url)
    job_id = cli.ok("submit", "bench-sleep", "--set", "count=8", "--set", "duration_seconds=0.01",
                    "--json").json()["id"]
    for name in ("flaky", "steady"):
        peer_call(url, "worker/sign-on", {"worker_id": name, "name": name, "supported_task_types": ["misc"]})
    for _ in range(3):  # Flamenco's default threshold
        task = peer_call(url, "worker/claim", {"worker_id": "flaky", "wait_s": 0})["task"]
        peer_call(url, "worker/task-update", {"worker_id": "flaky", "task_id": task["uuid"], "task_status": "failed",
                                               "activity": "crashed"})

    r = cli.ok("blocklist", job_id[:8])
    assert "flaky" in r.stdout and "misc" in r.stdout and "--clear" in r.stdout, r.explain()
    assert json.loads(cli.ok("blocklist", job_id, "--json").stdout) == [
        {"worker_id": "flaky", "task_type": "misc", "worker_name": "flaky"}]

    r = cli.ok("blocklist", job_id, "--clear", "--worker", "nobody")
    assert "Nothing to clear" in r.stdout
    r = cli.ok("blocklist", job_id, "--clear", "--worker", "flaky")
    assert "Cleared 1 blocklist entry" in r.stdout, r.explain()
    assert "no blocklisted workers" in cli.ok("blocklist", job_id).stdout


def test_blocklist_of_unknown_job(cli: Cli) -> None:
    r = cli("blocklist", "00000000-0000-0000-0000-000000000000")
    assert_clean_error(r)
