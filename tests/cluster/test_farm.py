"""The farm without a server, end to end on loopback: real peer processes.

Three peers (one without a worker, two with) elect one coordinator, agree on
it in ``flamenco-peer status``, hold every acknowledged submission on a second
peer, answer the client API on every peer (followers forward), and carry on
when the coordinator is SIGKILLed: a new one takes over, the job completes,
finished tasks stay finished and a running task keeps its worker.

Failover times are measured and printed, never asserted tightly (2 cores).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from peer.clientlib import ClientError, FlamencoClient
from peer.localfarm import LocalFarm, PeerProcess
from tests.polling import eventually

pytestmark = pytest.mark.timeout(60)

CLI_TIMEOUT = 30.0
# Generous on purpose: the design asks for 3 s; slow CI machines get slack, the
# measured value is printed with the test output.
FAILOVER_BOUND_S = 10.0


def echo_sleep(name: str, *, seconds: int = 1, repeats: int = 1, paused: bool = False) -> dict[str, Any]:
    return {
        "name": name, "type": "echo-sleep-test", "priority": 50, "submitter_platform": "linux",
        "settings": {"message": name, "sleep_duration_seconds": seconds, "sleep_repeats": repeats},
        "initial_status": "paused" if paused else "queued",
    }


def status_of(peer: PeerProcess) -> dict[str, Any]:
    return FlamencoClient(peer.url, timeout=5).farm_status()


def agreed_view(peers: list[PeerProcess]) -> dict[str, Any] | None:
    """The farm's coordinator as every peer sees it, or None while they disagree."""
    selves = [status_of(p)["self"] for p in peers]
    leaders = {(s["leader_id"], s["epoch"]) for s in selves}
    coordinators = [s for s in selves if s["role"] == "coordinator"]
    if len(leaders) != 1 or len(coordinators) != 1 or any(s["role"] not in ("coordinator", "follower") for s in selves):
        return None
    if coordinators[0]["peer_id"] != selves[0]["leader_id"]:
        return None
    return {"peer_id": coordinators[0]["peer_id"], "url": coordinators[0]["url"], "epoch": coordinators[0]["epoch"],
            "name": coordinators[0]["name"]}


def wait_agreed(peers: list[PeerProcess], timeout: float = 15.0) -> dict[str, Any]:
    return eventually(lambda: agreed_view(peers), timeout, f"one coordinator agreed on by {[p.name for p in peers]}")


def by_url(farm: LocalFarm, url: str) -> PeerProcess:
    return next(p for p in farm.peers if p.url == url)


def cli(*args: str, home: Path, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAMENCO_PEER_")}
    env["FLAMENCO_PEER_DATA_DIR"] = str(home / "no-local-peer")
    return subprocess.run([sys.executable, "-m", "peer", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=home)


def replica_job(peer: PeerProcess, job_id: str) -> str | None:
    """The job's status in a peer's own SQLite replica (read-only, beside the running peer)."""
    conn = sqlite3.connect(f"file:{peer.data_dir / 'peer.sqlite'}?mode=ro", uri=True, timeout=5)
    try:
        row = conn.execute("SELECT status FROM jobs WHERE id=?", (job_id,)).fetchone()
        return None if row is None else str(row[0])
    finally:
        conn.close()


def replica_active_tasks(peer: PeerProcess, job_id: str) -> dict[str, str]:
    """Task id -> worker id of the job's active tasks, as a peer's replica has them."""
    conn = sqlite3.connect(f"file:{peer.data_dir / 'peer.sqlite'}?mode=ro", uri=True, timeout=5)
    try:
        rows = conn.execute("SELECT id, worker_id FROM tasks WHERE job_id=? AND status='active'", (job_id,))
        return {str(r[0]): str(r[1]) for r in rows}
    finally:
        conn.close()


def report(capsys: pytest.CaptureFixture[str], line: str) -> None:
    with capsys.disabled():
        print(f"\n    [measured] {line}", flush=True)


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFarm]:
    """Three peers: one without a worker, two with. Tests only touch their own jobs (submitted paused)."""
    farm = LocalFarm(tmp_path_factory.mktemp("farm"))
    try:
        farm.start(workers=2)
        farm.wait_for_workers(2)
        wait_agreed(farm.peers)
        yield farm
    finally:
        farm.stop()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "cli").mkdir()
    return tmp_path / "cli"


