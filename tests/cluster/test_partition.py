"""The farm on a real network: one peer per network namespace, found by real mDNS.

Each peer is a real ``python -m peer run`` in its own namespace (its own IP on
a shared bridge, see ``tests/netns.py``), bound to 0.0.0.0 there. Peers find
each other by mDNS only (fresh data dirs, no ``--join``) and share the farm
through a join code. The test process reaches them from the host's address on
the bridge, which is not loopback, so it signs its requests with the farm's
secret like a peer; a peer cut off from the bridge is reached from inside its
own namespace over loopback, as a local CLI would.

- A partition: the coordinator is cut off, the other two elect a new one with a
  higher epoch, each side runs a job, and when the link comes back one
  coordinator (the higher epoch) remains with both jobs and every task either
  side completed still completed.
- Trust: a peer of another farm cannot join (its heartbeats get 401), and an
  unsigned request from another address is refused.
- The heal's deciding step, in one process without namespaces: a cut-off
  coordinator keeps its own epoch until it meets the newer coordinator.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from peer.cluster import identity as farm_identity
from peer.cluster.auth import sign_headers
from peer.cluster.election import COORDINATOR, FOLLOWER
from peer.cluster.manager import ClusterManager, ClusterSettings
from peer.cluster.identity import FarmIdentity
from peer.clientlib import ClientError, FlamencoClient, _decode

from tests.netns import NetnsLab, requires_netns
from tests.polling import eventually

PORT = 8780
REPO = Path(__file__).resolve().parents[2]
FAILOVER_BOUND_S = 10.0  # generous; the measured value is printed

# Runs inside a namespace: one client call to the local peer over loopback, JSON out.
IN_NAMESPACE_CALL = r"""
import json, sys
from peer.clientlib import ClientError, FlamencoClient
client = FlamencoClient("http://127.0.0.1:%d", timeout=30)
method, args = sys.argv[1], json.loads(sys.argv[2])
try:
    print(json.dumps({"ok": getattr(client, method)(*args)}))
except ClientError as exc:
    print(json.dumps({"error": exc.message, "status": exc.status}))
