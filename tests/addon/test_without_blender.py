"""The add-on's modules that need no Blender: job-type rules, HTTP client, local peer discovery."""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from blender_addon import jobtypes, local_peer
from blender_addon.client import FarmClient, FarmError, summarize_peer_status
from peer.config import default_data_dir as peer_default_data_dir
from tests.addon.fake_manager import FakeManager

# --- job type → properties ------------------------------------------------------------


def spec(**raw: Any) -> jobtypes.SettingSpec:
    return jobtypes.setting_spec({"key": "k", "type": "string", **raw})


def test_property_kinds_and_subtypes() -> None:
    assert spec().bpy_property()[0] == "StringProperty"
    assert spec(type="int32").bpy_property()[0] == "IntProperty"
    assert spec(type="float").bpy_property()[0] == "FloatProperty"
    assert spec(type="bool").bpy_property()[0] == "BoolProperty"
    assert spec(choices=["a", "b"]).bpy_property() == ("EnumProperty", {
        "name": "K", "description": "", "options": set(), "items": [("a", "a", ""), ("b", "b", "")], "default": "a"})
    assert spec(subtype="dir_path").bpy_property()[1]["subtype"] == "DIR_PATH"
    assert spec(subtype="file_path").bpy_property()[1]["subtype"] == "FILE_PATH"
    assert spec(subtype="file_name").bpy_property()[1]["subtype"] == "FILE_NAME"
    assert spec(subtype="hashed_file_path").bpy_property()[1]["subtype"] == "FILE_PATH"
    assert spec(subtype="hashed_file_path").is_path and not spec(subtype="file_name").is_path


def test_defaults_propargs_labels_and_warnings() -> None:
    s = spec(type="int32", default="7", propargs={"min": "1", "max": 9.0, "step": 2}, label="Count", description="d")
    assert s.bpy_property() == ("IntProperty", {"name": "Count", "description": "d", "options": set(), "default": 7,
                                                "min": 1, "max": 9, "step": 2})
    assert jobtypes.setting_spec({"key": "render_output_root", "type": "string"}).label == "Render Output Root"
    ignored = spec(type="int32", choices=["a"])
    assert ignored.kind == "int32" and ignored.warnings
    bad_default = spec(type="int32", default="many")
    assert bad_default.default == 0 and not bad_default.has_default and bad_default.warnings
    assert spec(type="nonsense").kind == "string" and spec(type="nonsense").warnings
    assert spec(choices=["a", "b"], default="b").bpy_property()[1]["default"] == "b"
    assert spec(choices=["a", "b"], default="zzz").bpy_property()[1]["default"] == "a"


def test_visibility_editable_and_link_button() -> None:
    for visible, shown in ((None, True), ("visible", True), ("submission", True), ("web", False), ("hidden", False)):
        assert spec(**({"visible": visible} if visible else {})).shown is shown
    assert spec().editable is True  # the add-on's default, opposite to the OpenAPI document's
    assert spec(editable=False).editable is False
    linked = spec(eval="1", evalInfo={"showLinkButton": True, "description": "one"})
    assert linked.link_button and linked.eval_description == "one" and linked.autoeval_prop == "autoeval_k"
    assert not spec(evalInfo={"showLinkButton": True, "description": ""}).link_button  # nothing to compute


def test_rna_names_and_class_names() -> None:
    assert jobtypes.rna_name("frames", 0) == "frames"
    for bad in ("name", "rna_type", "class", "2d", "with-dash", "autoeval_x"):
        assert jobtypes.rna_name(bad, 4) == "setting_4"
    assert jobtypes.class_name("simple-blender-render") == "FLAMENCO_PEER_PG_SimpleBlenderRender"


def test_which_settings_are_computed_at_submission() -> None:
    hidden = spec(visible="hidden", eval="1")
    linked = spec(eval="1", evalInfo={"showLinkButton": True, "description": ""})
    read_only = spec(editable=False, eval="1")
    editable = spec(eval="1")
    plain = spec()
    assert jobtypes.evaluated_at_submit(hidden, False, "x")
    assert jobtypes.evaluated_at_submit(linked, True, "x") and not jobtypes.evaluated_at_submit(linked, False, "")
    assert jobtypes.evaluated_at_submit(read_only, False, "x")
    assert jobtypes.evaluated_at_submit(editable, False, "") and not jobtypes.evaluated_at_submit(editable, False, "x")
    assert not jobtypes.evaluated_at_submit(plain, False, "")


# --- HTTP client ----------------------------------------------------------------------------

JOB_TYPE = {"name": "echo", "label": "Echo", "etag": "abc", "settings": [{"key": "message", "type": "string"}]}


