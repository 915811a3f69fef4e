"""The add-on inside real Blender (bpy 5.0.1): registration, settings, eval, submission, worker opt-in."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from peer.clientlib import FlamencoClient
from peer.compiler.loader import JobTypeRegistry
from peer.localfarm import LocalFarm
from peer.settings_eval import evaluate_in_blender, with_defaults
from tests.addon.conftest import blender_env, requires_bpy, run_in_blender
from tests.addon.fake_manager import FakeManager
from tests.scenes import make_scene, requires_blender, requires_ffmpeg

pytestmark = [requires_bpy]

ADDON_TYPES = [
    "FLAMENCO_PEER_OT_eval_setting", "FLAMENCO_PEER_OT_open_dashboard", "FLAMENCO_PEER_OT_refresh",
    "FLAMENCO_PEER_OT_start_peer", "FLAMENCO_PEER_OT_stop_peer", "FLAMENCO_PEER_OT_submit_job",
    "FLAMENCO_PEER_PT_farm", "FLAMENCO_PEER_PT_job", "FLAMENCO_PEER_PT_progress",
]


@pytest.fixture(scope="module")
def scene34(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scene written by Debian's Blender 3.4 (bpy 5.0 opens it; 3.4 could not read a 5.0 file)."""
    if not _has_blender():
        pytest.skip("needs Debian's blender to write the scene")
    root = tmp_path_factory.mktemp("proj")
    return make_scene(root / "proj" / "shots" / "shot010" / "scene.blend", frames=(1, 4), resolution=(64, 48))


def _has_blender() -> bool:
    import shutil

    return shutil.which("blender") is not None


@pytest.fixture(scope="module")
def builtin_job_types() -> list[dict[str, Any]]:
    registry = JobTypeRegistry.with_builtins()
    registry.refresh()
    return [script.job_type for script in registry.list()]


def process_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process_alive(pid):
            return True
        time.sleep(0.05)
    return False


# --- registration ------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_register_unregister_and_operators(blender_home: Path) -> None:
    result = run_in_blender("register_cycle", {}, blender_home).result
    first = result["first"]
    assert first["types"] == ADDON_TYPES
    assert first["ops"] == ["eval_setting", "open_dashboard", "refresh", "start_peer", "stop_peer", "submit_job"]
    assert first["scene_props"] == ["flamenco_peer_job_name", "flamenco_peer_job_priority", "flamenco_peer_job_type",
                                    "flamenco_peer_job_type_name", "flamenco_peer_submit_paused"]
    assert first["submit_poll"] is False  # no job type selected yet
    assert first["prefs"] == {"manager_url": "", "use_as_worker": False, "keep_peer_running": False, "peer_port": 8780}
    # No peer runs in this isolated home: the panel says so and offers to start one.
    assert ["label", "No Flamenco Peer found on this computer"] in first["farm_panel"]
    assert ["operator", "flamenco_peer.start_peer"] in first["farm_panel"]
    assert ["prop", "use_as_worker"] in first["farm_panel"]
    assert ["prop", "flamenco_peer_job_type"] in first["job_panel"]
    assert ["operator", "flamenco_peer.submit_job"] in first["job_panel"]
    assert first["progress_panel"] == []  # nothing submitted yet
    assert "No Flamenco Peer runs on this computer" in first["refresh_error"]
    assert "flamenco-peer run" in first["refresh_error"]
    assert "did not start a peer" in first["stop_error"]
    assert result["after_disable"] == {"types": [], "scene_props": [], "has_ops": False}
    assert result["again"] == ADDON_TYPES


# --- settings and eval ----------------------------------------------------------------

