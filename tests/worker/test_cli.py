"""Command lines built by blender-render and frames-to-video (no programs run)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from peer.worker.commands import blender, ffmpeg
from peer.worker.commands.base import WorkerSettings

pytestmark = pytest.mark.timeout(10)


def blender_cli(settings: WorkerSettings = WorkerSettings(), **params: object) -> list[str]:
    return blender.parse_params(params, settings).cli()


def test_blender_cli_order() -> None:
    assert blender_cli(
        exe="/path/to/blender",
        exeArgs="--background -y",
        argsBefore=["--factory-startup"],
        blendfile="/render/shot 10/scene.blend",
        args=["--render-output", "/render/out/######", "--render-format", "PNG", "--render-frame", "1..4"],
    ) == [
        "/path/to/blender", "--background", "-y", "--factory-startup",
        "/render/shot 10/scene.blend",
        "--render-output", "/render/out/######", "--render-format", "PNG", "--render-frame", "1..4",
    ]


def test_blender_exe_args_are_shell_split() -> None:
    # The vector from Flamenco's own tests: one quoted argument with spaces
    # and escaped quotes stays one argument.
    cli = blender_cli(
        exe="blender",
        exeArgs=' --factory-startup --python-expr "import bpy; print(\\"hello world\\")"',
        blendfile="",
    )
    assert cli == ["blender", "--factory-startup", "--python-expr", 'import bpy; print("hello world")']


def test_blender_empty_blendfile_is_left_out() -> None:
    assert blender_cli(exe="blender", blendfile="", args=["--python", "x.py"]) == ["blender", "--python", "x.py"]


def test_blender_missing_lists_are_empty_and_numbers_formatted() -> None:
    assert blender_cli(exe="blender", blendfile="a.blend", args=["--render-frame", 12, "-t", 2.0, 0.5]) == [
        "blender", "a.blend", "--render-frame", "12", "-t", "2", "0.5",
    ]


def test_blender_bare_name_uses_configured_executable() -> None:
    settings = WorkerSettings(blender_exe="/opt/blender-4.2/blender")
    assert blender_cli(settings, exe="blender", blendfile="")[0] == "/opt/blender-4.2/blender"
    # An explicit path from the job is respected.
    assert blender_cli(settings, exe="/usr/bin/blender", blendfile="")[0] == "/usr/bin/blender"


def ffmpeg_command(**overrides: object) -> ffmpeg.FramesToVideo:
    params: dict[str, object] = {
        "exe": "ffmpeg",
        "exeArgs": "-v quiet",
        "argsBefore": ["-hide_banner"],
        "fps": 24,
        "inputGlob": "/render/out/*.png",
        "outputFile": "/render/out/video.mp4",
        "args": ["-c:v", "h264", "-crf", 20, "-pix_fmt", "yuv420p", "-y"],
    }
    params.update(overrides)
    return ffmpeg.parse_params(params, WorkerSettings())


def test_ffmpeg_cli_linux() -> None:
    assert replace(ffmpeg_command(), windows=False).cli() == [
        "ffmpeg", "-v", "quiet", "-hide_banner",
        "-r", "24", "-pattern_type", "glob", "-i", "/render/out/*.png",
        "-c:v", "h264", "-crf", "20", "-pix_fmt", "yuv420p", "-y",
        "-r", "24", "/render/out/video.mp4",
    ]


@pytest.mark.parametrize(("fps", "text"), [(24, "24"), (24.0, "24"), (23.976, "23.976"), (29.97, "29.97"), (12.5, "12.5")])
def test_ffmpeg_fps_is_formatted_minimally(fps: float, text: str) -> None:
    cli = replace(ffmpeg_command(fps=fps), windows=False).cli()
    assert cli[cli.index("-pattern_type") - 1] == text
    assert cli[-2] == text


def test_ffmpeg_cli_windows_uses_concat_index() -> None:
    windows = replace(ffmpeg_command(exeArgs="", argsBefore=[], args=[]), windows=True)
    assert windows.cli("C:/render/out/ffmpeg-file-index.txt") == [
        "ffmpeg", "-r", "24", "-f", "concat", "-safe", "0", "-i", "C:/render/out/ffmpeg-file-index.txt",
        "-r", "24", "/render/out/video.mp4",
    ]


def test_concat_index_quotes_and_durations() -> None:
    text = ffmpeg.concat_index(["C:/out/frame_0001.png", "C:/out/it's_0002.png"], 25)
    assert text == (
        "file 'C:/out/frame_0001.png'\nduration 0.04\n"
        "file 'C:/out/it'\\''s_0002.png'\nduration 0.04\n"
    )


def test_ffmpeg_bare_name_uses_configured_executable() -> None:
    cmd = ffmpeg.parse_params(
        {"exe": "ffmpeg", "fps": 24, "inputGlob": "*.png", "outputFile": "x.mp4"},
        WorkerSettings(ffmpeg_exe="/opt/ffmpeg/bin/ffmpeg"),
    )
    assert cmd.exe == "/opt/ffmpeg/bin/ffmpeg"
