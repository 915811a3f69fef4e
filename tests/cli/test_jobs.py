"""submit / jobs / tasks / log against one real peer (coordinator + worker)."""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from typing import Any

import pytest

from peer.localfarm import LocalFarm

from .conftest import Cli, assert_clean_error, clean_env

ECHO_SETS = ["--set", "message=hi", "--set", "sleep_repeats=2", "--set", "sleep_duration_seconds=0"]
SUBMIT = ["submit", "echo-sleep-test", *ECHO_SETS]


def is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


@pytest.fixture(scope="module")
def submitted(cli: Cli) -> dict[str, Any]:
    """`submit --json` output of an echo-sleep-test job (no --wait)."""
    r = cli.ok(*SUBMIT, "--name", "cli-json-job", "--priority", "63", "--json")
    return r.json()


@pytest.fixture(scope="module")
def finished(cli: Cli, submitted: dict[str, Any]) -> dict[str, Any]:
    """The same job, once it has completed."""
    return cli.wait_job(submitted["id"], {"completed", "failed", "canceled"})


@pytest.fixture(scope="module")
def finished_tasks(cli: Cli, finished: dict[str, Any]) -> list[dict[str, Any]]:
    assert finished["status"] == "completed", finished
    return cli.ok("tasks", finished["id"], "--json").json()


# --- submit ------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_submit_wait_reports_completion(cli: Cli) -> None:
    r = cli.ok(*SUBMIT, "--wait")
    m = re.fullmatch(r"Submitted job (\S+) \('echo-sleep-test', 3 steps\)\n", r.stdout)
    assert m and is_uuid(m.group(1)), r.explain()
    lines = r.stderr.rstrip("\n").splitlines()
    assert lines[-1].startswith("Job 'echo-sleep-test' completed"), r.explain()
    # Progress lines (not a TTY: one per change) end at 100 %, 3 of 3 steps.
    progress = [line for line in lines if line.startswith("[")]
    assert progress and "100%" in progress[-1] and "3/3 steps" in progress[-1], r.explain()
    assert "tasks 3/3 done" in progress[-1], r.explain()
    assert cli.job(m.group(1))["status"] == "completed"


def test_submit_json_prints_the_job(submitted: dict[str, Any]) -> None:
    assert is_uuid(submitted["id"]), submitted
    assert submitted["name"] == "cli-json-job"
    assert submitted["type"] == "echo-sleep-test"
    assert submitted["priority"] == 63
    assert submitted["status"] == "queued"
    assert submitted["steps_total"] == 3
    # --set values are converted to the setting types the job type declares.
    assert submitted["settings"] == {"message": "hi", "sleep_repeats": 2, "sleep_duration_seconds": 0}


@pytest.mark.timeout(60)
def test_submit_wait_json_prints_only_the_final_job(cli: Cli) -> None:
    r = cli.ok(*SUBMIT, "--wait", "--json")
    job = r.json()
    assert job["status"] == "completed" and job["steps_completed"] == 3, r.explain()
    assert r.stderr == "", r.explain()  # no progress bar in JSON mode


def test_submit_defaults_fill_unset_settings(cli: Cli) -> None:
    job = cli.ok("submit", "echo-sleep-test", "--set", "message=defaults", "--paused", "--json").json()
    assert job["status"] == "paused"
    assert job["settings"] == {"message": "defaults", "sleep_duration_seconds": 1, "sleep_repeats": 1}
    assert job["priority"] == 50 and job["name"] == "echo-sleep-test"
    cli.ok("delete", job["id"])


@pytest.mark.timeout(60)
def test_submit_wait_of_a_failing_job_exits_1_and_names_the_task(cli: Cli) -> None:
    # The sleep command refuses a negative duration, so the sleep task fails.
    r = cli("submit", "echo-sleep-test", "--set", "message=doomed", "--set", "sleep_duration_seconds=-1", "--wait")
    assert r.returncode == 1, r.explain()
    assert "Traceback" not in r.stderr
    assert re.search(r"^Job 'echo-sleep-test' failed", r.stderr, re.M), r.explain()
    m = re.search(r"task sleep \((\S+)\) failed; see `flamenco-peer log (\S+)`", r.stderr)
    assert m and m.group(1) == m.group(2), r.explain()
    log = cli.ok("log", m.group(1)).stdout
    assert "zero or more" in log, log


def test_submit_wait_of_a_paused_job_returns_at_once(cli: Cli) -> None:
    r = cli(*SUBMIT, "--paused", "--wait", timeout=15)
    assert r.returncode == 1, r.explain()  # it did not complete
    assert r.stderr.rstrip().splitlines()[-1] == "Job 'echo-sleep-test' paused", r.explain()
    job_id = r.stdout.split()[2]
    assert cli.job(job_id)["status"] == "paused"
    cli.ok("delete", job_id)


# --- submit errors -----------------------------------------------------------