EVAL_JOB_TYPE: dict[str, Any] = {
    "name": "eval-names", "label": "Eval Names", "etag": "e1", "description": "every rule of the settings UI",
    "settings": [
        {"key": "frames", "type": "string", "eval": "f'{C.scene.frame_start}-{C.scene.frame_end}'",
         "evalInfo": {"showLinkButton": True, "description": "Scene frame range"}, "description": "Frames to render"},
        {"key": "root", "type": "string", "subtype": "dir_path", "default": "//renders", "visible": "submission",
         "description": "Output root"},
        {"key": "out_file", "type": "string", "subtype": "file_path", "visible": "submission"},
        {"key": "hashed", "type": "string", "subtype": "hashed_file_path"},
        {"key": "count", "type": "int32", "default": 3, "propargs": {"min": 0, "max": 5}, "label": "How many"},
        {"key": "ratio", "type": "float", "default": "0.5"},
        {"key": "codec", "type": "string", "choices": ["h264", "vp9"], "default": "vp9"},
        {"key": "filled", "type": "string", "eval": "C.scene.name"},
        {"key": "preview", "type": "string", "editable": False, "eval": "jobname + '/' + str(last_n_dir_parts(2))"},
        {"key": "e_jobname", "type": "string", "eval": "jobname", "visible": "hidden"},
        {"key": "e_settings", "type": "string", "eval": "settings.root + '|' + str(settings.count)", "visible": "hidden"},
        {"key": "e_bpy", "type": "string", "eval": "bpy.data.filepath", "visible": "hidden"},
        {"key": "e_C", "type": "int32", "eval": "C.scene.frame_end", "visible": "web"},
        {"key": "e_Path", "type": "string", "eval": "Path(bpy.data.filepath).stem", "visible": "hidden"},
        {"key": "e_abspath", "type": "string", "eval": "str(abspath(settings.root))", "visible": "hidden"},
        {"key": "e_abspath_dotdot", "type": "string", "eval": "str(abspath('//../x/./y'))", "visible": "hidden"},
        {"key": "e_last2", "type": "string", "eval": "str(last_n_dir_parts(2))", "visible": "hidden"},
        {"key": "e_last_arg", "type": "string", "eval": "str(last_n_dir_parts(1, '//sub/deeper/file.blend'))",
         "visible": "hidden"},
        {"key": "e_last0", "type": "string", "eval": "str(last_n_dir_parts(0))", "visible": "hidden"},
        {"key": "e_last_many", "type": "string", "eval": "str(last_n_dir_parts(99))", "visible": "hidden"},
        {"key": "fps", "type": "float", "eval": "C.scene.render.fps / C.scene.render.fps_base", "visible": "hidden"},
        {"key": "hidden_default", "type": "string", "default": "kept", "visible": "hidden"},
        {"key": "hidden_zero", "type": "int32", "visible": "hidden"},
        {"key": "blendfile", "type": "string", "visible": "web"},
        {"key": "name", "type": "string", "default": "reserved-key"},
    ],
}


