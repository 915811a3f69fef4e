"""Distributing a job's files without shared storage: one big file to four peers.

A 512 MiB file (random bytes, made in a temporary folder and deleted at the
end) is added to the store of a submitting peer. Four worker peers, each a
separate process with its own store folder and an HTTP server on loopback,
then fetch it at the same moment with ``peer.files.transfer.Fetcher``, given
every other peer as a possible source. The submitter serves at most two
downloads of a blob at once (as on a real network, where its uplink is the
bottleneck), so the other peers fetch from those two while they are still
downloading: a peer re-serves a blob's bytes as soon as it has written them.
Every peer verifies the whole blob (SHA-256) and makes it durable (fsync)
before it counts as received.

Measured: the time from the start of the fetches to the moment the last peer
holds the verified, durable blob, against the baseline of one plain copy of
the file on the same disk: ``shutil.copy`` followed by ``os.fsync`` of the
copy (the peers fsync too; with ``--no-fsync`` neither does). The baseline
is timed in every run, just before the distribution, and both figures are
medians of the runs after an untimed warm-up. Goal: at most 2x.

Also shown, as what bounds the result on this machine: four plain copies at
once (the same disk and memory work as four peers' stores, without network
or hashing), SHA-256 of four copies spread over the machine's cores (every
peer must verify what it received), and both together: the CPU time of the
copies plus that of the hashing, over the cores. On one computer the four
"peers" share its cores and disk, so that floor grows with their number,
where on a real farm each peer brings its own. Then who served how much, and
the time to pack the file (hash and copy it into the submitter's store, once
at submission, not part of the distribution figure).

Ends with one JSON line of the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from peer.files.routes import ServeLimits, add_routes
from peer.files.store import BlobRef, ContentStore
from peer.files.transfer import Fetcher

MIB = 1 << 20
GOAL_RATIO = 2.0


# --- one peer process ------------------------------------------------------------------------


async def _serve(store_dir: Path, durable: bool) -> None:
    """A peer: serves its store; /bench/* lets the benchmark drive it."""
    store = ContentStore(store_dir, cap_bytes=1 << 40, durable=durable)
    app = web.Application()
    server = add_routes(app, store, limits=ServeLimits(max_uploads=8, max_uploads_per_blob=2))
    session = aiohttp.ClientSession()

    async def fetch(request: web.Request) -> web.Response:
        body = await request.json()
        refs = [BlobRef.parse(r) for r in body["refs"]]
        started = time.perf_counter()
        report = await Fetcher(store, session, body["sources"], owner=body["owner"]).fetch(refs)
        return web.json_response({"seconds": time.perf_counter() - started, "by_source": dict(report.by_source),
                                  "bytes": report.bytes_received})

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"served_bytes": server.served_bytes})

    async def reset(request: web.Request) -> web.Response:
        for ref, _ in list(store.iter_blobs()):
            store.remove(ref)
        server.served_bytes = 0
        return web.json_response({})

    async def add(request: web.Request) -> web.Response:
        started = time.perf_counter()
        ref = await asyncio.to_thread(store.add_file, Path((await request.json())["path"]))
        return web.json_response({"ref": ref.to_wire(), "seconds": time.perf_counter() - started})

    app.router.add_post("/bench/fetch", fetch)
    app.router.add_get("/bench/stats", stats)
    app.router.add_post("/bench/reset", reset)
    app.router.add_post("/bench/add", add)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(f"ready {runner.addresses[0][1]}", flush=True)
    try:
        # Runs until the benchmark closes our stdin.
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    finally:
        await session.close()
        await runner.cleanup()


# --- the benchmark ---------------------------------------------------------------------------


def _start_peer(store_dir: Path, durable: bool) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks", "files", "--serve", str(store_dir), *([] if durable else ["--no-fsync"])],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("ready "):
        proc.kill()
        raise SystemExit(f"a benchmark peer did not start (exit {proc.wait()}): {line!r}")
    return proc, f"http://127.0.0.1:{int(line.split()[1])}"


def _make_file(path: Path, size: int) -> None:
    block = os.urandom(MIB)
    with open(path, "wb") as f:
        for i in range(size // MIB):
            # Different bytes in every MiB, without paying for os.urandom of the whole file.
            f.write(i.to_bytes(8, "little") + block[8:])
        f.write(os.urandom(size % MIB))


def _time_hash(path: Path) -> tuple[float, float]:
    """Seconds and CPU seconds to SHA-256 the file once."""
    started, cpu_started = time.perf_counter(), time.process_time()
    digest = hashlib.sha256()
    buffer = bytearray(MIB)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return time.perf_counter() - started, time.process_time() - cpu_started


def _copy(source: Path, target: Path, durable: bool) -> None:
    shutil.copy(source, target)
    if durable:
        fd = os.open(target, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _time_copies(source: Path, targets: list[Path], durable: bool) -> tuple[float, float]:
    """Seconds and CPU seconds to make every copy of ``targets`` at once (a thread each); deleted after."""
    threads = [threading.Thread(target=_copy, args=(source, target, durable)) for target in targets]
    started, cpu_started = time.perf_counter(), time.process_time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    for target in targets:
        target.unlink()
    return elapsed, cpu


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of the peer processes so far (Linux /proc; 0 elsewhere)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return 0.0
    return total


async def _post(session: aiohttp.ClientSession, url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    async with session.post(url, json=body or {}, timeout=aiohttp.ClientTimeout(total=600)) as resp:
        if resp.status != 200:
            raise SystemExit(f"{url} answered HTTP {resp.status}: {await resp.text()}")
        return await resp.json()


def _load_average() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "unknown"


async def _run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    size = args.size_mib * MIB
    durable = not args.no_fsync
    source = work / "big.bin"
    print(f"making a {args.size_mib} MiB file in {work} ...", flush=True)
    _make_file(source, size)
    load = _load_average()
    # Context: every peer must hash what it receives; that alone bounds the result from below.
    hashes = [_time_hash(source) for _ in range(args.runs)]
    hash_s = statistics.median(h[0] for h in hashes)
    hash_cpu = statistics.median(h[1] for h in hashes)
    cores = os.cpu_count() or 1

    procs: list[subprocess.Popen[str]] = []
    try:
        owner_proc, owner = _start_peer(work / "submitter", durable)
        procs.append(owner_proc)
        peers = []
        for i in range(args.peers):
            proc, url = _start_peer(work / f"peer{i + 1}", durable)
            procs.append(proc)
            peers.append(url)
        names = {owner: "submitter", **{url: f"peer {i + 1}" for i, url in enumerate(peers)}}
        async with aiohttp.ClientSession() as session:
            runs = []
            # Every figure is taken after one untimed warm-up run: on a virtual machine, the first
            # touch of memory the page cache never used costs several times more than later writes.
            for _ in range(args.runs + 1):
                for url in peers:
                    await _post(session, f"{url}/bench/reset")
                await _post(session, f"{owner}/bench/reset")
                added = await _post(session, f"{owner}/bench/add", {"path": str(source)})
                ref = added["ref"]
                copy_s, _ = _time_copies(source, [work / "plain-copy.bin"], durable)
                copies_s, copies_cpu = _time_copies(
                    source, [work / f"plain-copy-{i}.bin" for i in range(args.peers)], durable)
                cpu_before = _cpu_seconds([p.pid for p in procs])
                started = time.perf_counter()
                results = await asyncio.gather(*(
                    _post(session, f"{url}/bench/fetch",
                          {"refs": [ref], "owner": owner, "sources": [owner, *[p for p in peers if p != url]]})
                    for url in peers))
                total = time.perf_counter() - started
                cpu = _cpu_seconds([p.pid for p in procs]) - cpu_before
                served = {}
                for url in [owner, *peers]:
                    async with session.get(f"{url}/bench/stats") as resp:
                        served[names[url]] = (await resp.json())["served_bytes"]
                runs.append({"seconds": total, "peers": results, "served": served, "cpu": cpu, "copy": copy_s,
                             "copies": copies_s, "copies_cpu": copies_cpu, "pack": added["seconds"]})
            runs = runs[1:]
    finally:
        for proc in procs:
            if proc.stdin:
                proc.stdin.close()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    median_run = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
    copy_s = statistics.median(r["copy"] for r in runs)
    copies_s = statistics.median(r["copies"] for r in runs)
    copies_cpu = statistics.median(r["copies_cpu"] for r in runs)
    # Copying and hashing both need the CPU: together they cannot take less than this.
    floor_s = max(copies_s, (copies_cpu + args.peers * hash_cpu) / cores)
    pack_s = statistics.median(r["pack"] for r in runs)
    ratio = median_run["seconds"] / copy_s
    all_runs = ", ".join(f"{r['seconds']:.2f}" for r in runs)
    all_copies = ", ".join(f"{r['copy']:.2f}" for r in runs)
    synced = "verified (SHA-256) and durable (fsync)" if durable else "verified (SHA-256), not fsynced"
    baseline = "shutil.copy + fsync" if durable else "shutil.copy, no fsync"
    print()
    print(f"Flamenco Peer: one {args.size_mib} MiB file to {args.peers} peers on loopback, every copy {synced}")
    print(f"(median of {args.runs} runs after a warm-up; {cores} cores, load average {load} at the start)")
    rows = [
        (f"baseline: one plain copy ({baseline})", f"{copy_s:.2f} s", f"all runs: {all_copies} s"),
        (f"distribute to {args.peers} peers", f"{median_run['seconds']:.2f} s", f"all runs: {all_runs} s"),
        ("ratio distribute / baseline", f"{ratio:.2f}x",
         f"goal <= {GOAL_RATIO:.0f}x: {'met' if ratio <= GOAL_RATIO else 'NOT met'}"),
        (f"what {args.peers} verified copies cost here, without any network:", "", ""),
        (f"  {args.peers} plain copies at once", f"{copies_s:.2f} s",
         f"{copies_s / copy_s:.1f}x the baseline; {copies_cpu:.2f} CPU s"),
        (f"  SHA-256 of {args.peers} copies", f"{args.peers * hash_s / cores:.2f} s",
         f"{args.peers * hash_s / cores / copy_s:.1f}x the baseline on {cores} cores; {hash_cpu:.2f} CPU s a copy"),
        (f"  both: the floor on {cores} cores", f"{floor_s:.2f} s", f"{floor_s / copy_s:.1f}x the baseline"),
        ("pack: hash + copy into the submitter's store", f"{pack_s:.2f} s", "once, at submission; not in the ratio"),
    ]
    width = max(len(r[0]) for r in rows)
    for label, value, note in rows:
        print(f"  {label.ljust(width)}  {value:>8}  {note}".rstrip())
    print(f"  in the median run ({median_run['cpu']:.1f} CPU seconds used by the peer processes):")
    for i, result in enumerate(median_run["peers"]):
        sources = ", ".join(names.get(s, s) for s in result["by_source"])
        print(f"    peer {i + 1}: {result['seconds']:.2f} s, fetched from {sources}")
    for name, served in median_run["served"].items():
        print(f"    {name} served {served / MIB:.0f} MiB")
    print(json.dumps({
        "benchmark": "files", "size_mib": args.size_mib, "peers": args.peers, "runs": args.runs, "cores": cores,
        "baseline": baseline, "plain_copy_s": round(copy_s, 3), "parallel_copies_s": round(copies_s, 3),
        "sha256_s": round(hash_s, 3), "floor_s": round(floor_s, 3), "fsync": durable, "pack_s": round(pack_s, 3),
        "distribute_s": round(median_run["seconds"], 3), "distribute_runs_s": [round(r["seconds"], 3) for r in runs],
        "peer_cpu_s": round(median_run["cpu"], 2), "ratio": round(ratio, 2), "goal_ratio": GOAL_RATIO,
        "goal_met": ratio <= GOAL_RATIO,
        "served_mib": {k: round(v / MIB) for k, v in median_run["served"].items()},
    }))
    return median_run


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks files", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=512, help="size of the file (default %(default)s)")
    parser.add_argument("--peers", type=int, default=4, help="peers that fetch it (default %(default)s)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs, median reported (default %(default)s)")
    parser.add_argument("--no-fsync", action="store_true",
                        help="stores skip fsync before a blob becomes visible, and so does the baseline copy "
                             "(default: fsync, as peers do)")
    parser.add_argument("--serve", metavar="STORE_DIR", help=argparse.SUPPRESS)  # a peer process
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(_serve(Path(args.serve), not args.no_fsync))
        return 0
    with tempfile.TemporaryDirectory(prefix="flamenco-peer-bench-files-") as tmp:
        asyncio.run(_run(args, Path(tmp)))
    return 0
