"""Tiny media files for the encode tests, generated at test time with FFmpeg.

A one-second source with every stream type the encode job handles: video
(testsrc), two audio streams (mono 440 Hz and stereo 880 Hz, so a map that
picks the wrong one shows) and a SubRip subtitle track.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

MKVMERGE_MISSING_REASON = (
    "needs mkvmerge: it is not on PATH "
    "(install it with `apt install mkvtoolnix`; scripts/ensure-system-deps.sh does)"
)

requires_mkvmerge = pytest.mark.skipif(shutil.which("mkvmerge") is None, reason=MKVMERGE_MISSING_REASON)

SUBTITLES = "1\n00:00:00,000 --> 00:00:00,900\nHello from the test\n\n"


def make_source_media(path: Path, *, size: str = "64x48") -> Path:
    """An .mkv with streams v:0, a:0 (mono), a:1 (stereo) and s:0, one second long."""
    path.parent.mkdir(parents=True, exist_ok=True)
    srt = path.with_suffix(".srt")
    srt.write_text(SUBTITLES, encoding="utf-8")
    subprocess.run(
        ["ffmpeg", "-v", "error", "-nostdin", "-y",
         "-f", "lavfi", "-i", f"testsrc=size={size}:rate=25:duration=1",
         "-f", "lavfi", "-i", "sine=frequency=440:duration=1",
         "-f", "lavfi", "-i", "sine=frequency=880:duration=1",
         "-i", str(srt),
         "-map", "0", "-map", "1", "-map", "2", "-map", "3",
         "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-ac:a:1", "2", "-c:s", "srt",
         str(path)],
        check=True, capture_output=True, timeout=30,
    )
    return path


def probe_streams(path: Path) -> list[dict[str, Any]]:
    """ffprobe's view of the streams: codec_type, codec_name, channels, tags ..."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)],
        check=True, capture_output=True, text=True, timeout=30,
    ).stdout
    return json.loads(out)["streams"]


def stream_summary(path: Path) -> list[tuple[str, str]]:
    return [(s["codec_type"], s["codec_name"]) for s in probe_streams(path)]


def mkvmerge_identify(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        ["mkvmerge", "--ui-language", "en_US", "-J", str(path)],
        check=True, capture_output=True, text=True, timeout=30,
    ).stdout
    return json.loads(out)