def test_submit_wrong_typed_setting(cli: Cli) -> None:
    before = set(cli.jobs())
    r = cli("submit", "echo-sleep-test", "--set", "message=hi", "--set", "sleep_repeats=many")
    assert_clean_error(r)
    assert "sleep_repeats" in r.stderr and "many" in r.stderr, r.explain()
    assert r.stdout == ""
    assert set(cli.jobs()) == before, "a job was created despite the error"


def test_submit_unknown_job_type_names_the_available_ones(cli: Cli) -> None:
    r = cli("submit", "no-such-type", "--set", "message=hi")
    assert_clean_error(r)
    assert "no-such-type" in r.stderr, r.explain()
    available = [t["name"] for t in cli.ok("job-types", "--json").json()]
    assert "echo-sleep-test" in available
    for name in available:
        assert name in r.stderr, r.explain()


def test_submit_set_without_equals(cli: Cli) -> None:
    r = cli("submit", "echo-sleep-test", "--set", "message")
    assert_clean_error(r)
    assert "key=value" in r.stderr, r.explain()


def test_submit_missing_required_setting(cli: Cli) -> None:
    r = cli("submit", "echo-sleep-test")
    assert_clean_error(r)
    assert "message" in r.stderr and "required" in r.stderr, r.explain()


def test_submit_missing_blend_file(cli: Cli) -> None:
    r = cli("submit", "echo-sleep-test", "--set", "message=hi", "--blend", "/nonexistent/shot.blend")
    assert_clean_error(r)
    assert "/nonexistent/shot.blend" in r.stderr, r.explain()


def test_submit_priority_out_of_range(cli: Cli) -> None:
    r = cli("submit", "echo-sleep-test", "--set", "message=hi", "--priority", "200")
    assert_clean_error(r)
    assert "priority" in r.stderr and "200" in r.stderr, r.explain()


# --- jobs / tasks / log ----------------------------------------------------------


def test_jobs_json_lists_the_job(cli: Cli, finished: dict[str, Any]) -> None:
    job = cli.job(finished["id"])
    assert job["name"] == "cli-json-job"
    assert job["status"] == "completed"
    assert job["steps_completed"] == job["steps_total"] == 3


def test_jobs_table(cli: Cli, finished: dict[str, Any]) -> None:
    r = cli.ok("jobs")
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "TYPE", "STATUS", "PRIO", "STEPS"], r.explain()
    row = [line.split() for line in lines[1:] if line.startswith(finished["id"][:8])]
    assert row == [[finished["id"][:8], "cli-json-job", "echo-sleep-test", "completed", "63", "3/3"]], r.explain()


def test_tasks_json(finished_tasks: list[dict[str, Any]]) -> None:
    tasks = sorted(finished_tasks, key=lambda t: t["index_in_job"])
    assert [t["name"] for t in tasks] == ["echo", "sleep", "sleep"]
    assert all(t["status"] == "completed" for t in tasks), tasks
    assert all(t["worker"]["name"] == "solo" for t in tasks), tasks
    assert len({t["id"] for t in tasks}) == 3


def test_tasks_table(cli: Cli, finished: dict[str, Any], finished_tasks: list[dict[str, Any]]) -> None:
    r = cli.ok("tasks", finished["id"])
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "TYPE", "STATUS", "STEPS", "WORKER"], r.explain()
    rows = sorted(line.split() for line in lines[1:])
    assert rows == sorted([t["id"][:8], t["name"], "misc", "completed", "1/1", "solo"] for t in finished_tasks)


@pytest.mark.parametrize("length", [8, 4, 35])
def test_tasks_by_job_id_prefix(cli: Cli, finished: dict[str, Any], finished_tasks: list[dict[str, Any]],
                                length: int) -> None:
    r = cli.ok("tasks", finished["id"][:length], "--json")
    assert r.json() == finished_tasks


def test_log_json_of_the_echo_task(cli: Cli, finished_tasks: list[dict[str, Any]]) -> None:
    echo = next(t for t in finished_tasks if t["name"] == "echo")
    for ref in (echo["id"], echo["id"][:8]):
        data = cli.ok("log", ref, "--json").json()
        assert data["task_id"] == echo["id"]  # the prefix is resolved to the full id
        assert "hi" in data["log"], data
        assert "echo" in data["log"], data


def test_log_plain_of_a_sleep_task(cli: Cli, finished_tasks: list[dict[str, Any]]) -> None:
    sleep = next(t for t in finished_tasks if t["name"] == "sleep")
    r = cli.ok("log", sleep["id"][:8])
    assert "slept 0s" in r.stdout, r.explain()
    assert "completed" in r.stdout, r.explain()


def test_log_of_a_task_that_never_ran(cli: Cli) -> None:
    job = cli.ok("submit", "echo-sleep-test", "--set", "message=later", "--paused", "--json").json()
    task = cli.ok("tasks", job["id"][:8], "--json").json()[0]
    r = cli.ok("log", task["id"][:8])
    assert r.stdout == "(the task has no log yet)\n", r.explain()
    assert cli.ok("log", task["id"][:8], "--json").json() == {"task_id": task["id"], "log": ""}
    cli.ok("delete", job["id"][:8])


