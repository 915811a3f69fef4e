"""Tiny Blender test scenes, generated at test time by the installed Blender.

We never commit .blend files: a file saved by one Blender version may be
unreadable (5.0 → "not a blend file") or even crash (4.2 → segfault) an older
one, so the scene is always written by the same binary that will render it.
"""

from __future__ import annotations

import shutil

import pytest

BLENDER_MISSING_REASON = (
    "needs a real Blender executable: `blender` is not on PATH "
    "(install it with `apt install blender`; CI always does)"
)
FFMPEG_MISSING_REASON = (
    "needs FFmpeg: `ffmpeg`/`ffprobe` are not on PATH "
    "(install them with `apt install ffmpeg`; CI always does)"
)

# Skip conditions. Tests using Blender should also carry the project's
# registered `@pytest.mark.blender` marker, so `-m "not blender"` deselects them.
requires_blender = pytest.mark.skipif(
    shutil.which("blender") is None, reason=BLENDER_MISSING_REASON
)
requires_ffmpeg = pytest.mark.skipif(
    shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
    reason=FFMPEG_MISSING_REASON,
)

# The scene generator itself lives in the peer package (the demo uses it too).
from peer.scenes import SceneError, make_scene  # noqa: E402,F401
