"""`frames-to-video`: turn rendered frames into a video with FFmpeg.

CLI (Linux/macOS): exe + exeArgs + argsBefore
    + -r <fps> -pattern_type glob -i <inputGlob> + args + -r <fps> + outputFile
FFmpeg on Windows has no glob support, so there the worker expands the glob
itself and feeds FFmpeg a concat index file instead (as Flamenco does).
"""

from __future__ import annotations

import asyncio
import glob
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import executables, params
from .base import CommandContext, CommandError, WorkerSettings
from .runner import run_program

NAME = "frames-to-video"
INDEX_FILE_NAME = "ffmpeg-file-index.txt"


@dataclass(frozen=True)
class FramesToVideo:
    exe: str
    exe_args: list[str]
    args_before: list[str]
    fps: float | int
    input_glob: str
    output_file: str
    args: list[str]
    windows: bool = sys.platform == "win32"

    @property
    def fps_text(self) -> str:
        return params.go_format(self.fps)

    def cli(self, index_file: str | None = None) -> list[str]:
        """The command line; on Windows `index_file` replaces the glob input."""
        if self.windows:
            if index_file is None:
                raise ValueError("the Windows command line needs the concat index file")
            source = ["-f", "concat", "-safe", "0", "-i", index_file]
        else:
            source = ["-pattern_type", "glob", "-i", self.input_glob]
        return [
            self.exe,
            *self.exe_args,
            *self.args_before,
            "-r", self.fps_text,
            *source,
            *self.args,
            "-r", self.fps_text,
            self.output_file,
        ]

    async def run(self, ctx: CommandContext) -> None:
        # Off the event loop: frames often live on a network share.
        frames = sorted(await asyncio.to_thread(glob.glob, self.input_glob))
        if not frames:
            raise CommandError(
                f"{NAME}: no files found at {self.input_glob}; check that the frames were "
                "rendered to this path and are visible on this worker"
            )
        out_dir = Path(self.output_file).parent
        try:
            await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
        except OSError as ex:
            raise CommandError(
                f'{NAME}: cannot create the output directory "{out_dir}": {ex.strerror}; '
                "choose an output path this worker can write to"
            ) from ex

        if not self.windows:
            await run_program(NAME, self.cli(), ctx, program="FFmpeg")
            return

        index = Path(self.input_glob).parent / INDEX_FILE_NAME
        await asyncio.to_thread(index.write_text, concat_index(frames, self.fps), encoding="utf-8")
        try:
            await run_program(NAME, self.cli(str(index)), ctx, program="FFmpeg")
        finally:
            index.unlink(missing_ok=True)


def concat_index(files: list[str], fps: float | int) -> str:
    """FFmpeg concat-demuxer input: each file shown for 1/fps seconds."""
    duration = params.go_format(1 / fps)
    lines = []
    for name in files:
        quoted = name.replace("'", "'\\''")  # the demuxer's shell-like quoting
        lines.append(f"file '{quoted}'\nduration {duration}\n")
    return "".join(lines)


def parse_params(raw: Any, settings: WorkerSettings) -> FramesToVideo:
    """Check the parameters without touching the disk (the exe is not looked up)."""
    p: Mapping[str, Any] = params.require_mapping(NAME, raw)
    exe = params.mandatory_str(NAME, p, "exe")
    fps = params.number(NAME, p, "fps")
    if fps <= 0:
        raise params.invalid(NAME, "fps", fps, "must be a frame rate greater than zero, e.g. 24")
    input_glob = params.mandatory_str(NAME, p, "inputGlob")
    output_file = params.mandatory_str(NAME, p, "outputFile")
    return FramesToVideo(
        exe=executables.configured_exe(exe, executables.FFMPEG, settings.ffmpeg_exe),
        exe_args=params.shell_split(NAME, p, "exeArgs"),
        args_before=params.string_list(NAME, p, "argsBefore"),
        fps=fps,
        input_glob=input_glob,
        output_file=output_file,
        args=params.string_list(NAME, p, "args"),
    )


def prepare(raw: Any, settings: WorkerSettings) -> FramesToVideo:
    command = parse_params(raw, settings)
    exe = executables.resolve(NAME, command.exe, executables.FFMPEG, settings)
    return replace(command, exe=exe)

