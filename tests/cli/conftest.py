"""Helpers for the command-line tests: real peer processes, the CLI as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from peer.localfarm import LocalFarm

CLI_TIMEOUT = 30.0


@dataclass
class Result:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        try:
            return json.loads(self.stdout)
        except ValueError as exc:  # pragma: no cover - only on failure
            raise AssertionError(f"stdout of {self.args} is not JSON ({exc}):\n{self.stdout}\n{self.stderr}") from None

    def explain(self) -> str:
        return f"$ {' '.join(self.args)}\nexit {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def clean_env(data_dir: Path) -> dict[str, str]:
    """The caller's environment, minus anything that could point the CLI at a real user's peer."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAMENCO_PEER_")}
    env["FLAMENCO_PEER_DATA_DIR"] = str(data_dir)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Cli:
    """Runs ``python -m peer ...`` as a subprocess, with an isolated default data dir."""

    def __init__(self, home: Path, peer_url: str | None = None) -> None:
        self.home = home
        self.home.mkdir(parents=True, exist_ok=True)
        self.peer_url = peer_url

    def __call__(self, *args: str, peer: str | None = None, timeout: float = CLI_TIMEOUT,
                 env: dict[str, str] | None = None, use_peer: bool = True) -> Result:
        argv = [sys.executable, "-m", "peer", *args]
        url = peer or self.peer_url
        if use_peer and url:
            argv += ["--peer", url]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=self.home,
                              env=env or clean_env(self.home / "default-data-dir"))
        return Result(argv[1:], proc.returncode, proc.stdout, proc.stderr)

    def ok(self, *args: str, **kw: Any) -> Result:
        r = self(*args, **kw)
        assert r.returncode == 0, r.explain()
        assert "Traceback" not in r.stderr, r.explain()
        return r

    def jobs(self) -> dict[str, dict[str, Any]]:
        return {j["id"]: j for j in self.ok("jobs", "--json").json()}

    def job(self, job_id: str) -> dict[str, Any]:
        jobs = self.jobs()
        assert job_id in jobs, f"job {job_id} not listed by `jobs --json`: {sorted(jobs)}"
        return jobs[job_id]

    def wait_job(self, job_id: str, statuses: set[str], timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["status"] in statuses:
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} is {job['status']!r}, not one of {statuses} after {timeout} s")
            time.sleep(0.1)


def assert_clean_error(r: Result, code: int = 1) -> None:
    """Exited with ``code`` and an error line of our own, not a Python traceback."""
    assert r.returncode == code, r.explain()
    assert "Traceback" not in r.stderr, r.explain()
    assert r.stderr.strip(), r.explain()
    if code == 1:
        assert r.stderr.startswith("flamenco-peer: "), r.explain()


def _start_solo(root: Path, *, worker: bool = True) -> Iterator[tuple[LocalFarm, str]]:
    farm = LocalFarm(root)
    try:
        peer = farm.start_peer("solo", worker=worker)
        yield farm, peer.url
    finally:
        farm.stop()


@pytest.fixture(scope="module")
def solo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalFarm, str]]:
    """One peer (coordinator + worker), shared by a test module. Tests only touch their own jobs."""
    yield from _start_solo(tmp_path_factory.mktemp("farm"))


@pytest.fixture
def fresh_solo(tmp_path: Path) -> Iterator[tuple[LocalFarm, str]]:
    """A peer of the test's own, for tests that leave work running."""
    yield from _start_solo(tmp_path / "farm")


@pytest.fixture
def idle_solo(tmp_path: Path) -> Iterator[tuple[LocalFarm, str]]:
    """A peer of the test's own without a worker: the test plays the workers itself."""
    yield from _start_solo(tmp_path / "farm", worker=False)


@pytest.fixture(scope="module")
def cli(solo: tuple[LocalFarm, str], tmp_path_factory: pytest.TempPathFactory) -> Cli:
    return Cli(tmp_path_factory.mktemp("cli"), solo[1])


@pytest.fixture
def bare_cli(tmp_path: Path) -> Cli:
    """The CLI with no peer URL filled in."""
    return Cli(tmp_path / "cli")
