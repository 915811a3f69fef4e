"""ffmpeg-encode, mkvmerge, move-file and delete-files: validation, and real runs on generated media."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from peer.worker.commands import run_command, validate_command
from peer.worker.commands import encode, mkvmerge
from peer.worker.commands.base import CommandError, WorkerSettings

from .conftest import RecordingContext, needs_linux, write_script
from tests.media import make_source_media, mkvmerge_identify, probe_streams, requires_mkvmerge, stream_summary
from tests.scenes import requires_ffmpeg

pytestmark = pytest.mark.timeout(60)

X265_DARK_AND_STORMY = {
    "codec": "libx265", "crf": 19, "pix_fmt": "yuv420p10le", "preset": "slow",
    "x265-params": {"limit-sao": 1, "bframes": 8, "psy-rd": 1, "psy-rdoq": 2, "aq-mode": 3},
}
OPUS_128K_STEREO = {
    "codec": "libopus", "b": "128k", "ac": 2, "vbr": "on", "compression_level": 10, "application": "audio",
}


def error_of(name: str, params: Any) -> str:
    with pytest.raises(CommandError) as info:
        validate_command(name, params, WorkerSettings())
    return info.value.message


def encode_params(source: Path | str, output: Path | str, **changes: Any) -> dict[str, Any]:
    """Sisyphus' example job: v:0, then audio 1 before audio 0, then the subtitles."""
    params: dict[str, Any] = {
        "sources": [str(source)],
        "sourceMaps": [
            {"source": 0, "specifier": "v", "stream": 0},
            {"source": 0, "specifier": "a", "stream": 1},
            {"source": 0, "specifier": "a", "stream": 0},
            {"source": 0, "specifier": "s", "stream": 0},
        ],
        "outputMaps": [
            {"specifier": "v", "stream": 0, "options": X265_DARK_AND_STORMY},
            {"specifier": "a", "stream": 0, "options": OPUS_128K_STEREO},
            {"specifier": "a", "stream": 1, "options": {"codec": "aac", "b": "96k"}},
            {"specifier": "s", "stream": 0, "options": {"codec": "copy"}},
        ],
        "outputFile": str(output),
    }
    params.update(changes)
    return params


def remux_params(source: Path, output: Path, **changes: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "sources": [str(source)],
        "tracks": [
            {"source": 0, "track": 0, "options": {"language": "eng", "default-track": "yes", "track-name": "Test card"}},
            {"source": 0, "track": 1, "options": {"language": "jpn", "default-track": "yes", "track-name": "Stereo (OPUS)"}},
            {"source": 0, "track": 2, "options": {"language": "eng", "default-track-flag": False, "track-name": "Mono (AAC)"}},
            {"source": 0, "track": 3, "options": {"language": "eng", "track-name": "Subtitles"}},
        ],
        "options": {"no-global-tags": None, "no-track-tags": None, "title": "A dark and stormy test"},
        "outputFile": str(output),
    }
    params.update(changes)
    return params


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".partial-" in p.name)


# ---- ffmpeg-encode: validation (no disk access, nothing runs) ----

GOOD = encode_params("/media/in.mkv", "/media/out.mkv")


