"""A real browser for the dashboard tests: Playwright for Python driving Debian's Chromium.

We never run ``playwright install``: the browser is the distribution's
``/usr/bin/chromium`` (``apt-get install chromium``), which Playwright drives
through ``executable_path``. Screenshots go to ``$FLAMENCO_PEER_TEST_ARTIFACTS``
(default ``<repo>/test-artifacts``), under ``dashboard/``.
"""

from __future__ import annotations

import importlib.util
import os
import struct
import zlib
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("FLAMENCO_PEER_CHROMIUM", "/usr/bin/chromium"))
REPO = Path(__file__).resolve().parents[2]
LAUNCH_ARGS = ["--no-sandbox", "--disable-dev-shm-usage"]


def browser_unavailable_reason() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return ("needs Playwright for Python: `.venv/bin/pip install playwright==1.65.2` "
                "(never `playwright install`: the tests drive Debian's Chromium)")
    if not CHROMIUM.is_file() or not os.access(CHROMIUM, os.X_OK):
        return f"needs Chromium at {CHROMIUM}: `apt-get install -y --no-install-recommends chromium` (CI does)"
    return None


requires_browser = pytest.mark.skipif(browser_unavailable_reason() is not None,
                                      reason=browser_unavailable_reason() or "")


def artifacts_dir() -> Path:
    root = Path(os.environ.get("FLAMENCO_PEER_TEST_ARTIFACTS") or REPO / "test-artifacts")
    folder = root / "dashboard"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def png(width: int, height: int, rgb: tuple[int, int, int] = (200, 60, 40)) -> bytes:
    """A real, decodable PNG of one colour (stand-in for a rendered frame)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + bytes(rgb) * width
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(row * height)) + chunk(b"IEND", b""))