def test_three_peers_elect_one_coordinator_and_every_status_agrees(farm: LocalFarm, home: Path) -> None:
    wait_agreed(farm.peers)
    views = []
    for peer in farm.peers:
        r = cli("status", "--json", "--peer", peer.url, home=home)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        views.append(json.loads(r.stdout))

    coordinators = [v["self"] for v in views if v["self"]["role"] == "coordinator"]
    assert len(coordinators) == 1, [(v["self"]["name"], v["self"]["role"]) for v in views]
    leader = coordinators[0]
    for view in views:
        me = view["self"]
        assert view["coordinator"]["peer_id"] == leader["peer_id"], (me["name"], view["coordinator"])
        assert view["coordinator"]["url"] == leader["url"]
        assert view["coordinator"]["epoch"] == leader["epoch"] >= 1
        assert me["role"] in ("coordinator", "follower"), me
        # Every peer hears the two others.
        others = {p["peer_id"] for p in view["peers"] if p["alive"]}
        assert len(others) == 2 and me["peer_id"] not in others, view["peers"]
        # Workers are the coordinator's: the same two whichever peer answers.
        assert sorted(w["name"] for w in view["workers"] if w["status"] == "awake") == ["worker-1", "worker-2"]


def test_status_prints_a_table_of_peers_roles_and_the_coordinator(farm: LocalFarm, home: Path) -> None:
    view = wait_agreed(farm.peers)
    follower = next(p for p in farm.peers if p.url != view["url"])
    r = cli("status", "--peer", follower.url, home=home)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"Farm coordinator: {view['peer_id'][:8]} at {view['url']} (epoch {view['epoch']})", r.stdout
    header = lines[1].split()
    assert header == ["PEER", "ID", "ROLE", "EPOCH", "LOG", "WORKING", "ON", "URL"], lines[1]
    rows = {line.split()[0]: line.split() for line in lines[2:5]}
    assert set(rows) == {"coordinator", "worker-1", "worker-2"}, r.stdout
    for peer in farm.peers:
        row = rows[peer.name]
        assert row[2] == ("coordinator" if peer.url == view["url"] else "follower"), r.stdout
        assert row[3] == str(view["epoch"]) and row[-1] == peer.url, r.stdout
    # The peer without a worker shows "-", the idle workers "idle".
    assert rows["coordinator"][5] == "-" and rows["worker-1"][5] == "idle", r.stdout
    assert "WORKER" in r.stdout and "awake" in r.stdout


def test_a_follower_answers_the_client_api_by_forwarding(farm: LocalFarm) -> None:
    view = wait_agreed(farm.peers)
    first, second = [p for p in farm.peers if p.url != view["url"]]
    via_first, via_second = FlamencoClient(first.url), FlamencoClient(second.url)

    job = via_first.submit(echo_sleep("forwarded", paused=True))
    assert job["status"] == "paused"
    # Whichever peer is asked, the coordinator's answer comes back.
    assert job["id"] in {j["id"] for j in via_second.jobs()}
    assert job["id"] in {j["id"] for j in FlamencoClient(view["url"]).jobs()}
    assert [t["name"] for t in via_second.tasks(job["id"])] == ["echo", "sleep"]
    assert via_first.job(job["id"])["name"] == "forwarded"
    assert "echo-sleep-test" in {t["name"] for t in via_second.job_types()}

    # Errors travel back unchanged, with their message.
    with pytest.raises(ClientError) as refused:
        via_first.submit({**echo_sleep("bad"), "type": "no-such-type"})
    assert refused.value.status == 400 and "no-such-type" in refused.value.message

    # The version is the follower's own answer (no coordinator needed for it).
    assert via_first.get("/api/v3/version")["name"] == first.name


def test_an_acknowledged_submission_is_already_on_another_peer(farm: LocalFarm) -> None:
    view = wait_agreed(farm.peers)
    coordinator = by_url(farm, view["url"])
    followers = [p for p in farm.peers if p is not coordinator]
    client = FlamencoClient(coordinator.url)

    for n in range(3):
        job = client.submit(echo_sleep(f"acked-{n}", paused=True))
        holders = [p.name for p in followers if replica_job(p, job["id"]) is not None]
        assert holders, f"submission {n} acknowledged before any follower held it"

    # With both followers frozen the acknowledgement waits; thawing one releases it,
    # and that one holds the job by then.
    answer: dict[str, Any] = {}

    def submit() -> None:
        try:
            answer["job"] = client.submit(echo_sleep("acked-frozen", paused=True))
        except ClientError as exc:  # reported by the assertion below
            answer["error"] = exc

    for p in followers:
        os.kill(p.process.pid, signal.SIGSTOP)
    try:
        thread = threading.Thread(target=submit, daemon=True)
        thread.start()
        thread.join(0.4)
        assert thread.is_alive(), f"acknowledged while no other peer could hold the job: {answer}"
        os.kill(followers[0].process.pid, signal.SIGCONT)
        thread.join(15)
        assert not thread.is_alive() and "job" in answer, answer
    finally:
        for p in followers:
            os.kill(p.process.pid, signal.SIGCONT)
    assert replica_job(followers[0], answer["job"]["id"]) == "paused"
    wait_agreed(farm.peers)


