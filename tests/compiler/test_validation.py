"""Submitted settings against the declared settings of a job type."""

from __future__ import annotations

from typing import Any

from peer.compiler import JobTypeRegistry, validate_settings

JOB_TYPE: dict[str, Any] = {
    "settings": [
        {"key": "frames", "type": "string", "required": True},
        {"key": "chunk_size", "type": "int32", "default": 1},
        {"key": "fps", "type": "float"},
        {"key": "has_previews", "type": "bool"},
        {"key": "mode", "type": "string", "choices": ["images", "video"]},
    ]
}


def test_valid_settings_pass_and_undeclared_ones_pass_through() -> None:
    settings = {"frames": "1-10", "chunk_size": 3.0, "fps": 24, "has_previews": False, "mode": "video", "x": [1]}
    assert validate_settings(JOB_TYPE, settings) == []
    assert validate_settings(JOB_TYPE, {"frames": "1"}) == []  # optional settings may be left out


def test_wrong_types_are_named() -> None:
    problems = validate_settings(
        JOB_TYPE, {"frames": 5, "chunk_size": "abc", "fps": "24", "has_previews": 1, "mode": "audio"}
    )
    assert problems == [
        "setting 'frames' must be a string, got number 5",
        "setting 'chunk_size' must be an integer (int32), got string \"abc\"",
        "setting 'fps' must be a number (float), got string \"24\"",
        "setting 'has_previews' must be true or false (bool), got number 1",
        "setting 'mode' must be one of \"images\", \"video\", got string \"audio\"",
    ]
    assert validate_settings(JOB_TYPE, {"frames": "1", "chunk_size": 2.5}) == [
        "setting 'chunk_size' must be an integer (int32), got number 2.5"
    ]
    assert validate_settings(JOB_TYPE, {"frames": "1", "chunk_size": True}) == [
        "setting 'chunk_size' must be an integer (int32), got boolean true"
    ]
    assert "between -2147483648 and 2147483647" in validate_settings(JOB_TYPE, {"frames": "1", "chunk_size": 2**31})[0]


def test_required_settings_must_be_present_and_not_empty() -> None:
    assert validate_settings(JOB_TYPE, {}) == ["setting 'frames' is required, but the job does not have it"]
    assert validate_settings(JOB_TYPE, {"frames": None}) == ["setting 'frames' is required, but the job does not have it"]
    assert validate_settings(JOB_TYPE, {"frames": ""}) == ["setting 'frames' is required, but it is empty"]


def test_what_the_blender_addon_sends_is_valid(builtin_registry: JobTypeRegistry) -> None:
    script = builtin_registry.get("simple-blender-render")
    assert script is not None
    # Every key, as the add-on sends them (values as Blender produces them).
    settings = {
        "frames": "1-250",
        "chunk_size": 5,
        "render_output_root": "/render/",
        "add_path_components": 0,
        "render_output_path": "/render/job/{timestamp}/######",
        "blendfile": "/render/job/scene.flamenco.blend",
        "fps": 24.0,
        "format": "PNG",
        "image_file_extension": ".png",
        "has_previews": False,
        "scene": "Scene",
    }
    assert validate_settings(script.job_type, settings) == []