@pytest.mark.parametrize(("changes", "expected"), [
    ({"sources": None}, 'ffmpeg-encode: mandatory parameter "sources" is missing'),
    ({"sources": []}, 'parameter "sources" has invalid value []: must not be empty'),
    ({"sources": ["in.mkv"]}, 'parameter "sources[0]" has invalid value "in.mkv": must be an absolute path'),
    ({"sourceMaps": [{"source": 1, "specifier": "v", "stream": 0}]},
     'parameter "sourceMaps[0].source" has invalid value 1: there are only 1 sources'),
    ({"sourceMaps": [{"source": 0, "specifier": "x", "stream": 0}]},
     'parameter "sourceMaps[0].specifier" has invalid value "x": must be one of "v" (video)'),
    ({"sourceMaps": [{"source": 0, "specifier": "v", "stream": -1}]},
     'parameter "sourceMaps[0].stream" has invalid value -1: must be a whole number, 0 or more'),
    ({"sourceMaps": [{"source": 0, "specifier": "v"}]}, 'mandatory parameter "sourceMaps[0].stream" is missing'),
    ({"sourceMaps": [{"source": 0, "specifier": "v", "stream": 0, "optional": True}]},
     'parameter "sourceMaps[0]" has an unknown key "optional"; the known keys are "source", "specifier", "stream"'),
    ({"outputMaps": [{"specifier": "a", "stream": 2, "options": {}}]},
     'parameter "outputMaps[0].stream" has invalid value 2: the output has 2 audio stream(s) from sourceMaps'),
    ({"outputMaps": [{"specifier": "v", "stream": 0, "options": {"crf": 20}},
                     {"specifier": "v", "stream": 0, "options": {"preset": "slow"}}]},
     "output stream v:0 already has options; merge the two entries"),
    ({"outputMaps": [{"specifier": "v", "stream": 0, "option_set": "x265"}]},
     'parameter "outputMaps[0]" has an unknown key "option_set"'),
    ({"outputMaps": [{"specifier": "v", "stream": 0, "options": {"map": "0:v:1"}}]},
     'parameter "outputMaps[0].options.map" has invalid value "map": applies to a whole file, not one stream'),
    ({"outputMaps": [{"specifier": "v", "stream": 0, "options": {"c:v": "libx264"}}]},
     "must be an FFmpeg option name such as \"codec\""),
    ({"outputMaps": [{"specifier": "v", "stream": 0, "options": {"x264-params": {"keyint": "1:2"}}}]},
     'parameter "outputMaps[0].options.x264-params.keyint" has invalid value "1:2": must be a plain value'),
    ({"outputMaps": [{"specifier": "v", "stream": 0, "options": {"crf": None}}]},
     'parameter "outputMaps[0].options.crf" has invalid value null: must be a string, a number'),
    ({"outputFile": "/media/out"}, "has no file extension, so FFmpeg cannot tell which container to write"),
    ({"outputFile": "/media/./in.mkv"}, "is also source 0; FFmpeg cannot write the file it reads"),
    ({"overwrite": "yes"}, 'parameter "overwrite" has invalid value "yes": must be true or false'),
    ({"progressSteps": 2.5}, 'parameter "progressSteps" has invalid value 2.5: must be a whole number'),
])
def test_encode_validation(changes: dict[str, Any], expected: str) -> None:
    params = {**GOOD, **changes}
    params = {k: v for k, v in params.items() if v is not None}
    assert expected in error_of("ffmpeg-encode", params)


def test_encode_command_line() -> None:
    command = encode.parse_params({**GOOD, "overwrite": True, "progressSteps": 10}, WorkerSettings(ffmpeg_exe="/opt/ff"))
    assert command.exe == "/opt/ff"  # the bare "ffmpeg" default means the worker's own
    assert command.cli("/media/out.partial.mkv") == [
        "/opt/ff", "-hide_banner", "-nostdin", "-nostats", "-y",
        "-progress", "pipe:1", "-stats_period", "5",
        "-i", "/media/in.mkv",
        "-map", "0:v:0", "-map", "0:a:1", "-map", "0:a:0", "-map", "0:s:0",
        "-codec:v:0", "libx265", "-crf:v:0", "19", "-pix_fmt:v:0", "yuv420p10le", "-preset:v:0", "slow",
        "-x265-params:v:0", "limit-sao=1:bframes=8:psy-rd=1:psy-rdoq=2:aq-mode=3",
        "-codec:a:0", "libopus", "-b:a:0", "128k", "-ac:a:0", "2", "-vbr:a:0", "on",
        "-compression_level:a:0", "10", "-application:a:0", "audio",
        "-codec:a:1", "aac", "-b:a:1", "96k",
        "-codec:s:0", "copy",
        "/media/out.partial.mkv",
    ]


def test_encode_exe_not_found() -> None:
    msg = error_of("ffmpeg-encode", {**GOOD, "exe": "/nonexistent/ffmpeg"})
    assert msg.startswith("ffmpeg-encode: FFmpeg not found: '/nonexistent/ffmpeg' does not exist")


# ---- ffmpeg-encode: real FFmpeg ----

@pytest.fixture(scope="module")
def source_media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("ffmpeg") is None:
        pytest.skip("needs FFmpeg")
    return make_source_media(tmp_path_factory.mktemp("media") / "source.mkv")


