"""Shared fixtures for the job-compiler tests."""

from __future__ import annotations

import os
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from peer.compiler import CompileRequest, JobTypeRegistry, JobTypeScript, load_job_type_script


def shared_dir() -> Path:
    """``../shared`` beside the checkout, or $FLAMENCO_SHARED."""
    env = os.environ.get("FLAMENCO_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared"


VECTORS_DIR = shared_dir() / "conformance" / "flamenco-compiler"

# Flamenco's tests mock the clock to 2006-01-02 15:04:05 local time.
MOCK_CREATED = datetime(2006, 1, 2, 15, 4, 5).astimezone()


def vector_files() -> list[Path]:
    return sorted(VECTORS_DIR.glob("*.json")) if VECTORS_DIR.is_dir() else []


needs_vectors = pytest.mark.skipif(
    not VECTORS_DIR.is_dir(),
    reason=f"conformance vectors not found at {VECTORS_DIR} (set FLAMENCO_SHARED to the shared/ directory)",
)


@pytest.fixture(scope="session")
def builtin_registry() -> JobTypeRegistry:
    registry = JobTypeRegistry.with_builtins()
    registry.refresh()
    assert registry.errors() == []
    return registry


def make_request(job_type: str, settings: dict[str, Any], **overrides: Any) -> CompileRequest:
    fields: dict[str, Any] = {
        "job_id": str(uuid.uuid4()),
        "name": "test job",
        "job_type": job_type,
        "priority": 50,
        "settings": settings,
        "metadata": {},
        "created": MOCK_CREATED,
    }
    fields.update(overrides)
    return CompileRequest(**fields)


MINIMAL_JOB_TYPE = "const JOB_TYPE = { label: 'Test', settings: [] };\n"


def write_script(directory: Path, file_name: str, source: str) -> Path:
    path = directory / file_name
    path.write_text(source, encoding="utf-8")
    return path


def script_from_source(tmp_path: Path, file_name: str, source: str) -> JobTypeScript:
    """A JobTypeScript for ``source`` without going through the loader's checks,
    so compile-time failures of any kind can be tested."""
    path = write_script(tmp_path, file_name, source)
    loaded = load_job_type_script(path)
    if isinstance(loaded, JobTypeScript):
        return loaded
    return JobTypeScript(
        name=path.stem, path=path, source=source, job_type={"name": path.stem, "etag": ""}, mtime=0.0
    )
