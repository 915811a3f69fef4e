"""Run the add-on inside real Blender: bpy 5.0.1 from PyPI, one subprocess per scenario.

bpy is never imported into the pytest process: Blender is one global
instance per process (its data, its registered classes, its atexit
handlers), so every scenario gets a fresh one, and a crash in Blender fails
one test instead of the whole run. ``bpy_scenarios.py`` holds the code that
runs inside Blender; it prints its findings as one JSON line.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = Path(__file__).with_name("bpy_scenarios.py")
RESULT_PREFIX = "SCENARIO-RESULT: "

BPY_MISSING_REASON = (
    "needs bpy 5.0.1 from PyPI (`pip install -e '.[addon-test]'`; `make test` installs it)"
)
requires_bpy = pytest.mark.skipif(importlib.util.find_spec("bpy") is None, reason=BPY_MISSING_REASON)


@dataclass
class BlenderRun:
    returncode: int
    output: str
    result: Any

    def explain(self) -> str:
        return f"exit {self.returncode}\n--- Blender output (tail)\n" + "\n".join(self.output.splitlines()[-60:])


def blender_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """An environment where Blender's user config and the peer's default data dir are the test's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLAMENCO_PEER_", "BLENDER_USER_"))}
    home.mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), XDG_DATA_HOME=str(home / ".local" / "share"),
               FLAMENCO_PEER_DATA_DIR=str(home / "peer-data"), PYTHONUNBUFFERED="1")
    env.update(extra or {})
    return env


def run_in_blender(scenario: str, args: dict[str, Any], home: Path, *, timeout: float = 90.0,
                   env: dict[str, str] | None = None, expect_ok: bool = True) -> BlenderRun:
    cmd = [sys.executable, str(SCENARIOS), scenario, json.dumps(args)]
    proc = subprocess.run(cmd, cwd=str(REPO), env=env or blender_env(home), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                          timeout=timeout)
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX):])
    run = BlenderRun(proc.returncode, proc.stdout, result)
    if expect_ok:
        assert proc.returncode == 0 and result is not None, run.explain()
    return run


@pytest.fixture
def blender_home(tmp_path: Path) -> Path:
    return tmp_path / "home"
