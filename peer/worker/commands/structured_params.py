"""Reading nested, boolean and integer parameters, in params.py's error shapes.

The encode, mkvmerge and cleanup commands take lists of objects (stream
maps, track options, paths). A bad item must be named precisely, so every
reader takes the parameter's full name, e.g. ``sourceMaps[2].stream``, and
errors read like

    ffmpeg-encode: parameter "sourceMaps[2].stream" has invalid value -1: must be ...
"""

from __future__ import annotations

import ntpath
import os
import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

from . import params
from .base import CommandError

_MISSING = object()


def optional_bool(cmd: str, p: Mapping[str, Any], name: str, default: bool = False) -> bool:
    value = p.get(name, _MISSING)
    if value is _MISSING or value is None:
        return default
    if not isinstance(value, bool):
        raise params.invalid(cmd, name, value, "must be true or false")
    return value


def whole_number(cmd: str, name: str, value: Any, *, minimum: int = 0, maximum: int | None = None) -> int:
    """`value` as an int; JSON numbers like 3.0 count (JavaScript has no ints)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise params.invalid(cmd, name, value, f"must be a whole number, {minimum} or more")
    if isinstance(value, float):
        if not value.is_integer():
            raise params.invalid(cmd, name, value, f"must be a whole number, {minimum} or more")
        value = int(value)
    if value < minimum:
        raise params.invalid(cmd, name, value, f"must be a whole number, {minimum} or more")
    if maximum is not None and value > maximum:
        raise params.invalid(cmd, name, value, f"must be at most {maximum}")
    return value


def optional_whole_number(
    cmd: str, p: Mapping[str, Any], name: str, *, default: int, maximum: int | None = None
) -> int:
    value = p.get(name, _MISSING)
    if value is _MISSING or value is None:
        return default
    return whole_number(cmd, name, value, maximum=maximum)


def object_list(cmd: str, p: Mapping[str, Any], name: str, *, required: bool) -> list[Mapping[str, Any]]:
    """A list of JSON objects; `required` means missing or empty is an error."""
    value = p.get(name, _MISSING)
    if value is _MISSING or value is None:
        if required:
            raise params.missing(cmd, name)
        return []
    if not isinstance(value, list):
        raise params.invalid(cmd, name, value, "must be a list of objects")
    if required and not value:
        raise params.invalid(cmd, name, value, "must not be empty")
    for index, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise params.invalid(cmd, f"{name}[{index}]", item, "must be an object")
    return value


def optional_object(cmd: str, p: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = p.get(name, _MISSING)
    if value is _MISSING or value is None:
        return {}
    if not isinstance(value, Mapping):
        raise params.invalid(cmd, name, value, "must be an object")
    return value


def reject_unknown_keys(cmd: str, where: str, item: Mapping[str, Any], known: Sequence[str]) -> None:
    """A misspelt key ("option" for "options") would otherwise be silently ignored."""
    for key in item:
        if key not in known:
            allowed = ", ".join(f'"{k}"' for k in known)
            raise CommandError(
                f'{cmd}: parameter "{where}" has an unknown key {params.show_value(key)}; '
                f"the known keys are {allowed}"
            )


def is_absolute(path: str) -> bool:
    """Absolute on this worker's platform.

    A relative path would depend on the directory the worker was started in,
    which the job's author cannot know.
    """
    return os.path.isabs(path)


def absolute_path(cmd: str, name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise params.invalid(cmd, name, value, "must be a string (a file path)")
    if not value:
        raise params.invalid(cmd, name, value, "must not be empty")
    if "\x00" in value:
        raise params.invalid(cmd, name, value, "must not contain a NUL character")
    if not is_absolute(value):
        raise params.invalid(
            cmd, name, value,
            "must be an absolute path, because a relative one depends on where the worker runs",
        )
    return value


def mandatory_absolute_path(cmd: str, p: Mapping[str, Any], name: str) -> str:
    if name not in p:
        raise params.missing(cmd, name)
    return absolute_path(cmd, name, p[name])


def absolute_path_list(cmd: str, p: Mapping[str, Any], name: str) -> list[str]:
    value = p.get(name, _MISSING)
    if value is _MISSING or value is None:
        raise params.missing(cmd, name)
    if not isinstance(value, list):
        raise params.invalid(cmd, name, value, "must be a list of absolute file paths")
    if not value:
        raise params.invalid(cmd, name, value, "must not be empty")
    return [absolute_path(cmd, f"{name}[{i}]", item) for i, item in enumerate(value)]


def same_path(a: str, b: str) -> bool:
    """Lexically the same file (no disk access; case-insensitive on Windows)."""
    return os.path.normcase(os.path.normpath(a)) == os.path.normcase(os.path.normpath(b))


def has_parent_reference(path: str) -> bool:
    """True if any component is "..", in either separator style."""
    parts = path.replace(ntpath.sep, posixpath.sep).split(posixpath.sep)
    return ".." in parts
