"""pause / requeue / cancel / priority / delete, by short id prefix, on a peer of the test's own."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from peer.localfarm import LocalFarm

from .conftest import Cli, assert_clean_error

# 30 s sleeps: the job never finishes by itself during a test.
LONG = ["submit", "echo-sleep-test", "--set", "message=steer me", "--set", "sleep_duration_seconds=30",
        "--set", "sleep_repeats=1", "--paused", "--json"]


@pytest.fixture
def cli(fresh_solo: tuple[LocalFarm, str], tmp_path: Path) -> Cli:
    return Cli(tmp_path / "cli", fresh_solo[1])


def submit_paused(cli: Cli) -> dict[str, Any]:
    job = cli.ok(*LONG).json()
    assert job["status"] == "paused", job
    return job


def wait_for_task(cli: Cli, job_id: str, name: str, status: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        tasks = cli.ok("tasks", job_id, "--json").json()
        if any(t["name"] == name and t["status"] == status for t in tasks):
            return
        assert time.monotonic() < deadline, f"no {name} task became {status}: {tasks}"
        time.sleep(0.1)


@pytest.mark.timeout(60)
def test_actions_on_a_paused_job(cli: Cli) -> None:
    job = submit_paused(cli)
    ref = job["id"][:8]

    r = cli.ok("priority", ref, "80")
    assert r.stdout.strip() == f"Job {job['id']} priority is now 80"
    after = cli.job(job["id"])
    assert (after["status"], after["priority"]) == ("paused", 80)

    # Pausing a paused job is refused with the server's reason, not a traceback.
    r = cli("pause", ref)
    assert_clean_error(r)
    assert "paused" in r.stderr, r.explain()
    assert cli.job(job["id"])["status"] == "paused"

    r = cli.ok("cancel", ref)
    assert r.stdout.strip() == f"Job {job['id']} is now canceled"
    assert cli.job(job["id"])["status"] == "canceled"
    assert {t["status"] for t in cli.ok("tasks", ref, "--json").json()} == {"canceled"}

    r = cli.ok("delete", ref)
    assert r.stdout.strip() == f"Deleted job {job['id']}"
    assert job["id"] not in cli.jobs()
    r = cli("tasks", ref)
    assert_clean_error(r)
    assert "no job id starts with" in r.stderr


@pytest.mark.timeout(60)
def test_requeue_pause_cancel_a_running_job(cli: Cli) -> None:
    job = submit_paused(cli)
    ref = job["id"][:8]
    # Nothing runs while the job is paused.
    time.sleep(0.5)
    assert {t["status"] for t in cli.ok("tasks", ref, "--json").json()} <= {"queued", "paused"}
    assert cli.job(job["id"])["status"] == "paused"

    r = cli.ok("requeue", ref)
    assert r.stdout.startswith(f"Job {job['id']} is now "), r.explain()
    wait_for_task(cli, ref, "sleep", "active")  # the echo ran; the 30 s sleep is running
    assert cli.job(job["id"])["status"] == "active"

    r = cli.ok("pause", ref)
    # The running sleep task may finish first, so the job stays pause-requested a while.
    assert r.stdout.strip() == f"Job {job['id']} is now pause-requested", r.explain()
    assert cli.job(job["id"])["status"] in {"pause-requested", "paused"}

    cli.ok("cancel", ref)
    after = cli.wait_job(job["id"], {"canceled"}, timeout=10)
    assert after["activity"]
    tasks = {t["name"]: t["status"] for t in cli.ok("tasks", ref, "--json").json()}
    assert tasks == {"echo": "completed", "sleep": "canceled"}

    # A completed or canceled job can be requeued; requeue again and delete it while it runs.
    cli.ok("requeue", ref)
    wait_for_task(cli, ref, "sleep", "active")
    cli.ok("delete", ref)
    assert job["id"] not in cli.jobs()


@pytest.mark.timeout(60)
def test_requeue_a_paused_job_runs_it_to_completion(cli: Cli) -> None:
    job = cli.ok("submit", "echo-sleep-test", "--set", "message=resume", "--set", "sleep_duration_seconds=0",
                 "--paused", "--json").json()
    cli.ok("requeue", job["id"][:8])
    done = cli.wait_job(job["id"], {"completed", "failed"})
    assert done["status"] == "completed", done


def test_cancel_a_completed_job_is_refused(cli: Cli) -> None:
    job = cli.ok("submit", "echo-sleep-test", "--set", "message=done", "--set", "sleep_repeats=0",
                 "--wait", "--json").json()
    assert job["status"] == "completed"
    r = cli("cancel", job["id"][:8])
    assert_clean_error(r)
    assert "completed" in r.stderr, r.explain()
    assert cli.job(job["id"])["status"] == "completed"


@pytest.mark.parametrize("command", [["delete"], ["cancel"]])
def test_an_empty_job_id_is_refused(cli: Cli, command: list[str]) -> None:
    job = submit_paused(cli)
    r = cli(*command, "")
    assert r.returncode != 0, r.explain()
    assert "Traceback" not in r.stderr, r.explain()
    assert cli.job(job["id"])["status"] == "paused"


@pytest.mark.timeout(60)
def test_sleep_and_wake_a_worker(cli: Cli) -> None:
    workers = cli.ok("workers", "--json").json()
    assert len(workers) == 1, workers
    name = workers[0]["name"]
    job = submit_paused(cli)
    cli.ok("requeue", job["id"][:8])
    wait_for_task(cli, job["id"], "sleep", "active")

    r = cli.ok("sleep", name)
    assert r.stdout.startswith(f"Worker {name} goes to sleep now"), r.explain()
    # Its 30 s task went back to the queue at once, and nothing else starts.
    wait_for_task(cli, job["id"], "sleep", "queued")
    deadline = time.monotonic() + 10
    while cli.ok("workers", "--json").json()[0]["status"] != "asleep":
        assert time.monotonic() < deadline, cli.ok("workers").stdout
        time.sleep(0.1)
    assert "asleep" in cli.ok("workers").stdout

    r = cli.ok("wake", name)
    assert f"Worker {name} is asked to wake up" in r.stdout
    wait_for_task(cli, job["id"], "sleep", "active")
    cli.ok("cancel", job["id"][:8])

    r = cli("sleep", "no-such-worker")
    assert_clean_error(r)
    assert "no worker is named 'no-such-worker'" in r.stderr, r.explain()
