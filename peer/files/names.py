"""Check relative file paths that arrive from the network before touching the disk.

A path in a manifest or an output upload names a file inside some folder this
peer owns (a checkout, a job's output root). Anything that could step outside
that folder, or that one of the farm's operating systems would read
differently, is refused with a message saying which part is wrong and why:

- absolute paths, drive letters (``C:``), UNC paths (``//server``) and backslashes
  (on Windows ``a\\b`` is two components, on Linux one: refuse both readings);
- empty, ``.`` and ``..`` components;
- NUL and other control characters;
- Windows device names (``CON``, ``PRN``, ``AUX``, ``NUL``, ``COM1``-``COM9``,
  ``LPT1``-``LPT9``, also with an extension such as ``nul.txt``) and names
  ending in a dot or a space, which Windows silently changes;
- characters Windows refuses in file names (``<>:"|?*``);
- too long components or paths, too many components.

The result is always the path with ``/`` separators, unchanged otherwise.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

MAX_COMPONENT_BYTES = 255  # ext4, NTFS (in UTF-16 units; bytes is the stricter count)
MAX_PATH_CHARS = 1024  # well below PATH_MAX; long enough for deep project trees
MAX_DEPTH = 64  # folders in one relative path
MAX_FILES = 100_000  # paths in one manifest

_WINDOWS_DEVICES = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"COM{i}" for i in range(1, 10)] + [f"LPT{i}" for i in range(1, 10)]
    # Windows also treats the superscript digits as device numbers.
    + [f"COM{d}" for d in "¹²³"] + [f"LPT{d}" for d in "¹²³"]
)
_WINDOWS_FORBIDDEN = set('<>:"|?*')
_DRIVE = re.compile(r"^[A-Za-z]:")


class UnsafePath(ValueError):
    """A network-supplied path this peer refuses; ``str()`` says why and what to do."""


def _control(ch: str) -> bool:
    return ord(ch) < 32 or ord(ch) == 127


def _check_component(part: str, shown: str) -> None:
    if part in ("", "."):
        raise UnsafePath(f"path {shown} has an empty or '.' component; send a normalised relative path such as 'textures/wood.png'")
    if part == "..":
        raise UnsafePath(f"path {shown} contains '..', which could leave the folder it is meant for; such paths are refused")
    bad = sorted({ch for ch in part if _control(ch)})
    if bad:
        codes = ", ".join(f"0x{ord(ch):02x}" for ch in bad)
        raise UnsafePath(f"path {shown} contains control characters ({codes}); rename the file")
    forbidden = sorted({ch for ch in part if ch in _WINDOWS_FORBIDDEN})
    if forbidden:
        raise UnsafePath(
            f"path {shown} contains {' '.join(forbidden)} in component {part!r}, which Windows does not allow "
            "in file names; rename the file so every peer can store it"
        )
    if part[-1] in ". ":
        raise UnsafePath(
            f"path {shown} has component {part!r} ending in a dot or a space, which Windows silently strips "
            "(so two names would become one); rename the file"
        )
    stem = part.split(".", 1)[0].rstrip(" ").upper()
    if stem in _WINDOWS_DEVICES:
        raise UnsafePath(
            f"path {shown} uses {part!r}, a Windows device name ({stem}), with or without an extension it opens "
            "a device instead of a file on Windows; rename the file"
        )
    if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
        raise UnsafePath(
            f"path {shown} has a component of {len(part.encode('utf-8'))} bytes; file systems allow at most "
            f"{MAX_COMPONENT_BYTES}; shorten the name"
        )


def _shown(path: str) -> str:
    return repr(path if len(path) <= 120 else path[:117] + "...")


def check_relative_path(path: object) -> str:
    """``path`` if it is a safe relative file path with ``/`` separators; raises ``UnsafePath``."""
    if not isinstance(path, str):
        raise UnsafePath(f"a file path must be a string, got {type(path).__name__}")
    shown = _shown(path)
    if not path:
        raise UnsafePath("a file path is empty; send the file's path relative to its folder")
    if "\x00" in path:
        raise UnsafePath(f"path {shown} contains a NUL character; such paths are refused")
    if len(path) > MAX_PATH_CHARS:
        raise UnsafePath(f"path {shown} is {len(path)} characters long; at most {MAX_PATH_CHARS} are accepted")
    if "\\" in path:
        raise UnsafePath(
            f"path {shown} contains a backslash; relative paths travel with '/' separators "
            "(convert with PurePath.as_posix()), and '\\' is not allowed in file names"
        )
    if path.startswith("/"):
        raise UnsafePath(f"path {shown} is absolute; only paths relative to the job's folder are accepted")
    if _DRIVE.match(path):
        raise UnsafePath(f"path {shown} starts with a drive letter; only paths relative to the job's folder are accepted")
    parts = path.split("/")
    if len(parts) > MAX_DEPTH:
        raise UnsafePath(f"path {shown} is {len(parts)} folders deep; at most {MAX_DEPTH} are accepted")
    for part in parts:
        _check_component(part, shown)
    return path


def check_relative_paths(paths: Iterable[object], *, limit: int = MAX_FILES) -> list[str]:
    """Every path checked, plus a count limit and no two paths differing only in letter case
    (one file on Windows and macOS, two on Linux: a checkout would silently lose one)."""
    checked: list[str] = []
    folded: dict[str, str] = {}
    for path in paths:
        if len(checked) >= limit:
            raise UnsafePath(f"more than {limit} file paths; split the job or raise the limit")
        ok = check_relative_path(path)
        key = ok.casefold()
        if key in folded:
            raise UnsafePath(
                f"paths {_shown(folded[key])} and {_shown(ok)} differ only in letter case, which is one file on "
                "Windows and macOS; rename one of them"
            )
        folded[key] = ok
        checked.append(ok)
    # A file and a folder of the same name cannot both exist ("a" and "a/b").
    folders = {ok.casefold().rsplit("/", 1)[0] for ok in checked if "/" in ok}
    prefixes = {"/".join(f.split("/")[: i + 1]) for f in folders for i in range(f.count("/") + 1)}
    for ok in checked:
        if ok.casefold() in prefixes:
            raise UnsafePath(f"path {_shown(ok)} is a file and also a folder of other paths; rename one of them")
    return checked


def safe_join(root: Path, relpath: object) -> Path:
    """``root / relpath`` after checking ``relpath``; the result is always inside ``root``."""
    ok = check_relative_path(relpath)
    return root.joinpath(*ok.split("/"))
