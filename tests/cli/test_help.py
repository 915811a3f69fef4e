"""``--help`` and ``--version``: no peer needed."""

from __future__ import annotations

import importlib.metadata
import re

import pytest

import peer

from .conftest import Cli, assert_clean_error

COMMANDS = ["run", "submit", "jobs", "tasks", "log", "workers", "job-types",
            "cancel", "pause", "requeue", "delete", "priority", "demo"]


def test_top_level_help_lists_every_command(bare_cli: Cli) -> None:
    r = bare_cli.ok("--help", use_peer=False)
    assert r.stdout.startswith("usage: flamenco-peer"), r.explain()
    for command in COMMANDS:
        assert re.search(rf"^\s+{re.escape(command)}\s", r.stdout, re.M), f"{command} missing:\n{r.stdout}"
    for option in ("--version", "--log-level"):
        assert option in r.stdout
    assert "flamenco-peer run" in r.stdout  # tells a newcomer how to start


def test_run_help_mentions_its_options(bare_cli: Cli) -> None:
    r = bare_cli.ok("run", "--help", use_peer=False)
    assert r.stdout.startswith("usage: flamenco-peer run"), r.explain()
    for option in ("--join", "--no-worker", "--data-dir", "--port", "--host", "--name",
                   "--blender", "--ffmpeg", "--enable-exec", "--worker-timeout"):
        assert option in r.stdout, f"{option} missing:\n{r.stdout}"
    # The default data dir shown is the one FLAMENCO_PEER_DATA_DIR points to (argparse may wrap it).
    assert str(bare_cli.home / "default-data-dir") in "".join(r.stdout.split()), r.stdout


def test_submit_help_mentions_its_options(bare_cli: Cli) -> None:
    r = bare_cli.ok("submit", "--help", use_peer=False)
    assert r.stdout.startswith("usage: flamenco-peer submit"), r.explain()
    for option in ("JOBTYPE", "--set", "KEY=VALUE", "--wait", "--paused", "--json", "--peer",
                   "--priority", "--blend", "--name"):
        assert option in r.stdout, f"{option} missing:\n{r.stdout}"


@pytest.mark.parametrize("command", ["jobs", "tasks", "log", "workers", "job-types",
                                     "cancel", "pause", "requeue", "delete", "priority"])
def test_client_commands_take_peer(bare_cli: Cli, command: str) -> None:
    r = bare_cli.ok(command, "--help", use_peer=False)
    assert "--peer" in r.stdout, r.explain()
    if command in ("jobs", "tasks", "log", "workers", "job-types"):
        assert "--json" in r.stdout, r.explain()


def test_version(bare_cli: Cli) -> None:
    r = bare_cli.ok("--version", use_peer=False)
    assert r.stdout.strip() == f"flamenco-peer {peer.__version__}", r.explain()
    # The package metadata (pyproject.toml) and the module agree.
    assert peer.__version__ == importlib.metadata.version("flamenco-peer")


def test_no_command_is_a_usage_error(bare_cli: Cli) -> None:
    r = bare_cli("", use_peer=False)  # an empty COMMAND is not one of the choices
    assert_clean_error(r, code=2)
    r = bare_cli(use_peer=False)
    assert_clean_error(r, code=2)
    assert "usage: flamenco-peer" in r.stderr


def test_priority_out_of_range_is_rejected_before_any_request(bare_cli: Cli) -> None:
    # --peer points nowhere: argparse must refuse 101 before a request is made.
    r = bare_cli("priority", "abcdef12", "101", peer="http://127.0.0.1:9")
    assert_clean_error(r, code=2)
    assert "PRIORITY" in r.stderr and "101" in r.stderr, r.explain()
