"""Test helpers for worker commands: a recording CommandContext and shared scenes."""

from __future__ import annotations

import asyncio
import shutil
import stat
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from peer.worker.commands.base import WorkerSettings
from tests.scenes import BLENDER_MISSING_REASON, make_scene

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "blender_output"


@dataclass
class RecordingContext:
    """A CommandContext that remembers everything a command reports."""

    settings: WorkerSettings = field(default_factory=WorkerSettings)
    task_id: str = "task-0001"
    logs: list[str] = field(default_factory=list)
    steps: int = 0
    outputs: list[str] = field(default_factory=list)

    async def log(self, text: str) -> None:
        self.logs.append(text)

    def step(self) -> None:
        self.steps += 1

    def output_produced(self, path: str) -> None:
        self.outputs.append(path)

    @property
    def log_text(self) -> str:
        return "\n".join(self.logs)

    async def wait_for_log(self, needle: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.log_text:
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} never appeared in the log:\n{self.log_text}")
            await asyncio.sleep(0.01)


@pytest.fixture
def ctx() -> RecordingContext:
    return RecordingContext()


@pytest.fixture
def exec_ctx() -> RecordingContext:
    return RecordingContext(settings=WorkerSettings(enable_exec=True))


def write_script(path: Path, body: str) -> Path:
    """An executable /bin/sh script, e.g. a fake Blender with scripted output."""
    path.write_text("#!/bin/sh\n" + body, encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def process_gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie awaiting its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


async def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not process_gone(pid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


@pytest.fixture(scope="session")
def scene_2frames(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-frame Cycles scene written by the installed Blender (once per session)."""
    if shutil.which("blender") is None:
        pytest.skip(BLENDER_MISSING_REASON)
    return make_scene(tmp_path_factory.mktemp("scene") / "scene.blend", frames=(1, 2))


def read_fixture(name: str) -> list[str]:
    """Lines of a captured output file, without a leading `#` comment header."""
    lines = (DATA_DIR / name).read_text(encoding="utf-8").splitlines()
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    return lines


needs_linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /bin/sh scripts and /proc")
