"""blender-render with the real Blender and with scripted fake ones."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from peer.worker.commands import run_command, validate_command
from peer.worker.commands.base import CommandError, WorkerSettings

from .conftest import DATA_DIR, RecordingContext, needs_linux, wait_gone, write_script
from tests.scenes import requires_blender

pytestmark = pytest.mark.timeout(30)


def render_params(blendfile: str | Path, output: Path, frames: str = "1..2", exe: str = "blender") -> dict:
    """Parameters shaped like the ones Flamenco's simple-blender-render job type sends."""
    return {
        "exe": exe,
        "exeArgs": "-b -y -noaudio",
        "argsBefore": [],
        "blendfile": str(blendfile),
        "args": ["--render-output", str(output / "frame_######"), "--render-format", "PNG", "--render-frame", frames],
    }


@pytest.mark.blender
@requires_blender
async def test_real_render_of_two_frames(ctx: RecordingContext, scene_2frames: Path, tmp_path: Path) -> None:
    out = tmp_path / "frames"
    await run_command("blender-render", render_params(scene_2frames, out), ctx)

    expected = [str(out / "frame_000001.png"), str(out / "frame_000002.png")]
    assert ctx.outputs == expected
    assert ctx.steps == 2
    for path in expected:
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert ctx.logs[0].startswith("going to run:\n\n    /")
    assert f"{scene_2frames} --render-output" in ctx.logs[0]
    assert "> Saved: '" in ctx.log_text
    assert "warning" not in ctx.log_text


@pytest.mark.blender
@requires_blender
async def test_a_frame_kept_from_an_interrupted_run_is_still_reported_as_output(
    ctx: RecordingContext, scene_2frames: Path, tmp_path: Path,
) -> None:
    # Flamenco's simple-blender-render renders with use_overwrite = False, so a
    # requeued task skips the frames an interrupted run already wrote. Those
    # frames are still the task's outputs: a worker must ship them.
    out = tmp_path / "frames"
    out.mkdir()
    kept = out / "frame_000001.png"
    kept.write_bytes(b"\x89PNG\r\n\x1a\n written by the interrupted run")
    params = render_params(scene_2frames, out)
    params["args"] = ["--python-expr", "import bpy; bpy.context.scene.render.use_overwrite = False", *params["args"]]
    await run_command("blender-render", params, ctx)

    assert ctx.outputs == [str(kept), str(out / "frame_000002.png")]
    assert kept.read_bytes().endswith(b"written by the interrupted run")  # skipped, not re-rendered
    assert ctx.steps == 2
    assert "warning" not in ctx.log_text


@pytest.mark.blender
@requires_blender
async def test_real_blender_error_line_in_failure(ctx: RecordingContext, tmp_path: Path) -> None:
    broken = tmp_path / "broken.blend"
    broken.write_text("this is not a blend file\n")
    with pytest.raises(CommandError) as info:
        await run_command("blender-render", render_params(broken, tmp_path / "out", frames="1"), ctx)
    first_line, *rest = info.value.message.splitlines()
    assert first_line == (
        "blender-render: command exited abnormally with code 1: "
        f"Error: File format is not supported in file '{broken}'"
    )
    assert rest[0].startswith("last output of Blender (pid ")
    assert "    Blender quit" in rest
    assert ctx.steps == 0 and ctx.outputs == []


@needs_linux
async def test_missing_blendfile_is_reported_before_starting(ctx: RecordingContext, tmp_path: Path) -> None:
    fake = write_script(tmp_path / "blender", "echo started > \"$0.ran\"\n")
    missing = tmp_path / "shots" / "sh010.blend"
    with pytest.raises(CommandError) as info:
        await run_command("blender-render", render_params(missing, tmp_path, exe=str(fake)), ctx)
    assert info.value.message.startswith(f'blender-render: blend file "{missing}" does not exist on this worker;')
    assert not (tmp_path / "blender.ran").exists()
    assert ctx.logs == []


async def test_blender_not_found_at_run_time(ctx: RecordingContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    ctx.settings = WorkerSettings(config_hint="pass --blender /path/to/blender")
    with pytest.raises(CommandError) as info:
        await run_command("blender-render", render_params("", tmp_path), ctx)
    assert info.value.message.startswith(f"blender-render: Blender not found: looked for 'blender' on PATH ({tmp_path}); ")
    assert info.value.message.endswith("or configure the path: pass --blender /path/to/blender")


FAKE_BLENDER_5 = """\
sed -e '/^#/d' '{fixture}'
"""


@needs_linux
async def test_blender_5x_log_format_end_to_end(ctx: RecordingContext, tmp_path: Path) -> None:
    fixture = DATA_DIR / "blender-5.x-log-format-reconstructed.txt"
    fake = write_script(tmp_path / "blender-5", FAKE_BLENDER_5.format(fixture=fixture))
    await run_command("blender-render", render_params("", tmp_path, exe=str(fake)), ctx)
    assert ctx.steps == 3
    assert ctx.outputs == [f"/tmp/flamenco-peer-capture/render/frame_00000{n}.png" for n in (1, 2, 3)]


@needs_linux
async def test_success_without_saved_lines_warns(ctx: RecordingContext, tmp_path: Path) -> None:
    fake = write_script(tmp_path / "blender", "echo 'Blender 9.9'\necho 'Error: Python: Traceback (most recent call last):'\nexit 0\n")
    await run_command("blender-render", render_params("", tmp_path, exe=str(fake)), ctx)
    warning = ctx.logs[-1]
    assert warning.startswith("blender-render: warning: Blender exited successfully but reported no saved files")
    assert "Error: Python: Traceback" in warning and "--python-exit-code" in warning


@needs_linux
async def test_crash_by_signal_is_named(ctx: RecordingContext, tmp_path: Path) -> None:
    fake = write_script(tmp_path / "blender", "echo 'Writing: /tmp/blender.crash.txt'\nkill -SEGV $$\n")
    with pytest.raises(CommandError) as info:
        await run_command("blender-render", render_params("", tmp_path, exe=str(fake)), ctx)
    assert info.value.message.startswith("blender-render: command exited abnormally with code -11 (killed by SIGSEGV)")
    assert "    Writing: /tmp/blender.crash.txt" in info.value.message


@needs_linux
async def test_cancel_kills_blender_and_its_children(ctx: RecordingContext, tmp_path: Path) -> None:
    fake = write_script(tmp_path / "blender", "sleep 30 &\necho \"helper=$!\"\nwait\n")
    task = asyncio.create_task(run_command("blender-render", render_params("", tmp_path, exe=str(fake)), ctx))
    await ctx.wait_for_log("helper=")
    blender_pid = int(ctx.log_text.split("pid=")[1].split(" ")[0])
    helper_pid = int(ctx.log_text.split("helper=")[1].split()[0])
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 2.0
    assert await wait_gone(blender_pid, 2.0)
    assert await wait_gone(helper_pid, 2.0)


@needs_linux
def test_validation_does_not_check_the_blendfile(tmp_path: Path) -> None:
    # The file may still be on its way to this worker when the task is accepted.
    fake = write_script(tmp_path / "blender", "exit 0\n")
    validate_command("blender-render", render_params(tmp_path / "later.blend", tmp_path, exe=str(fake)), WorkerSettings())