@requires_ffmpeg
async def test_encode_maps_streams_with_per_stream_options(
    ctx: RecordingContext, source_media: Path, tmp_path: Path
) -> None:
    output = tmp_path / "new" / "dir" / "encoded.mkv"
    await run_command("ffmpeg-encode", encode_params(source_media, output, progressSteps=10), ctx)

    streams = probe_streams(output)
    assert [(s["codec_type"], s["codec_name"]) for s in streams] == [
        ("video", "hevc"), ("audio", "opus"), ("audio", "aac"), ("subtitle", "subrip"),
    ]
    assert streams[0]["pix_fmt"] == "yuv420p10le"  # the option set reached the encoder
    # Output audio 0 is source audio 1 (stereo), output audio 1 is source audio 0 (mono).
    assert streams[1]["channels"] == 2 and streams[2]["channels"] == 1
    assert ctx.steps == 10
    assert "-x265-params:v:0 limit-sao=1:bframes=8" in ctx.logs[0]
    assert ctx.logs[-1] == f'ffmpeg-encode: wrote "{output}"'
    assert leftovers(output.parent) == []


@requires_ffmpeg
async def test_encode_second_source_and_audio_copy(ctx: RecordingContext, source_media: Path, tmp_path: Path) -> None:
    output = tmp_path / "two-sources.mp4"
    params = encode_params(source_media, output, sources=[str(source_media), str(source_media.with_suffix(".srt"))],
                           sourceMaps=[{"source": 0, "specifier": "v", "stream": 0},
                                       {"source": 0, "specifier": "a", "stream": 0},
                                       {"source": 1, "specifier": "s", "stream": 0}],
                           outputMaps=[{"specifier": "v", "stream": 0, "options": {"codec": "libx264", "preset": "ultrafast"}},
                                       {"specifier": "a", "stream": 0, "options": {"codec": "copy"}},
                                       {"specifier": "s", "stream": 0, "options": {"codec": "mov_text"}}])
    await run_command("ffmpeg-encode", params, ctx)
    assert stream_summary(output) == [("video", "h264"), ("audio", "aac"), ("subtitle", "mov_text")]
    assert ctx.steps == 0  # no progressSteps asked for: the worker loop counts the command


@requires_ffmpeg
async def test_encode_refuses_to_replace_without_overwrite(ctx: RecordingContext, source_media: Path, tmp_path: Path) -> None:
    output = tmp_path / "taken.mkv"
    output.write_text("precious")
    with pytest.raises(CommandError) as info:
        await run_command("ffmpeg-encode", encode_params(source_media, output), ctx)
    assert info.value.message == (
        f'ffmpeg-encode: outputFile "{output}" already exists; remove it, choose another path, '
        'or set "overwrite" to true'
    )
    assert output.read_text() == "precious"
    assert ctx.logs == []  # FFmpeg never started

    await run_command("ffmpeg-encode", encode_params(source_media, output, overwrite=True), ctx)
    assert stream_summary(output)[0] == ("video", "hevc")


@requires_ffmpeg
async def test_failed_encode_leaves_nothing_behind(ctx: RecordingContext, source_media: Path, tmp_path: Path) -> None:
    output = tmp_path / "out.mkv"
    params = encode_params(source_media, output)
    params["sourceMaps"][2] = {"source": 0, "specifier": "a", "stream": 7}  # the source has 2 audio streams
    with pytest.raises(CommandError) as info:
        await run_command("ffmpeg-encode", params, ctx)
    msg = info.value.message
    assert msg.startswith("ffmpeg-encode: command exited abnormally with code ")
    assert "0:a:7" in msg and "last output of FFmpeg" in msg
    assert list(tmp_path.iterdir()) == []  # neither the output nor a partial file


@requires_ffmpeg
async def test_missing_source_is_reported_before_ffmpeg_runs(ctx: RecordingContext, tmp_path: Path) -> None:
    with pytest.raises(CommandError) as info:
        await run_command("ffmpeg-encode", encode_params(tmp_path / "gone.mkv", tmp_path / "o.mkv"), ctx)
    assert info.value.message.startswith(f'ffmpeg-encode: source 0 "{tmp_path / "gone.mkv"}" does not exist')
    assert ctx.logs == []


# ---- mkvmerge ----

MKV_GOOD = remux_params(Path("/media/encoded.mkv"), Path("/media/final.mkv"))


