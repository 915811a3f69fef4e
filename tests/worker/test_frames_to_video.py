"""frames-to-video with the real FFmpeg."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from peer.worker.commands import run_command
from peer.worker.commands.base import CommandError

from .conftest import RecordingContext
from tests.scenes import requires_ffmpeg

pytestmark = [pytest.mark.timeout(30), requires_ffmpeg]


def make_frames(directory: Path, count: int) -> None:
    """PNG frames from FFmpeg's test pattern, so this test does not need Blender."""
    directory.mkdir(parents=True)
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=24",
         "-frames:v", str(count), str(directory / "frame_%06d.png")],
        check=True, timeout=20, stdin=subprocess.DEVNULL,
    )


def frame_count(video: Path) -> int:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_frames",
         "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0", str(video)],
        check=True, capture_output=True, text=True, timeout=20,
    ).stdout
    return int(out.strip())


def params(frames: Path, output: Path, fps: float = 24) -> dict:
    return {
        "exe": "ffmpeg",
        "exeArgs": "-v warning",
        "argsBefore": [],
        "fps": fps,
        "inputGlob": str(frames / "*.png"),
        "outputFile": str(output),
        "args": ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", 20, "-y"],
    }


async def test_frames_become_a_video(ctx: RecordingContext, tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    make_frames(frames, 5)
    video = tmp_path / "not" / "yet" / "there" / "video.mp4"
    await run_command("frames-to-video", params(frames, video, fps=24.0), ctx)
    assert frame_count(video) == 5
    assert "-r 24 -pattern_type glob -i " in ctx.logs[0]


async def test_fractional_fps(ctx: RecordingContext, tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    make_frames(frames, 3)
    video = tmp_path / "video.mp4"
    await run_command("frames-to-video", params(frames, video, fps=23.976), ctx)
    assert frame_count(video) == 3
    assert " -r 23.976 " in ctx.logs[0]


async def test_no_matching_frames(ctx: RecordingContext, tmp_path: Path) -> None:
    with pytest.raises(CommandError) as info:
        await run_command("frames-to-video", params(tmp_path, tmp_path / "v.mp4"), ctx)
    assert info.value.message.startswith(f"frames-to-video: no files found at {tmp_path}/*.png")
    assert ctx.logs == []  # FFmpeg was not started


async def test_ffmpeg_failure_shows_its_output(ctx: RecordingContext, tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    make_frames(frames, 2)
    bad = params(frames, tmp_path / "v.mp4")
    bad["args"] = ["-c:v", "no-such-encoder"]
    with pytest.raises(CommandError) as info:
        await run_command("frames-to-video", bad, ctx)
    msg = info.value.message
    assert msg.startswith("frames-to-video: command exited abnormally with code ")
    assert "no-such-encoder" in msg
    assert "last output of FFmpeg (pid " in msg