@requires_blender
@pytest.mark.blender
@pytest.mark.timeout(90)
def test_settings_ui_and_every_eval_name(blender_home: Path, scene34: Path) -> None:
    run = run_in_blender("settings_and_eval", {
        "scene": str(scene34), "job_types": [EVAL_JOB_TYPE], "job_type": "eval-names", "frames": [3, 17],
        "job_name": "shot-eval", "set": {"count": 9}, "unlink": ["frames"], "eval_button": ["filled"],
    }, blender_home)
    r = run.result
    shot_dir = scene34.parent
    assert r["names"] == ["jobname", "settings", "bpy", "C", "Path", "abspath", "last_n_dir_parts"]
    props = r["props"]
    # Types, subtypes, choices, labels, descriptions.
    assert props["root"]["subtype"] == "DIR_PATH" and props["root"]["description"] == "Output root"
    assert props["out_file"]["subtype"] == "FILE_PATH"
    assert props["hashed"]["subtype"] == "FILE_PATH"
    assert props["count"]["rna_type"] == "INT" and props["count"]["name"] == "How many"
    assert props["ratio"]["rna_type"] == "FLOAT"
    assert props["codec"]["rna_type"] == "ENUM" and props["codec"]["enum_items"] == ["h264", "vp9"]
    assert props["root"]["name"] == "Root"  # label generated from the key, as Flamenco does
    # Visibility: visible/submission/missing are shown; web/hidden are not.
    assert props["root"]["shown"] and props["frames"]["shown"]
    assert not props["e_C"]["shown"] and not props["e_jobname"]["shown"]
    # Editable defaults to true; editable: false is read-only and shows its eval result.
    assert not props["count"]["read_only"]
    assert props["preview"]["read_only"]
    assert "read-only" in r["read_only_write"]
    assert props["frames"]["has_autoeval"] and not props["filled"]["has_autoeval"]
    # On selection: defaults applied, shown settings with eval and no value filled in.
    filled = r["filled_on_selection"]
    assert filled["root"] == "//renders" and filled["count"] == 3 and filled["ratio"] == 0.5
    assert filled["codec"] == "vp9" and filled["filled"] == "Scene"
    assert filled["preview"] == "shot-eval/shots/shot010"
    assert r["after_set"] == {"count": 5}  # propargs max=5
    # At submission: every name Flamenco provides, against the real scene.
    c = r["collected"]
    assert c["frames"] == "3-17"
    assert c["e_jobname"] == "shot-eval"
    assert c["e_settings"] == "//renders|5"
    assert c["e_bpy"] == str(scene34)
    assert c["e_C"] == 17
    assert c["e_Path"] == "scene"
    assert c["e_abspath"] == str(shot_dir / "renders")
    assert c["e_abspath_dotdot"] == str(shot_dir.parent / "x" / "y")
    assert c["e_last2"] == "shots/shot010"
    assert c["e_last_arg"] == "deeper"
    assert c["e_last0"] == "."
    assert c["e_last_many"] == str(shot_dir).lstrip("/")
    assert c["fps"] == 24.0
    assert c["preview"] == "shot-eval/shots/shot010"
    assert c["hidden_default"] == "kept" and c["hidden_zero"] == 0
    assert c["blendfile"] == str(scene34)
    assert c["name"] == "reserved-key"  # a key that is reserved in RNA still round-trips
    assert set(c) == {s["key"] for s in EVAL_JOB_TYPE["settings"]}  # every setting is sent
    # Link toggle off: the typed value is sent instead of the expression's.
    assert r["unlinked"] == {"frames": "typed by hand"}
    assert r["eval_button"] == {"filled": "Scene"}
    # The panel: linked settings show the eval description, hidden ones are not drawn.
    linked = r["job_panel_linked"]
    assert ["label", "Scene frame range"] in linked and ["prop", "autoeval_frames"] in linked
    assert ["prop", "frames"] not in linked
    panel = r["job_panel"]  # after unlinking: the field is back, with its toggle
    assert ["prop", "frames"] in panel and ["prop", "autoeval_frames"] in panel
    assert ["operator", "flamenco_peer.eval_setting"] in panel
    assert ["prop", "e_jobname"] not in panel and ["prop", "e_C"] not in panel and ["prop", "root"] in panel
    assert ["prop", "preview"] in panel  # read-only, but shown


@requires_blender
@pytest.mark.blender
@pytest.mark.timeout(90)
def test_simple_blender_render_settings_match_the_cli_evaluation(
        blender_home: Path, scene34: Path, builtin_job_types: list[dict[str, Any]], tmp_path: Path) -> None:
    """The add-on (bpy 5.0) and `flamenco-peer submit --blend` (Blender 3.4) compute the same job."""
    given = {"render_output_root": str(tmp_path / "out"), "add_path_components": 1}
    r = run_in_blender("settings_and_eval", {
        "scene": str(scene34), "job_types": builtin_job_types, "job_type": "simple-blender-render",
        "job_name": "shot-cli", "set": given,
    }, blender_home).result
    job_type = next(t for t in builtin_job_types if t["name"] == "simple-blender-render")
    cli_given = {**given, "blendfile": str(scene34)}
    cli = evaluate_in_blender("blender", scene34, job_type, "shot-cli", with_defaults(job_type, cli_given),
                              set(cli_given))
    assert r["collected"] == cli
    assert r["collected"]["frames"] == "1-4"
    assert r["collected"]["render_output_path"] == str(tmp_path / "out" / "shot010" / "shot-cli" / "{timestamp}" / "######")