@pytest.mark.parametrize(("changes", "expected"), [
    ({"sources": ["relative.mkv"]}, 'parameter "sources[0]" has invalid value "relative.mkv": must be an absolute path'),
    ({"tracks": [{"source": 0, "track": 0, "options": {"language": "english!"}}]},
     'parameter "tracks[0].options.language" has invalid value "english!": must be an ISO 639-2 code'),
    ({"tracks": [{"source": 0, "track": 0, "options": {"lang": "eng"}}]},
     'parameter "tracks[0].options" has invalid value "lang": unknown track option; the known ones are "language"'),
    ({"tracks": [{"source": 0, "track": 0, "options": {"default-track": "maybe"}}]},
     'has invalid value "maybe": must be "yes" or "no"'),
    ({"tracks": [{"source": 0, "track": 0, "options": {"default-track": "yes", "default-track-flag": "no"}}]},
     'means the same as "default-track", which is also given; keep one'),
    ({"tracks": [{"source": 0, "track": 1}, {"source": 0, "track": 1}]}, "track 1 of source 0 is listed twice"),
    ({"tracks": [{"source": 2, "track": 0}]}, 'parameter "tracks[0].source" has invalid value 2: there are only 1 sources'),
    ({"tracks": [{"source": 0, "track": 0, "options": {"track-name": "two\nlines"}}]}, "must be a single line"),
    ({"options": {"titel": "x"}}, 'parameter "options" has an unknown key "titel"'),
    ({"options": {"no-global-tags": "yes"}}, 'is a switch: use null or true'),
    ({"outputFile": "/media/final.mp4"}, "must end in one of .mkv, .mka, .mks, .mk3d, .webm, because mkvmerge writes Matroska"),
    ({"outputFile": "/media/encoded.mkv"}, "is also source 0; mkvmerge cannot write the file it reads"),
])
def test_mkvmerge_validation(changes: dict[str, Any], expected: str) -> None:
    # parse_params: these checks must not depend on mkvmerge being installed.
    with pytest.raises(CommandError) as info:
        mkvmerge.parse_params({**MKV_GOOD, **changes}, WorkerSettings())
    assert expected in info.value.message


def test_mkvmerge_command_line() -> None:
    command = mkvmerge.parse_params(MKV_GOOD, WorkerSettings())
    assert command.cli("/media/final.partial.mkv") == [
        "mkvmerge", "--gui-mode", "--ui-language", "en_US", "-o", "/media/final.partial.mkv",
        "--title", "A dark and stormy test",
        "--no-global-tags", "--no-track-tags",
        "--language", "0:eng", "--default-track-flag", "0:1", "--track-name", "0:Test card",
        "--language", "1:jpn", "--default-track-flag", "1:1", "--track-name", "1:Stereo (OPUS)",
        "--language", "2:eng", "--default-track-flag", "2:0", "--track-name", "2:Mono (AAC)",
        "--language", "3:eng", "--track-name", "3:Subtitles",
        "/media/encoded.mkv",
    ]


def test_mkvmerge_not_installed_says_which_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    msg = error_of("mkvmerge", MKV_GOOD)
    assert msg.startswith("mkvmerge: mkvmerge not found: looked for 'mkvmerge' on PATH (/nonexistent)")
    assert "apt install mkvtoolnix" in msg


