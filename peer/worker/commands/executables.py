"""Finding the program a command wants to run, with errors that say how to fix it.

A missing Blender is the most common first-run problem of a render worker,
so the message lists where we looked and what to do, instead of surfacing a
bare "No such file or directory" from the OS.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass

from .base import CommandError, WorkerSettings


@dataclass(frozen=True)
class Program:
    """How to talk about one kind of executable in error messages."""

    title: str  # "Blender"
    default_names: tuple[str, ...]  # bare names that mean "the worker's own copy"
    apt_package: str | None  # Debian/Ubuntu package that provides it
    download_url: str | None


BLENDER = Program("Blender", ("blender", "blender.exe"), "blender", "https://www.blender.org/download/")
FFMPEG = Program("FFmpeg", ("ffmpeg", "ffmpeg.exe"), "ffmpeg", "https://ffmpeg.org/download.html")
ANY_PROGRAM = Program("program", (), None, None)


def configured_exe(requested: str, program: Program, configured: str) -> str:
    """The executable to use when a job names `requested`.

    A bare "blender"/"ffmpeg" means "whatever this worker uses", so the
    worker's configured path takes precedence; an explicit path from the job
    is respected as given.
    """
    if requested in program.default_names and configured:
        return configured
    return requested


def resolve(cmd: str, exe: str, program: Program, settings: WorkerSettings) -> str:
    """Return the full path of `exe`, or raise CommandError explaining what to do."""
    has_dir = os.sep in exe or (os.altsep is not None and os.altsep in exe)
    if has_dir:
        problem = _check_path(exe)
        if problem is None:
            return os.path.abspath(exe)
        raise CommandError(f"{cmd}: {program.title} not found: '{exe}' {problem}; {_fix(program, settings)}")

    found = shutil.which(exe)
    if found is not None:
        return found
    path_env = os.environ.get("PATH", os.defpath)
    raise CommandError(
        f"{cmd}: {program.title} not found: looked for '{exe}' on PATH ({path_env}); "
        f"{_fix(program, settings)}"
    )


def _check_path(exe: str) -> str | None:
    if not os.path.exists(exe):
        return "does not exist"
    if os.path.isdir(exe):
        return "is a directory, not a program"
    if not os.access(exe, os.X_OK):
        return "is not executable (check its permissions, e.g. `chmod +x`)"
    return None


def _fix(program: Program, settings: WorkerSettings) -> str:
    if program is ANY_PROGRAM:
        install = "install it on this worker or give its full path in the \"exe\" parameter"
    elif sys.platform.startswith("linux") and program.apt_package:
        install = f"install {program.title} (apt install {program.apt_package})"
    else:
        install = f"install {program.title} ({program.download_url})"
    if program is ANY_PROGRAM:
        return install
    hint = settings.config_hint or f"tell this worker where {program.title} is installed"
    return f"{install} or configure the path: {hint}"
