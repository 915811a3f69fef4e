"""`ffmpeg-encode`: encode one output file from mapped input streams.

Modelled on Sisyphus' ffmpeg module: inputs, *source maps* (which input
streams go into the output, in output order) and *output maps* (options for
one output stream, addressed by type and index among the output streams of
that type). Parameters:

    exe            "ffmpeg" (default; means the worker's configured FFmpeg)
    sources        ["/abs/input.mkv", ...]                       input #0, #1, ...
    sourceMaps     [{"source": 0, "specifier": "a", "stream": 1}, ...]
    outputMaps     [{"specifier": "a", "stream": 0, "options": {"codec": "libopus", "b": "128k"}}]
    outputFile     "/abs/output.mkv" (the extension picks the container)
    overwrite      false (default): an existing outputFile is an error
    progressSteps  0 (default): report this many steps over the encode

CLI: exe -hide_banner -nostdin -nostats -y [-progress pipe:1 -stats_period 5]
         -i <source>... -map <source>:<specifier>:<stream>...
         -<option>:<specifier>:<stream> <value>... <partial file>

FFmpeg writes `<outputFile stem>.partial-<random><ext>` beside outputFile,
which is renamed to outputFile when FFmpeg succeeds and deleted when it
fails or the task is cancelled.

The argv is built here, never by a shell, and every parameter is checked in
`prepare` before anything runs.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from . import executables, params
from . import structured_params as sp
from .base import CommandContext, CommandError, WorkerSettings
from .files import check_output_file, make_output_dir
from .runner import run_program

NAME = "ffmpeg-encode"

# FFmpeg's stream type letters: video, audio, subtitle, data, attachment.
STREAM_TYPES: Mapping[str, str] = {"v": "video", "a": "audio", "s": "subtitle", "d": "data", "t": "attachment"}

# An option name as FFmpeg spells it, without the leading "-" and without a
# stream specifier (this command adds ":<type>:<index>" itself).
_OPTION_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*\Z")

# Options that act on a whole input or output file, or on FFmpeg itself.
# With a stream specifier they are silently ignored or misread by FFmpeg,
# and the ones this command controls (inputs, maps, overwrite, progress)
# would contradict its parameters.
FILE_LEVEL_OPTIONS = frozenset({
    "i", "y", "n", "f", "map", "map_metadata", "map_chapters", "ss", "sseof", "t", "to", "fs",
    "progress", "stats_period", "nostdin", "filter_complex", "filter_complex_script", "lavfi",
})

PROGRESS_PERIOD_S = 5
MAX_PROGRESS_STEPS = 10_000
_SOURCE_MAP_KEYS = ("source", "specifier", "stream")
_OUTPUT_MAP_KEYS = ("specifier", "stream", "options")
_DURATION = re.compile(r"^\s*Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")


@dataclass(frozen=True)
class SourceMap:
    source: int
    specifier: str
    stream: int

    def arg(self) -> str:
        return f"{self.source}:{self.specifier}:{self.stream}"


@dataclass(frozen=True)
class OutputMap:
    specifier: str
    stream: int
    options: tuple[tuple[str, str], ...]  # (name, value as FFmpeg reads it), in the job's order

    def args(self) -> list[str]:
        out: list[str] = []
        for name, value in self.options:
            out += [f"-{name}:{self.specifier}:{self.stream}", value]
        return out


@dataclass(frozen=True)
class FFmpegEncode:
    exe: str
    sources: tuple[str, ...]
    source_maps: tuple[SourceMap, ...]
    output_maps: tuple[OutputMap, ...]
    output_file: str
    overwrite: bool
    progress_steps: int

    def cli(self, write_to: str | None = None) -> list[str]:
        """The command line; FFmpeg writes to `write_to` (default: outputFile)."""
        # -y: the file FFmpeg writes is this task's own partial file; whether
        # outputFile may be replaced is decided when the partial file is moved.
        argv = [self.exe, "-hide_banner", "-nostdin", "-nostats", "-y"]
        if self.progress_steps:
            # Key=value lines on stdout, one block per period: progress
            # without FFmpeg's carriage-return status line.
            argv += ["-progress", "pipe:1", "-stats_period", str(PROGRESS_PERIOD_S)]
        for source in self.sources:
            argv += ["-i", source]
        for source_map in self.source_maps:
            argv += ["-map", source_map.arg()]
        for output_map in self.output_maps:
            argv += output_map.args()
        argv.append(write_to or self.output_file)
        return argv

    def partial_file(self) -> str:
        """Where FFmpeg writes until it succeeds: beside outputFile, same extension.

        So outputFile only ever appears complete, and a failed or cancelled
        encode leaves nothing at the path the next step reads.
        """
        stem, ext = os.path.splitext(self.output_file)
        return f"{stem}.partial-{secrets.token_hex(4)}{ext}"

    async def run(self, ctx: CommandContext) -> None:
        await asyncio.to_thread(self._check_files)
        partial = self.partial_file()
        progress = EncodeProgress(ctx, self.progress_steps)
        try:
            await run_program(NAME, self.cli(partial), ctx, program="FFmpeg", on_line=progress.on_line)
            await asyncio.to_thread(self._finish, partial)
        except BaseException:
            await asyncio.to_thread(_remove_quietly, partial)
            raise
        await ctx.log(f'{NAME}: wrote "{self.output_file}"')
        progress.finish()

    def _check_files(self) -> None:
        """Check inputs and output before FFmpeg starts."""
        for index, source in enumerate(self.sources):
            if not os.path.exists(source):
                raise CommandError(
                    f'{NAME}: source {index} "{source}" does not exist; check the job\'s paths '
                    "and that the file is visible on this worker"
                )
            if os.path.isdir(source):
                raise CommandError(f'{NAME}: source {index} "{source}" is a directory, not a media file')
        self._check_output()
        make_output_dir(NAME, self.output_file)

    def _check_output(self) -> None:
        check_output_file(NAME, self.output_file, self.overwrite)

    def _finish(self, partial: str) -> None:
        # Checked again: the output may have appeared while FFmpeg ran.
        self._check_output()
        os.replace(partial, self.output_file)


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class EncodeProgress:
    """Turns FFmpeg's `-progress` output into `steps` evenly spread steps.

    The total duration is the longest input's `Duration:` line; the position
    is `out_time_us`. Inputs without a known duration (streams, lavfi) give
    no intermediate progress, and `finish` reports the remaining steps.
    """

    def __init__(self, ctx: CommandContext, steps: int) -> None:
        self._ctx = ctx
        self._steps = steps
        self._reported = 0
        self._duration_us = 0

    def on_line(self, line: str) -> None:
        if not self._steps:
            return
        match = _DURATION.match(line)
        if match:
            hours, minutes, seconds = match.groups()
            duration = (int(hours) * 3600 + int(minutes) * 60 + float(seconds)) * 1_000_000
            self._duration_us = max(self._duration_us, int(duration))
            return
        if line.startswith("out_time_us=") and self._duration_us > 0:
            try:
                position = int(line.partition("=")[2])
            except ValueError:
                return  # "N/A" before the first packet
            # The last step is kept for `finish`: only a clean exit completes the command.
            target = min(self._steps - 1, math.floor(position / self._duration_us * self._steps))
            self._advance(target)

    def finish(self) -> None:
        self._advance(self._steps)

    def _advance(self, target: int) -> None:
        while self._reported < target:
            self._reported += 1
            self._ctx.step()


def _option_value(where: str, value: Any) -> str:
    """An option value as FFmpeg reads it; objects become `k=v:k=v` (as -x265-params wants)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise params.invalid(NAME, where, value, "must be a finite number")
        return params.go_format(value)
    if isinstance(value, Mapping):
        parts: list[str] = []
        for key, item in value.items():
            if not _OPTION_NAME.match(str(key)):
                raise params.invalid(
                    NAME, f"{where}.{key}", key, "must be a name of letters, digits, '-' and '_'"
                )
            text = _option_value(f"{where}.{key}", item)
            if isinstance(item, Mapping) or ":" in text or "=" in text:
                raise params.invalid(
                    NAME, f"{where}.{key}", item,
                    "must be a plain value without ':' or '=' (they separate the key=value pairs)",
                )
            parts.append(f"{key}={text}")
        if not parts:
            raise params.invalid(NAME, where, value, "must not be an empty object")
        return ":".join(parts)
    raise params.invalid(
        NAME, where, value, "must be a string, a number, true/false, or an object of key=value pairs"
    )


