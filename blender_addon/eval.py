# SPDX-License-Identifier: GPL-3.0-or-later
"""Evaluate job settings' ``eval`` expressions with exactly the names Flamenco's add-on gives.

Names: ``jobname``, ``settings``, ``bpy``, ``C``, ``Path``, ``abspath``,
``last_n_dir_parts``. They are passed as *locals* with empty globals, as
Flamenco does, so (like there) they are not visible inside comprehensions or
lambdas in an expression. The peer's command-line submission
(peer/settings_eval/blender_side.py) uses the same semantics.
"""

from __future__ import annotations

import os.path
from pathlib import Path
from typing import Any

import bpy

NAMES = ("jobname", "settings", "bpy", "C", "Path", "abspath", "last_n_dir_parts")


class SettingEvalError(Exception):
    def __init__(self, key: str, expr: str, exc: BaseException) -> None:
        message = f"Evaluation error of setting {key!r}: {type(exc).__name__}: {exc} (expression: {expr})"
        super().__init__(message)
        self.key = key
        self.expr = expr


def abspath(path: Any) -> Path:
    """Blender-relative ``//`` resolved against the blend file, then made absolute and
    normalised (``..`` resolved, symlinks kept)."""
    resolved = bpy.path.abspath(str(path))
    return Path(os.path.normpath(os.path.abspath(resolved)))


def last_n_dir_parts(n: int, filepath: Any = None) -> Path:
    """The last ``n`` directory names of ``filepath`` (default: the blend file), as a relative path.

    ``last_n_dir_parts(2, "/path/to/some/file.blend")`` → ``to/some``; ``n <= 0``
    gives ``Path()``; a larger ``n`` gives the whole directory without its anchor.
    """
    if filepath is None:
        filepath = bpy.data.filepath
    else:
        filepath = bpy.path.abspath(str(filepath))
    path = Path(filepath)
    parts = path.parent.parts
    if parts and parts[0] == path.anchor:
        parts = parts[1:]
    if n <= 0 or not parts:
        return Path()
    return Path(*parts[-n:])


def names(context: Any, settings: Any, jobname: str) -> dict[str, Any]:
    return {
        "jobname": jobname,
        "settings": settings,
        "bpy": bpy,
        "C": context,
        "Path": Path,
        "abspath": abspath,
        "last_n_dir_parts": last_n_dir_parts,
    }


def evaluate(key: str, expr: str, local_names: dict[str, Any]) -> Any:
    try:
        return eval(expr, {}, dict(local_names))  # noqa: S307 - Flamenco job types are trusted like add-ons
    except Exception as exc:
        raise SettingEvalError(key, expr, exc) from exc
