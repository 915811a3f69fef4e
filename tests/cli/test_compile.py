"""``flamenco-peer compile``: job settings to tasks, on this machine, with no peer running."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.scenes import make_scene, requires_blender

from .conftest import Cli, Result, assert_clean_error, clean_env

# A job type that uses every kind of setting; its tasks echo the settings back.
TD_TEST_JS = """\
const JOB_TYPE = {
  label: "TD Test",
  description: "Exercises the compile command",
  settings: [
    { key: "shot", type: "string", required: true },
    { key: "count", type: "int32", default: 2 },
    { key: "scale", type: "float", default: 1.5 },
    { key: "draft", type: "bool", default: false },
    { key: "quality", type: "string", choices: ["low", "high"], default: "low" },
    { key: "camera", type: "string", eval: "C.scene.camera.name" },
  ],
};

function compileJob(job) {
  const s = job.settings;
  print(`making ${s.count} work tasks`);
  const prepare = author.Task("prepare", "misc");
  prepare.addCommand(author.Command("echo", { message: s.shot, scale: s.scale, draft: s.draft, quality: s.quality }));
  job.addTask(prepare);
  for (let i = 0; i < s.count; i++) {
    const work = author.Task(`work-${i}`, "misc");
    work.addCommand(author.Command("sleep", { duration_in_seconds: 0 }, 3));
    work.addDependency(prepare);
    job.addTask(work);
  }
  if (s.shot === "explode") {
    throw new Error("the shot exploded");  // THROW-LINE
  }
}
"""

# An echo-sleep-test look-alike whose tasks say where they came from.
def marked_echo_js(marker: str) -> str:
    return f"""\
