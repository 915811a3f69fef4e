"""Start and stop a farm of peer processes on loopback.

Used by ``flamenco-peer demo``, the end-to-end tests and the benchmarks, so
all three exercise the same real processes a user would run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .cluster import identity as farm_identity
from .clientlib import ClientError, FlamencoClient


class FarmError(Exception):
    pass


@dataclass
class PeerProcess:
    name: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    url: str = ""

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class LocalFarm:
    root: Path
    peers: list[PeerProcess] = field(default_factory=list)
    python: str = sys.executable
    global_args: list[str] = field(default_factory=list)

    @property
    def coordinator(self) -> PeerProcess:
        return self.peers[0]

    @property
    def client(self) -> FlamencoClient:
        return FlamencoClient(self.coordinator.url)

    def start_peer(self, name: str, *, join: str | None = None, worker: bool = True,
                   extra_args: list[str] | None = None, timeout: float = 20.0) -> PeerProcess:
        data_dir = self.root / name
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / "peer.json").unlink(missing_ok=True)
        args = [self.python, "-m", "peer", *self.global_args, "run", "--data-dir", str(data_dir), "--port", "0", "--name", name]
        if join:
            args += ["--join", join]
            # Same farm as the peer it joins: adopt its identity through a join code, as a user would.
            first = self.peers[0].data_dir if self.peers else None
            identity = farm_identity.load(first) if first else None
            if identity is not None:
                args += ["--join-code", identity.join_code()]
        if not worker:
            args.append("--no-worker")
        args += extra_args or []
        log_path = self.root / f"{name}.log"
        log_file = open(log_path, "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log_file.close()
        peer = PeerProcess(name, data_dir, proc, log_path)
        self.peers.append(peer)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise FarmError(f"peer {name} exited with code {proc.returncode} while starting:\n{peer.log_tail()}")
            try:
                info = json.loads((data_dir / "peer.json").read_text())
                if info.get("pid") == proc.pid:
                    peer.url = info["url"]
                    return peer
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        raise FarmError(f"peer {name} did not start within {timeout:.0f} s:\n{peer.log_tail()}")

    def start(self, workers: int, *, coordinator_works: bool = False, extra_args: list[str] | None = None,
              job_types: list[Path] = ()) -> "LocalFarm":
        self.root.mkdir(parents=True, exist_ok=True)
        if job_types:
            user_dir = self.root / "coordinator" / "job_types"
            user_dir.mkdir(parents=True, exist_ok=True)
            for script in job_types:
                (user_dir / script.name).write_bytes(script.read_bytes())
        coord = self.start_peer("coordinator", worker=coordinator_works, extra_args=extra_args)
        for i in range(1, workers + 1):
            self.start_peer(f"worker-{i}", join=coord.url, extra_args=extra_args)
        return self

    def wait_for_workers(self, count: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            try:
                seen = sum(1 for w in self.client.workers() if w["status"] == "awake")
            except ClientError:
                seen = 0
            if seen >= count:
                return
            time.sleep(0.1)
        raise FarmError(f"only {seen} of {count} workers signed on within {timeout:.0f} s")

    def stop(self, timeout: float = 10.0) -> None:
        for peer in reversed(self.peers):
            if peer.process.poll() is None:
                peer.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for peer in self.peers:
            remaining = max(0.1, deadline - time.monotonic())
            try:
                peer.process.wait(remaining)
            except subprocess.TimeoutExpired:
                os.killpg(peer.process.pid, signal.SIGKILL)
                peer.process.wait()
        # Blender children live in the peers' process groups; make sure none survive.
        for peer in self.peers:
            try:
                os.killpg(peer.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def __enter__(self) -> "LocalFarm":
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.stop()
        if exc_type is not None:
            # A failed test or demo: the peers' own words are the quickest way to why.
            for peer in self.peers:
                print(f"--- last lines of {peer.name}'s log ({peer.log_path}) ---\n{peer.log_tail(40)}",
                      file=sys.stderr)