def test_unknown_prefixes(cli: Cli, finished: dict[str, Any]) -> None:
    r = cli("tasks", "zzzzzzzz")
    assert_clean_error(r)
    assert "no job id starts with 'zzzzzzzz'" in r.stderr, r.explain()
    r = cli("log", "zzzzzzzz")
    assert_clean_error(r)
    assert "no task id starts with 'zzzzzzzz'" in r.stderr, r.explain()
    r = cli("cancel", "zzzzzzzz")
    assert_clean_error(r)
    assert "no job id starts with 'zzzzzzzz'" in r.stderr, r.explain()


def test_unknown_full_ids(cli: Cli) -> None:
    nil = "00000000-0000-0000-0000-000000000000"
    for command in ("tasks", "log", "cancel", "delete"):
        r = cli(command, nil)
        assert_clean_error(r)
        assert nil in r.stderr, r.explain()


def _shared_prefix(ids: list[str]) -> str:
    counts = Counter(i[0] for i in ids)
    char, n = counts.most_common(1)[0]
    assert n >= 2, ids
    return char


def test_ambiguous_task_prefix(cli: Cli) -> None:
    # 17 tasks: two of their ids must share a first hex digit.
    job = cli.ok("submit", "echo-sleep-test", "--set", "message=many", "--set", "sleep_repeats=16",
                 "--paused", "--json").json()
    try:
        tasks = cli.ok("tasks", job["id"], "--json").json()
        assert len(tasks) == 17
        prefix = _shared_prefix([t["id"] for t in tasks])
        r = cli("log", prefix)
        assert_clean_error(r)
        assert "more characters" in r.stderr, r.explain()
    finally:
        cli.ok("delete", job["id"])


def test_ambiguous_job_prefix(cli: Cli, solo: tuple[LocalFarm, str]) -> None:
    farm, _ = solo
    ids = []
    try:
        while True:
            jobs = cli.jobs()
            counts = Counter(i[0] for i in jobs)
            if counts.most_common(1)[0][1] >= 2:
                break
            ids.append(farm.client.submit({
                "name": "ambiguity", "type": "echo-sleep-test", "priority": 50, "submitter_platform": "linux",
                "settings": {"message": "x", "sleep_duration_seconds": 0, "sleep_repeats": 0},
                "metadata": {}, "initial_status": "paused"})["id"])
        prefix = _shared_prefix(list(jobs))
        for command in (["tasks", prefix], ["cancel", prefix], ["priority", prefix, "10"]):
            r = cli(*command)
            assert_clean_error(r)
            assert "more characters" in r.stderr, r.explain()
    finally:
        for job_id in ids:
            cli.ok("delete", job_id)


# --- workers / job-types -----------------------------------------------------


def test_workers(cli: Cli) -> None:
    workers = cli.ok("workers", "--json").json()
    assert [(w["name"], w["status"]) for w in workers] == [("solo", "awake")]
    r = cli.ok("workers")
    assert r.stdout.splitlines()[0].split() == ["ID", "NAME", "STATUS", "LAST", "SEEN"]
    assert r.stdout.splitlines()[1].split()[:3] == [workers[0]["id"][:8], "solo", "awake"]


def test_job_types(cli: Cli) -> None:
    types = {t["name"]: t for t in cli.ok("job-types", "--json").json()}
    settings = {s["key"]: s["type"] for s in types["echo-sleep-test"]["settings"]}
    assert settings == {"message": "string", "sleep_duration_seconds": "int32", "sleep_repeats": "int32"}
    r = cli.ok("job-types")
    assert any(line.split()[:4] == ["echo-sleep-test", "Echo", "Sleep", "Test"] for line in r.stdout.splitlines())


# --- which peer --------------------------------------------------------------------


def test_peer_url_from_environment(cli: Cli, finished: dict[str, Any], tmp_path) -> None:
    env = clean_env(tmp_path / "nothing-here")
    env["FLAMENCO_PEER_URL"] = cli.peer_url
    r = cli.ok("jobs", "--json", env=env, use_peer=False)
    assert finished["id"] in {j["id"] for j in r.json()}


def test_peer_url_from_the_local_peers_data_dir(cli: Cli, solo: tuple[LocalFarm, str],
                                                finished: dict[str, Any]) -> None:
    farm, url = solo
    # `run` writes peer.json into its data dir; the CLI finds the peer there by default.
    info = json.loads((farm.coordinator.data_dir / "peer.json").read_text())
    assert info["url"] == url
    r = cli.ok("jobs", "--json", env=clean_env(farm.coordinator.data_dir), use_peer=False)
    assert finished["id"] in {j["id"] for j in r.json()}
