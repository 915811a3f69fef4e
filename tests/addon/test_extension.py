"""The extension: its manifest, the zip `make addon` builds, and installing that zip in Blender."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

from tests.addon.conftest import REPO, requires_bpy, run_in_blender


def _load_build_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_addon", REPO / "scripts" / "build_addon.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_addon"] = module
    spec.loader.exec_module(module)
    return module


build_addon = _load_build_script()
MANIFEST = tomllib.loads((REPO / "blender_manifest.toml").read_text(encoding="utf-8"))
# What the peer imports, and what those need: each must reach every platform.
PEER_DISTRIBUTIONS = {"aiohttp", "msgpack", "zeroconf", "mini-racer", "platformdirs", "ifaddr", "yarl", "multidict",
                      "frozenlist", "propcache", "aiosignal", "aiohappyeyeballs", "attrs", "idna"}


def test_manifest_has_every_required_field() -> None:
    m = MANIFEST
    assert m["schema_version"] == "1.0.0"
    assert m["id"] == "flamenco_peer" and m["type"] == "add-on"
    assert m["version"] and m["name"] and m["tagline"] and m["maintainer"]
    assert m["blender_version_min"] == "4.2.0"
    assert m["license"] == ["SPDX:GPL-3.0-or-later"]
    assert set(m["permissions"]) == {"network", "files"}
    for reason in m["permissions"].values():
        assert 0 < len(reason) <= 64 and not reason.endswith(".")  # Blender's validator rules
    assert m["platforms"] == ["linux-x64", "windows-x64", "macos-arm64", "macos-x64"]
    assert all(w.startswith("./wheels/") and w.endswith(".whl") for w in m["wheels"])


@pytest.mark.parametrize("python", build_addon.PYTHONS)
@pytest.mark.parametrize("platform", sorted(build_addon.TARGETS))
def test_manifest_wheels_give_each_platform_one_wheel_of_every_package(platform: str, python: str) -> None:
    target = build_addon.TARGETS[platform]
    wheels = [w.removeprefix("./wheels/") for w in MANIFEST["wheels"]]
    build_addon.check_one_per_distribution(wheels, target, python)
    accepted = {build_addon._wheel_tags(w)[0] for w in wheels if build_addon.blender_accepts(w, target.system_tag, python)}
    assert PEER_DISTRIBUTIONS <= accepted, f"{platform} / Python {python} lacks {PEER_DISTRIBUTIONS - accepted}"


def test_blender_wheel_matching_rules() -> None:
    accepts = build_addon.blender_accepts
    assert accepts("x-1-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.whl", "linux_x86_64", "3.11")
    assert not accepts("x-1-cp311-cp311-manylinux2014_x86_64.whl", "linux_x86_64", "3.13")
    assert not accepts("x-1-cp311-cp311-win_amd64.whl", "linux_x86_64", "3.11")
    assert accepts("x-1-py3-none-any.whl", "win_amd64", "3.13")
    assert accepts("x-1-cp311-cp311-macosx_10_9_x86_64.whl", "macosx_11_0_x86_64", "3.11")
    assert not accepts("x-1-cp311-cp311-macosx_11_0_arm64.whl", "macosx_11_0_x86_64", "3.11")
    assert accepts("x-1-cp311-cp311-macosx_10_9_universal2.whl", "macosx_11_0_arm64", "3.11")
    assert accepts("x-1-cp38-abi3-win_amd64.whl", "win_amd64", "3.13")


@pytest.fixture(scope="module")
def linux_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make addon`'s script, narrowed to this machine's platform (the full zip is ~120 MB)."""
    out = tmp_path_factory.mktemp("dist") / "flamenco_peer-linux.zip"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build_addon.py"), "--platform", "linux-x64", "--python", "3.11",
         "--output", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    if importlib.util.find_spec("bpy") is not None:
        assert "Success parsing TOML" in proc.stdout  # Blender's own validator accepted it
    return out


@pytest.mark.timeout(300)
def test_zip_layout(linux_zip: Path) -> None:
    with zipfile.ZipFile(linux_zip) as zf:
        names = set(zf.namelist())
        manifest = tomllib.loads(zf.read("blender_manifest.toml").decode())
    assert {"blender_manifest.toml", "__init__.py", "client.py", "local_peer.py", "LICENSE"} <= names
    assert "peer_runtime/peer/__main__.py" in names and "peer_runtime/peer/compiler/host_api.js" in names
    assert "peer_runtime/job_types/simple-blender-render.js" in names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    assert manifest["platforms"] == ["linux-x64"] and "build" not in manifest
    listed = {w.removeprefix("./") for w in manifest["wheels"]}
    assert listed == {n for n in names if n.startswith("wheels/")}
    assert all("linux" in w or "any" in w for w in listed) and any("mini_racer" in w for w in listed)


@requires_bpy
@pytest.mark.timeout(300)
def test_zip_installs_as_extension_and_runs_the_peer_from_its_wheels(linux_zip: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    # The peer runs on the plain interpreter behind the venv: it has none of the
    # peer's packages, so they can only come from the extension's wheels.
    base_python = getattr(sys, "_base_executable", sys.executable)
    r = run_in_blender("extension_install", {"zip": str(linux_zip), "data_dir": str(tmp_path / "peer"),
                                             "python": base_python}, home, timeout=240).result
    assert r["install"] == ["FINISHED"] and r["enabled"]
    assert "FLAMENCO_PEER_PT_farm" in r["types"] and r["ops"]
    extension_site = str(home / ".config" / "blender" / "5.0" / "extensions" / ".local")
    assert r["missing"] == []
    assert r["module_dirs"] and all(d.startswith(extension_site) for d in r["module_dirs"]), r["module_dirs"]
    assert r["runtime_root"].endswith("flamenco_peer/peer_runtime")
    me = r["peer_self"]
    assert me["worker"]["enabled"] is True
    assert me["eligible"] is True, me  # V8 from the mini-racer wheel loads on Blender 5.0
    assert r["after_disable"] == []
