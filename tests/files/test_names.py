"""Every kind of network-supplied path the file layer refuses, and what it accepts."""

from __future__ import annotations

from pathlib import Path

import pytest

from peer.files.names import (
    MAX_COMPONENT_BYTES, MAX_DEPTH, MAX_PATH_CHARS, UnsafePath, check_relative_path, check_relative_paths, safe_join,
)


@pytest.mark.parametrize("path", [
    "scene.blend", "textures/wood.png", "_outside_project/C/tex/a.png", "a b/ü ñ 日本.exr", "frames/0001.png",
    "conx/y", "console.txt", "COM10", "lpt0.txt", ".hidden", "a..b", "..a", "x" * MAX_COMPONENT_BYTES,
])
def test_ordinary_relative_paths_pass_unchanged(path: str) -> None:
    assert check_relative_path(path) == path


@pytest.mark.parametrize(("path", "reason"), [
    ("", "empty"),
    ("/etc/passwd", "absolute"),
    ("//server/share/x", "absolute"),
    ("C:/Windows/x", "drive letter"),
    ("c:x", "drive letter"),
    ("\\\\server\\share\\x", "backslash"),
    ("a\\b.png", "backslash"),
    ("..", "'..'"),
    ("../x", "'..'"),
    ("a/../../x", "'..'"),
    ("a/..", "'..'"),
    ("a//b", "empty or '.'"),
    ("a/./b", "empty or '.'"),
    ("./a", "empty or '.'"),
    ("a/", "empty or '.'"),
    ("a\x00b", "NUL"),
    ("a\nb", "control characters"),
    ("a\x1fb", "control characters"),
    ("a\x7fb", "control characters"),
    ("CON", "device name"),
    ("con.png", "device name"),
    ("x/Nul.tar.gz", "device name"),
    ("aux", "device name"),
    ("PRN.txt", "device name"),
    ("com1", "device name"),
    ("COM9.log", "device name"),
    ("lpt1", "device name"),
    ("LPT9.x", "device name"),
    ("com¹.txt", "device name"),
    ("CONIN$", "device name"),
    ("nul .txt", "device name"),
    ("name.", "dot or a space"),
    ("name ", "dot or a space"),
    ("dir./x", "dot or a space"),
    ("ab:c", "Windows does not allow"),
    ("file:stream", "Windows does not allow"),
    ("what?.png", "Windows does not allow"),
    ("a*b", "Windows does not allow"),
    ('q"uote', "Windows does not allow"),
    ("a<b>c", "Windows does not allow"),
    ("a|b", "Windows does not allow"),
    ("x" * (MAX_COMPONENT_BYTES + 1), "bytes"),
    ("é" * (MAX_COMPONENT_BYTES // 2 + 1), "bytes"),
    ("a/" * MAX_DEPTH + "a", "folders deep"),
    ("a" * (MAX_PATH_CHARS + 1), "characters long"),
])
def test_unsafe_paths_are_refused_with_the_reason(path: str, reason: str) -> None:
    with pytest.raises(UnsafePath) as err:
        check_relative_path(path)
    assert reason in str(err.value)


@pytest.mark.parametrize("value", [None, 3, b"a.png", ["a"]])
def test_non_strings_are_refused(value: object) -> None:
    with pytest.raises(UnsafePath, match="must be a string"):
        check_relative_path(value)


def test_a_list_of_paths_refuses_case_collisions_file_folder_clashes_and_too_many() -> None:
    assert check_relative_paths(["a/b.png", "a/c.png", "b"]) == ["a/b.png", "a/c.png", "b"]
    with pytest.raises(UnsafePath, match="differ only in letter case"):
        check_relative_paths(["Tex/A.png", "tex/a.png"])
    with pytest.raises(UnsafePath, match="is a file and also a folder"):
        check_relative_paths(["a/b", "a"])
    with pytest.raises(UnsafePath, match="is a file and also a folder"):
        check_relative_paths(["x/y", "x/y/z/w"])
    with pytest.raises(UnsafePath, match="more than 3 file paths"):
        check_relative_paths(["a", "b", "c", "d"], limit=3)
    with pytest.raises(UnsafePath, match="'..'"):
        check_relative_paths(["ok", "../bad"])


def test_safe_join_stays_inside_the_root(tmp_path: Path) -> None:
    assert safe_join(tmp_path, "a/b.png") == tmp_path / "a" / "b.png"
    for bad in ("../x", "/x", "a/../../x", "C:/x"):
        with pytest.raises(UnsafePath):
            safe_join(tmp_path, bad)
