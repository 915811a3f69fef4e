"""The farm without a server: discovery, failover and coordinator throughput.

Everything runs as real peer processes (``python -m peer run``) on loopback,
with real mDNS on 127.0.0.1.

1. Discovery: two peers run (the second joined with --join); then new peers
   (all without a worker) start one at a time with the farm's join code only (no --join, no seeds,
   no peer cache), so mDNS is the only way to meet. Measured from the moment
   the process is started to the moment every peer already running lists it
   as alive in its ``/peer/v1/cluster/status`` (polled every 20 ms). Also
   shown: when the new peer's HTTP API first answered, and when it saw all
   the others. Goal: <= 2 s.
2. Failover: a coordinator without a worker and three worker peers run jobs
   of short sleep tasks (bench-sleep.js, shared through the coordinator's
   job_types folder). Mid-job the coordinator is SIGKILLed. Measured from the
   kill to the first ``task-assigned`` event written by the new coordinator
   under its new epoch (its own timestamp, ms precision, same clock; read
   from its SQLite log). The killed peer is restarted and rejoins before the
   next round, so every round kills the current coordinator of a full farm.
   Goal: <= 3 s (median and max reported).
3. Throughput: one coordinator peer process and one follower peer (so every
   decision is also replicated), neither with a worker. N simulated workers
   in this process (asyncio + aiohttp + msgpack, real HTTP) sign on, claim,
   and then report each task completed with ``claim_next``, never running
   its command. Each N gets a fresh job of --tasks no-op tasks; workers stop
   claiming after --seconds (the rest of the job is cancelled). tasks/s =
   tasks completed / time from the first claim to the last completion, at
   N = 10, 100, 500. Reports that arrive together share one SQLite commit
   (group commit), so the figure depends on N.
   Also shown: CPU seconds per task used by the coordinator and follower
   processes (from /proc), and the round-trip time of one report+claim.
   Goal: >= 1,000 tasks/s at N = 100 (on a 2-core machine, where this
   process, the coordinator and the follower share the cores). Figures vary
   by +-10 % from run to run, and far more while anything else runs: check
   the load average in the title line. --only throughput runs this part alone.

Ends with one JSON line of the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from peer import wire
from peer.clientlib import ClientError, FlamencoClient
from peer.cluster import identity as farm_identity
from peer.localfarm import LocalFarm, PeerProcess

HERE = Path(__file__).resolve().parent
BENCH_SLEEP = HERE / "job_types" / "bench-sleep.js"

DISCOVERY_GOAL_S = 2.0
FAILOVER_GOAL_S = 3.0
THROUGHPUT_GOAL_TASKS_S = 1000.0
THROUGHPUT_GOAL_WORKERS = 100
POLL_S = 0.02
PARTS = ("discovery", "failover", "throughput")

T = TypeVar("T")


# --- small helpers -------------------------------------------------------------------------


def _wait_for(check: Callable[[], T | None], timeout: float, what: str, interval: float = POLL_S) -> T:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except (ClientError, sqlite3.OperationalError):  # not up yet, or busy: ask again
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise SystemExit(f"benchmark stopped: {what} not reached within {timeout:.0f} s")
        time.sleep(interval)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _status(url: str) -> dict[str, Any] | None:
    try:
        return FlamencoClient(url, timeout=2).farm_status()
    except ClientError:
        return None


def _alive_names(status: dict[str, Any] | None) -> set[str]:
    if not status:
        return set()
    return {p.get("name", "") for p in status["peers"] if p.get("alive")}


def _live(farm: LocalFarm) -> list[PeerProcess]:
    return [p for p in farm.peers if p.process.poll() is None]


def _agreed_coordinator(peers: list[PeerProcess]) -> dict[str, Any] | None:
    """The coordinator's own state once every peer follows it (and hears every other), else None."""
    statuses = [_status(p.url) for p in peers]
    if any(s is None for s in statuses):
        return None
    selves = [s["self"] for s in statuses if s]
    leaders = {(s["leader_id"], s["epoch"]) for s in selves}
    coordinators = [s for s in selves if s["role"] == "coordinator"]
    if len(leaders) != 1 or len(coordinators) != 1:
        return None
    if any(len(_alive_names(s)) < len(peers) - 1 for s in statuses):
        return None
    return coordinators[0]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _query(peer: PeerProcess, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Read a running peer's SQLite store (read-only, beside the peer)."""
    conn = sqlite3.connect(f"file:{peer.data_dir / 'peer.sqlite'}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def _submit_sleeps(url: str, count: int, duration: float, name: str) -> str:
    job = FlamencoClient(url, timeout=60).submit({
        "name": name, "type": "bench-sleep", "priority": 50, "submitter_platform": "linux",
        "settings": {"count": count, "duration_seconds": duration},
    })
    return str(job["id"])


def _median_max(values: list[float]) -> tuple[float, float]:
    return statistics.median(values), max(values)


# --- 1. discovery --------------------------------------------------------------------------


@dataclass
class DiscoverySample:
    name: str
    answered_s: float  # process start -> its cluster status first answered
    seen_s: float  # process start -> alive in the status of every peer already running
    sees_s: float  # process start -> its own status lists every other peer alive


def measure_discovery(root: Path, newcomers: int) -> list[DiscoverySample]:
    farm = LocalFarm(root / "discovery")
    samples = []
    try:
        first = farm.start_peer("disc-a", worker=False)
        second = farm.start_peer("disc-b", join=first.url, worker=False)
        _wait_for(lambda: _agreed_coordinator([first, second]), 20, "two peers agreeing on a coordinator")
        identity = farm_identity.load(first.data_dir)
        if identity is None:
            raise SystemExit(f"benchmark stopped: peer disc-a has no farm identity in {first.data_dir}")
        code = identity.join_code()  # no seed inside: the newcomer knows no address at all
        with ThreadPoolExecutor(1) as pool:
            for i in range(1, newcomers + 1):
                others = _live(farm)
                samples.append(_discover_one(farm, pool, f"disc-new-{i}", code, others))
    finally:
        farm.stop()
    return samples


def _discover_one(farm: LocalFarm, pool: ThreadPoolExecutor, name: str, code: str,
                  others: list[PeerProcess]) -> DiscoverySample:
    # A port chosen here lets the API be polled before the peer writes peer.json
    # (which it does only after its mDNS advert is claimed).
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    launch = pool.submit(farm.start_peer, name, worker=False, extra_args=["--join-code", code, "--port", str(port)])
    answered = sees = 0.0
    seen: dict[str, float] = {}
    deadline = started + 20
    while not (answered and sees and len(seen) == len(others)):
        if time.monotonic() > deadline:
            raise SystemExit(
                f"benchmark stopped: new peer {name} not discovered within 20 s "
                f"(answered: {bool(answered)}, seen by: {sorted(seen)}, saw all: {bool(sees)})")
        if launch.done():
            launch.result()  # raises FarmError if the peer died while starting
        own = _status(url)
        now = time.monotonic() - started
        if own is not None:
            answered = answered or now
            if not sees and {o.name for o in others} <= _alive_names(own):
                sees = now
        for other in others:
            if other.name not in seen and name in _alive_names(_status(other.url)):
                seen[other.name] = time.monotonic() - started
        time.sleep(POLL_S)
    launch.result()
    return DiscoverySample(name, answered, max(seen.values()), sees)


# --- 2. failover ---------------------------------------------------------------------------


@dataclass
class FailoverSample:
    killed: str
    new_coordinator: str
    elected_s: float  # kill -> a survivor reports itself coordinator of a newer epoch (polled)
    dispatch_s: float  # kill -> timestamp of the new coordinator's first task-assigned event
    dispatch_seen_s: float  # kill -> that event found by polling its store (an upper bound)


def measure_failover(root: Path, rounds: int, workers: int) -> list[FailoverSample]:
    farm = LocalFarm(root / "failover")
    samples = []
    try:
        farm.start(workers=workers, job_types=[BENCH_SLEEP])
        farm.wait_for_workers(workers)
        _wait_for(lambda: _agreed_coordinator(_live(farm)), 20, "the farm agreeing on a coordinator")
        # Warm-up: every worker has run a task (imports, connections).
        warm = _submit_sleeps(farm.coordinator.url, workers * 2, 0.0, "warm-up")
        _wait_for(lambda: FlamencoClient(farm.coordinator.url).job(warm)["status"] == "completed", 30, "warm-up job")
        for i in range(rounds):
            samples.append(_fail_over_once(farm, i))
    finally:
        farm.stop()
    return samples


def _fail_over_once(farm: LocalFarm, round_no: int) -> FailoverSample:
    live = _live(farm)
    leader = _wait_for(lambda: _agreed_coordinator(live), 30, "the farm agreeing on a coordinator")
    victim = next(p for p in live if p.url == leader["url"])
    survivors = [p for p in live if p is not victim]
    job_id = _submit_sleeps(victim.url, 100, 0.05, f"failover-{round_no}")

    def some_done() -> bool:
        rows = _query(victim, "SELECT COUNT(*) FROM tasks WHERE job_id=? AND status='completed'", (job_id,))
        return rows[0][0] >= 10

    _wait_for(some_done, 30, "tasks completing before the kill")

    killed_wall = time.time()
    killed = time.monotonic()
    os.killpg(victim.process.pid, signal.SIGKILL)
    victim.process.wait()

    def new_leader() -> tuple[PeerProcess, int] | None:
        for peer in survivors:
            status = _status(peer.url)
            if status and status["self"]["role"] == "coordinator" and status["self"]["epoch"] > leader["epoch"]:
                return peer, int(status["self"]["epoch"])
        return None

    successor, epoch = _wait_for(new_leader, 30, "a new coordinator")
    elected = time.monotonic() - killed

    def first_dispatch() -> str | None:
        rows = _query(successor, "SELECT at FROM events WHERE kind='task-assigned' AND epoch=? "
                                 "ORDER BY idx LIMIT 1", (epoch,))
        return str(rows[0][0]) if rows else None

    at = _wait_for(first_dispatch, 30, "a task dispatched by the new coordinator")
    dispatch_seen = time.monotonic() - killed
    dispatch = datetime.fromisoformat(at).timestamp() - killed_wall

    # Bring the farm back to full strength for the next round: the killed peer
    # restarts on its own data dir and rejoins through the new coordinator.
    farm.start_peer(victim.name, join=successor.url, worker="--no-worker" not in victim.process.args)
    _wait_for(lambda: _agreed_coordinator(_live(farm)), 30, f"{victim.name} rejoining the farm")
    return FailoverSample(victim.name, successor.name, elected, dispatch, dispatch_seen)


# --- 3. throughput -------------------------------------------------------------------------


@dataclass
class ThroughputSample:
    workers: int
    tasks: int
    seconds: float
    coordinator_cpu_s: float
    follower_cpu_s: float
    load_cpu_s: float  # this process: the simulated workers themselves
    round_trips_ms: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds


class _Refused(Exception):
    pass


async def _call(session: aiohttp.ClientSession, url: str, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    status, content_type, raw = await wire.post(session, f"{url}/peer/v1/{path}", body, timeout=60)
    return status, wire.unpack(raw) if raw and content_type == wire.MSGPACK else None


async def _expect(session: aiohttp.ClientSession, url: str, path: str, body: dict[str, Any]) -> Any:
    status, data = await _call(session, url, path, body)
    if status not in (200, 204):
        raise _Refused(f"{path} answered HTTP {status}: {data}")
    return data


async def _simulated_workers(url: str, count: int, seconds: float,
                             cpu: Callable[[], tuple[float, float, float]]) -> ThroughputSample:
    """N workers claiming and completing tasks, timed from the first claim to the last completion.

    Workers claim until the job is drained or ``seconds`` have passed; a
    worker past that time reports its last task without claiming another.
    """
    ids = [str(uuid.uuid4()) for _ in range(count)]
    round_trips: list[float] = []
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        await asyncio.gather(*(_expect(session, url, "worker/sign-on", {
            "worker_id": wid, "name": f"sim-{i}", "address": "127.0.0.1", "platform": "linux",
            "software": "benchmark", "supported_task_types": ["misc"], "current_task": None,
        }) for i, wid in enumerate(ids)))

        async def work(worker_id: str) -> tuple[int, float]:
            done, last = 0, time.perf_counter()
            claimed = await _expect(session, url, "worker/claim", {"worker_id": worker_id, "wait_s": 0})
            task = claimed["task"] if claimed else None
            while task is not None:
                sent = time.perf_counter()
                reply = await _expect(session, url, "worker/task-update", {
                    "worker_id": worker_id, "task_id": task["uuid"], "task_status": "completed",
                    "activity": "Completed", "steps_completed": 1, "claim_next": sent < stop_at,
                })
                last = time.perf_counter()
                round_trips.append((last - sent) * 1000)
                done += 1
                task = reply.get("next_task")
            return done, last

        cpu_before = cpu()
        started = time.perf_counter()
        stop_at = started + seconds
        results = await asyncio.gather(*(work(wid) for wid in ids))
        finished = max(last for _, last in results)
        cpu_used = [after - before for after, before in zip(cpu(), cpu_before)]
        # Signed-off workers no longer count as live workers in later runs.
        await asyncio.gather(*(_expect(session, url, "worker/sign-off", {"worker_id": wid}) for wid in ids))
    return ThroughputSample(
        workers=count, tasks=sum(done for done, _ in results), seconds=finished - started,
        coordinator_cpu_s=cpu_used[0], follower_cpu_s=cpu_used[1], load_cpu_s=cpu_used[2],
        round_trips_ms=round_trips,
    )


def measure_throughput(root: Path, worker_counts: list[int], tasks: int, seconds: float,
                       follower: bool) -> list[ThroughputSample]:
    farm = LocalFarm(root / "throughput")
    samples = []
    try:
        farm.start(workers=0, job_types=[BENCH_SLEEP])
        coordinator = farm.coordinator
        second = farm.start_peer("follower", join=coordinator.url, worker=False) if follower else None
        if second is not None:
            _wait_for(lambda: _agreed_coordinator([coordinator, second]), 20, "the follower following")

        def cpu() -> tuple[float, float, float]:
            return (_cpu_seconds(coordinator.process.pid),
                    _cpu_seconds(second.process.pid) if second else 0.0, time.process_time())

        for n in worker_counts:
            job_id = _submit_sleeps(coordinator.url, max(tasks, n), 0.0, f"throughput-{n}")
            try:
                sample = asyncio.run(_simulated_workers(coordinator.url, n, seconds, cpu))
            except (_Refused, aiohttp.ClientError) as exc:
                raise SystemExit(f"benchmark stopped: the coordinator failed {n} simulated workers: {exc}\n"
                                 f"{coordinator.log_tail()}") from None
            samples.append(sample)
            done = sample.tasks
            # The coordinator must agree with what the simulated workers counted.
            stored = _query(coordinator, "SELECT COUNT(*) FROM tasks WHERE job_id=? AND status='completed'",
                            (job_id,))[0][0]
            if stored != done:
                raise SystemExit(f"benchmark stopped: job throughput-{n} has {stored} tasks completed, "
                                 f"the simulated workers reported {done}")
            if done < max(tasks, n):
                FlamencoClient(coordinator.url).set_job_status(job_id, "cancel-requested", "benchmark time is up")
    finally:
        farm.stop()
    return samples


# --- report --------------------------------------------------------------------------------


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1))))]


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--newcomers", type=int, default=3, help="peers discovered one after another (default %(default)s)")
    parser.add_argument("--failovers", type=int, default=3, help="coordinator kills (default %(default)s)")
    parser.add_argument("--failover-workers", type=int, default=3, help="worker peers in the failover farm (default %(default)s)")
    parser.add_argument("--workers", default="10,100,500", help="simulated worker counts (default %(default)s)")
    parser.add_argument("--tasks", type=int, default=2000, help="no-op tasks in the job of each worker count (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=6.0,
                        help="time limit of each worker count's run (default %(default)s)")
    parser.add_argument("--no-follower", action="store_true", help="throughput without a follower (no replication)")
    parser.add_argument("--only", choices=PARTS, action="append",
                        help="run only this part (repeatable; default: all of %s)" % ", ".join(PARTS))
    args = parser.parse_args(argv)
    try:
        worker_counts = [int(n) for n in args.workers.split(",") if n.strip()]
    except ValueError:
        parser.error(f"--workers must be numbers separated by commas, like 10,100,500; got {args.workers!r}")
    if min(args.newcomers, args.failovers, args.failover_workers, args.tasks, *worker_counts) < 1:
        parser.error("every count must be at least 1")
    if args.seconds <= 0:
        parser.error("--seconds must be more than 0")

    # Every figure here is a latency on a shared 2-core machine: say how busy it was.
    load_before = os.getloadavg()[0]
    parts = set(args.only or PARTS)
    with tempfile.TemporaryDirectory(prefix="flamenco-bench-cluster-") as tmp:
        root = Path(tmp)
        discovery = measure_discovery(root, args.newcomers) if "discovery" in parts else []
        failover = measure_failover(root, args.failovers, args.failover_workers) if "failover" in parts else []
        throughput = (measure_throughput(root, worker_counts, args.tasks, args.seconds, follower=not args.no_follower)
                      if "throughput" in parts else [])

    load_after = os.getloadavg()[0]
    rows: list[tuple[str, str, str]] = []
    figures: dict[str, Any] = {"benchmark": "cluster"}
    if discovery:
        seen_med, seen_max = _median_max([d.seen_s for d in discovery])
        answered_med, _ = _median_max([d.answered_s for d in discovery])
        sees_med, sees_max = _median_max([d.sees_s for d in discovery])
        discovery_met = seen_max <= DISCOVERY_GOAL_S
        rows += [
            (f"discovery ({len(discovery)} new peers, mDNS only)", "", ""),
            ("  start -> seen alive by all, median / max", f"{seen_med:.2f} / {seen_max:.2f} s",
             f"goal <= {DISCOVERY_GOAL_S:.0f} s: {_verdict(discovery_met)}"),
            ("  start -> its API answers, median", f"{answered_med:.2f} s", ""),
            ("  start -> it sees all others, median / max", f"{sees_med:.2f} / {sees_max:.2f} s", ""),
        ]
        figures.update({
            "discovery_seen_s": [round(d.seen_s, 3) for d in discovery],
            "discovery_answered_s": [round(d.answered_s, 3) for d in discovery],
            "discovery_sees_s": [round(d.sees_s, 3) for d in discovery],
            "discovery_median_s": round(seen_med, 3), "discovery_max_s": round(seen_max, 3),
            "discovery_goal_s": DISCOVERY_GOAL_S, "discovery_goal_met": discovery_met,
        })
    if failover:
        elected_med, elected_max = _median_max([f.elected_s for f in failover])
        dispatch_med, dispatch_max = _median_max([f.dispatch_s for f in failover])
        seen_dispatch_med, _ = _median_max([f.dispatch_seen_s for f in failover])
        failover_met = dispatch_max <= FAILOVER_GOAL_S
        rows += [
            (f"failover ({len(failover)} coordinator kills, {args.failover_workers} workers)", "", ""),
            ("  kill -> first task dispatched, median / max", f"{dispatch_med:.2f} / {dispatch_max:.2f} s",
             f"goal <= {FAILOVER_GOAL_S:.0f} s: {_verdict(failover_met)}"),
            ("  kill -> new coordinator elected, median / max", f"{elected_med:.2f} / {elected_max:.2f} s",
             "polled"),
            ("  kill -> dispatch seen in its store, median", f"{seen_dispatch_med:.2f} s", "polled, upper bound"),
        ]
        figures.update({
            "failover_dispatch_s": [round(f.dispatch_s, 3) for f in failover],
            "failover_elected_s": [round(f.elected_s, 3) for f in failover],
            "failover_median_s": round(dispatch_med, 3), "failover_max_s": round(dispatch_max, 3),
            "failover_goal_s": FAILOVER_GOAL_S, "failover_goal_met": failover_met,
        })
    if throughput:
        at_goal = next((t for t in throughput if t.workers == THROUGHPUT_GOAL_WORKERS), None)
        throughput_met = at_goal is not None and at_goal.rate >= THROUGHPUT_GOAL_TASKS_S
        rows.append((
            "coordinator throughput (simulated workers, "
            + ("no follower)" if args.no_follower else "1 follower replicating)"), "",
            f"jobs of {args.tasks} tasks, <= {args.seconds:g} s each"))
        for t in throughput:
            note = ""
            if t.workers == THROUGHPUT_GOAL_WORKERS:
                note = f"goal >= {THROUGHPUT_GOAL_TASKS_S:,.0f} tasks/s: {_verdict(throughput_met)}"
            rows.append((f"  N = {t.workers}: {t.tasks} tasks in {t.seconds:.1f} s", f"{t.rate:,.0f} tasks/s", note))
            rows.append((
                "    report+claim round trip p50 / p99",
                f"{_percentile(t.round_trips_ms, 50):.1f} / {_percentile(t.round_trips_ms, 99):.1f} ms", ""))
            rows.append((
                "    CPU ms per task: coordinator / follower / load",
                f"{t.coordinator_cpu_s / t.tasks * 1000:.2f} / {t.follower_cpu_s / t.tasks * 1000:.2f} / "
                f"{t.load_cpu_s / t.tasks * 1000:.2f}", ""))
        figures.update({
            "throughput_follower": not args.no_follower, "throughput_job_tasks": args.tasks,
            "throughput_tasks_per_s": {str(t.workers): round(t.rate, 1) for t in throughput},
            "throughput_coordinator_cpu_ms_per_task": {
                str(t.workers): round(t.coordinator_cpu_s / t.tasks * 1000, 3) for t in throughput},
            "throughput_goal_tasks_per_s": THROUGHPUT_GOAL_TASKS_S,
            "throughput_goal_workers": THROUGHPUT_GOAL_WORKERS, "throughput_goal_met": throughput_met,
        })
    width = max(len(r[0]) for r in rows)
    print(f"Flamenco Peer: farm discovery, failover and coordinator throughput (loopback, real processes, "
          f"{os.cpu_count()} cores, load average {load_before:.1f} before, {load_after:.1f} after)")
    for label, value, note in rows:
        print(f"  {label.ljust(width)}  {value:>18}  {note}".rstrip())
    for f in failover:
        print(f"  kill {f.killed:>12} -> {f.new_coordinator:<12} elected {f.elected_s:.2f} s, "
              f"dispatching {f.dispatch_s:.2f} s")
    figures.update({"loadavg_before": round(load_before, 2), "loadavg_after": round(load_after, 2)})
    print(json.dumps(figures))
    return 0
