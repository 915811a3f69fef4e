"""The JavaScript host API: helper vectors, author/job objects, globals."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from peer.compiler import CompileLimits, compile_job
from peer.compiler.jsengine import JsSession

from .conftest import MINIMAL_JOB_TYPE, VECTORS_DIR, make_request, needs_vectors, script_from_source

# Calls a global with JSON arguments and reports its result or error message.
PROBE = """
function probe(fnName, args) {
  try {
    return JSON.stringify({ ok: globalThis[fnName].apply(undefined, args) });
  } catch (err) {
    return JSON.stringify({ error: String(err && err.message !== undefined ? err.message : err) });
  }
}
"""


@pytest.fixture(scope="module")
def js() -> Iterator[JsSession]:
    with JsSession("probe.js", CompileLimits(timeout_s=20.0)) as session:
        session.run_script(PROBE)
        yield session


def call(js: JsSession, fn: str, *args: Any) -> dict[str, Any]:
    return js.eval_host(f"probe({json.dumps(fn)}, {json.dumps(list(args))})")


def load_vector(name: str) -> dict[str, Any]:
    return json.loads((VECTORS_DIR / name).read_text(encoding="utf-8"))


# ---- vectors: frameChunker, frameCount, shellSplit, path ----


def chunker_cases() -> list[dict[str, Any]]:
    if not VECTORS_DIR.is_dir():
        return []
    return load_vector("helpers_frame_chunker_shellsplit.json")["frameChunker"]


@needs_vectors
@pytest.mark.parametrize("case", chunker_cases(), ids=lambda c: f"{c['range']!r}/{c['chunk_size']}")
def test_frame_chunker_vector(js: JsSession, case: dict[str, Any]) -> None:
    result = call(js, "frameChunker", case["range"], case["chunk_size"])
    if "expect" in case:
        assert result == {"ok": case["expect"]}
    elif "expect_error" in case:
        assert result == {"error": case["expect_error"]}
    else:
        assert case["expect_error_contains"] in result["error"]


@needs_vectors
def test_frame_count_and_explode_vectors(js: JsSession) -> None:
    vector = load_vector("helpers_frame_chunker_shellsplit.json")
    for case in vector["frameCount"]:
        assert call(js, "frameCount", case["range"]) == {"ok": case["expect"]}, case
    # Flamenco's internal frameRangeExplode is not a global; chunks of one
    # frame show the same exploded list.
    for case in vector["frameRangeExplode"]:
        chunks = call(js, "frameChunker", case["range"], 1)["ok"]
        assert [int(c) for c in chunks] == case["expect"]


@needs_vectors
def test_shell_split_vectors(js: JsSession) -> None:
    for case in load_vector("helpers_frame_chunker_shellsplit.json")["shellSplit"]:
        result = call(js, "shellSplit", case["input"])
        if case.get("expect_js_exception"):
            assert "error" in result, case
        else:
            assert result == {"ok": case["expect"]}, case


def path_cases() -> list[tuple[str, Any, str]]:
    if not VECTORS_DIR.is_dir():
        return []
    vector = load_vector("helpers_path_module.json")
    return [(fn, given, want) for fn in ("basename", "dirname", "join", "stem") for given, want in vector[fn]]


@needs_vectors
@pytest.mark.parametrize("fn,given,want", path_cases())
def test_path_vector(js: JsSession, fn: str, given: Any, want: str) -> None:
    args = given if fn == "join" else [given]
    result = js.eval_host(f"JSON.stringify(path.{fn}(...{json.dumps(args)}))")
    assert result == want


def test_frame_chunker_extra_cases(js: JsSession) -> None:
    assert call(js, "frameChunker", "1-10", 3) == {"ok": ["1-3", "4-6", "7-9", "10"]}
    assert call(js, "frameChunker", "1..3,5..6", 10) == {"ok": ["1-3,5,6"]}
    # null/undefined reach Go as "", as in Flamenco.
    assert call(js, "frameChunker", None, 1) == {"error": 'invalid range "": empty range'}
    assert "invalid range" in call(js, "frameCount", "")["error"]


def test_shell_split_rules(js: JsSession) -> None:
    cases = {
        'a "b c" d': ["a", "b c", "d"],
        "a\\ b": ["a b"],
        "'' x": ["", "x"],
        'say "a\\"b"': ["say", 'a"b'],
        "one # comment\ntwo": ["one", "two"],
        "x#y": ["x#y"],
        "  ": [],
    }
    for given, want in cases.items():
        assert call(js, "shellSplit", given) == {"ok": want}, given
    assert "closing quote" in call(js, "shellSplit", '"open')["error"]
    assert "escape" in call(js, "shellSplit", "trailing\\")["error"]


# ---- globals ----


def test_flamenco_globals_exist_and_console_does_not(js: JsSession) -> None:
    kinds = js.eval_host(
        "JSON.stringify([typeof print, typeof alert, typeof author.Task, typeof author.Command,"
        " typeof frameChunker, typeof frameCount, typeof formatTimestampLocal, typeof shellSplit,"
        " typeof path.join, typeof process.cwd, typeof require])"
    )
    assert kinds == ["function"] * len(kinds)
    # Flamenco has no console and no timers; scripts must not come to rely on them.
    assert js.eval_host("JSON.stringify([typeof console, typeof setTimeout, typeof clearTimeout])") == [
        "undefined",
        "undefined",
        "undefined",
    ]


def test_require_and_process(js: JsSession) -> None:
    assert js.eval_host(
        "JSON.stringify([require('author') === author, require('path') === path, require('process') === process])"
    ) == [True, True, True]
    assert "no such module" in call(js, "require", "fs")["error"]
    assert js.eval_host("JSON.stringify(process.platform)") == "linux"
    assert js.eval_host("JSON.stringify(process.cwd())") == str(Path.cwd())


def test_author_task_and_command(js: JsSession) -> None:
    task = js.eval_host(
        "(() => { const t = author.Task('  render  ', ' blender '); return JSON.stringify("
        "{uUID: t.uUID, name: t.name, type: t.type, priority: t.priority, commands: t.commands,"
        " dependencies: t.dependencies, methods: [typeof t.addCommand, typeof t.addDependency]}); })()"
    )
    assert task["name"] == "render" and task["type"] == "blender" and task["priority"] == 50
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", task["uUID"])
    assert task["commands"] == [] and task["dependencies"] == []
    assert task["methods"] == ["function", "function"]

    command = js.eval_host("JSON.stringify(author.Command('echo', {message: 'hi'}))")
    assert command == {"name": "echo", "parameters": {"message": "hi"}, "totalStepCount": 0}
    command = js.eval_host("JSON.stringify(author.Command('render', {}, 7))")
    assert command["totalStepCount"] == 7

    assert call(js, "eval", "author.Task('', 'misc')") == {"error": "author.Task(name, type): name is required"}
    assert call(js, "eval", "author.Task('x', '   ')") == {"error": "author.Task(name, type): type is required"}


def test_uuids_are_unique(js: JsSession) -> None:
    uuids = js.eval_host("JSON.stringify(Array.from({length: 2000}, () => author.Task('t', 'misc').uUID))")
    assert len(set(uuids)) == 2000


def test_format_timestamp_local_uses_request_clock(tmp_path: Path) -> None:
    source = MINIMAL_JOB_TYPE + "function compileJob(job) { job.settings.stamp = formatTimestampLocal(job.created); }"
    script = script_from_source(tmp_path, "stamp.js", source)
    job = compile_job(script, make_request("stamp", {}))
    assert job.settings["stamp"] == "2006-01-02_150405"


# ---- the job object and snapshot semantics ----


def test_job_object_members(tmp_path: Path) -> None:
    source = MINIMAL_JOB_TYPE + """
