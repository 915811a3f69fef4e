"""Parameter validation of every command, before anything runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from peer.worker.commands import COMMAND_NAMES, validate_command
from peer.worker.commands.base import CommandError, WorkerSettings
from peer.worker.commands.params import format_float, go_format

from .conftest import needs_linux, write_script

pytestmark = pytest.mark.timeout(10)

EXEC_ON = WorkerSettings(enable_exec=True)


@pytest.fixture
def fake_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH holding only fake `blender` and `ffmpeg`, so validation never depends on the host."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    write_script(bin_dir / "blender", "exit 0\n")
    write_script(bin_dir / "ffmpeg", "exit 0\n")
    monkeypatch.setenv("PATH", str(bin_dir))
    return bin_dir


def error_of(name: str, params: object, settings: WorkerSettings = WorkerSettings()) -> str:
    with pytest.raises(CommandError) as info:
        validate_command(name, params, settings)  # type: ignore[arg-type]
    return info.value.message


def test_command_names() -> None:
    assert COMMAND_NAMES == {
        "echo", "sleep", "exec", "blender-render", "frames-to-video",
        "make-directory", "move-directory", "copy-file",
        "ffmpeg-encode", "mkvmerge", "move-file", "delete-files",
    }


def test_unknown_command() -> None:
    msg = error_of("render-all-the-things", {})
    assert msg.startswith('unknown command: "render-all-the-things"')
    assert "blender-render" in msg  # says what is supported


def test_params_must_be_an_object() -> None:
    assert "parameters must be a JSON object, got list" in error_of("echo", ["hi"])


BLENDER_OK = {"exe": "blender", "exeArgs": "-b -y", "argsBefore": [], "blendfile": "", "args": ["-f", 1]}
FFMPEG_OK = {"exe": "ffmpeg", "fps": 24, "inputGlob": "/tmp/x/*.png", "outputFile": "/tmp/x.mp4"}

BAD_PARAMS = [
    # blender-render
    ("blender-render", {k: v for k, v in BLENDER_OK.items() if k != "exe"},
     'blender-render: mandatory parameter "exe" is missing'),
    ("blender-render", {**BLENDER_OK, "exe": ""},
     'blender-render: parameter "exe" has invalid value "": must not be empty'),
    ("blender-render", {**BLENDER_OK, "exe": 3},
     'blender-render: parameter "exe" has invalid value 3: must be a string'),
    ("blender-render", {k: v for k, v in BLENDER_OK.items() if k != "blendfile"},
     'blender-render: mandatory parameter "blendfile" is missing'),
    ("blender-render", {**BLENDER_OK, "blendfile": None},
     'blender-render: parameter "blendfile" has invalid value null: must be a string (use "" to leave it out)'),
    ("blender-render", {**BLENDER_OK, "args": "-f 1"},
     'blender-render: parameter "args" has invalid value "-f 1": must be a list of strings'),
    ("blender-render", {**BLENDER_OK, "argsBefore": {"a": 1}},
     'blender-render: parameter "argsBefore" has invalid value {"a": 1}: must be a list of strings'),
    ("blender-render", {**BLENDER_OK, "exeArgs": ["-b"]},
     'blender-render: parameter "exeArgs" has invalid value ["-b"]: must be a string'),
    ("blender-render", {**BLENDER_OK, "exeArgs": '-b --python-expr "print(1)'},
     'blender-render: parameter "exeArgs" has invalid value "-b --python-expr \\"print(1)": '
     "cannot be split into arguments (No closing quotation); check the quoting"),
    # frames-to-video
    ("frames-to-video", {k: v for k, v in FFMPEG_OK.items() if k != "exe"},
     'frames-to-video: mandatory parameter "exe" is missing'),
    ("frames-to-video", {k: v for k, v in FFMPEG_OK.items() if k != "fps"},
     'frames-to-video: mandatory parameter "fps" is missing'),
    ("frames-to-video", {**FFMPEG_OK, "fps": 0},
     'frames-to-video: parameter "fps" has invalid value 0: must be a frame rate greater than zero, e.g. 24'),
    ("frames-to-video", {**FFMPEG_OK, "fps": -24.0},
     'frames-to-video: parameter "fps" has invalid value -24.0: must be a frame rate greater than zero, e.g. 24'),
    ("frames-to-video", {**FFMPEG_OK, "fps": "24"},
     'frames-to-video: parameter "fps" has invalid value "24": must be a number'),
    ("frames-to-video", {**FFMPEG_OK, "fps": True},
     'frames-to-video: parameter "fps" has invalid value true: must be a number'),
    ("frames-to-video", {**FFMPEG_OK, "fps": float("nan")},
     'frames-to-video: parameter "fps" has invalid value NaN: must be a finite number'),
    ("frames-to-video", {k: v for k, v in FFMPEG_OK.items() if k != "inputGlob"},
     'frames-to-video: mandatory parameter "inputGlob" is missing'),
    ("frames-to-video", {k: v for k, v in FFMPEG_OK.items() if k != "outputFile"},
     'frames-to-video: mandatory parameter "outputFile" is missing'),
    ("frames-to-video", {**FFMPEG_OK, "args": 5},
     'frames-to-video: parameter "args" has invalid value 5: must be a list of strings'),
    # echo, sleep
    ("echo", {}, 'echo: mandatory parameter "message" is missing'),
    ("sleep", {}, 'sleep: mandatory parameter "duration_in_seconds" is missing'),
    ("sleep", {"duration_in_seconds": -1},
     'sleep: parameter "duration_in_seconds" has invalid value -1: must be zero or more seconds'),
    ("sleep", {"duration_in_seconds": "5"},
     'sleep: parameter "duration_in_seconds" has invalid value "5": must be a number'),
    # file management
    ("make-directory", {}, 'make-directory: mandatory parameter "path" is missing'),
    ("make-directory", {"path": ""}, 'make-directory: parameter "path" has invalid value "": must not be empty'),
    ("move-directory", {"dest": "/b"}, 'move-directory: mandatory parameter "src" is missing'),
    ("move-directory", {"src": "/a"}, 'move-directory: mandatory parameter "dest" is missing'),
    ("copy-file", {"dest": "/b"}, 'copy-file: mandatory parameter "src" is missing'),
    ("copy-file", {"src": "/a"}, 'copy-file: mandatory parameter "dest" is missing'),
    ("copy-file", {"src": "a.txt", "dest": "/b"},
     'copy-file: parameter "src" has invalid value "a.txt": must be an absolute path, '
     "because a relative one depends on where the worker runs"),
    ("copy-file", {"src": "/a", "dest": "b/c.txt"},
     'copy-file: parameter "dest" has invalid value "b/c.txt": must be an absolute path, '
     "because a relative one depends on where the worker runs"),
]


@needs_linux
@pytest.mark.usefixtures("fake_tools")
@pytest.mark.parametrize(("name", "params", "expected"), BAD_PARAMS)
def test_invalid_parameters(name: str, params: dict, expected: str) -> None:
    assert error_of(name, params) == expected


@needs_linux
@pytest.mark.usefixtures("fake_tools")
@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("blender-render", BLENDER_OK),
        ("frames-to-video", FFMPEG_OK),
        ("frames-to-video", {**FFMPEG_OK, "fps": 23.976, "exeArgs": "-hide_banner", "args": ["-y"]}),
        ("echo", {"message": None}),
        ("echo", {"message": {"any": ["type"]}}),
        ("sleep", {"duration_in_seconds": 0}),
        ("sleep", {"duration_in_seconds": 0.25}),
        ("make-directory", {"path": "relative/is/fine"}),
        ("move-directory", {"src": "/does/not/exist/yet", "dest": "/neither"}),
        ("copy-file", {"src": "/not/checked/until/run", "dest": "/x/y"}),
    ],
)
def test_valid_parameters(name: str, params: dict) -> None:
    validate_command(name, params, WorkerSettings())


def test_exec_refused_unless_enabled() -> None:
    msg = error_of("exec", {"exe": "ls", "args": []})
    assert msg == (
        "exec: running arbitrary programs is disabled on this worker; "
        "start it with --enable-exec to allow it"
    )


@needs_linux
def test_exec_parameters_when_enabled(tmp_path: Path) -> None:
    assert error_of("exec", {}, EXEC_ON) == 'exec: mandatory parameter "exe" is missing'
    assert error_of("exec", {"exe": "/bin/sh", "args": "x"}, EXEC_ON) == (
        'exec: parameter "args" has invalid value "x": must be a list of strings'
    )
    msg = error_of("exec", {"exe": "no-such-program-here", "args": []}, EXEC_ON)
    assert msg.startswith("exec: program not found: looked for 'no-such-program-here' on PATH (")
    assert 'full path in the "exe" parameter' in msg
    validate_command("exec", {"exe": "/bin/sh", "args": ["-c", "true"]}, EXEC_ON)


def test_blender_not_found_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", f"{empty}{os.pathsep}{tmp_path / 'also-empty'}")
    hint = 'set `blender = "/path"` in /home/x/.config/flamenco-peer/config.toml or pass --blender'
    settings = WorkerSettings(config_hint=hint)
    msg = error_of("blender-render", BLENDER_OK, settings)
    assert msg.startswith(
        f"blender-render: Blender not found: looked for 'blender' on PATH "
        f"({empty}{os.pathsep}{tmp_path / 'also-empty'})"
    )
    assert "install Blender (apt install blender)" in msg or "blender.org/download" in msg
    assert msg.endswith(f"or configure the path: {hint}")


def test_blender_explicit_path_missing(tmp_path: Path) -> None:
    settings = WorkerSettings(config_hint="pass --blender")
    msg = error_of("blender-render", {**BLENDER_OK, "exe": str(tmp_path / "blender-9.9" / "blender")}, settings)
    assert msg.startswith(f"blender-render: Blender not found: '{tmp_path}/blender-9.9/blender' does not exist;")
    assert msg.endswith("or configure the path: pass --blender")


@needs_linux
def test_blender_explicit_path_not_executable(tmp_path: Path) -> None:
    exe = tmp_path / "blender"
    exe.write_text("not a program")
    exe.chmod(0o644)
    if os.access(exe, os.X_OK):  # root can execute anything with any x bit; 0o644 has none
        pytest.skip("this user can execute non-executable files")
    msg = error_of("blender-render", {**BLENDER_OK, "exe": str(exe)})
    assert "is not executable" in msg


@needs_linux
def test_configured_blender_replaces_bare_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing called "blender" on PATH
    custom = write_script(tmp_path / "my-blender-4.2", "exit 0\n")
    validate_command("blender-render", BLENDER_OK, WorkerSettings(blender_exe=str(custom)))
    gone = WorkerSettings(blender_exe=str(tmp_path / "nope" / "blender"), config_hint="fix config.toml")
    msg = error_of("blender-render", BLENDER_OK, gone)
    assert f"'{tmp_path}/nope/blender' does not exist" in msg


def test_ffmpeg_not_found_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    msg = error_of("frames-to-video", FFMPEG_OK, WorkerSettings(config_hint="set `ffmpeg` in config.toml"))
    assert msg.startswith(f"frames-to-video: FFmpeg not found: looked for 'ffmpeg' on PATH ({tmp_path});")
    assert msg.endswith("or configure the path: set `ffmpeg` in config.toml")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("text", "text"), (24, "24"), (24.0, "24"), (23.976, "23.976"), (29.97, "29.97"),
        (0.5, "0.5"), (1e-05, "1e-05"), (1e21, "1e+21"), (-3, "-3"), (True, "true"),
        (None, "<nil>"), ([1, "a", 2.5], "[1 a 2.5]"), ({"b": 1, "a": "x"}, "map[a:x b:1]"),
    ],
)
def test_go_format(value: object, expected: str) -> None:
    assert go_format(value) == expected


def test_format_float_keeps_precision() -> None:
    assert format_float(1 / 3) == "0.3333333333333333"
    assert format_float(100000.0) == "100000"