@requires_blender
@pytest.mark.blender
@pytest.mark.timeout(60)
def test_eval_errors_name_the_setting_and_the_cause(blender_home: Path, scene34: Path) -> None:
    exprs = ["undefined_name + 1", "1/0", "[jobname for _ in range(1)]", "jobname"]
    r = run_in_blender("eval_errors", {"scene": str(scene34), "exprs": exprs}, blender_home).result
    assert r["undefined_name + 1"].startswith("Evaluation error of setting 'value': NameError")
    assert "ZeroDivisionError" in r["1/0"] and "(expression: 1/0)" in r["1/0"]
    # Flamenco passes the names as locals: comprehensions do not see them (same here).
    assert "NameError" in r["[jobname for _ in range(1)]"]
    assert r["jobname"] == ""


# --- submission -------------------------------------------------------------------------


@requires_blender
@requires_ffmpeg
@pytest.mark.blender
@pytest.mark.timeout(240)
def test_submit_to_a_local_peer_renders_with_debian_blender(blender_home: Path, tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "proj" / "shot.blend", frames=(1, 4), resolution=(64, 48))
    farm = LocalFarm(tmp_path / "farm")
    try:
        peer = farm.start_peer("solo")
        r = run_in_blender("submit_to_peer", {
            "scene": str(scene), "data_dir": str(peer.data_dir), "output_root": str(tmp_path / "renders"),
            "timeout": 150,
        }, blender_home, timeout=200).result
        assert "simple-blender-render" in r["job_types"]
        assert r["status"] == "completed", r
        client = FlamencoClient(peer.url)
        job = client.job(r["job_id"])
        tasks = client.tasks(r["job_id"])
    finally:
        farm.stop()
    assert job["name"] == "from-blender"
    assert job["settings"]["blendfile"] == str(scene)
    assert job["settings"]["frames"] == "1-4" and job["settings"]["chunk_size"] == 2
    assert [t["name"] for t in tasks] == ["render-1,2", "render-3,4", "preview-video"]
    frames = sorted(Path(job["settings"]["render_output_path"]).parent.glob("*.png"))
    assert [f.name for f in frames] == [f"{n:06d}.png" for n in range(1, 5)]
    # The 3.4 file was submitted as it is (nothing to save), so Debian's Blender could read it.
    assert r["file_untouched"] and not r["is_dirty"]
    # Live progress went forward and ended complete.
    progress = r["progress"]
    assert progress[-1][0] == "completed" and progress[-1][3] == 1.0
    steps = [p[1] for p in progress]
    assert steps == sorted(steps)
    farm_labels = [e[1] for e in r["farm_panel"] if e[0] == "label"]
    assert "Peers found: 1" in farm_labels and "Workers: 1 idle, 0 busy" in farm_labels
    assert any(e[0] == "progress" and e[1] == 1.0 for e in r["progress_panel"])
    assert ["operator", "flamenco_peer.open_dashboard"] in r["progress_panel"]
    assert r["dashboard"] == f"{peer.url}/app/jobs/{r['job_id']}"


