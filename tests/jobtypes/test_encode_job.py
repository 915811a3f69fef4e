"""The encode-media job type: compiled by the real V8 compiler, run on a real local farm."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from peer.cli import wait_for_job
from peer.compiler import CompiledJob, CompileError, JobTypeRegistry, JobTypeScript, compile_job, validate_settings
from peer.localfarm import LocalFarm
from peer.worker.commands import cleanup, encode, mkvmerge
from peer.worker.commands.base import WorkerSettings

from tests.compiler.conftest import make_request
from tests.media import make_source_media, mkvmerge_identify, probe_streams, requires_mkvmerge
from tests.scenes import requires_ffmpeg

JOB_TYPE_NAME = "encode-media"
JOB_ID = "0badc0de-1111-4222-8333-444455556666"

BASE_SETTINGS: dict[str, Any] = {
    "source_file": "/media/in.mkv",
    "extra_sources": "",
    "stream_maps": "0:v:0, 0:a:0",
    "video_options": "x264-crf23",
    "audio_options": "aac-160k",
    "subtitle_options": "copy",
    "output_file": "/done/film.mkv",
    "overwrite": False,
    "work_dir": "",
    "remux": False,
    "title": "",
    "track_options": "",
    "keep_intermediates": False,
}

# Each worker command's parameter check, without looking up executables,
# so the job type and the worker are checked against each other here.
WORKER_CHECKS: dict[str, Callable[[Any, WorkerSettings], object]] = {
    encode.NAME: encode.parse_params,
    mkvmerge.NAME: mkvmerge.parse_params,
    cleanup.MOVE_FILE: cleanup.prepare_move_file,
    cleanup.DELETE_FILES: cleanup.prepare_delete_files,
}

Compile = Callable[..., CompiledJob]


@pytest.fixture(scope="module")
def script() -> JobTypeScript:
    registry = JobTypeRegistry.with_builtins()
    registry.refresh()
    found = registry.get(JOB_TYPE_NAME)
    assert found is not None, registry.errors()
    return found


@pytest.fixture()
def compile_encode(script: JobTypeScript) -> Compile:
    def run(check_on_worker: bool = True, **changes: Any) -> CompiledJob:
        job = compile_job(script, make_request(script.name, {**BASE_SETTINGS, **changes}, job_id=JOB_ID))
        # A Linux worker rightly refuses Windows paths, so those jobs skip this.
        for task in job.tasks if check_on_worker else []:
            for command in task.commands:
                WORKER_CHECKS[command.name](command.parameters, WorkerSettings())
        return job

    return run


def compile_error(script: JobTypeScript, **changes: Any) -> str:
    with pytest.raises(CompileError) as info:
        compile_job(script, make_request(script.name, {**BASE_SETTINGS, **changes}, job_id=JOB_ID))
    assert info.value.kind == "script-error"
    return info.value.message


def params_of(job: CompiledJob, task_name: str, command_name: str) -> dict[str, Any]:
    [task] = [t for t in job.tasks if t.name == task_name]
    [command] = [c for c in task.commands if c.name == command_name]
    return command.parameters


# ---------------------------------------------------------------- JOB_TYPE

def test_option_sets_are_offered_by_name(script: JobTypeScript) -> None:
    settings = {s["key"]: s for s in script.job_type["settings"]}
    assert settings["video_options"]["choices"] == [
        "x264-crf23", "x264-preview", "x265-crf26", "x265-dark-and-stormy", "vp9-crf32", "copy",
    ]
    assert settings["audio_options"]["choices"] == [
        "aac-160k", "aac-128k-stereo", "opus-128k-stereo", "opus-96k-stereo", "copy",
    ]
    assert settings["subtitle_options"]["choices"] == ["srt", "ass", "mov-text", "copy"]
    assert [k for k, s in settings.items() if s.get("required")] == ["source_file", "stream_maps", "output_file"]
    assert validate_settings(script.job_type, {**BASE_SETTINGS, "audio_options": "mp3-320k"}) == [
        'setting \'audio_options\' must be one of "aac-160k", "aac-128k-stereo", "opus-128k-stereo", '
        '"opus-96k-stereo", "copy", got string "mp3-320k"'
    ]
    assert validate_settings(script.job_type, BASE_SETTINGS) == []


# ---------------------------------------------------------------- compiling

def test_sisyphus_example_with_remux(compile_encode: Compile) -> None:
    job = compile_encode(
        extra_sources="/media/in.en.srt",
        stream_maps="0:v:0=x265-dark-and-stormy, 0:a:1=opus-128k-stereo, 0:a:0, 1:s:0=srt",
        remux=True,
        title="A Dark and Stormy Night",
        track_options="0: lang=eng name='Main video' default=yes; "
                      "1: lang=jpn name=\"Stereo (OPUS); JP\" default=yes; 2: lang=eng default=no; 3: lang=eng forced=no",
    )
    assert [(t.name, t.type) for t in job.tasks] == [
        ("encode", "ffmpeg"), ("remux", "ffmpeg"), ("cleanup", "file-management"),
    ]
    encode_task, remux_task, cleanup_task = job.tasks
    assert encode_task.dependencies == []
    assert remux_task.dependencies == [encode_task.uuid]
    assert cleanup_task.dependencies == [remux_task.uuid]

    encoded = "/done/film-0badc0de.encoded.mkv"
    remuxed = "/done/film-0badc0de.remuxed.mkv"
    ffmpeg = params_of(job, "encode", "ffmpeg-encode")
    assert ffmpeg["sources"] == ["/media/in.mkv", "/media/in.en.srt"]
    assert ffmpeg["sourceMaps"] == [
        {"source": 0, "specifier": "v", "stream": 0},
        {"source": 0, "specifier": "a", "stream": 1},
        {"source": 0, "specifier": "a", "stream": 0},
        {"source": 1, "specifier": "s", "stream": 0},
    ]
    assert ffmpeg["outputMaps"] == [
        {"specifier": "v", "stream": 0, "options": {
            "codec": "libx265", "crf": 19, "pix_fmt": "yuv420p10le", "preset": "slow",
            "x265-params": {"limit-sao": 1, "bframes": 8, "psy-rd": 1, "psy-rdoq": 2, "aq-mode": 3}}},
        {"specifier": "a", "stream": 0, "options": {
            "codec": "libopus", "b": "128k", "ac": 2, "vbr": "on", "compression_level": 10, "application": "audio"}},
        # No "=set": the audio_options setting's set.
        {"specifier": "a", "stream": 1, "options": {"codec": "aac", "b": "160k"}},
        {"specifier": "s", "stream": 0, "options": {"codec": "srt"}},
    ]
    assert ffmpeg["outputFile"] == encoded and ffmpeg["overwrite"] is True
    assert encode_task.commands[0].total_step_count == 100 == ffmpeg["progressSteps"]

    remux = params_of(job, "remux", "mkvmerge")
    assert remux["sources"] == [encoded] and remux["outputFile"] == remuxed
    assert remux["options"] == {"no-global-tags": None, "no-track-tags": None, "title": "A Dark and Stormy Night"}
    assert remux["tracks"] == [
        {"source": 0, "track": 0, "options": {"language": "eng", "track-name": "Main video", "default-track": "yes"}},
        {"source": 0, "track": 1, "options": {"language": "jpn", "track-name": "Stereo (OPUS); JP", "default-track": "yes"}},
        {"source": 0, "track": 2, "options": {"language": "eng", "default-track": "no"}},
        {"source": 0, "track": 3, "options": {"language": "eng", "forced-track": "no"}},
    ]

    assert [c.name for c in cleanup_task.commands] == ["move-file", "delete-files"]
    assert params_of(job, "cleanup", "move-file") == {"src": remuxed, "dest": "/done/film.mkv", "overwrite": False}
    assert params_of(job, "cleanup", "delete-files") == {
        "paths": [encoded], "withinDirectory": "/done", "missingOk": True,
    }
    assert job.messages == []


def test_without_remux_the_encode_is_moved_into_place(compile_encode: Compile) -> None:
    job = compile_encode(output_file="/done/film.mp4", work_dir="/scratch", overwrite=True,
                         stream_maps="0:v:0=x264-preview, 0:a:0=copy", track_options="0: lang=eng")
    assert [t.name for t in job.tasks] == ["encode", "cleanup"]
    assert job.tasks[1].dependencies == [job.tasks[0].uuid]
    assert params_of(job, "encode", "ffmpeg-encode")["outputFile"] == "/scratch/film-0badc0de.encoded.mp4"
    assert [c.name for c in job.tasks[1].commands] == ["move-file"]
    assert params_of(job, "cleanup", "move-file") == {
        "src": "/scratch/film-0badc0de.encoded.mp4", "dest": "/done/film.mp4", "overwrite": True,
    }
    assert job.messages == ["title and track_options are only applied by the remux step, and remux is off"]


def test_keep_intermediates_and_windows_paths(compile_encode: Compile) -> None:
    job = compile_encode(check_on_worker=False, source_file="C:\\media\\in.mkv", output_file="D:/done/film.webm", remux=True,
                         stream_maps="0:v:0=vp9-crf32, 0:a:0=opus-96k-stereo", keep_intermediates=True)
    assert [c.name for c in job.tasks[-1].commands] == ["move-file"]
    assert params_of(job, "remux", "mkvmerge")["outputFile"] == "D:/done/film-0badc0de.remuxed.webm"


@pytest.mark.parametrize(("changes", "expected"), [
    ({"stream_maps": ""}, 'setting "stream_maps" is empty: list the output streams, e.g. "0:v:0, 0:a:0"'),
    ({"stream_maps": "0:v:0,, 0:a:0"}, "stream_maps entry 2 is empty; separate the entries with single commas"),
    ({"stream_maps": "0:v"}, 'stream_maps entry 1 "0:v": write it as source:type:index'),
    ({"stream_maps": "0:v:0, 0:x:0"}, 'stream_maps entry 2 "0:x:0": the stream type "x" must be v (video), a (audio) or s (subtitles)'),
    ({"stream_maps": "0:v:first"}, 'the stream index "first" must be a number counting the source\'s video streams from 0'),
    ({"stream_maps": "a:v:0"}, 'the source "a" must be a number: 0 for source_file, 1 and up for extra_sources'),
    ({"stream_maps": "0:v:0, 1:s:0"}, 'stream_maps entry 2 "1:s:0": there is no source 1; the sources are only 0 (source_file), since extra_sources is empty'),
    ({"stream_maps": "2:s:0", "extra_sources": "/a.srt"}, "there is no source 2; the sources are 0 (source_file) to 1 (extra_sources)"),
    ({"stream_maps": "0:v:0=x265-fast"}, 'stream_maps entry 1 "0:v:0=x265-fast": unknown option set "x265-fast"; the video option sets are x264-crf23, x264-preview'),
    ({"stream_maps": "0:v:0, 0:a:0=x265-crf26"}, 'stream_maps entry 2 "0:a:0=x265-crf26": option set "x265-crf26" is for video streams, not audio'),
    ({"stream_maps": "0:v:0="}, 'nothing after "="; name an option set or leave out the "="'),
    ({"stream_maps": "0:s:0", "subtitle_options": ""}, 'no option set given, and setting "subtitle_options" is empty'),
    ({"video_options": "opus-128k-stereo"}, 'setting "video_options": option set "opus-128k-stereo" is for audio streams, not video'),
    ({"source_file": ""}, 'setting "source_file" is empty: give the media file to encode'),
    ({"source_file": "in.mkv"}, 'setting "source_file" is "in.mkv", a relative path: give an absolute path'),
    ({"extra_sources": "/a.srt||/b.srt"}, 'setting "extra_sources": part 2 of "/a.srt||/b.srt" is empty'),
    ({"output_file": "/done/film"}, "which has no extension; add one"),
    ({"output_file": "/done/film.mp4", "remux": True}, 'setting "output_file" ends in ".mp4", but mkvmerge (remux) writes only .mkv'),
    ({"output_file": "/done/film.mp4", "stream_maps": "0:v:0, 0:s:0=srt"}, 'use "=mov-text" instead of "=srt" for 0:s:0'),
    ({"remux": True, "track_options": "2: lang=eng"}, "there is no track 2; stream_maps makes 2 tracks, numbered 0 to 1"),
    ({"remux": True, "track_options": "lang=eng"}, 'track_options entry 1 "lang=eng": start with the track number and a colon'),
    ({"remux": True, "track_options": "0: language=english"}, 'language "english" must be an ISO 639-2 code or BCP 47 tag'),
    ({"remux": True, "track_options": "0: default=maybe"}, "default=maybe must be yes or no"),
    ({"remux": True, "track_options": "0: colour=red"}, 'unknown option "colour"; use lang, language, name, default, forced, commentary'),
    ({"remux": True, "track_options": "0: name"}, '"name" needs a value'),
    ({"remux": True, "track_options": "0: lang=eng; 0: name=x"}, "track 0 already has options in entry 1; put them in one entry"),
    ({"remux": True, "track_options": "0: name='unclosed"}, "quote names with spaces like name='Main video'"),
    ({"work_dir": "scratch"}, 'setting "work_dir" is "scratch", a relative path'),
])
def test_bad_settings_are_named(script: JobTypeScript, changes: dict[str, Any], expected: str) -> None:
    assert expected in compile_error(script, **changes)


# ---------------------------------------------------------------- end to end

@pytest.fixture
def farm(tmp_path: Path):
    farm = LocalFarm(tmp_path / "farm")
    yield farm
    farm.stop()


@requires_ffmpeg
@requires_mkvmerge
@pytest.mark.timeout(120)
def test_encode_job_on_a_local_farm(farm: LocalFarm, tmp_path: Path) -> None:
    source = make_source_media(tmp_path / "media" / "source.mkv")
    output = tmp_path / "Done" / "shows" / "test card.mkv"
    work = tmp_path / "work"
    work.mkdir()
    farm.start(workers=1)
    farm.wait_for_workers(1)
    client = farm.client
    submitted = client.submit({
        "name": "encode e2e", "type": JOB_TYPE_NAME, "priority": 50, "submitter_platform": "linux",
        "settings": {
            **BASE_SETTINGS,
            "source_file": str(source),
            "extra_sources": str(source.with_suffix(".srt")),
            "stream_maps": "0:v:0=x264-preview, 0:a:1=opus-128k-stereo, 0:a:0=aac-128k-stereo, 1:s:0",
            "subtitle_options": "srt",
            "output_file": str(output),
            "work_dir": str(work),
            "remux": True,
            "title": "Test card",
            "track_options": "0: lang=eng name='Test card'; 1: lang=jpn name='Stereo (OPUS)' default=yes; "
                             "2: lang=eng default=no; 3: lang=nld name='Ondertitels'",
        },
    })
    final = wait_for_job(client, submitted["id"], quiet=True)
    tasks = client.tasks(submitted["id"])
    assert final["status"] == "completed", [(t["name"], t["status"], client.task_log(t["id"])[-2000:]) for t in tasks]
    assert [(t["name"], t["task_type"]) for t in tasks] == [
        ("encode", "ffmpeg"), ("remux", "ffmpeg"), ("cleanup", "file-management"),
    ]
    assert final["steps_completed"] == final["steps_total"] == 100 + 10 + 2

    streams = probe_streams(output)
    assert [(s["codec_type"], s["codec_name"], s.get("channels")) for s in streams] == [
        ("video", "h264", None), ("audio", "opus", 2), ("audio", "aac", 2), ("subtitle", "subrip", None),
    ]
    assert [s["tags"].get("language") for s in streams] == ["eng", "jpn", "eng", "dut"]
    info = mkvmerge_identify(output)
    assert info["container"]["properties"]["title"] == "Test card"
    assert [t["properties"].get("track_name") for t in info["tracks"]] == [
        "Test card", "Stereo (OPUS)", None, "Ondertitels",
    ]
    assert [t["properties"]["default_track"] for t in info["tracks"]][1:3] == [True, False]
    # The intermediates were deleted, and nothing half-written was left anywhere.
    assert list(work.iterdir()) == []
    assert [p.name for p in output.parent.iterdir()] == ["test card.mkv"]
    decode = subprocess.run(["ffmpeg", "-v", "error", "-i", str(output), "-map", "0:v", "-map", "0:a", "-f", "null", "-"],
                            capture_output=True, text=True, timeout=30)
    assert decode.returncode == 0 and decode.stderr == "", decode.stderr
    log = client.task_log(tasks[0]["id"])
    assert "going to run" in log and "-codec:a:0 libopus" in log
    assert json.dumps(str(output))[1:-1] in client.task_log(tasks[2]["id"])
