"""Behaviour of the built-in job types beyond the conformance vectors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from peer.compiler import CompiledJob, JobTypeRegistry, compile_job

from .conftest import make_request

BASE_SETTINGS: dict[str, Any] = {
    "frames": "1-10",
    "chunk_size": 5,
    "render_output_path": "/out/{timestamp}/shot/######",
    "blendfile": "/jobs/shot.flamenco.blend",
    "fps": 24,
    "format": "PNG",
    "image_file_extension": ".png",
    "has_previews": False,
    "scene": "",
}


Render = Callable[..., CompiledJob]


@pytest.fixture()
def render(builtin_registry: JobTypeRegistry) -> Render:
    script = builtin_registry.get("simple-blender-render")
    assert script is not None

    def run(**changes: Any) -> CompiledJob:
        return compile_job(script, make_request(script.name, {**BASE_SETTINGS, **changes}))

    return run


def video_params(job: CompiledJob) -> dict[str, Any]:
    [video] = [t for t in job.tasks if t.name == "preview-video"]
    return video.commands[0].parameters


def test_paths_timestamp_and_flamenco_suffix(render: Render) -> None:
    job = render()
    assert job.settings["render_output_path"] == "/out/2006-01-02_150405/shot/######"
    assert [t.name for t in job.tasks] == ["render-1-5", "render-6-10", "preview-video"]
    assert job.tasks[0].commands[0].parameters["args"][0] == "--python-expr"  # empty scene: no --scene
    params = video_params(job)
    assert params["outputFile"] == "/out/2006-01-02_150405/shot/shot-1-10.mp4"  # ".flamenco" dropped
    assert params["inputGlob"] == "/out/2006-01-02_150405/shot/*.png"


def test_other_placeholders_are_kept(render: Render) -> None:
    job = render(render_output_path="{render}/{timestamp}/{unknown}/######")
    assert job.settings["render_output_path"] == "{render}/2006-01-02_150405/{unknown}/######"


def test_exr_without_previews_has_no_video(render: Render) -> None:
    job = render(format="OPEN_EXR", image_file_extension=".exr")
    assert [t.name for t in job.tasks] == ["render-1-5", "render-6-10"]
    assert any("preview video" in m for m in job.messages)


def test_exr_with_previews_uses_jpegs(render: Render) -> None:
    job = render(format="OPEN_EXR_MULTILAYER", image_file_extension=".exr", has_previews=True)
    assert video_params(job)["inputGlob"].endswith("/*.jpg")


def test_no_fps_means_no_video(render: Render) -> None:
    job = render(fps=0)
    assert [t.name for t in job.tasks] == ["render-1-5", "render-6-10"]


def test_fractional_fps_and_scene(render: Render) -> None:
    job = render(fps=29.97, scene="Main")
    assert video_params(job)["fps"] == 29.97
    assert video_params(job)["args"][-3:] == ["-r", 29.97, "-y"]
    assert job.tasks[0].commands[0].parameters["args"][:2] == ["--scene", "Main"]


def test_steps_total(render: Render) -> None:
    job = render(frames="1-7", chunk_size=3)
    assert [(t.name, t.steps_total) for t in job.tasks] == [
        ("render-1-3", 3),
        ("render-4-6", 3),
        ("render-7", 1),
        ("preview-video", 1),  # a command without steps still counts as one
    ]