@pytest.fixture(scope="module")
def encoded_media(source_media: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """source_media encoded by ffmpeg-encode (v, opus, aac, subrip), once per module."""
    output = tmp_path_factory.mktemp("encoded") / "encoded.mkv"
    asyncio.run(run_command("ffmpeg-encode", encode_params(source_media, output), RecordingContext()))
    return output


@requires_ffmpeg
@requires_mkvmerge
async def test_remux_sets_title_languages_names_and_default_flags(
    ctx: RecordingContext, encoded_media: Path, tmp_path: Path
) -> None:
    output = tmp_path / "final.mkv"
    await run_command("mkvmerge", remux_params(encoded_media, output, progressSteps=4), ctx)

    info = mkvmerge_identify(output)
    assert info["container"]["properties"]["title"] == "A dark and stormy test"
    tracks = [(t["type"], t["properties"]["language"], t["properties"].get("track_name"), t["properties"]["default_track"])
              for t in info["tracks"]]
    assert tracks == [
        ("video", "eng", "Test card", True),
        ("audio", "jpn", "Stereo (OPUS)", True),
        ("audio", "eng", "Mono (AAC)", False),
        ("subtitles", "eng", "Subtitles", False),
    ]
    assert [t["codec"] for t in info["tracks"]] == ["HEVC/H.265/MPEG-H", "Opus", "AAC", "SubRip/SRT"]
    # ffprobe agrees (what a player would show).
    streams = probe_streams(output)
    assert [s["tags"].get("language") for s in streams] == ["eng", "jpn", "eng", "eng"]
    assert ctx.steps == 4
    assert ctx.logs[-1] == f'mkvmerge: wrote "{output}"'
    assert leftovers(tmp_path) == []


@requires_ffmpeg
@requires_mkvmerge
async def test_remux_names_a_track_that_does_not_exist(ctx: RecordingContext, encoded_media: Path, tmp_path: Path) -> None:
    output = tmp_path / "final.mkv"
    params = remux_params(encoded_media, output, tracks=[{"source": 0, "track": 9, "options": {"language": "eng"}}])
    with pytest.raises(CommandError) as info:
        await run_command("mkvmerge", params, ctx)
    assert info.value.message == (
        f'mkvmerge: track 9 of source 0 "{encoded_media}" does not exist; its tracks are '
        "0 (video, HEVC/H.265/MPEG-H), 1 (audio, Opus), 2 (audio, AAC), 3 (subtitles, SubRip/SRT); "
        "fix the track numbers in the job"
    )
    assert list(tmp_path.iterdir()) == []


@requires_mkvmerge
async def test_remux_refuses_a_file_that_is_not_media(ctx: RecordingContext, tmp_path: Path) -> None:
    junk = tmp_path / "notes.mkv"
    junk.write_text("not a video")
    with pytest.raises(CommandError) as info:
        await run_command("mkvmerge", remux_params(junk, tmp_path / "final.mkv", tracks=[]), ctx)
    assert info.value.message.startswith(f'mkvmerge: source 0 "{junk}" is not a media file mkvmerge can read')
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.mkv"]


@requires_ffmpeg
@requires_mkvmerge
async def test_remux_error_from_mkvmerge_is_quoted(ctx: RecordingContext, encoded_media: Path, tmp_path: Path) -> None:
    # Well-formed (so validation passes) but unknown to mkvmerge's language list.
    params = remux_params(encoded_media, tmp_path / "final.mkv",
                          tracks=[{"source": 0, "track": 0, "options": {"language": "xx"}}])
    with pytest.raises(CommandError) as info:
        await run_command("mkvmerge", params, ctx)
    msg = info.value.message
    assert msg.startswith("mkvmerge: command exited abnormally with code 2: Error:")
    assert "'xx' is not a valid" in msg
    assert list(tmp_path.iterdir()) == []


# ---- move-file ----

@pytest.mark.parametrize(("params", "expected"), [
    ({"src": "/a/x.mkv"}, 'move-file: mandatory parameter "dest" is missing'),
    ({"src": "x.mkv", "dest": "/b/x.mkv"}, 'parameter "src" has invalid value "x.mkv": must be an absolute path'),
    ({"src": "/a/x.mkv", "dest": "/b/"}, "ends in a path separator; give the full path of the file"),
    ({"src": "/a/x.mkv", "dest": "/a/./x.mkv"}, "is the same path as src"),
    ({"src": "/a/x.mkv", "dest": "/b/x.mkv", "overwrite": 1}, 'parameter "overwrite" has invalid value 1: must be true or false'),
])
def test_move_file_validation(params: dict[str, Any], expected: str) -> None:
    assert expected in error_of("move-file", params)


async def test_move_file_creates_parents_and_never_replaces_by_default(ctx: RecordingContext, tmp_path: Path) -> None:
    src, dest = tmp_path / "work" / "a.mkv", tmp_path / "Done" / "shows" / "a.mkv"
    src.parent.mkdir()
    src.write_text("video")
    await run_command("move-file", {"src": str(src), "dest": str(dest)}, ctx)
    assert dest.read_text() == "video" and not src.exists()

    src.write_text("newer")
    with pytest.raises(CommandError, match='destination ".*a.mkv" already exists; remove it, choose another destination, or set "overwrite" to true'):
        await run_command("move-file", {"src": str(src), "dest": str(dest)}, ctx)
    assert dest.read_text() == "video" and src.exists()

    await run_command("move-file", {"src": str(src), "dest": str(dest), "overwrite": True}, ctx)
    assert dest.read_text() == "newer" and not src.exists()


async def test_move_file_refuses_directories(ctx: RecordingContext, tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(CommandError, match="is a directory; move-file moves regular files only; use move-directory"):
        await run_command("move-file", {"src": str(tmp_path / "dir"), "dest": str(tmp_path / "d2")}, ctx)
    with pytest.raises(CommandError, match="is a directory; give the full path of the file, including its name"):
        await run_command("move-file", {"src": str(tmp_path / "file"), "dest": str(tmp_path / "dir")}, ctx)
    with pytest.raises(CommandError, match="does not exist; check the job's paths and that the previous step produced it"):
        await run_command("move-file", {"src": str(tmp_path / "nope"), "dest": str(tmp_path / "d3")}, ctx)
    assert (tmp_path / "file").read_text() == "x"


@pytest.fixture
def other_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A directory on another filesystem than tmp_path (/dev/shm), or skip."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK) or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs a writable /dev/shm on another filesystem than the test's temporary directory")
    directory = Path(tempfile.mkdtemp(dir=shm, prefix="encode-test-"))
    yield directory
    shutil.rmtree(directory)


async def test_move_file_across_filesystems(ctx: RecordingContext, tmp_path: Path, other_filesystem: Path) -> None:
    src, dest = tmp_path / "a.mkv", other_filesystem / "out" / "a.mkv"
    src.write_bytes(b"\x1a\x45\xdf\xa3" * 1000)
    os.utime(src, (1_000_000_000, 1_000_000_000))
    await run_command("move-file", {"src": str(src), "dest": str(dest)}, ctx)
    assert dest.read_bytes() == b"\x1a\x45\xdf\xa3" * 1000
    assert dest.stat().st_mtime == 1_000_000_000  # copied with its times
    assert not src.exists()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["a.mkv"]  # no temporary copy left
    assert "another filesystem" in ctx.log_text


# ---- delete-files ----

@pytest.mark.parametrize(("params", "expected"), [
    ({"paths": ["/w/a"]}, 'delete-files: mandatory parameter "withinDirectory" is missing'),
    ({"paths": ["/a"], "withinDirectory": "/"}, "is the root of a filesystem, which would allow deleting anything"),
    ({"paths": ["/w/a"], "withinDirectory": "w"}, 'parameter "withinDirectory" has invalid value "w": must be an absolute path'),
    ({"paths": [], "withinDirectory": "/w"}, 'parameter "paths" has invalid value []: must not be empty'),
    ({"paths": ["/w/a", "/etc/passwd"], "withinDirectory": "/w"},
     'parameter "paths[1]" has invalid value "/etc/passwd": is not inside withinDirectory "/w"'),
    ({"paths": ["/wx/a"], "withinDirectory": "/w"}, 'is not inside withinDirectory "/w"'),
    ({"paths": ["/w"], "withinDirectory": "/w/"}, 'is not inside withinDirectory "/w"'),
    ({"paths": ["/w/../etc/passwd"], "withinDirectory": "/w"}, 'must not contain ".." components'),
    ({"paths": ["/w/sub/"], "withinDirectory": "/w"}, "names a directory; delete-files only deletes files"),
    ({"paths": ["/w/a"], "withinDirectory": "/w", "missingOk": "no"}, 'parameter "missingOk" has invalid value "no"'),
])
def test_delete_files_validation(params: dict[str, Any], expected: str) -> None:
    assert expected in error_of("delete-files", params)


async def test_delete_files_deletes_files_and_links_only(ctx: RecordingContext, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    keep = tmp_path / "keep.mkv"
    keep.write_text("keep me")
    (work / "a.mkv").write_text("a")
    (work / "Film [1080p].mkv").write_text("b")  # literal names: no wildcard expansion
    (work / "link.mkv").symlink_to(keep)
    await run_command("delete-files", {
        "paths": [str(work / "a.mkv"), str(work / "Film [1080p].mkv"), str(work / "link.mkv"), str(work / "a.mkv")],
        "withinDirectory": str(work),
    }, ctx)
    assert list(work.iterdir()) == []
    assert keep.read_text() == "keep me"  # the link went, not its target
    assert ctx.logs == [f'delete-files: deleted "{work / name}"' for name in ("a.mkv", "Film [1080p].mkv", "link.mkv")]


async def test_delete_files_checks_everything_before_deleting_anything(ctx: RecordingContext, tmp_path: Path) -> None:
    (tmp_path / "a.mkv").write_text("a")
    (tmp_path / "sub").mkdir()
    with pytest.raises(CommandError) as info:
        await run_command("delete-files", {
            "paths": [str(tmp_path / "a.mkv"), str(tmp_path / "sub")], "withinDirectory": str(tmp_path),
        }, ctx)
    assert info.value.message == (
        f'delete-files: refusing to delete "{tmp_path / "sub"}": it is a directory, and delete-files '
        "only deletes files; nothing was deleted"
    )
    assert (tmp_path / "a.mkv").exists()


async def test_delete_files_missing_files(ctx: RecordingContext, tmp_path: Path) -> None:
    gone = tmp_path / "gone.mkv"
    await run_command("delete-files", {"paths": [str(gone)], "withinDirectory": str(tmp_path)}, ctx)
    assert ctx.logs == [f'delete-files: "{gone}" does not exist; nothing to delete']
    with pytest.raises(CommandError, match='does not exist; check the job\'s paths, or set "missingOk" to true'):
        await run_command("delete-files", {"paths": [str(gone)], "withinDirectory": str(tmp_path), "missingOk": False}, ctx)


async def test_delete_files_does_not_follow_a_link_out_of_the_directory(ctx: RecordingContext, tmp_path: Path) -> None:
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    (elsewhere / "precious.mkv").write_text("precious")
    (work / "escape").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(CommandError) as info:
        await run_command("delete-files", {
            "paths": [str(work / "escape" / "precious.mkv")], "withinDirectory": str(work),
        }, ctx)
    assert "(through a symbolic link), which is outside withinDirectory" in info.value.message
    assert (elsewhere / "precious.mkv").read_text() == "precious"


async def test_delete_files_within_directory_must_exist(ctx: RecordingContext, tmp_path: Path) -> None:
    with pytest.raises(CommandError, match='withinDirectory ".*nowhere" cannot be used: No such file or directory'):
        await run_command("delete-files", {"paths": [str(tmp_path / "nowhere" / "a")], "withinDirectory": str(tmp_path / "nowhere")}, ctx)


# ---- behaviour that needs a scripted stand-in for the real program ----

@needs_linux
async def test_cancelled_encode_removes_its_partial_file(ctx: RecordingContext, tmp_path: Path) -> None:
    # Writes its last argument (the partial file), then encodes "forever".
    fake = write_script(tmp_path / "ffmpeg", 'for last; do :; done\necho data > "$last"\necho started\nexec sleep 60\n')
    source = tmp_path / "in.mkv"
    source.write_text("media")
    output = tmp_path / "out" / "o.mkv"
    task = asyncio.create_task(run_command("ffmpeg-encode", encode_params(source, output, exe=str(fake)), ctx))
    await ctx.wait_for_log("started")
    [partial] = list(output.parent.iterdir())
    assert partial.name.startswith("o.partial-") and partial.suffix == ".mkv"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert list(output.parent.iterdir()) == []


FAKE_MKVMERGE = """\
case " $* " in
  *" -J "*) echo '{"container": {"recognized": true, "supported": true}, "errors": [], "tracks": [{"id": 0, "type": "video", "codec": "HEVC"}]}' ;;
  *) while [ "$1" != "-o" ]; do shift; done
     echo remuxed > "$2"
     echo "#GUI#warning The track 0 has no timestamps"
     exit 1 ;;
esac
"""


@needs_linux
async def test_mkvmerge_warnings_still_succeed(ctx: RecordingContext, tmp_path: Path) -> None:
    fake = write_script(tmp_path / "mkvmerge", FAKE_MKVMERGE)
    source = tmp_path / "in.mkv"
    source.write_text("media")
    output = tmp_path / "final.mkv"
    params = remux_params(source, output, exe=str(fake), tracks=[{"source": 0, "track": 0, "options": {"language": "eng"}}])
    await run_command("mkvmerge", params, ctx)
    assert output.read_text() == "remuxed\n"
    assert "#GUI#warning The track 0 has no timestamps" in ctx.log_text
    assert ctx.logs[-1] == f'mkvmerge: wrote "{output}" with warnings (see above)'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final.mkv", "in.mkv", "mkvmerge"]