""" % PORT


class SignedClient(FlamencoClient):
    """The stdlib Flamenco client, with every request signed for the farm (or not, ``identity=None``)."""

    def __init__(self, base_url: str, identity: FarmIdentity | None, timeout: float = 30.0) -> None:
        super().__init__(base_url, timeout)
        self.identity = identity

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        url = self.base_url.rstrip("/") + path
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.identity is not None:
            for name, value in sign_headers(self.identity, "test-harness", method, path, data or b"").items():
                req.add_header(name, value)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, _decode(resp.read(), resp.headers.get_content_type())
        except urllib.error.HTTPError as exc:
            payload = _decode(exc.read(), exc.headers.get_content_type() if exc.headers else "")
            message = payload.get("message") if isinstance(payload, dict) else None
            raise ClientError(message or f"HTTP {exc.code} from {url}", exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            raise ClientError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None


@dataclass
class NsPeer:
    index: int
    name: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    url: str

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class NsFarm:
    """Peer processes in a lab's namespaces, and ways to talk to them."""

    def __init__(self, lab: NetnsLab, root: Path) -> None:
        self.lab = lab
        self.root = root
        self.peers: list[NsPeer] = []

    def start(self, index: int, *, join_code: str | None = None, join: str | None = None) -> NsPeer:
        name = f"p{index}"
        data_dir = self.root / name
        data_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "peer", "--log-level", "info", "run", "--host", "0.0.0.0",
                "--port", str(PORT), "--data-dir", str(data_dir), "--name", name]
        if join_code:
            argv += ["--join-code", join_code]
        if join:
            argv += ["--join", join]
        log_path = self.root / f"{name}.log"
        with open(log_path, "wb") as log_file:
            proc = self.lab.popen(index, argv, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO)
        peer = NsPeer(index, name, data_dir, proc, log_path, f"http://{self.lab.ips[index]}:{PORT}")
        self.peers.append(peer)
        return peer

    def wait_started(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        for peer in self.peers:
            while not (peer.data_dir / "peer.json").exists():
                if peer.process.poll() is not None:
                    raise AssertionError(f"{peer.name} exited ({peer.process.returncode}):\n{peer.log()[-3000:]}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"{peer.name} did not start within {timeout:.0f} s:\n{peer.log()[-3000:]}")
                time.sleep(0.05)

    def in_namespace(self, peer: NsPeer, method: str, *args: Any) -> Any:
        """Call ``FlamencoClient(<loopback>).method(*args)`` inside the peer's namespace."""
        r = self.lab.run(peer.index, [sys.executable, "-c", IN_NAMESPACE_CALL, method, json.dumps(args)],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
        assert r.returncode == 0, f"in-namespace {method} failed:\n{r.stdout}\n{r.stderr}"
        answer = json.loads(r.stdout)
        if "error" in answer:
            raise ClientError(answer["error"], answer["status"])
        return answer["ok"]

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log()[-4000:]}" for p in self.peers)


@pytest.fixture
def ns_farm(tmp_path: Path) -> Iterator[NsFarm]:
    with NetnsLab(3) as lab:
        farm = NsFarm(lab, tmp_path)
        try:
            yield farm
        finally:
            lab.close()  # stops every peer (SIGTERM, then SIGKILL) before the logs are read
            for peer in farm.peers:
                assert "Traceback" not in peer.log(), f"{peer.name} logged a traceback:\n{peer.log()[-6000:]}"


def agreed_view(clients: list[SignedClient]) -> dict[str, Any] | None:
    """The coordinator every one of these peers follows (one of them), or None while they disagree."""
    selves = [c.farm_status()["self"] for c in clients]
    leaders = {(s["leader_id"], s["epoch"]) for s in selves}
    coordinators = [s for s in selves if s["role"] == "coordinator"]
    if len(leaders) != 1 or len(coordinators) != 1 or any(s["role"] not in ("coordinator", "follower") for s in selves):
        return None
    leader = coordinators[0]
    return leader if leader["peer_id"] == selves[0]["leader_id"] else None


def echo_sleep(name: str, *, seconds: int, repeats: int) -> dict[str, Any]:
    return {
        "name": name, "type": "echo-sleep-test", "priority": 50, "submitter_platform": "linux",
        "settings": {"message": name, "sleep_duration_seconds": seconds, "sleep_repeats": repeats},
    }


def replica_has_job(peer: NsPeer, job_id: str) -> bool:
    """Whether a peer's own SQLite replica holds the job (read-only, beside the running peer)."""
    conn = sqlite3.connect(f"file:{peer.data_dir / 'peer.sqlite'}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute("SELECT 1 FROM jobs WHERE id=?", (job_id,)).fetchone() is not None
    finally:
        conn.close()


def completed(tasks: list[dict[str, Any]]) -> set[str]:
    return {t["id"] for t in tasks if t["status"] == "completed"}


def report(capsys: pytest.CaptureFixture[str], line: str) -> None:
    with capsys.disabled():
        print(f"\n    [measured] {line}", flush=True)


@requires_netns
@pytest.mark.timeout(120)
def test_partition_heals_into_one_coordinator_with_the_union_of_progress(
    ns_farm: NsFarm, capsys: pytest.CaptureFixture[str],
) -> None:
    farm, lab = ns_farm, ns_farm.lab
    identity = farm_identity.load_or_create(farm.root / "p0")
    code = identity.join_code()  # no seed in it: the peers find each other by mDNS alone
    for i in range(3):
        farm.start(i, join_code=code if i else None)
    farm.wait_started()
    clients = [SignedClient(p.url, identity) for p in farm.peers]

    view = eventually(lambda: agreed_view(clients), 20, "one coordinator for the three peers")
    for peer, client in zip(farm.peers, clients):
        # Bound to 0.0.0.0, a peer still advertises and names itself by its namespace address.
        assert client.farm_status()["self"]["url"] == peer.url
    eventually(lambda: len([w for w in clients[0].workers() if w["status"] == "awake"]) == 3, 15,
               "three workers signed on at the coordinator")
    old = next(p for p in farm.peers if p.url == view["url"])
    majority = [p for p in farm.peers if p is not old]
    majority_clients = [clients[p.index] for p in majority]

    lab.set_link(old.index, False)
    cut_at = time.monotonic()
    new_view = eventually(lambda: agreed_view(majority_clients), FAILOVER_BOUND_S,
                          "a coordinator for the two connected peers")
    elected_s = time.monotonic() - cut_at
    assert new_view["epoch"] > view["epoch"] and new_view["url"] != old.url
    # The cut-off peer cannot know: it still coordinates its side, at the old epoch.
    isolated = farm.in_namespace(old, "farm_status")["self"]
    assert (isolated["role"], isolated["epoch"]) == ("coordinator", view["epoch"]), isolated

    # The majority's workers move to the new coordinator, although the old one never closed their connections.
    majority_client = majority_clients[0]
    eventually(lambda: {p.name for p in majority} <= {w["name"] for w in majority_client.workers()
                                                       if w["status"] == "awake"},
               FAILOVER_BOUND_S, "the connected peers' workers signed on at the new coordinator")
    workers_s = time.monotonic() - cut_at

    # One job on each side. The isolated side has only its own worker, so its job stays unfinished a while.
    asked_at = time.monotonic()
    job_majority = eventually(lambda: majority_client.submit(echo_sleep("majority", seconds=1, repeats=5)),
                              15, "a submission on the majority side")
    submit_s = time.monotonic() - asked_at
    # Acknowledged means held by a second peer: the new coordinator's follower has it already.
    follower = next(p for p in majority if p.url != new_view["url"])
    assert replica_has_job(follower, job_majority["id"]), "acknowledged before the other connected peer held it"
    job_isolated = farm.in_namespace(old, "submit", echo_sleep("isolated", seconds=1, repeats=8))
    # Both sides make progress on their own; the majority's workers moved to its new coordinator.
    eventually(lambda: len(completed(majority_client.tasks(job_majority["id"]))) >= 3, 30,
               "tasks completed on the majority side")
    eventually(lambda: len(completed(farm.in_namespace(old, "tasks", job_isolated["id"]))) >= 3, 30,
               "tasks completed on the isolated side")
    done_majority = completed(majority_client.tasks(job_majority["id"]))
    done_isolated = completed(farm.in_namespace(old, "tasks", job_isolated["id"]))
    assert job_isolated["id"] not in {j["id"] for j in majority_client.jobs()}

    lab.set_link(old.index, True)
    healed_at = time.monotonic()
    final_view = eventually(lambda: agreed_view(clients), FAILOVER_BOUND_S, "one coordinator after the heal")
    healed_s = time.monotonic() - healed_at
    report(capsys, f"partition: the connected pair elected a coordinator {elected_s:.2f} s after the cut, "
                   f"its workers were signed on there after {workers_s:.2f} s, a submission there took "
                   f"{submit_s:.2f} s; one coordinator {healed_s:.2f} s after the heal")
    # The higher epoch won; the cut-off coordinator stepped down.
    assert (final_view["peer_id"], final_view["epoch"]) == (new_view["peer_id"], new_view["epoch"])

    # The cut-off side's job arrives by merge, with what it completed still completed.
    coordinator = clients[next(p.index for p in farm.peers if p.url == final_view["url"])]
    merged = eventually(lambda: job_isolated["id"] in {j["id"] for j in coordinator.jobs()}, 15,
                        "the isolated side's job merged into the farm")
    assert merged
    assert done_isolated <= completed(coordinator.tasks(job_isolated["id"]))
    assert done_majority <= completed(coordinator.tasks(job_majority["id"]))

    for job in (job_majority, job_isolated):
        final = eventually(lambda: (j := coordinator.job(job["id"]))["status"] in ("completed", "failed", "canceled")
                           and j, 40, f"job {job['name']} finished")
        tasks = coordinator.tasks(job["id"])
        assert final["status"] == "completed", [(t["name"], t["status"]) for t in tasks]
        assert len(tasks) == 1 + job["settings"]["sleep_repeats"]
    # Every peer sees the same farm: same coordinator, same epoch, both jobs.
    for client in clients:
        assert {job_majority["id"], job_isolated["id"]} <= {j["id"] for j in client.jobs()}
    assert agreed_view(clients) is not None


@requires_netns
@pytest.mark.timeout(60)
def test_a_peer_of_another_farm_cannot_join_and_unsigned_requests_are_refused(ns_farm: NsFarm) -> None:
    farm, lab = ns_farm, ns_farm.lab
    identity = farm_identity.load_or_create(farm.root / "p0")
    farm.start(0)
    farm.start(1, join_code=identity.join_code())
    # p2 has a farm of its own, and is pointed at p0 explicitly.
    stranger = farm.start(2, join=f"{lab.ips[0]}:{PORT}")
    farm.wait_started()
    stranger_identity = farm_identity.load(stranger.data_dir)
    assert stranger_identity is not None and stranger_identity.farm_id != identity.farm_id
    members = [SignedClient(p.url, identity) for p in farm.peers[:2]]
    outsider = SignedClient(stranger.url, stranger_identity)

    view = eventually(lambda: agreed_view(members), 20, "one coordinator for the farm's two peers")
    # The stranger's heartbeats are refused, and it says why in its log.
    eventually(lambda: "refused this peer" in stranger.log(), 15, "the stranger told it was refused")
    alone = eventually(lambda: (s := outsider.farm_status())["self"]["role"] == "coordinator" and s, 15,
                       "the stranger coordinating its own farm")
    assert alone["peers"] == [] and alone["self"]["farm_id"] == stranger_identity.farm_id
    statuses = [c.farm_status() for c in members]
    member_ids = {s["self"]["peer_id"] for s in statuses}
    for status in statuses:
        assert status["coordinator"]["peer_id"] == view["peer_id"]
        assert {p["peer_id"] for p in status["peers"]} == member_ids - {status["self"]["peer_id"]}, status["peers"]
        assert stranger.url not in status["contacts"], status["contacts"]

    # No signature, from another address (the host, then the stranger's namespace): 401, with what to do.
    with pytest.raises(ClientError) as unsigned:
        SignedClient(farm.peers[0].url, None).jobs()
    assert unsigned.value.status == 401 and "no farm signature" in unsigned.value.message
    with pytest.raises(ClientError) as wrong_farm:
        SignedClient(farm.peers[0].url, stranger_identity).submit(echo_sleep("intruder", seconds=1, repeats=1))
    assert wrong_farm.value.status == 401 and "another farm" in wrong_farm.value.message
    # Signed with another farm's secret, it can neither claim a task nor fetch a file.
    intruder = SignedClient(farm.peers[0].url, stranger_identity)
    for method, path, body in (
        ("POST", "/peer/v1/worker/claim", {"worker_id": "intruder", "wait_s": 0}),
        ("POST", "/peer/v1/worker/sign-on", {"worker_id": "intruder", "name": "x", "supported_task_types": ["misc"]}),
        ("GET", "/peer/v1/files/blob/" + "0" * 64 + "/1", None),
        ("POST", "/peer/v1/files/have", {"blobs": []}),
    ):
        with pytest.raises(ClientError) as refused:
            intruder.request(method, path, body)
        assert refused.value.status == 401 and "another farm" in refused.value.message, (path, refused.value.message)
    r = lab.run(2, [sys.executable, "-m", "peer", "jobs", "--json", "--peer", farm.peers[0].url],
                capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode != 0 and "no farm signature" in r.stderr and "Traceback" not in r.stderr, r.stderr
    # Nothing got in.
    assert members[0].jobs() == []


# --- the heal, decided in one process ---------------------------------------------


class _ReplicaStub:
    """Just enough of a Coordinator for ClusterManager to change roles."""

    def __init__(self, term: tuple[int, str]) -> None:
        self.term: tuple[int, str] | None = term
        self.on_commit: list[Any] = []
        self.replication_barrier: Any = None
        self.noted: list[int] = []
        self.store = self
        self.db = self

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)

    def note_epoch(self, epoch: int) -> None:
        self.noted.append(epoch)

    @property
    def leading(self) -> bool:
        return self.term is not None

    async def follow(self) -> None:
        self.term = None


def _heard(manager: ClusterManager, peer_id: str, role: str, epoch: int, leader_id: str) -> None:
    manager.membership.heard({
        "peer_id": peer_id, "url": f"http://{peer_id}.test:{PORT}", "role": role, "epoch": epoch,
        "leader_id": leader_id, "applied": 50, "eligible": True, "priority": 0,
    })


@pytest.mark.timeout(10)
async def test_a_cut_off_coordinator_keeps_its_epoch_until_it_meets_the_newer_coordinator() -> None:
    """Healing, the old coordinator often hears a follower of the new one first.

    It must not take that follower's higher epoch as its own while it still
    leads: its claim would then tie the new coordinator's epoch and could win
    on the peer id, putting the cut-off side's log in charge of the farm.
    """
    replica = _ReplicaStub(term=(1, "zz-old"))
    manager = ClusterManager(
        ClusterSettings(peer_id="zz-old", name="old", farm_id="f", version="test"),
        replica, transport=None,  # type: ignore[arg-type]  # decide() makes no calls
    )
    manager.role, manager.epoch, manager.leader_id = COORDINATOR, 1, "zz-old"

    _heard(manager, "b-follower", FOLLOWER, 2, leader_id="a-new")
    await manager.decide()
    assert (manager.role, manager.state()["epoch"]) == (COORDINATOR, 1)

    _heard(manager, "a-new", COORDINATOR, 2, leader_id="a-new")
    await manager.decide()
    assert (manager.role, manager.leader_id, manager.epoch) == (FOLLOWER, "a-new", 2)
    assert replica.term is None and 2 in replica.noted