def test_client_against_a_manager_validated_by_the_openapi_document() -> None:
    with FakeManager([JOB_TYPE]) as manager:
        client = FarmClient(manager.url.replace("http://", ""), what="Flamenco Manager")
        assert client.version()["name"] == "Fake Manager"
        assert client.job_types() == [JOB_TYPE]
        assert client.farm_status() is None  # a Manager has no peer status
        assert client.manager_status() == "idle"
        job = {"name": "j", "type": "echo", "type_etag": "abc", "priority": 50, "submitter_platform": "linux",
               "settings": {"message": "hi"}, "metadata": {}}
        client.check_job(job)
        submitted = client.submit_job(job)
        assert client.job(submitted["id"])["status"] == "queued"
        with pytest.raises(FarmError, match="etag mismatch"):
            client.submit_job({**job, "type_etag": "old"})
        with pytest.raises(FarmError, match="unknown job type"):
            client.submit_job({**job, "type": "nope"})
    assert manager.problems() == []


def test_client_refuses_a_flamenco_of_another_major_version() -> None:
    with FakeManager([], version="2.4") as manager:
        with pytest.raises(FarmError, match="speaks Flamenco API v3"):
            FarmClient(manager.url).version()


def test_client_errors_name_the_address_and_the_fix() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    client = FarmClient(f"http://127.0.0.1:{port}", what="Flamenco Manager", unreachable_hint="Check the URL.")
    with pytest.raises(FarmError) as err:
        client.version()
    assert f"127.0.0.1:{port}" in str(err.value) and "Check the URL." in str(err.value)
    with pytest.raises(FarmError, match="Start it"):
        FarmClient("", unreachable_hint="Start it.").version()
    with pytest.raises(FarmError, match="not a valid address"):
        FarmClient("http://[not-a-host").version()


def test_farm_summary_counts_peers_and_workers() -> None:
    status = {
        "self": {"peer_id": "a", "name": "ws-1", "role": "follower", "eligible": False,
                 "ineligible_reason": "V8 missing", "worker": {"enabled": True, "current_task": None}},
        "coordinator": {"peer_id": "b", "url": "http://10.0.0.2:8780", "epoch": 3},
        "peers": [
            {"peer_id": "b", "name": "render-1", "alive": True, "worker": {"enabled": True, "current_task": "t1"}},
            {"peer_id": "c", "name": "gone", "alive": False, "worker": {"enabled": True, "current_task": None}},
            {"peer_id": "d", "name": "no-worker", "alive": True, "worker": None},
        ],
    }
    s = summarize_peer_status(status)
    assert (s.peers_alive, s.coordinator, s.workers_idle, s.workers_busy) == (3, "render-1", 1, 1)
    assert s.this_peer == "ws-1" and "V8 missing" in s.note


# --- local peer ---------------------------------------------------------------------------


@pytest.mark.parametrize("env", [{}, {"XDG_DATA_HOME": "/srv/xdg"}, {"FLAMENCO_PEER_DATA_DIR": "/srv/peer"}])
def test_default_data_dir_is_the_peers(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for key in ("XDG_DATA_HOME", "FLAMENCO_PEER_DATA_DIR"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert local_peer.default_data_dir() == peer_default_data_dir()
    if "FLAMENCO_PEER_DATA_DIR" not in env:
        assert local_peer._data_dir_without_platformdirs() == peer_default_data_dir()


def test_peer_command_runs_the_repository_peer_with_its_packages(tmp_path: Path) -> None:
    root = local_peer.runtime_root(Path(local_peer.__file__).parent)
    assert root is not None and (root / "peer" / "__main__.py").is_file()
    args, env = local_peer.command(local_peer.StartOptions(
        data_dir=tmp_path, worker=False, host="0.0.0.0", port=0, join_code=" FP1-X ", blender="/opt/b"), root)
    assert args[1:] == ["-m", "peer", "run", "--data-dir", str(tmp_path), "--port", "0", "--host", "0.0.0.0",
                        "--no-worker", "--join-code", "FP1-X", "--blender", "/opt/b"]
    assert env["PYTHONPATH"].split(":")[0] == str(root)


def test_a_peer_that_cannot_start_says_why(tmp_path: Path) -> None:
    addon_dir = Path(local_peer.__file__).parent
    with pytest.raises(local_peer.PeerStartError, match="cannot run"):
        local_peer.start(local_peer.StartOptions(data_dir=tmp_path, python=str(tmp_path / "no-python")), addon_dir)
    # A data dir that is a file: the peer exits at once, and its own message reaches the user.
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(local_peer.PeerStartError, match="cannot create the peer's data dir"):
        local_peer.start(local_peer.StartOptions(data_dir=not_a_dir / "sub"), addon_dir)
    bad_config = tmp_path / "bad"
    bad_config.mkdir()
    (bad_config / "config.toml").write_text("port = 'not a number'\n")
    peer = local_peer.start(local_peer.StartOptions(data_dir=bad_config, python=sys.executable), addon_dir)
    with pytest.raises(local_peer.PeerStartError, match="exited with code") as err:
        peer.wait_ready(20)
    assert "config" in str(err.value)
    assert local_peer.find_running(bad_config) is None
    with pytest.raises(local_peer.PeerStartError, match="no peer inside"):
        local_peer.start(local_peer.StartOptions(data_dir=tmp_path), tmp_path)