function compileJob(job) {
  job.settings.seen = {
    jobID: job.jobID, name: job.name, jobType: job.jobType, priority: job.priority,
    status: job.status, tag: job.workerTagUUID, shaman: job.storage.shamanCheckoutID,
    tasks: job.tasks.length, created: typeof job.created.getTime,
  };
  job.name = "renamed";
  job.priority = 70;
  delete job.settings.drop_me;
  job.metadata.added = "yes";
}"""
    script = script_from_source(tmp_path, "members.js", source)
    request = make_request(
        "members",
        {"drop_me": 1},
        job_id="job-1",
        name="original",
        priority=40,
        worker_tag="tag-1",
        shaman_checkout_id="co-1",
        metadata={"a": "b"},
    )
    job = compile_job(script, request)
    assert job.settings == {
        "seen": {
            "jobID": "job-1",
            "name": "original",
            "jobType": "members",
            "priority": 40,
            "status": "under-construction",
            "tag": "tag-1",
            "shaman": "co-1",
            "tasks": 0,
            "created": "function",
        }
    }
    assert (job.name, job.priority) == ("renamed", 70)
    assert job.metadata == {"a": "b", "added": "yes"}
    assert job.tasks == []  # zero tasks is accepted, like Flamenco


def test_add_task_stores_a_snapshot(tmp_path: Path) -> None:
    source = MINIMAL_JOB_TYPE + """