@pytest.fixture
def failover_farm(tmp_path: Path) -> Iterator[LocalFarm]:
    farm = LocalFarm(tmp_path / "farm")
    try:
        farm.start(workers=2)
        farm.wait_for_workers(2)
        yield farm
    finally:
        farm.stop()


def test_sigkill_of_the_coordinator_loses_nothing_and_running_work_carries_on(
    failover_farm: LocalFarm, capsys: pytest.CaptureFixture[str],
) -> None:
    farm = failover_farm
    view = wait_agreed(farm.peers)
    old = by_url(farm, view["url"])
    survivors = [p for p in farm.peers if p is not old]
    assert old.name == "coordinator"  # the worker-less peer: killing it stops no task
    client = FlamencoClient(survivors[0].url)

    # One long task keeps one worker busy across the change of coordinator; the other worker idles.
    job = client.submit(echo_sleep("through-failover", seconds=4, repeats=1))
    tasks = client.tasks(job["id"])
    echo_id, sleep_id = (t["id"] for t in tasks)
    # Wait until the running task is in a follower's replica too, with its worker.
    running = eventually(lambda: replica_active_tasks(survivors[0], job["id"]).get(sleep_id), 15,
                         "the sleep task running, as the replica knows it")
    assert client.task(echo_id)["status"] == "completed"
    time.sleep(0.5)

    os.killpg(old.process.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    old.process.wait(10)

    # The survivors elect a new coordinator of a higher epoch.
    new_view = wait_agreed(survivors, timeout=FAILOVER_BOUND_S)
    elected_s = time.monotonic() - killed_at
    assert new_view["epoch"] > view["epoch"] and new_view["url"] != old.url

    # It dispatches: a job submitted now runs on the idle worker.
    second = eventually(lambda: client.submit(echo_sleep("after-failover", repeats=0)), FAILOVER_BOUND_S,
                        "a submission accepted after the failover")
    # Acknowledged means held by the other survivor too, even this soon after the change.
    assert any(replica_job(p, second["id"]) is not None for p in survivors if p.url != new_view["url"])
    eventually(lambda: client.job(second["id"])["status"] == "completed", FAILOVER_BOUND_S,
               "the job submitted after the failover completed")
    dispatched_s = time.monotonic() - killed_at
    report(capsys, f"coordinator SIGKILLed: survivors agreed on a new coordinator (epoch {new_view['epoch']}) "
                   f"after {elected_s:.2f} s; a new job ran to completion {dispatched_s:.2f} s after the kill")
    assert dispatched_s < 2 * FAILOVER_BOUND_S

    final = eventually(lambda: (j := client.job(job["id"]))["status"] in ("completed", "failed", "canceled") and j,
                       30, "the first job finished")
    assert final["status"] == "completed", [(t["name"], t["status"], t["activity"]) for t in client.tasks(job["id"])]
    after = {t["id"]: t for t in client.tasks(job["id"])}
    assert set(after) == {echo_id, sleep_id}
    # The echo finished before the kill and stays finished (not run again).
    echo_log = client.task_log(echo_id)
    assert echo_log.count("task assigned to worker") == 1, echo_log
    # The running task kept its worker through the change: assigned once, never requeued,
    # and its result (with the log line written at its end) reached the new coordinator.
    sleep_log = client.task_log(sleep_id)
    assert sleep_log.count("task assigned to worker") == 1, sleep_log
    assert f"({running})" in sleep_log and "slept 4s" in sleep_log, sleep_log
    assert "-> queued" not in sleep_log, sleep_log
    assert after[sleep_id]["worker"]["id"] == running


def test_a_peer_writes_a_new_peer_to_its_cache_at_once(tmp_path: Path) -> None:
    # Without multicast, the cache is all a restarting peer has to find the farm:
    # a peer killed seconds after another joined must still know it. (The periodic
    # save alone comes up to 5 s after the first peer started.)
    def cached_urls(peer: PeerProcess) -> set[str]:
        try:
            peers = json.loads((peer.data_dir / "peers.json").read_text())["peers"]
        except (OSError, ValueError, KeyError):
            return set()
        return {entry["url"] for entry in peers.values()}

    with LocalFarm(tmp_path / "farm") as farm:
        first = farm.start_peer("first", worker=False)
        second = farm.start_peer("second", join=first.url, worker=False)
        # Heard at the second's first heartbeat, saved at once: here within
        # milliseconds, where the periodic save took 1.9 to 2.7 s.
        eventually(lambda: second.url in cached_urls(first), 1.0, "the new peer in the first one's cache")
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(10)
        assert second.url in cached_urls(first)