def _options(where: str, raw: Any) -> tuple[tuple[str, str], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise params.invalid(NAME, where, raw, 'must be an object like {"codec": "libx264", "crf": 20}')
    out: list[tuple[str, str]] = []
    for name, value in raw.items():
        option_where = f"{where}.{name}"
        bare = name[1:] if isinstance(name, str) and name.startswith("-") else name
        if not isinstance(bare, str) or not _OPTION_NAME.match(bare):
            raise params.invalid(
                NAME, option_where, name,
                "must be an FFmpeg option name such as \"codec\" or \"crf\", without a stream "
                "specifier (the worker adds one)",
            )
        if bare in FILE_LEVEL_OPTIONS:
            raise params.invalid(
                NAME, option_where, name,
                "applies to a whole file, not one stream; inputs, maps and overwrite have their own "
                "parameters",
            )
        out.append((bare, _option_value(option_where, value)))
    return tuple(out)


def _specifier(where: str, value: Any) -> str:
    if value not in STREAM_TYPES:
        known = ", ".join(f'"{k}" ({v})' for k, v in STREAM_TYPES.items())
        raise params.invalid(NAME, where, value, f"must be one of {known}")
    return value


def _source_maps(p: Mapping[str, Any], source_count: int) -> tuple[SourceMap, ...]:
    out: list[SourceMap] = []
    for index, item in enumerate(sp.object_list(NAME, p, "sourceMaps", required=True)):
        where = f"sourceMaps[{index}]"
        sp.reject_unknown_keys(NAME, where, item, _SOURCE_MAP_KEYS)
        for key in _SOURCE_MAP_KEYS:
            if key not in item:
                raise params.missing(NAME, f"{where}.{key}")
        source = sp.whole_number(NAME, f"{where}.source", item["source"])
        if source >= source_count:
            raise params.invalid(
                NAME, f"{where}.source", source,
                f"there are only {source_count} sources (numbered from 0)",
            )
        specifier = _specifier(f"{where}.specifier", item["specifier"])
        stream = sp.whole_number(NAME, f"{where}.stream", item["stream"])
        out.append(SourceMap(source, specifier, stream))
    return tuple(out)


def _output_maps(p: Mapping[str, Any], source_maps: tuple[SourceMap, ...]) -> tuple[OutputMap, ...]:
    outputs_per_type: dict[str, int] = {}
    for source_map in source_maps:
        outputs_per_type[source_map.specifier] = outputs_per_type.get(source_map.specifier, 0) + 1
    seen: set[tuple[str, int]] = set()
    out: list[OutputMap] = []
    for index, item in enumerate(sp.object_list(NAME, p, "outputMaps", required=False)):
        where = f"outputMaps[{index}]"
        sp.reject_unknown_keys(NAME, where, item, _OUTPUT_MAP_KEYS)
        for key in ("specifier", "stream"):
            if key not in item:
                raise params.missing(NAME, f"{where}.{key}")
        specifier = _specifier(f"{where}.specifier", item["specifier"])
        stream = sp.whole_number(NAME, f"{where}.stream", item["stream"])
        available = outputs_per_type.get(specifier, 0)
        if stream >= available:
            raise params.invalid(
                NAME, f"{where}.stream", stream,
                f"the output has {available} {STREAM_TYPES[specifier]} stream(s) from sourceMaps "
                "(numbered from 0 per type)",
            )
        if (specifier, stream) in seen:
            raise params.invalid(
                NAME, where, dict(item),
                f"output stream {specifier}:{stream} already has options; merge the two entries",
            )
        seen.add((specifier, stream))
        out.append(OutputMap(specifier, stream, _options(f"{where}.options", item.get("options"))))
    return tuple(out)


def parse_params(raw: Any, settings: WorkerSettings) -> FFmpegEncode:
    """Check every parameter without touching the disk (the exe is not looked up)."""
    p: Mapping[str, Any] = params.require_mapping(NAME, raw)
    exe = params.optional_str(NAME, p, "exe") or "ffmpeg"
    # Absolute paths also mean no file name can pass for an option ("-i")
    # or an FFmpeg protocol ("concat:", "http://").
    sources = sp.absolute_path_list(NAME, p, "sources")
    source_maps = _source_maps(p, len(sources))
    output_maps = _output_maps(p, source_maps)
    output_file = sp.mandatory_absolute_path(NAME, p, "outputFile")
    if not os.path.splitext(output_file)[1]:
        raise params.invalid(
            NAME, "outputFile", output_file,
            'has no file extension, so FFmpeg cannot tell which container to write; add one, e.g. ".mkv"',
        )
    for index, source in enumerate(sources):
        if sp.same_path(source, output_file):
            raise params.invalid(
                NAME, "outputFile", output_file,
                f"is also source {index}; FFmpeg cannot write the file it reads",
            )
    return FFmpegEncode(
        exe=executables.configured_exe(exe, executables.FFMPEG, settings.ffmpeg_exe),
        sources=tuple(sources),
        source_maps=source_maps,
        output_maps=output_maps,
        output_file=output_file,
        overwrite=sp.optional_bool(NAME, p, "overwrite"),
        progress_steps=sp.optional_whole_number(
            NAME, p, "progressSteps", default=0, maximum=MAX_PROGRESS_STEPS
        ),
    )


def prepare(raw: Any, settings: WorkerSettings) -> FFmpegEncode:
    command = parse_params(raw, settings)
    exe = executables.resolve(NAME, command.exe, executables.FFMPEG, settings)
    return replace(command, exe=exe)
