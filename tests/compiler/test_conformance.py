"""Every vector in ../shared/conformance/flamenco-compiler/ must reproduce.

Job vectors (those with ``expected_tasks``) are compiled with the built-in job
types; the helper vectors (frame chunker, shellSplit, path module, script
loading) are run by test_host_api.py and test_loader.py.  A test below makes
sure no vector file is left unclaimed.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from peer.compiler import (
    CompiledJob,
    JobTypeEtagMismatch,
    JobTypeRegistry,
    check_submitted_etag,
    compile_job,
)

from .conftest import MOCK_CREATED, make_request, needs_vectors, vector_files

HELPER_VECTORS = {
    "helpers_frame_chunker_shellsplit.json": "tests/compiler/test_host_api.py",
    "helpers_path_module.json": "tests/compiler/test_host_api.py",
    "helpers_script_loading_and_etag.json": "tests/compiler/test_loader.py",
}

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def job_vectors() -> list[Path]:
    return [p for p in vector_files() if "expected_tasks" in json.loads(p.read_text(encoding="utf-8"))]


def canonical(value: Any) -> str:
    """JSON text that tells 24 from 24.0, so integer-ness is compared too."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


@needs_vectors
def test_every_vector_file_is_exercised() -> None:
    unclaimed = [p.name for p in vector_files() if p.name not in HELPER_VECTORS and p not in job_vectors()]
    assert unclaimed == [], f"vector files no test reads: {unclaimed}"
    assert len(job_vectors()) >= 11


@needs_vectors
@pytest.mark.parametrize("vector_path", job_vectors(), ids=lambda p: p.stem)
def test_job_vector(vector_path: Path, builtin_registry: JobTypeRegistry) -> None:
    vector = json.loads(vector_path.read_text(encoding="utf-8"))
    script = builtin_registry.get(vector["job_type"])
    assert script is not None, f"no built-in job type {vector['job_type']!r}"

    if "expected_job_type_etag" in vector:
        assert script.etag == vector["expected_job_type_etag"]

    # The etag check runs before compileJob, as in Flamenco.
    if vector.get("expected_error"):
        assert "etag does not match" in vector["expected_error"], "only etag errors are expected so far"
        with pytest.raises(JobTypeEtagMismatch, match="job type etag does not match"):
            check_submitted_etag(script.etag, vector.get("type_etag"))
        return
    check_submitted_etag(script.etag, vector.get("type_etag"))

    created = (
        datetime.fromisoformat(vector["created_local"]).astimezone() if "created_local" in vector else MOCK_CREATED
    )
    request = make_request(
        vector["job_type"],
        vector["settings"],
        name=vector.get("name", "job"),
        priority=vector.get("priority", 50),
        metadata=vector.get("metadata", {}),
        worker_tag=vector.get("worker_tag") or "",
        created=created,
    )
    job = compile_job(script, request)

    assert_tasks_match(job, vector["expected_tasks"])
    expected_job = vector.get("expected_job", {})
    if "name" in expected_job:
        assert job.name == expected_job["name"]
    if "priority" in expected_job:
        assert job.priority == expected_job["priority"]
    if "worker_tag" in expected_job:
        assert request.worker_tag == expected_job["worker_tag"]
    if "settings_after_compile" in expected_job:
        # == on purpose: the vector writes fps as 24.0, and integral floats
        # come back from JavaScript as integers (24), like in Flamenco.
        assert job.settings == expected_job["settings_after_compile"]
    if "metadata_after_compile" in expected_job:
        assert job.metadata == expected_job["metadata_after_compile"]


def assert_tasks_match(job: CompiledJob, expected_tasks: list[dict[str, Any]]) -> None:
    names_by_uuid = {t.uuid: t.name for t in job.tasks}
    assert len(names_by_uuid) == len(job.tasks), "task UUIDs must be unique"
    assert all(UUID4.match(t.uuid) for t in job.tasks)
    assert [t.name for t in job.tasks] == [t["name"] for t in expected_tasks]

    for index, (task, want) in enumerate(zip(job.tasks, expected_tasks), start=1):
        assert task.index_in_job == index
        assert task.type == want["type"], task.name
        assert task.priority == want["priority"], task.name
        assert canonical([c.to_dict() for c in task.commands]) == canonical(want["commands"]), task.name
        assert [names_by_uuid[d] for d in task.dependencies] == want["dependencies"], task.name
        assert task.steps_total == sum(max(1, c["total_step_count"]) for c in want["commands"])