function compileJob(job) {
  const params = {message: "before"};
  const first = author.Task("first", "misc");
  const cmd = author.Command("echo", params);
  params.message = "changed after Command(): not seen, Command() copies";
  first.addCommand(cmd);
  first.commands[0].parameters.extra = "set before addTask(): seen";
  job.addTask(first);
  cmd.parameters.message = "changed after addTask(): not seen";
  first.addCommand(author.Command("echo", {message: "added after addTask()"}));
  first.name = "renamed after addTask()";

  const second = author.Task("second", "misc");
  job.addTask(second);
  second.addDependency(first);

  job.tasks.push("ignored: tasks only enter through job.addTask()");
}"""
    script = script_from_source(tmp_path, "snapshot.js", source)
    job = compile_job(script, make_request("snapshot", {}))
    assert [t.name for t in job.tasks] == ["first", "second"]
    assert [c.parameters for c in job.tasks[0].commands] == [{"message": "before", "extra": "set before addTask(): seen"}]
    assert job.tasks[1].dependencies == []


def test_print_and_alert_are_returned(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = MINIMAL_JOB_TYPE + """
print("top level");
function compileJob(job) { print("hello", 3, {a: 1}); alert("careful"); }"""
    script = script_from_source(tmp_path, "talk.js", source)
    with caplog.at_level("INFO", logger="peer.compiler.script"):
        job = compile_job(script, make_request("talk", {}))
    assert job.messages == ["top level", 'hello 3 {"a":1}', "alert: careful"]
    assert any("careful" in r.message and r.levelname == "WARNING" for r in caplog.records)


def test_parameters_keep_json_types(tmp_path: Path) -> None:
    source = MINIMAL_JOB_TYPE + """
function compileJob(job) {
  const t = author.Task("t", "misc");
  t.addCommand(author.Command("x", {i: job.settings.fps, f: 29.97, b: true, n: null, u: undefined,
                                    list: ["-r", job.settings.fps], nested: {k: [1, "2"]}}));
  job.addTask(t);
}"""
    script = script_from_source(tmp_path, "types.js", source)
    job = compile_job(script, make_request("types", {"fps": 24.0}))
    params = job.tasks[0].commands[0].parameters
    assert json.dumps(params, sort_keys=True) == json.dumps(
        {"i": 24, "f": 29.97, "b": True, "n": None, "u": None, "list": ["-r", 24], "nested": {"k": [1, "2"]}},
        sort_keys=True,
    )
