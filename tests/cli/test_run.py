"""`flamenco-peer run`: bad settings files, start and stop, --no-worker and --join."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from peer.localfarm import LocalFarm

from .conftest import Cli, clean_env


def run_peer(args: list[str], env_dir: Path, timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
    """Run `python -m peer run ...` that must exit by itself; kill it if it does not."""
    proc = subprocess.Popen([sys.executable, "-m", "peer", "run", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=clean_env(env_dir), start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"`run {' '.join(args)}` did not exit by itself within {timeout} s")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize(("content", "expected"), [
    ("bogus_setting = 1\n", ["'bogus_setting'", "unknown setting", "port"]),
    ('port = "eighty"\n', ["'port'", "eighty"]),
    ("port = = 1\n", ["not valid TOML"]),
])
@pytest.mark.timeout(60)
def test_run_refuses_a_bad_config_file(tmp_path: Path, content: str, expected: list[str]) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    config = data_dir / "config.toml"
    config.write_text(content)
    r = run_peer(["--data-dir", str(data_dir), "--port", "0"], tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("flamenco-peer: "), r.stderr
    assert str(config) in r.stderr, r.stderr
    for text in expected:
        assert text in r.stderr, r.stderr
    assert config.read_text() == content  # left alone for the user to fix
    assert not (data_dir / "peer.json").exists()


@pytest.mark.timeout(60)
def test_run_with_a_data_dir_that_is_a_file(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "afile"
    not_a_dir.write_text("")
    # At 545a226 this was a FileExistsError traceback (cmd_run only caught ConfigError).
    r = run_peer(["--data-dir", str(not_a_dir), "--port", "0"], tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)  # a setup error, like a bad config file
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("flamenco-peer: "), r.stderr
    assert str(not_a_dir) in r.stderr, r.stderr


def _wait_for_peer_json(data_dir: Path, proc: subprocess.Popen[str], timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"peer exited with {proc.returncode}: {proc.communicate()}"
        try:
            info = json.loads((data_dir / "peer.json").read_text())
            if info.get("pid") == proc.pid:
                return info
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError("peer.json did not appear")


@pytest.fixture
def popen_guard() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.timeout(60)
def test_run_starts_serves_and_stops_on_ctrl_c(tmp_path: Path, popen_guard: list) -> None:
    data_dir = tmp_path / "data"
    proc = subprocess.Popen(
        [sys.executable, "-m", "peer", "run", "--data-dir", str(data_dir), "--port", "0", "--name", "cli-run"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(tmp_path / "default"),
        start_new_session=True,
    )
    popen_guard.append(proc)
    info = _wait_for_peer_json(data_dir, proc)
    url = info["url"]
    assert url.startswith("http://127.0.0.1:")

    cli = Cli(tmp_path / "cli", url)
    assert cli.ok("jobs", "--json").json() == []
    assert cli.ok("jobs").stdout.startswith("No jobs.")
    job = cli.ok("submit", "echo-sleep-test", "--set", "message=from run", "--set", "sleep_duration_seconds=0",
                 "--wait", "--json").json()
    assert job["status"] == "completed"
    assert [w["name"] for w in cli.ok("workers", "--json").json()] == ["cli-run"]

    # First run wrote a settings file with a peer id.
    config = (data_dir / "config.toml").read_text()
    assert "peer_id = " in config

    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, (out, err)
    assert "Traceback" not in err
    assert url in out + err  # it said where it listens
    assert not (data_dir / "peer.json").exists()

    # A restart on the same data dir keeps the job.
    proc = subprocess.Popen(
        [sys.executable, "-m", "peer", "run", "--data-dir", str(data_dir), "--port", "0", "--no-worker"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(tmp_path / "default"),
        start_new_session=True,
    )
    popen_guard.append(proc)
    cli.peer_url = _wait_for_peer_json(data_dir, proc)["url"]
    assert cli.job(job["id"])["status"] == "completed"
    assert (data_dir / "config.toml").read_text() == config  # same peer id
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=15)


@pytest.mark.timeout(60)
def test_no_worker_coordinator_and_a_joining_worker(tmp_path: Path) -> None:
    farm = LocalFarm(tmp_path / "farm")
    try:
        coord = farm.start_peer("coord", worker=False)
        cli = Cli(tmp_path / "cli", coord.url)
        assert cli.ok("workers", "--json").json() == []
        job = cli.ok("submit", "echo-sleep-test", "--set", "message=joined", "--set", "sleep_duration_seconds=0",
                     "--json").json()
        time.sleep(0.5)
        assert cli.job(job["id"])["status"] == "queued"  # nobody works on it

        # --join accepts host:port without the scheme.
        farm.start_peer("helper", join=coord.url.removeprefix("http://"))
        done = cli.wait_job(job["id"], {"completed", "failed"}, timeout=20)
        assert done["status"] == "completed", done
        workers = cli.ok("workers", "--json").json()
        assert [w["name"] for w in workers] == ["helper"]
        tasks = cli.ok("tasks", job["id"][:8], "--json").json()
        assert {t["worker"]["name"] for t in tasks} == {"helper"}
    finally:
        farm.stop()
