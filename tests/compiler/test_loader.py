"""Finding, loading and re-loading job-type scripts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from peer.compiler import (
    BUILTIN_JOB_TYPES_DIR,
    CompileLimits,
    JobTypeLoadError,
    JobTypeRegistry,
    JobTypeScript,
    compile_job,
)
from peer.compiler import loader as loader_module

from .conftest import MINIMAL_JOB_TYPE, VECTORS_DIR, make_request, needs_vectors, write_script

GOOD = MINIMAL_JOB_TYPE + "function compileJob(job) {}\n"


def job_type_with_label(label: str) -> str:
    return f"const JOB_TYPE = {{ label: {json.dumps(label)}, settings: [] }};\nfunction compileJob(job) {{}}\n"


def names(registry: JobTypeRegistry) -> list[str]:
    return [s.name for s in registry.list()]


def loaded(registry: JobTypeRegistry, name: str) -> JobTypeScript:
    script = registry.get(name)
    assert script is not None, f"{name} is not loaded; errors: {registry.errors()}"
    return script


@needs_vectors
def test_script_loading_vector(tmp_path: Path) -> None:
    vector = json.loads((VECTORS_DIR / "helpers_script_loading_and_etag.json").read_text(encoding="utf-8"))
    builtin_sources = {p.name.replace("-", "_"): p.read_text() for p in BUILTIN_JOB_TYPES_DIR.glob("*.js")}
    for number, case in enumerate(vector["cases"]):
        directory = tmp_path / f"case{number}"
        if case["dir"].startswith("embedded"):
            directory = BUILTIN_JOB_TYPES_DIR
        elif "files" in case:
            directory.mkdir()
            for file_name in case["files"]:
                if file_name == "empty.js":
                    content = "//\n"  # under 8 bytes
                elif file_name.endswith(".js"):
                    content = builtin_sources.get(file_name, builtin_sources["echo_sleep_test.js"])
                else:
                    content = "# not a script\n"
                write_script(directory, file_name, content)
        else:  # a directory of Go sources
            directory.mkdir()
            write_script(directory, "job_compilers.go", "package job_compilers\n")
        registry = JobTypeRegistry([directory])
        registry.refresh()
        assert registry.errors() == []
        if case["dir"].startswith("embedded"):
            # We ship Flamenco's embedded job types plus our own (tiles, encode).
            flamenco_only = [n for n in names(registry) if n in case["expect_job_types"]]
            assert flamenco_only == case["expect_job_types"], case["dir"]
            continue
        assert names(registry) == case["expect_job_types"], case["dir"]

    registry = JobTypeRegistry([BUILTIN_JOB_TYPES_DIR])
    registry.refresh()
    for name, info in vector["etags"].items():
        script = registry.get(name)
        assert script is not None and script.etag == info["etag"], name
        assert script.job_type["etag"] == info["etag"]


def test_ignores_tiny_non_js_hidden_and_nested_files(tmp_path: Path) -> None:
    write_script(tmp_path, "tiny.js", "x=1;\n")
    write_script(tmp_path, "notes.txt", GOOD)
    write_script(tmp_path, "script.js.bak", GOOD)
    write_script(tmp_path, ".hidden.js", GOOD)
    (tmp_path / "sub").mkdir()
    write_script(tmp_path / "sub", "nested.js", GOOD)
    (tmp_path / "dir.js").mkdir()
    write_script(tmp_path, "my_job_type.js", GOOD)
    registry = JobTypeRegistry([tmp_path])
    registry.refresh()
    assert names(registry) == ["my-job-type"]
    assert registry.errors() == []


def test_reloads_a_changed_script_and_only_that(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    changing = write_script(tmp_path, "changing.js", job_type_with_label("First"))
    write_script(tmp_path, "stable.js", GOOD)
    loads: list[str] = []
    real_load = loader_module.load_job_type_script

    def counting_load(path: Path, limits: CompileLimits) -> JobTypeScript | JobTypeLoadError:
        loads.append(path.name)
        return real_load(path, limits)

    monkeypatch.setattr(loader_module, "load_job_type_script", counting_load)
    registry = JobTypeRegistry([tmp_path])
    registry.refresh()
    assert sorted(loads) == ["changing.js", "stable.js"]
    assert loaded(registry, "changing").job_type["label"] == "First"
    first_etag = loaded(registry, "changing").etag

    loads.clear()
    registry.refresh()
    assert loads == []  # nothing changed: nothing re-run

    changing.write_text(job_type_with_label("Second"), encoding="utf-8")
    st = changing.stat()
    os.utime(changing, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # coarse clocks
    registry.refresh()
    assert loads == ["changing.js"]
    script = loaded(registry, "changing")
    assert script.job_type["label"] == "Second"
    assert script.etag != first_etag

    changing.unlink()
    registry.refresh()
    assert names(registry) == ["stable"]


def test_broken_script_is_reported_and_others_still_load(tmp_path: Path) -> None:
    write_script(tmp_path, "good.js", GOOD)
    write_script(tmp_path, "syntax.js", MINIMAL_JOB_TYPE + "function compileJob(job) {\n  if (\n}\n")
    write_script(tmp_path, "throws.js", "const x = 1;\nundefinedFunction();\n" + GOOD)
    write_script(tmp_path, "no_job_type.js", "function compileJob(job) {}\n")
    write_script(tmp_path, "bad_type.js", "const JOB_TYPE = {label: 'B', settings: [{key: 'n', type: 'double'}]};\nfunction compileJob(job) {}\n")
    write_script(tmp_path, "no_key.js", "const JOB_TYPE = {label: 'B', settings: [{type: 'int32'}]};\nfunction compileJob(job) {}\n")
    write_script(tmp_path, "no_compile.js", MINIMAL_JOB_TYPE)
    write_script(tmp_path, "forever.js", "while (true) {}\n" + GOOD)

    registry = JobTypeRegistry([tmp_path], limits=CompileLimits(timeout_s=0.5))
    registry.refresh()
    assert names(registry) == ["good"]
    errors = {e.name: e.message for e in registry.errors()}
    assert set(errors) == {"syntax", "throws", "no-job-type", "bad-type", "no-key", "no-compile", "forever"}
    assert errors["syntax"].startswith("syntax.js:4: SyntaxError:")
    assert errors["throws"].startswith("throws.js:2: ReferenceError: undefinedFunction is not defined")
    assert "does not define a JOB_TYPE object" in errors["no-job-type"]
    assert "'type' must be one of string, int32, float, bool" in errors["bad-type"]
    assert "JOB_TYPE.settings[0] needs a 'key'" in errors["no-key"]
    assert "does not define a compileJob(job) function" in errors["no-compile"]
    assert "did not finish within 0.5 s" in errors["forever"]
    for name, message in errors.items():
        assert f"job type '{name}' is unavailable until then" in message


def test_later_directory_overrides_and_broken_override_falls_back(tmp_path: Path) -> None:
    builtin, user = tmp_path / "builtin", tmp_path / "user"
    builtin.mkdir()
    user.mkdir()
    write_script(builtin, "render.js", job_type_with_label("Built-in"))
    write_script(builtin, "other.js", GOOD)
    write_script(user, "render.js", job_type_with_label("Mine"))
    registry = JobTypeRegistry([builtin, user])
    registry.refresh()
    assert names(registry) == ["other", "render"]
    assert loaded(registry, "render").job_type["label"] == "Mine"

    (user / "render.js").write_text("const JOB_TYPE = ;\n", encoding="utf-8")
    registry.refresh()
    assert loaded(registry, "render").job_type["label"] == "Built-in"
    [error] = registry.errors()
    assert error.path == user / "render.js"
    assert f"keeps using {builtin / 'render.js'}" in error.message


def test_missing_directory_is_fine(tmp_path: Path) -> None:
    registry = JobTypeRegistry([tmp_path / "does-not-exist"])
    registry.refresh()
    assert registry.list() == [] and registry.errors() == []


def test_builtins_compile(builtin_registry: JobTypeRegistry) -> None:
    assert {"echo-sleep-test", "simple-blender-render", "single-image-tiles", "encode-media"} <= set(names(builtin_registry))
    script = builtin_registry.get("echo-sleep-test")
    assert script is not None
    job = compile_job(script, make_request(script.name, {"message": "hi", "sleep_duration_seconds": 2, "sleep_repeats": 3}))
    assert [t.name for t in job.tasks] == ["echo", "sleep", "sleep", "sleep"]


async def test_refresh_async(tmp_path: Path) -> None:
    write_script(tmp_path, "a.js", GOOD)
    registry = JobTypeRegistry([tmp_path])
    await registry.refresh_async()
    assert names(registry) == ["a"]
