"""Chaos: for 60 s, SIGKILL and restart random peers (workers and whoever
coordinates) during a 100-task job. The job completes, nothing is lost, no
task is reported completed twice, and every output is valid."""

from __future__ import annotations

import random
import re
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest

from peer.clientlib import FlamencoClient
from peer.localfarm import LocalFarm, PeerProcess
from tests.polling import eventually

JOB_TYPE = Path(__file__).with_name("job_types") / "record-runs.js"
TASKS = 100
CHAOS_S = 60.0
OUTPUT_LINE = re.compile(r"^ran \d+\.\d{3}$")


def live(farm: LocalFarm) -> list[PeerProcess]:
    return [p for p in farm.peers if p.process.poll() is None]


def any_client(farm: LocalFarm) -> FlamencoClient:
    return FlamencoClient(random.choice(live(farm)).url, timeout=10)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_random_kills_for_a_minute_lose_nothing(tmp_path: Path) -> None:
    rng = random.Random(20261122)
    out = tmp_path / "outputs"
    out.mkdir()
    with LocalFarm(tmp_path / "farm") as farm:
        first = farm.start_peer("peer-1", extra_args=["--enable-exec"])
        shutil.copy(JOB_TYPE, first.data_dir / "job_types" / JOB_TYPE.name)
        for name in ("peer-2", "peer-3", "peer-4"):
            farm.start_peer(name, join=first.url, extra_args=["--enable-exec"])
        farm.wait_for_workers(4, timeout=30)
        client = FlamencoClient(first.url, timeout=30)
        job_type = eventually(lambda: next((t for t in client.job_types() if t["name"] == "record-runs"), None),
                              15, "the shared test job type")
        job_id = client.submit({
            "name": "chaos", "type": "record-runs", "type_etag": job_type["etag"], "priority": 50,
            "submitter_platform": "linux",
            "settings": {"count": TASKS, "out_dir": str(out), "python": sys.executable, "seconds": 2.0}})["id"]

        kills = 0
        end = time.monotonic() + CHAOS_S
        while time.monotonic() < end:
            time.sleep(rng.uniform(2.0, 5.0))
            victim = rng.choice(live(farm))
            victim.process.send_signal(signal.SIGKILL)
            victim.process.wait(10)
            kills += 1
            time.sleep(rng.uniform(0.5, 3.0))
            farm.peers.remove(victim)
            seed = rng.choice(live(farm)).url
            farm.start_peer(victim.name, join=seed, extra_args=["--enable-exec"])

        final = eventually(lambda: (j := any_client(farm).job(job_id))["status"] in ("completed", "failed") and j,
                           150, "the job finishing after the chaos")
        survivor = any_client(farm)
        tasks = survivor.tasks(job_id)
        assert final["status"] == "completed", [(t["name"], t["status"]) for t in tasks if t["status"] != "completed"]
        assert len(tasks) == TASKS and all(t["status"] == "completed" for t in tasks)

        # Every output is there and valid.
        for i in range(TASKS):
            lines = (out / f"task-{i}.txt").read_text().splitlines()
            assert lines and all(OUTPUT_LINE.match(line) for line in lines), (i, lines)
        # No task was reported completed twice.
        for task in tasks:
            log = survivor.task_log(task["id"])
            assert log.count("-> completed") == 1, (task["name"], log[-3000:])
        reruns = sum(len((out / f"task-{i}.txt").read_text().splitlines()) > 1 for i in range(TASKS))
        print(f"{kills} kills in {CHAOS_S:.0f} s; {reruns} tasks ran more than once (in flight at a kill)")