@requires_blender
@pytest.mark.blender
@pytest.mark.timeout(90)
def test_manager_mode_speaks_flamenco_api_v3(blender_home: Path, scene34: Path,
                                             builtin_job_types: list[dict[str, Any]]) -> None:
    with FakeManager(builtin_job_types) as manager:
        r = run_in_blender("manager_mode", {"manager_url": manager.url, "scene": str(scene34)}, blender_home).result
    assert manager.problems() == []
    calls = [(rec.method, rec.path) for rec in manager.requests]
    assert ("GET", "/api/v3/version") in calls and ("GET", "/api/v3/jobs/types") in calls
    assert ("POST", "/api/v3/jobs/check") in calls and ("GET", "/api/v3/status") in calls
    # The peer-only path is never needed in Manager mode.
    assert ("GET", "/peer/v1/cluster/status") not in calls
    job = manager.submitted()[0]
    assert job["name"] == "manager-job" and job["type"] == "simple-blender-render" and job["priority"] == 70
    etag = next(t["etag"] for t in builtin_job_types if t["name"] == "simple-blender-render")
    assert job["type_etag"] == etag
    assert job["settings"]["render_output_path"] == "/render/out/manager-job/{timestamp}/######"
    assert job["settings"]["frames"] == "1-4" and job["settings"]["blendfile"] == str(scene34)
    assert r["job"]["status"] == "queued" and r["job"]["steps_total"] == 4
    assert ["label", "Manager Fake Manager 3.8"] in r["farm_panel"] and ["label", "Status: idle"] in r["farm_panel"]
    assert r["dashboard"] == f"{manager.url}/app/jobs/{r['job']['id']}"
    assert "changed on the farm" in r["stale_error"] and "Press Refresh" in r["stale_error"]
    assert "Manager URL is set" in r["start_peer_error"]


@pytest.mark.timeout(60)
def test_manager_of_another_major_version_is_refused(blender_home: Path, tmp_path: Path) -> None:
    with FakeManager([], version="4.0") as manager:
        r = run_in_blender("manager_mode", {"manager_url": manager.url, "scene": "", "expect_refresh_error": True},
                           blender_home).result
    assert "Flamenco 4.0" in r["refresh_error"] and "API v3" in r["refresh_error"]


# --- worker opt-in ----------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_worker_opt_in_starts_a_real_peer_and_unticking_stops_it(blender_home: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "peer"
    r = run_in_blender("worker_opt_in", {"data_dir": str(data_dir), "toggle_off": True}, blender_home).result
    assert r["owned"] and r["error"] == "", r
    assert r["status_self"]["worker"]["enabled"] is True
    assert r["status_self"]["url"].startswith("http://127.0.0.1:")  # share_on_network off in this test
    assert "Workers: 1 idle, 0 busy" in [e[1] for e in r["farm_panel"] if e[0] == "label"]
    assert r["after_off"]["owned"] is False and r["after_off"]["exit_code"] is not None
    assert wait_gone(r["pid"])
    assert not (data_dir / "peer.json").exists()


@pytest.mark.timeout(90)
def test_peer_stops_when_blender_quits(blender_home: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "peer"
    r = run_in_blender("worker_opt_in", {"data_dir": str(data_dir)}, blender_home).result
    assert r["owned"]
    assert wait_gone(r["pid"]), "the peer outlived Blender"


@pytest.mark.timeout(90)
def test_peer_kept_running_after_blender_quits_when_asked(blender_home: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "peer"
    r = run_in_blender("worker_opt_in", {"data_dir": str(data_dir), "keep_running": True}, blender_home).result
    try:
        assert r["owned"]
        time.sleep(0.5)
        assert process_alive(r["pid"])
        assert FlamencoClient(r["url"], timeout=5).get("/api/v3/version")["shortversion"].startswith("3.")
    finally:
        try:
            os.killpg(r["pid"], signal.SIGTERM)
        except ProcessLookupError:
            pass
        assert wait_gone(r["pid"])


@pytest.mark.timeout(90)
def test_a_running_peer_is_reused_and_left_alone(blender_home: Path, tmp_path: Path) -> None:
    farm = LocalFarm(tmp_path / "farm")
    try:
        peer = farm.start_peer("by-hand")
        r = run_in_blender("worker_opt_in", {"data_dir": str(peer.data_dir), "toggle_off": True},
                           blender_home, env=blender_env(blender_home)).result
        assert not r["owned"]
        assert "already running" in r["note"] and peer.url in r["note"]
        assert peer.process.poll() is None
        assert FlamencoClient(peer.url, timeout=5).get("/api/v3/version")
    finally:
        farm.stop()
