"""Flamenco's two-way path variables: which paths are on shared storage and how they map per platform."""

from __future__ import annotations

from pathlib import Path

import pytest

from peer.files.shared_storage import PathVariables, VariablesError, path_is_under, to_platform_separators

CONFIG = {
    "render": {"is_twoway": True, "values": [
        {"platform": "linux", "value": "/shared/flamenco/render/"},
        {"platform": "windows", "value": "R:\\"},
        {"platform": "darwin", "value": "/Volumes/render"},
    ]},
    "render_long": {"is_twoway": True, "values": [
        {"platform": "linux", "value": "/shared/flamenco/render/long"},
        {"platform": "windows", "value": "R:\\long"},
    ]},
    "charge": {"is_twoway": True, "values": [
        {"platforms": ["linux", "darwin"], "value": "/mnt/charge"},
        {"platform": "windows", "value": "P:\\charge"},
        {"platform": "linux", "audience": "users", "value": "/home/artist/charge"},
    ]},
    "blender": {"values": [{"platform": "all", "value": "blender"},
                           {"platform": "windows", "value": "C:\\Blender\\blender.exe"}]},
}


@pytest.fixture
def variables() -> PathVariables:
    return PathVariables.from_config(CONFIG)


def test_paths_under_a_two_way_variable_are_on_shared_storage(variables: PathVariables) -> None:
    assert variables.is_on_shared_storage("/shared/flamenco/render/shot/a.blend", "linux")
    assert variables.is_on_shared_storage("r:\\shot\\a.blend", "windows")  # case and separators ignored
    assert variables.is_on_shared_storage("R:/shot/a.blend", "windows")
    assert not variables.is_on_shared_storage("/shared/flamenco/render2/a.blend", "linux")  # folder boundary
    assert not variables.is_on_shared_storage("/backup/shared/flamenco/render/a", "linux")  # prefixes only
    assert not variables.is_on_shared_storage("/home/me/a.blend", "linux")
    assert not variables.is_on_shared_storage("/Volumes/render/a", "linux")  # darwin's name, not linux's
    assert variables.is_on_shared_storage("/Volumes/render/a", "darwin")
    assert variables.is_on_shared_storage(Path("/mnt/charge/x"), "linux")
    assert sorted(variables.shared_roots("linux")) == ["/mnt/charge", "/shared/flamenco/render",
                                                        "/shared/flamenco/render/long"]


def test_to_variable_form_takes_the_longest_matching_value(variables: PathVariables) -> None:
    assert variables.to_variable_form("/shared/flamenco/render/long/x.png", "linux") == "{render_long}/x.png"
    assert variables.to_variable_form("/shared/flamenco/render/x.png", "linux") == "{render}/x.png"
    assert variables.to_variable_form("R:\\shot\\x.png", "windows") == "{render}\\shot\\x.png"
    assert variables.to_variable_form("/elsewhere/x.png", "linux") == "/elsewhere/x.png"
    # The users' audience has its own value.
    assert variables.to_variable_form("/home/artist/charge/x", "linux", audience="users") == "{charge}/x"
    assert variables.to_variable_form("/home/artist/charge/x", "linux") == "/home/artist/charge/x"


def test_for_platform_expands_and_converts_separators(variables: PathVariables) -> None:
    # Flamenco's varrepl_test example.
    assert variables.for_platform("{render_long}/x", "linux") == "/shared/flamenco/render/long/x"
    assert variables.for_platform("{render_long}/x/y.png", "windows") == "R:\\long\\x\\y.png"
    assert variables.for_platform("{render}\\shot\\x.png", "linux") == "/shared/flamenco/render/shot/x.png"
    assert variables.for_platform("{charge}/a/b", "windows") == "P:\\charge\\a\\b"
    # One-way variables are replaced without touching separators; unknown ones stay.
    assert variables.for_platform("{blender} -b", "windows") == "C:\\Blender\\blender.exe -b"
    assert variables.for_platform("{nope}/x", "linux") == "{nope}/x"
    filt = "pad=ceil(iw/2)*2:ceil(ih/2)*2"
    assert variables.for_platform(filt, "windows") == filt
    # A path still in the manager's form gets the worker's prefix.
    assert variables.for_platform("/mnt/charge/shot/x.png", "windows", from_platform="linux") == "P:\\charge\\shot\\x.png"
    assert variables.for_platform("/other/x.png", "windows", from_platform="linux") == "/other/x.png"


def test_round_trip_between_platforms(variables: PathVariables) -> None:
    form = variables.to_variable_form("R:\\long\\shot\\0001.png", "windows")
    assert form == "{render_long}\\shot\\0001.png"
    assert variables.for_platform(form, "linux") == "/shared/flamenco/render/long/shot/0001.png"
    assert variables.for_platform(form, "windows") == "R:\\long\\shot\\0001.png"


def test_separator_conversion_details() -> None:
    assert to_platform_separators("F:x/y", "windows") == "F:\\x\\y"
    assert to_platform_separators("//server/share/x", "windows") == "\\\\server\\share\\x"
    assert to_platform_separators("a\\b", "linux") == "a/b"


@pytest.mark.parametrize(("config", "message"), [
    ([], "must map variable names"),
    ({"bad name": {}}, "a name is letters"),
    ({"x": []}, "expected"),
    ({"x": {"is_twoway": "yes"}}, "true or false"),
    ({"x": {"values": {}}}, "must be a list"),
    ({"x": {"values": [{"platform": "linux"}]}}, "'value' must be a string"),
    ({"x": {"values": [{"platform": "amiga", "value": "/"}]}}, "platform must be one of"),
    ({"x": {"values": [{"platform": "linux", "audience": "cats", "value": "/"}]}}, "'audience' must be one of"),
    ({"x": {"values": [{"platforms": [], "value": "/"}]}}, "non-empty list"),
])
def test_malformed_configuration_says_what_is_wrong(config: object, message: str) -> None:
    with pytest.raises(VariablesError, match=message):
        PathVariables.from_config(config)


def test_path_is_under_roots() -> None:
    assert path_is_under(Path("/mnt/a/b"), ["/mnt/a/"])
    assert not path_is_under(Path("/mnt/ab/b"), ["/mnt/a"])
    assert not path_is_under(Path("/mnt/a/b"), [])
