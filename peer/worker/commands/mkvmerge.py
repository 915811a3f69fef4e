"""`mkvmerge`: remux into Matroska with MKVToolNix, setting track properties.

Modelled on Sisyphus' mkvmerge module. Parameters:

    exe            "mkvmerge" (default, looked up on PATH)
    sources        ["/abs/encoded.mkv", ...]                    source 0, 1, ...
    tracks         [{"source": 0, "track": 1,
                     "options": {"language": "jpn", "track-name": "Stereo", "default-track": "yes"}}]
    options        {"title": "...", "no-global-tags": null, "no-track-tags": null}
    outputFile     "/abs/final.mkv" (.mkv, .mka, .mks, .mk3d or .webm)
    overwrite      false (default): an existing outputFile is an error
    progressSteps  0 (default): report this many steps over the remux

Every track of every source is kept; `tracks` only sets properties. Track
numbers are mkvmerge's track IDs (`mkvmerge -J`), which for a file written
by FFmpeg are the output stream order. Before muxing, each source is
identified with `mkvmerge -J`, so a track that does not exist is an error
instead of mkvmerge's warning-and-ignore.

CLI: exe --gui-mode --ui-language en_US -o <partial file> [--title T]
         ( [--no-global-tags ...] [--language TID:L --track-name TID:N ...] <source> )...
mkvmerge's exit code 1 means "done, with warnings": the file is good and the
warnings are in the task log.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from . import executables, params
from . import structured_params as sp
from ..process import signal_group, spawn_kwargs
from .base import CommandContext, CommandError, WorkerSettings
from .files import check_output_file, make_output_dir
from .runner import run_program

NAME = "mkvmerge"
MKVMERGE = executables.Program("mkvmerge", ("mkvmerge", "mkvmerge.exe"), "mkvtoolnix", "https://mkvtoolnix.download/")

OUTPUT_EXTENSIONS = (".mkv", ".mka", ".mks", ".mk3d", ".webm")
MAX_PROGRESS_STEPS = 10_000
IDENTIFY_TIMEOUT_S = 60.0
_EXIT_WARNINGS = 1
_TRACK_KEYS = ("source", "track", "options")
_LANGUAGE = re.compile(r"[A-Za-z]{2,3}(?:-[A-Za-z0-9]{1,8})*\Z")
_GUI_PROGRESS = re.compile(r"#GUI#progress (\d+)%")
_GUI_MESSAGE = re.compile(r"#GUI#(error|warning) (.*)")


def _language(where: str, value: Any) -> str:
    if not isinstance(value, str) or not _LANGUAGE.match(value):
        raise params.invalid(
            NAME, where, value,
            'must be an ISO 639-2 code or a BCP 47 tag, e.g. "eng", "jpn", "en-GB" or "und"',
        )
    return value


def _track_name(where: str, value: Any) -> str:
    if not isinstance(value, str):
        raise params.invalid(NAME, where, value, "must be a string")
    if "\n" in value or "\r" in value:
        raise params.invalid(NAME, where, value, "must be a single line")
    return value


def _flag(where: str, value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if value in ("yes", "1", 1):
        return "1"
    if value in ("no", "0", 0):
        return "0"
    raise params.invalid(NAME, where, value, 'must be "yes" or "no" (or true/false)')


@dataclass(frozen=True)
class TrackOption:
    flag: str  # mkvmerge's option, given as <flag> <TID>:<value>
    check: Callable[[str, Any], str]  # returns the value as mkvmerge reads it


# The Sisyphus spellings ("default-track") and mkvmerge's current ones
# ("default-track-flag") are both accepted; mkvmerge 74 gets the current ones.
TRACK_OPTIONS: Mapping[str, TrackOption] = {
    "language": TrackOption("--language", _language),
    "track-name": TrackOption("--track-name", _track_name),
    "default-track": TrackOption("--default-track-flag", _flag),
    "default-track-flag": TrackOption("--default-track-flag", _flag),
    "forced-track": TrackOption("--forced-display-flag", _flag),
    "forced-display-flag": TrackOption("--forced-display-flag", _flag),
    "hearing-impaired-flag": TrackOption("--hearing-impaired-flag", _flag),
    "visual-impaired-flag": TrackOption("--visual-impaired-flag", _flag),
    "commentary-flag": TrackOption("--commentary-flag", _flag),
    "original-flag": TrackOption("--original-flag", _flag),
}

# Switches that apply to each source file (mkvmerge reads them per input);
# given once in `options`, they are repeated before every source.
SOURCE_SWITCHES = ("no-global-tags", "no-track-tags", "no-chapters", "no-attachments")
GLOBAL_OPTIONS = ("title", *SOURCE_SWITCHES)


@dataclass(frozen=True)
class TrackSettings:
    source: int
    track: int
    args: tuple[str, ...]


@dataclass(frozen=True)
class MkvMerge:
    exe: str
    sources: tuple[str, ...]
    tracks: tuple[TrackSettings, ...]
    title: str | None
    source_switches: tuple[str, ...]
    output_file: str
    overwrite: bool
    progress_steps: int

    def cli(self, write_to: str | None = None) -> list[str]:
        # --gui-mode: progress as "#GUI#progress N%" lines instead of
        # carriage returns; --ui-language: messages the log can be read by.
        argv = [self.exe, "--gui-mode", "--ui-language", "en_US", "-o", write_to or self.output_file]
        if self.title is not None:
            argv += ["--title", self.title]
        for index, source in enumerate(self.sources):
            argv += self.source_switches
            for track in self.tracks:
                if track.source == index:
                    argv += track.args
            argv.append(source)
        return argv

    def identify_cli(self, source: str) -> list[str]:
        return [self.exe, "--ui-language", "en_US", "-J", source]

    def partial_file(self) -> str:
        """Where mkvmerge writes until it succeeds, so outputFile only ever appears complete."""
        stem, ext = os.path.splitext(self.output_file)
        return f"{stem}.partial-{secrets.token_hex(4)}{ext}"

    async def run(self, ctx: CommandContext) -> None:
        await asyncio.to_thread(self._check_files)
        for index, source in enumerate(self.sources):
            await self._check_tracks(index, source)
        partial = self.partial_file()
        try:
            warnings = await self._merge(ctx, partial)
            await asyncio.to_thread(self._finish, partial)
        except BaseException:
            await asyncio.to_thread(_remove_quietly, partial)
            raise
        suffix = " with warnings (see above)" if warnings else ""
        await ctx.log(f'{NAME}: wrote "{self.output_file}"{suffix}')

    async def _merge(self, ctx: CommandContext, partial: str) -> bool:
        """Run mkvmerge; return whether it finished with warnings."""
        progress = _Progress(ctx, self.progress_steps)
        outcome = await run_program(
            NAME, self.cli(partial), ctx, program="mkvmerge", on_line=progress.on_line,
            ok_returncodes=(0, _EXIT_WARNINGS), error_text=_plain_message,
        )
        progress.finish()
        return outcome.result.returncode == _EXIT_WARNINGS

    async def _check_tracks(self, index: int, source: str) -> None:
        wanted = [t.track for t in self.tracks if t.source == index]
        info = await self._identify(index, source)
        container = info.get("container") or {}
        if not container.get("recognized", False) or not container.get("supported", False):
            raise CommandError(
                f'{NAME}: source {index} "{source}" is not a media file mkvmerge can read; '
                "check that the previous step wrote it completely"
            )
        present = {
            t["id"]: t for t in info.get("tracks") or [] if isinstance(t, Mapping) and isinstance(t.get("id"), int)
        }
        for track in wanted:
            if track not in present:
                listing = ", ".join(
                    f'{tid} ({t.get("type", "?")}, {t.get("codec", "?")})' for tid, t in sorted(present.items())
                ) or "none"
                raise CommandError(
                    f'{NAME}: track {track} of source {index} "{source}" does not exist; '
                    f"its tracks are {listing}; fix the track numbers in the job"
                )

    async def _identify(self, index: int, source: str) -> Mapping[str, Any]:
        """`mkvmerge -J source`, parsed; its output is not logged (it is JSON noise)."""
        argv = self.identify_cli(source)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                **spawn_kwargs(),
            )
        except OSError as ex:
            raise CommandError(
                f"{NAME}: could not start mkvmerge ({argv[0]}): {ex.strerror or ex}; "
                "check that the file is a program this worker can run"
            ) from ex
        try:
            out, err = await asyncio.wait_for(proc.communicate(), IDENTIFY_TIMEOUT_S)
        except TimeoutError:
            await _stop(proc)
            raise CommandError(
                f'{NAME}: identifying source {index} "{source}" took longer than '
                f"{IDENTIFY_TIMEOUT_S:.0f} s; check that the file is readable on this worker"
            ) from None
        except BaseException:
            await _stop(proc)
            raise
        try:
            info = json.loads(out.decode("utf-8", errors="replace"))
        except ValueError:
            info = None
        if not isinstance(info, Mapping):
            text = (out + err).decode("utf-8", errors="replace").strip()[-300:]
            raise CommandError(f'{NAME}: cannot identify source {index} "{source}": {text or "no output"}')
        problems = [str(e).strip() for e in info.get("errors") or []]
        if problems:
            raise CommandError(f'{NAME}: cannot read source {index} "{source}": {problems[0]}')
        return info

    def _check_files(self) -> None:
        for index, source in enumerate(self.sources):
            if not os.path.exists(source):
                raise CommandError(
                    f'{NAME}: source {index} "{source}" does not exist; check the job\'s paths '
                    "and that the previous step produced it"
                )
            if not os.path.isfile(source):
                raise CommandError(f'{NAME}: source {index} "{source}" is not a regular file')
        self._check_output()
        make_output_dir(NAME, self.output_file)

    def _check_output(self) -> None:
        check_output_file(NAME, self.output_file, self.overwrite)

    def _finish(self, partial: str) -> None:
        self._check_output()  # again: it may have appeared while mkvmerge ran
        os.replace(partial, self.output_file)


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        signal_group(proc, kill=True)
        await proc.wait()


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _plain_message(line: str) -> str:
    """GUI mode's "#GUI#error text" as mkvmerge's usual "Error: text"."""
    match = _GUI_MESSAGE.match(line)
    if match:
        return f"{match.group(1).capitalize()}: {match.group(2)}"
    return line


class _Progress:
    """mkvmerge's `#GUI#progress N%` lines as `steps` evenly spread steps."""

    def __init__(self, ctx: CommandContext, steps: int) -> None:
        self._ctx = ctx
        self._steps = steps
        self._reported = 0

    def on_line(self, line: str) -> None:
        match = _GUI_PROGRESS.match(line) if self._steps else None
        if match:
            # The last step waits for a clean exit.
            self._advance(min(self._steps - 1, int(match.group(1)) * self._steps // 100))

    def finish(self) -> None:
        self._advance(self._steps)

    def _advance(self, target: int) -> None:
        while self._reported < target:
            self._reported += 1
            self._ctx.step()


def _tracks(p: Mapping[str, Any], source_count: int) -> tuple[TrackSettings, ...]:
    seen: set[tuple[int, int]] = set()
    out: list[TrackSettings] = []
    for index, item in enumerate(sp.object_list(NAME, p, "tracks", required=False)):
        where = f"tracks[{index}]"
        sp.reject_unknown_keys(NAME, where, item, _TRACK_KEYS)
        for key in ("source", "track"):
            if key not in item:
                raise params.missing(NAME, f"{where}.{key}")
        source = sp.whole_number(NAME, f"{where}.source", item["source"])
        if source >= source_count:
            raise params.invalid(
                NAME, f"{where}.source", source, f"there are only {source_count} sources (numbered from 0)"
            )
        track = sp.whole_number(NAME, f"{where}.track", item["track"])
        if (source, track) in seen:
            raise params.invalid(
                NAME, where, dict(item), f"track {track} of source {source} is listed twice; merge the entries"
            )
        seen.add((source, track))
        options = item.get("options")
        if options is None:
            options = {}
        if not isinstance(options, Mapping):
            raise params.invalid(NAME, f"{where}.options", options, 'must be an object like {"language": "eng"}')
        args: list[str] = []
        flags_given: dict[str, str] = {}
        for key, value in options.items():
            option = TRACK_OPTIONS.get(key)
            if option is None:
                known = ", ".join(f'"{k}"' for k in TRACK_OPTIONS)
                raise params.invalid(NAME, f"{where}.options", key, f"unknown track option; the known ones are {known}")
            if option.flag in flags_given:
                raise params.invalid(
                    NAME, f"{where}.options", key,
                    f'means the same as "{flags_given[option.flag]}", which is also given; keep one',
                )
            flags_given[option.flag] = key
            args += [option.flag, f"{track}:{option.check(f'{where}.options.{key}', value)}"]
        out.append(TrackSettings(source, track, tuple(args)))
    return tuple(out)


def _global_options(p: Mapping[str, Any]) -> tuple[str | None, tuple[str, ...]]:
    options = sp.optional_object(NAME, p, "options")
    sp.reject_unknown_keys(NAME, "options", options, GLOBAL_OPTIONS)
    title = options.get("title")
    if title is not None and not isinstance(title, str):
        raise params.invalid(NAME, "options.title", title, "must be a string")
    switches: list[str] = []
    for name in SOURCE_SWITCHES:
        if name not in options:
            continue
        value = options[name]
        # Sisyphus writes switches as `"no-global-tags": null`.
        if value is None or value is True:
            switches.append(f"--{name}")
        elif value is not False:
            raise params.invalid(NAME, f"options.{name}", value, "is a switch: use null or true (or false to leave it off)")
    return title, tuple(switches)


def parse_params(raw: Any, settings: WorkerSettings) -> MkvMerge:
    """Check every parameter without touching the disk (the exe is not looked up)."""
    p: Mapping[str, Any] = params.require_mapping(NAME, raw)
    exe = params.optional_str(NAME, p, "exe") or "mkvmerge"
    sources = sp.absolute_path_list(NAME, p, "sources")
    tracks = _tracks(p, len(sources))
    title, switches = _global_options(p)
    output_file = sp.mandatory_absolute_path(NAME, p, "outputFile")
    if os.path.splitext(output_file)[1].lower() not in OUTPUT_EXTENSIONS:
        raise params.invalid(
            NAME, "outputFile", output_file,
            f"must end in one of {', '.join(OUTPUT_EXTENSIONS)}, because mkvmerge writes Matroska",
        )
    for index, source in enumerate(sources):
        if sp.same_path(source, output_file):
            raise params.invalid(
                NAME, "outputFile", output_file, f"is also source {index}; mkvmerge cannot write the file it reads"
            )
    return MkvMerge(
        exe=exe,
        sources=tuple(sources),
        tracks=tracks,
        title=title,
        source_switches=switches,
        output_file=output_file,
        overwrite=sp.optional_bool(NAME, p, "overwrite"),
        progress_steps=sp.optional_whole_number(NAME, p, "progressSteps", default=0, maximum=MAX_PROGRESS_STEPS),
    )


def prepare(raw: Any, settings: WorkerSettings) -> MkvMerge:
    command = parse_params(raw, settings)
    # The worker's config hint is about Blender; mkvmerge is found on PATH.
    hint = 'put mkvmerge on this worker\'s PATH or give its full path in the "exe" parameter'
    exe = executables.resolve(NAME, command.exe, MKVMERGE, replace(settings, config_hint=hint))
    return replace(command, exe=exe)
