"""Which blender-render tasks the warm Blender can run, and what they ask of it.

A blender-render command line has two halves. The part before the .blend
file (exeArgs, argsBefore) configures the Blender *process*: those flags
become part of the warm process's key, so only tasks asking for the same
process share one. The part after the file is what one *task* does, and
Blender runs it strictly in order (`--python-expr` before `--render-frame`
sees the file as loaded, and so on); the render server replays it in the
same order.

Only the arguments that our and Flamenco's job types emit are understood.
Anything else is not guessed at: the task runs in a new Blender, exactly as
the job asked, and the reason is logged. Pure functions, no I/O, except
`os.path.abspath` on the blend file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

# Process-level flags, by every spelling Blender accepts -> one canonical
# spelling, so "-b" and "--background" share a warm process.
_PROCESS_FLAGS: dict[str, str] = {
    "-b": "-b",
    "--background": "-b",
    "-y": "-y",
    "--enable-autoexec": "-y",
    "-Y": "-Y",
    "--disable-autoexec": "-Y",
    "-noaudio": "-noaudio",
    "--factory-startup": "--factory-startup",
}
_PROCESS_OPTIONS_WITH_VALUE: dict[str, str] = {"-t": "--threads", "--threads": "--threads"}

# Per-task arguments (after the blend file) -> action kind.
_TASK_OPTIONS: dict[str, str] = {
    "--scene": "scene",
    "-S": "scene",
    "--python-expr": "python",
    "--python-exit-code": "python-exit-code",
    "--render-output": "output",
    "-o": "output",
    "--render-format": "format",
    "-F": "format",
    "--engine": "engine",
    "-E": "engine",
    "--render-frame": "frames",
    "-f": "frames",
}

# `-F` names (Blender's BKE_imtype_from_arg) -> the Python API's file_format
# identifiers. Movie formats are left out: they write one file across
# frames, which per-frame tasks cannot share, and "IRIZ" has no Python name.
CLI_IMAGE_FORMATS: dict[str, str] = {
    "TGA": "TARGA",
    "RAWTGA": "TARGA_RAW",
    "JPEG": "JPEG",
    "IRIS": "IRIS",
    "PNG": "PNG",
    "BMP": "BMP",
    "HDR": "HDR",
    "TIFF": "TIFF",
    "OPEN_EXR": "OPEN_EXR",
    "EXR": "OPEN_EXR",
    "OPEN_EXR_MULTILAYER": "OPEN_EXR_MULTILAYER",
    "MULTILAYER": "OPEN_EXR_MULTILAYER",
    "CINEON": "CINEON",
    "DPX": "DPX",
    "JP2": "JPEG2000",
    "WEBP": "WEBP",
}

MAX_FRAME = 1048574  # Blender's MAXFRAME
_FRAME_ITEM = re.compile(r"^(\d+)(?:\.\.(\d+))?$")


@dataclass(frozen=True)
class Action:
    """One per-task argument, replayed by the render server in order."""

    kind: str  # a value of _TASK_OPTIONS
    value: Any  # str; int for python-exit-code; list of [first, last] for frames

    def to_wire(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value}


@dataclass(frozen=True)
class WarmPlan:
    """A blender-render task the warm Blender can run."""

    exe: str
    process_args: tuple[str, ...]  # canonical spellings, in the given order
    blendfile: str  # absolute
    actions: tuple[Action, ...]
    cli: tuple[str, ...]  # the command line a cold run would use, for the log

    @property
    def runs_python(self) -> bool:
        return any(a.kind == "python" for a in self.actions)


@dataclass(frozen=True)
class RunCold:
    """Why a task needs a Blender of its own."""

    reason: str


def plan_warm_render(
    exe: str, exe_args: list[str], args_before: list[str], blendfile: str, args: list[str]
) -> WarmPlan | RunCold:
    """Decide whether the render server can run this command line exactly."""
    if not blendfile:
        return RunCold("the task names no .blend file (the render server keeps one file loaded)")
    process = _process_args([*exe_args, *args_before])
    if isinstance(process, RunCold):
        return process
    if "-b" not in process:
        return RunCold("the arguments lack -b (--background), so Blender would open its window")
    actions = _task_actions(args)
    if isinstance(actions, RunCold):
        return actions
    cli = (exe, *exe_args, *args_before, blendfile, *args)
    return WarmPlan(exe, process, os.path.abspath(blendfile), actions, cli)


def parse_frames(spec: str) -> list[list[int]] | None:
    """'1', '1..3', '1,4..6' -> [[1, 1], [1, 3]] ...; None for anything else.

    Blender also accepts frames relative to the scene range ('+2', '-1');
    those are left to a cold Blender, which knows the range before loading.
    """
    ranges: list[list[int]] = []
    for item in spec.split(","):
        m = _FRAME_ITEM.match(item)
        if m is None:
            return None
        first = int(m.group(1))
        last = int(m.group(2)) if m.group(2) is not None else first
        if last < first or last > MAX_FRAME:
            return None
        ranges.append([first, last])
    return ranges


def _process_args(argv: list[str]) -> tuple[str, ...] | RunCold:
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in _PROCESS_FLAGS:
            out.append(_PROCESS_FLAGS[arg])
        elif arg in _PROCESS_OPTIONS_WITH_VALUE:
            if i + 1 >= len(argv) or not argv[i + 1].isdigit():
                return RunCold(f"{arg} needs a whole number of threads")
            out.extend([_PROCESS_OPTIONS_WITH_VALUE[arg], argv[i + 1]])
            i += 1
        else:
            return RunCold(f"the argument {arg!r} before the .blend file is not one the render server understands")
        i += 1
    return tuple(out)


def _task_actions(argv: list[str]) -> tuple[Action, ...] | RunCold:
    actions: list[Action] = []
    rendered = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        kind = _TASK_OPTIONS.get(arg)
        if kind is None:
            return RunCold(f"the argument {arg!r} is not one the render server understands")
        if i + 1 >= len(argv):
            return RunCold(f"{arg} has no value")
        raw = argv[i + 1]
        i += 2
        if rendered and kind != "frames":
            # Blender would apply it between two renders; rare enough not to replay.
            return RunCold(f"{arg} comes after --render-frame")
        value: Any = raw
        if kind == "frames":
            value = parse_frames(raw)
            if value is None:
                return RunCold(f"the frame list {raw!r} is not plain frame numbers and A..B ranges")
            rendered = True
        elif kind == "format":
            value = CLI_IMAGE_FORMATS.get(raw)
            if value is None:
                return RunCold(f"the render format {raw!r} is not an image format the render server handles")
        elif kind == "python-exit-code":
            if not raw.isdigit() or int(raw) > 255:
                return RunCold(f"--python-exit-code {raw!r} is not a number from 0 to 255")
            value = int(raw)
        actions.append(Action(kind, value))
    return tuple(actions)