const JOB_TYPE = {{ label: "Echo ({marker})", settings: [{{ key: "message", type: "string", required: true }}] }};
function compileJob(job) {{
  const t = author.Task("{marker}", "misc");
  t.addCommand(author.Command("echo", {{ message: job.settings.message }}));
  job.addTask(t);
}}
"""


SBR_VALUES = {
    "frames": "1-5", "chunk_size": "2", "render_output_root": "/render",
    "render_output_path": "/render/shot/{timestamp}/######", "blendfile": "/projects/shot.blend", "fps": "24",
    "format": "PNG", "image_file_extension": ".png", "scene": "Scene", "has_previews": "false",
}


def sets(values: dict[str, str]) -> list[str]:
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


SBR_SETTINGS = sets(SBR_VALUES)


@pytest.fixture
def cli(bare_cli: Cli) -> Cli:
    return bare_cli


@pytest.fixture
def td_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "td-job-types"
    folder.mkdir()
    (folder / "td-test.js").write_text(TD_TEST_JS)
    return folder


def compile_cmd(cli: Cli, *args: str, **kw: Any) -> Result:
    return cli("compile", *args, use_peer=False, **kw)


def assert_error(r: Result) -> None:
    """Exit 1, our error as the last line; notes (``note:``, ``script printed:``) may come before it."""
    assert r.returncode == 1, r.explain()
    assert "Traceback" not in r.stderr, r.explain()
    assert r.stdout == "", r.explain()
    lines = r.stderr.splitlines()
    assert lines and lines[-1].startswith("flamenco-peer: "), r.explain()
    assert all(line.startswith(("note: ", "script printed: ")) for line in lines[:-1]), r.explain()


def compile_ok(cli: Cli, *args: str, **kw: Any) -> Result:
    r = compile_cmd(cli, *args, **kw)
    assert r.returncode == 0, r.explain()
    assert "Traceback" not in r.stderr, r.explain()
    return r


def user_job_types(cli: Cli) -> Path:
    """The job_types folder of the default data dir the CLI runs with."""
    folder = cli.home / "default-data-dir" / "job_types"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# --- output -------------------------------------------------------------------------


def test_text_output_of_echo_sleep_test(cli: Cli) -> None:
    r = compile_ok(cli, "echo-sleep-test", "--set", "message=hi there", "--set", "sleep_repeats=2")
    lines = r.stdout.splitlines()
    assert re.fullmatch(r"Job 'echo-sleep-test' of type echo-sleep-test \(.*/job_types/echo-sleep-test\.js\)",
                        lines[0]), r.explain()
    assert lines[1] == "  priority 50, 3 tasks, 3 steps", r.explain()
    assert lines[2] == '  settings: message="hi there", sleep_duration_seconds=1, sleep_repeats=2', r.explain()
    assert lines[4:] == [
        "#1 echo  (misc, priority 50)",
        '    echo: message="hi there"',
        "#2 sleep  (misc, priority 50, after #1)",
        "    sleep: duration_in_seconds=1",
        "#3 sleep  (misc, priority 50, after #1)",
        "    sleep: duration_in_seconds=1",
    ], r.explain()
    assert r.stderr == "", r.explain()


def test_text_output_of_simple_blender_render(cli: Cli) -> None:
    r = compile_ok(cli, "simple-blender-render", *SBR_SETTINGS, "--name", "shot-010", "--priority", "70")
    assert "priority 70, 4 tasks, 6 steps" in r.stdout, r.explain()
    tasks = [line for line in r.stdout.splitlines() if line.startswith("#")]
    assert tasks == [
        "#1 render-1,2  (blender, priority 50)",
        "#2 render-3,4  (blender, priority 50)",
        "#3 render-5  (blender, priority 50)",
        "#4 preview-video  (ffmpeg, priority 50, after #1-3 (3 tasks))",
    ], r.explain()
    # Multi-frame chunks show their step count; the parameters are JSON.
    assert re.search(r'^    blender-render \[2 steps\]: exe="\{blender\}" .*"--render-frame", "1,2"\]$',
                     r.stdout, re.M), r.explain()
    assert re.search(r'^    frames-to-video: exe="ffmpeg" fps=24 .*outputFile="/render/shot/'
                     r'\d{4}-\d\d-\d\d_\d{6}/shot-1-5\.mp4"', r.stdout, re.M), r.explain()


def test_json_output(cli: Cli, td_dir: Path) -> None:
    r = compile_ok(cli, "td-test", "--job-types-dir", str(td_dir), "--set", "shot=sh010", "--set", "count=3",
                   "--name", "my job", "--json")
    job = r.json()
    assert job["job_type"] == "td-test"
    assert job["script"] == str(td_dir / "td-test.js")
    assert job["name"] == "my job" and job["priority"] == 50
    assert job["settings"] == {"shot": "sh010", "count": 3, "scale": 1.5, "draft": False, "quality": "low",
                               "camera": ""}
    assert job["messages"] == ["making 3 work tasks"]
    tasks = job["tasks"]
    assert [(t["name"], t["type"], t["priority"], t["index_in_job"]) for t in tasks] == [
        ("prepare", "misc", 50, 1), ("work-0", "misc", 50, 2), ("work-1", "misc", 50, 3), ("work-2", "misc", 50, 4)]
    prepare = tasks[0]
    assert prepare["dependencies"] == []
    assert all(t["dependencies"] == [prepare["uuid"]] for t in tasks[1:]), tasks
    assert prepare["commands"] == [{"name": "echo", "total_step_count": 0, "parameters": {
        "message": "sh010", "scale": 1.5, "draft": False, "quality": "low"}}]
    assert tasks[1]["commands"] == [{"name": "sleep", "parameters": {"duration_in_seconds": 0},
                                     "total_step_count": 3}]
    assert tasks[1]["steps_total"] == 3
    # The camera setting has an eval expression: not given, so the user is told.
    assert "camera" in r.stderr and "--set" in r.stderr, r.explain()


def test_script_print_output_is_shown(cli: Cli, td_dir: Path) -> None:
    r = compile_ok(cli, "td-test", "--job-types-dir", str(td_dir), "--set", "shot=a", "--set", "camera=Cam")
    assert "  script printed: making 2 work tasks" in r.stdout.splitlines(), r.explain()
    assert r.stderr == "", r.explain()  # every eval setting given: no note


# --- settings ---------------------------------------------------------------------------


def test_set_values_are_parsed_by_setting_type(cli: Cli, td_dir: Path) -> None:
    r = compile_ok(cli, "td-test", "--job-types-dir", str(td_dir), "--json",
                   "--set", "shot=42", "--set", "count=1", "--set", "scale=0.25", "--set", "draft=yes",
                   "--set", "quality=high", "--set", "camera=Cam", "--set", "extra=[1, 2]")
    settings = r.json()["settings"]
    assert settings == {"shot": "42", "count": 1, "scale": 0.25, "draft": True, "quality": "high",
                        "camera": "Cam", "extra": [1, 2]}
    # A setting the job type does not declare is passed on, with a warning against typos.
    assert "declares no setting 'extra'" in r.stderr, r.explain()


@pytest.mark.parametrize("assignment, words", [
    ("count=many", ["'count'", "integer", "'many'"]),
    ("scale=big", ["'scale'", "number", "'big'"]),
    ("draft=maybe", ["'draft'", "true or false", "'maybe'"]),
    ("count", ["key=value"]),
])
def test_set_value_of_the_wrong_type(cli: Cli, td_dir: Path, assignment: str, words: list[str]) -> None:
    r = compile_cmd(cli, "td-test", "--job-types-dir", str(td_dir), "--set", "shot=a", "--set", assignment)
    assert_error(r)
    for word in words:
        assert word in r.stderr, r.explain()
    assert r.stdout == ""


def test_settings_json_file(cli: Cli, td_dir: Path, tmp_path: Path) -> None:
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"shot": "from-file", "count": 1, "draft": True, "camera": "Cam"}))
    r = compile_ok(cli, "td-test", "--job-types-dir", str(td_dir), "--settings-json", str(settings), "--json")
    assert r.json()["settings"] == {"shot": "from-file", "count": 1, "scale": 1.5, "draft": True,
                                    "quality": "low", "camera": "Cam"}
    # --set wins over the file.
    r = compile_ok(cli, "td-test", "--job-types-dir", str(td_dir), "--settings-json", str(settings),
                   "--set", "count=4", "--json")
    assert r.json()["settings"]["count"] == 4
    assert len(r.json()["tasks"]) == 5


def test_settings_json_from_stdin(cli: Cli, td_dir: Path) -> None:
    argv = ["td-test", "--job-types-dir", str(td_dir), "--settings-json", "-", "--json"]
    proc = subprocess.run([sys.executable, "-m", "peer", "compile", *argv], capture_output=True, text=True,
                          input='{"shot": "piped", "count": 0, "camera": "Cam"}', timeout=30,
                          env=clean_env(cli.home / "default-data-dir"))
    assert proc.returncode == 0, proc.stderr
    job = json.loads(proc.stdout)
    assert job["settings"]["shot"] == "piped"
    assert [t["name"] for t in job["tasks"]] == ["prepare"]


@pytest.mark.parametrize("content, words", [
    (None, ["no such file"]),
    ("{not json", ["not valid JSON", "line 1"]),
    ('["shot", "a"]', ["list", "not an object"]),
])
def test_bad_settings_json(cli: Cli, td_dir: Path, tmp_path: Path, content: str | None, words: list[str]) -> None:
    path = tmp_path / "settings.json"
    if content is not None:
        path.write_text(content)
    r = compile_cmd(cli, "td-test", "--job-types-dir", str(td_dir), "--settings-json", str(path))
    assert_error(r)
    assert "--settings-json" in r.stderr, r.explain()
    for word in words:
        assert word in r.stderr, r.explain()


def test_settings_are_validated_like_the_coordinator_does(cli: Cli, td_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"shot": "a", "count": "two", "scale": 1, "camera": "Cam"}))
    r = compile_cmd(cli, "td-test", "--job-types-dir", str(td_dir), "--settings-json", str(path))
    assert_error(r)
    assert "invalid settings for job type 'td-test'" in r.stderr, r.explain()
    assert "setting 'count' must be an integer (int32), got string \"two\"" in r.stderr, r.explain()

    r = compile_cmd(cli, "td-test", "--job-types-dir", str(td_dir), "--set", "shot=a", "--set", "quality=ultra")
    assert_error(r)
    assert "setting 'quality' must be one of \"low\", \"high\", got string \"ultra\"" in r.stderr, r.explain()


def test_missing_required_setting(cli: Cli) -> None:
    r = compile_cmd(cli, "echo-sleep-test")
    assert_error(r)
    assert "setting 'message' is required" in r.stderr, r.explain()


def test_required_eval_settings_must_be_given_without_a_blend_file(cli: Cli) -> None:
    r = compile_cmd(cli, "simple-blender-render", "--set", "render_output_root=/render",
                    "--set", "blendfile=/projects/shot.blend", "--set", "frames=1-3")
    assert_error(r)
    assert "Blender computes from the .blend file when the job is submitted" in r.stderr, r.explain()
    assert "required: format, image_file_extension, scene." in r.stderr, r.explain()
    assert "--set KEY=VALUE" in r.stderr and "--blend FILE" in r.stderr, r.explain()


def test_unset_optional_eval_settings_get_a_note_and_may_fail_the_script(cli: Cli) -> None:
    without_output_path = {k: v for k, v in SBR_VALUES.items() if k != "render_output_path"}
    r = compile_cmd(cli, "simple-blender-render", *sets(without_output_path))
    assert_error(r)
    assert re.search(r"^note: render_output_path: computed in Blender from the \.blend file at submission",
                     r.stderr, re.M), r.explain()
    # The script's own error names the script by its path and line.
    m = re.search(r"^flamenco-peer: (/\S+/simple-blender-render\.js):(\d+): no render_output_path setting!",
                  r.stderr, re.M)
    assert m, r.explain()
    source_line = Path(m.group(1)).read_text().splitlines()[int(m.group(2)) - 1]
    assert "no render_output_path setting!" in source_line


# --- where job types come from -----------------------------------------------------------------


def test_user_job_types_override_builtins_and_job_types_dir_overrides_both(cli: Cli, tmp_path: Path) -> None:
    def first_task(*extra: str) -> str:
        r = compile_ok(cli, "echo-sleep-test", "--set", "message=x", "--json", *extra)
        return r.json()["tasks"][0]["name"]

    assert first_task() == "echo"  # the built-in
    (user_job_types(cli) / "echo-sleep-test.js").write_text(marked_echo_js("from-data-dir"))
    assert first_task() == "from-data-dir"
    override = tmp_path / "override"
    override.mkdir()
    (override / "echo_sleep_test.js").write_text(marked_echo_js("from-job-types-dir"))
    assert first_task("--job-types-dir", str(override)) == "from-job-types-dir"


def test_data_dir_option(cli: Cli, tmp_path: Path) -> None:
    other = tmp_path / "other-data"
    (other / "job_types").mkdir(parents=True)
    (other / "job_types" / "mine.js").write_text(marked_echo_js("mine"))
    r = compile_ok(cli, "mine", "--data-dir", str(other), "--set", "message=x", "--json")
    assert r.json()["script"] == str(other / "job_types" / "mine.js")


def test_data_dir_config_sets_the_compile_time_limit(cli: Cli, tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "job_types").mkdir(parents=True)
    (data / "config.toml").write_text('peer_id = "test"\ncompile_timeout_s = 0.5\n')
    (data / "job_types" / "spin.js").write_text(
        'const JOB_TYPE = {label: "Spin", settings: []};\nfunction compileJob(job) { while (true) {} }\n')
    r = compile_cmd(cli, "spin", "--data-dir", str(data))
    assert_error(r)
    assert "did not finish within 0.5 s" in r.stderr, r.explain()


# --- errors -----------------------------------------------------------------------------


def test_unknown_job_type_lists_the_known_ones(cli: Cli, td_dir: Path) -> None:
    r = compile_cmd(cli, "no-such-type", "--job-types-dir", str(td_dir))
    assert_error(r)
    assert "job type unknown: 'no-such-type'" in r.stderr, r.explain()
    known = re.search(r"known job types: ([^(]*) \(searched", r.stderr)
    assert known, r.explain()
    assert {"echo-sleep-test", "simple-blender-render", "td-test"} <= set(known.group(1).split(", ")), r.explain()
    assert str(td_dir) in r.stderr, r.explain()


def test_load_error_of_the_requested_script(cli: Cli, tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "echo-sleep-test.js").write_text('const JOB_TYPE = {label: "x", settings: []};\nfunction compileJob( {\n')
    r = compile_cmd(cli, "echo-sleep-test", "--job-types-dir", str(folder), "--set", "message=x")
    assert_error(r)
    # Not silently compiled with the built-in of the same name.
    assert f"job type 'echo-sleep-test' failed to load from {folder / 'echo-sleep-test.js'}" in r.stderr, r.explain()
    assert re.search(r"echo-sleep-test\.js:\d+: SyntaxError", r.stderr), r.explain()
    assert r.stderr.count("\n") == 1, r.explain()  # said once, not logged again
    assert r.stdout == ""


def test_broken_other_scripts_are_named_for_an_unknown_type(cli: Cli, tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "half-done.js").write_text("const JOB_TYPE = {label: 'Half', settings: []};\n")
    r = compile_cmd(cli, "half-don", "--job-types-dir", str(folder))
    assert_error(r)
    assert f"failed to load: {folder / 'half-done.js'}" in r.stderr, r.explain()
    r = compile_cmd(cli, "half-done", "--job-types-dir", str(folder))
    assert_error(r)
    assert "does not define a compileJob(job) function" in r.stderr, r.explain()


def test_compile_error_names_file_and_line(cli: Cli, td_dir: Path) -> None:
    r = compile_cmd(cli, "td-test", "--job-types-dir", str(td_dir), "--set", "shot=explode", "--set", "camera=C")
    assert_error(r)
    line = next(i for i, text in enumerate(TD_TEST_JS.splitlines(), 1) if "THROW-LINE" in text)
    assert f"flamenco-peer: {td_dir / 'td-test.js'}:{line}: Error: the shot exploded" in r.stderr, r.explain()
    assert "script printed: making 2 work tasks" in r.stderr, r.explain()  # printed before it failed
    assert r.stdout == ""


def test_missing_job_types_dir(cli: Cli, tmp_path: Path) -> None:
    r = compile_cmd(cli, "echo-sleep-test", "--job-types-dir", str(tmp_path / "nope"), "--set", "message=x")
    assert_error(r)
    assert f"--job-types-dir {tmp_path / 'nope'}: no such folder" in r.stderr, r.explain()


def test_missing_blend_file(cli: Cli) -> None:
    r = compile_cmd(cli, "simple-blender-render", "--blend", "/nonexistent/shot.blend")
    assert_error(r)
    assert "--blend /nonexistent/shot.blend: no such file" in r.stderr, r.explain()


def test_usage_errors_exit_2(cli: Cli) -> None:
    r = compile_cmd(cli)
    assert_clean_error(r, code=2)
    assert "JOBTYPE" in r.stderr, r.explain()
    r = compile_cmd(cli, "echo-sleep-test", "--priority", "101")
    assert_clean_error(r, code=2)
    assert "PRIORITY" in r.stderr, r.explain()


def test_needs_no_peer(cli: Cli) -> None:
    # FLAMENCO_PEER_URL points nowhere: compile never talks to a peer.
    env = clean_env(cli.home / "default-data-dir")
    env["FLAMENCO_PEER_URL"] = "http://127.0.0.1:9"
    r = compile_ok(cli, "echo-sleep-test", "--set", "message=x", env=env)
    assert "#1 echo" in r.stdout


def test_help(cli: Cli) -> None:
    r = cli.ok("compile", "--help", use_peer=False)
    assert r.stdout.startswith("usage: flamenco-peer compile"), r.explain()
    for option in ("JOBTYPE", "--job-types-dir", "--data-dir", "--set", "KEY=VALUE", "--settings-json",
                   "--blend", "--name", "--priority", "--json"):
        assert option in r.stdout, f"{option} missing:\n{r.stdout}"
    assert "--peer" not in r.stdout
    top = cli.ok("--help", use_peer=False)
    assert re.search(r"^\s+compile\s", top.stdout, re.M), top.stdout


# --- with Blender ------------------------------------------------------------------------------


@pytest.mark.blender
@requires_blender
@pytest.mark.timeout(120)
def test_blend_file_settings_are_evaluated_in_blender(cli: Cli, tmp_path: Path) -> None:
    blend = make_scene(tmp_path / "shot.blend", frames=(1, 4))
    r = compile_ok(cli, "simple-blender-render", "--blend", str(blend), "--set", "render_output_root=/render",
                   "--set", "chunk_size=2", "--json", timeout=120)
    job = r.json()
    assert job["name"] == "shot"
    settings = job["settings"]
    assert settings["frames"] == "1-4" and settings["blendfile"] == str(blend), settings
    assert re.fullmatch(r"/render/shot/\d{4}-\d\d-\d\d_\d{6}/######", settings["render_output_path"]), settings
    assert [t["name"] for t in job["tasks"]] == ["render-1,2", "render-3,4", "preview-video"]
    assert "Evaluating job settings in Blender from shot.blend" in r.stderr, r.explain()
