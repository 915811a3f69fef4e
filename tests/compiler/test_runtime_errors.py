"""Failures of job-type scripts become CompileErrors that say where and why."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from peer.compiler import (
    CompileError,
    CompileLimits,
    JobTypeRegistry,
    compile_job,
    compile_job_async,
)

from .conftest import MINIMAL_JOB_TYPE, make_request, script_from_source


def compile_source(tmp_path: Path, file_name: str, source: str, limits: CompileLimits = CompileLimits()) -> CompileError:
    script = script_from_source(tmp_path, file_name, source)
    with pytest.raises(CompileError) as caught:
        compile_job(script, make_request(script.name, {}), limits)
    return caught.value


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    source = MINIMAL_JOB_TYPE + "\nfunction compileJob(job) {\n  let x = ;\n}\n"
    err = compile_source(tmp_path, "broken-syntax.js", source)
    assert err.kind == "script-error"
    assert err.line == 4
    assert err.message.startswith("broken-syntax.js:4: SyntaxError: ")
    assert "fix the job-type script" in err.message


def test_syntax_error_at_end_of_file(tmp_path: Path) -> None:
    source = MINIMAL_JOB_TYPE + "function compileJob(job) {\n  print(`unterminated\n"
    err = compile_source(tmp_path, "eof.js", source)
    assert err.kind == "script-error"
    assert err.message.startswith("eof.js:")
    assert err.line is not None and err.line <= source.count("\n") + 1


def test_runtime_error_names_file_and_line(tmp_path: Path) -> None:
    source = MINIMAL_JOB_TYPE + "function compileJob(job) {\n  const s = null;\n  return s.frames;\n}\n"
    err = compile_source(tmp_path, "null-access.js", source)
    assert err.kind == "script-error"
    assert err.line == 4
    assert err.message.startswith("null-access.js:4: TypeError: Cannot read properties of null")
    assert err.message.endswith("fix the job-type script and submit again")


def test_host_api_error_points_at_the_calling_script_line(tmp_path: Path) -> None:
    source = MINIMAL_JOB_TYPE + "function compileJob(job) {\n  frameChunker('10-1', 3);\n}\n"
    err = compile_source(tmp_path, "chunks.js", source)
    assert err.line == 3
    assert err.message.startswith('chunks.js:3: Error: invalid range "10-1": empty range')
    assert "check the job settings" in err.message


def test_thrown_string_is_reported_verbatim(builtin_registry: JobTypeRegistry) -> None:
    script = builtin_registry.get("simple-blender-render")
    assert script is not None
    settings = {"format": "FFMPEG", "frames": "1-3", "chunk_size": 1, "render_output_path": "/x/######"}
    with pytest.raises(CompileError) as caught:
        compile_job(script, make_request(script.name, settings))
    assert caught.value.kind == "script-error"
    assert 'This job type only renders images, and not "FFMPEG"' in caught.value.message
    assert caught.value.message.startswith("simple-blender-render.js:")

    with pytest.raises(CompileError, match="no render_output_path setting!"):
        compile_job(script, make_request(script.name, {"format": "PNG", "frames": "1", "chunk_size": 1}))


def test_messages_printed_before_an_error_are_kept(tmp_path: Path) -> None:
    source = MINIMAL_JOB_TYPE + "function compileJob(job) { print('working on it'); throw 'nope'; }"
    err = compile_source(tmp_path, "talks-then-fails.js", source)
    assert err.messages == ["working on it"]
    assert err.cause == "nope"


def test_infinite_loop_times_out(tmp_path: Path) -> None:
    source = MINIMAL_JOB_TYPE + "function compileJob(job) { for (;;) {} }"
    started = time.monotonic()
    err = compile_source(tmp_path, "forever.js", source, CompileLimits(timeout_s=0.5))
    assert time.monotonic() - started < 3
    assert err.kind == "timeout"
    assert err.message.startswith("job type script 'forever.js' did not finish within 0.5 s (infinite loop?)")


def test_unbounded_allocation_hits_memory_limit(tmp_path: Path) -> None:
    source = MINIMAL_JOB_TYPE + (
        "function compileJob(job) { const hoard = []; for (;;) hoard.push(new Array(100000).fill(1.5)); }"
    )
    limits = CompileLimits(timeout_s=10.0, max_memory_bytes=64 * 1024 * 1024)
    err = compile_source(tmp_path, "hoarder.js", source, limits)
    assert err.kind == "memory-limit"
    assert "'hoarder.js' used more than 64 MiB of memory" in err.message


def test_missing_compile_job(tmp_path: Path) -> None:
    err = compile_source(tmp_path, "no-compile.js", MINIMAL_JOB_TYPE)
    assert err.kind == "no-compile-function"
    assert "does not define a compileJob(job) function" in err.message


def test_dependency_on_task_outside_the_job(tmp_path: Path) -> None:
    source = MINIMAL_JOB_TYPE + """
function compileJob(job) {
  const ghost = author.Task("ghost", "misc");
  const real = author.Task("real", "misc");
  real.addDependency(ghost);
  job.addTask(real);
}"""
    err = compile_source(tmp_path, "ghost.js", source)
    assert err.kind == "unknown-dependency"
    assert "a task depends on a task that is not part of this job" in err.message
    assert '"real" depends on "ghost"' in err.message


def test_dependency_cycle_is_rejected(tmp_path: Path) -> None:
    source = MINIMAL_JOB_TYPE + """
function compileJob(job) {
  const a = author.Task("a", "misc"), b = author.Task("b", "misc");
  a.addDependency(b);
  b.addDependency(a);
  job.addTask(a);
  job.addTask(b);
}"""
    err = compile_source(tmp_path, "cycle.js", source)
    assert err.kind == "invalid-result"
    assert "circle" in err.message and '"a" → "b" → "a"' in err.message


def test_same_task_added_twice_is_rejected(tmp_path: Path) -> None:
    source = MINIMAL_JOB_TYPE + "function compileJob(job) { const t = author.Task('t', 'misc'); job.addTask(t); job.addTask(t); }"
    err = compile_source(tmp_path, "twice.js", source)
    assert err.kind == "invalid-result"
    assert "added to the job twice" in err.message


def test_bad_values_in_the_job_are_invalid_results(tmp_path: Path) -> None:
    source = MINIMAL_JOB_TYPE + "function compileJob(job) { job.settings.loop = job.settings; }"
    assert compile_source(tmp_path, "circular.js", source).kind == "invalid-result"
    source = MINIMAL_JOB_TYPE + "function compileJob(job) { job.priority = 'high'; }"
    err = compile_source(tmp_path, "priority.js", source)
    assert err.kind == "invalid-result" and "job.priority must be an integer" in err.message


def test_sync_compile_refuses_to_block_the_event_loop(tmp_path: Path) -> None:
    script = script_from_source(tmp_path, "ok.js", MINIMAL_JOB_TYPE + "function compileJob(job) {}")

    async def run_on_loop() -> None:
        with pytest.raises(RuntimeError, match="asyncio.to_thread"):
            compile_job(script, make_request(script.name, {}))
        job = await compile_job_async(script, make_request(script.name, {}))
        assert job.tasks == []

    asyncio.run(run_on_loop())
