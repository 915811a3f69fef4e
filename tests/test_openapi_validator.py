"""Tests for tests/openapi.py, the Flamenco OpenAPI validator used by the API tests."""

from __future__ import annotations

import copy
import re
import shutil

import pytest

from tests.openapi import (
    SPEC_ERRATA,
    UUID_FIELDS,
    OpenAPISpec,
    OpenAPISpecError,
    OpenAPIValidationError,
    default_spec_path,
    load_spec,
)

JOB_ID = "0b8f9c8e-6a7d-4a43-9d1b-2f6f0c1a2b3c"


@pytest.fixture(scope="module")
def spec() -> OpenAPISpec:
    return load_spec()


def submitted_job() -> dict:
    return {
        "name": "Talk & Sleep",
        "type": "echo-sleep-test",
        "priority": 50,
        "submitter_platform": "linux",
        "type_etag": "eba586e16d6b55baaa43e32f9e78ae514b457fee",
        "settings": {"message": "Blender is {blender}", "sleep_duration_seconds": 3},
        "metadata": {"project": "Debugging Flamenco", "user.name": "コードモンキー"},
    }


def job() -> dict:
    return {
        **submitted_job(),
        "id": JOB_ID,
        "created": "2024-03-01T10:11:12.123456789+01:00",  # Go RFC3339Nano
        "updated": "2024-03-01T09:11:13Z",
        "status": "queued",
        "activity": "",
        "steps_completed": 0,
        "steps_total": 2,
    }


def echo_sleep_job_types() -> dict:
    return {
        "job_types": [
            {
                "name": "echo-sleep-test",
                "label": "Echo Sleep Test",
                "etag": "eba586e16d6b55baaa43e32f9e78ae514b457fee",
                "settings": [
                    {"key": "message", "type": "string", "required": True},
                    {"key": "sleep_duration_seconds", "type": "int32", "default": 1},
                    {"key": "sleep_repeats", "type": "int32", "default": 1},
                ],
            }
        ]
    }


# ----------------------------------------------------------- requested cases

def test_valid_submitted_job_passes(spec):
    spec.validate_request("POST", "/api/v3/jobs", submitted_job())
    spec.validate_request("POST", "/api/v3/jobs/check", submitted_job())
    spec.validate_schema("SubmittedJob", submitted_job())


def test_submitted_job_missing_submitter_platform_fails(spec):
    body = submitted_job()
    del body["submitter_platform"]
    with pytest.raises(OpenAPIValidationError, match="submitter_platform") as exc:
        spec.validate_request("POST", "/api/v3/jobs", body)
    assert exc.value.pointer == "/submitter_platform"
    assert exc.value.operation == "submitJob (POST /api/v3/jobs)"
    assert "required property 'submitter_platform' is missing" in str(exc.value)
    assert [p for p, _ in exc.value.problems] == ["/submitter_platform"]


def test_job_response_with_bad_status_enum_fails(spec):
    spec.validate_response("GET", f"/api/v3/jobs/{JOB_ID}", 200, job())
    bad = job() | {"status": "running"}
    with pytest.raises(OpenAPIValidationError) as exc:
        spec.validate_response("GET", f"/api/v3/jobs/{JOB_ID}", 200, bad)
    assert exc.value.pointer == "/status"
    message = str(exc.value)
    assert "fetchJob (GET /api/v3/jobs/{job_id})" in message
    assert "'running'" in message and "'queued'" in message
    assert "#/components/schemas/JobStatus" in message


def test_available_job_types_echo_sleep_test_passes(spec):
    spec.validate_response("GET", "/api/v3/jobs/types", 200, echo_sleep_job_types())
    spec.validate_schema("AvailableJobTypes", echo_sleep_job_types())
    spec.validate_response("GET", "/api/v3/jobs/type/echo-sleep-test", 200, echo_sleep_job_types()["job_types"][0])


def test_available_job_types_rejects_unknown_setting_type(spec):
    body = echo_sleep_job_types()
    body["job_types"][0]["settings"][1]["type"] = "integer"
    with pytest.raises(OpenAPIValidationError) as exc:
        spec.validate_response("GET", "/api/v3/jobs/types", 200, body)
    assert exc.value.pointer == "/job_types/0/settings/1/type"
    del body["job_types"][0]["etag"]
    with pytest.raises(OpenAPIValidationError, match="'etag' is missing"):
        spec.validate_schema("AvailableJobTypes", body)


def test_path_template_matching(spec):
    match = spec.find_operation("GET", f"/api/v3/jobs/{JOB_ID}/tasks")
    assert match.operation_id == "fetchJobTasks"
    assert match.operation.path_template == "/api/v3/jobs/{job_id}/tasks"
    assert match.path_params == {"job_id": JOB_ID}
    # Query strings, absolute URLs and percent-encoding are handled.
    assert spec.find_operation("GET", f"http://peer:8080/api/v3/jobs/{JOB_ID}/tasks?x=1").path_params == {"job_id": JOB_ID}
    assert spec.find_operation("GET", "/api/v3/jobs/a%2Fb/tasks").path_params == {"job_id": "a/b"}
    summary = {"tasks": [{
        "id": "7b0d3c1e-1111-4a43-9d1b-2f6f0c1a2b3c", "name": "echo", "status": "queued",
        "index_in_job": 0, "priority": 50, "task_type": "misc",
        "updated": "2024-03-01T09:11:13Z", "steps_completed": 0, "steps_total": 1,
    }]}
    spec.validate_response("GET", f"/api/v3/jobs/{JOB_ID}/tasks", 200, summary)
    summary["tasks"][0]["status"] = "queud"
    with pytest.raises(OpenAPIValidationError) as exc:
        spec.validate_response("GET", f"/api/v3/jobs/{JOB_ID}/tasks", 200, summary)
    assert exc.value.pointer == "/tasks/0/status"


def test_concrete_paths_win_over_templates(spec):
    assert spec.find_operation("GET", "/api/v3/jobs/types").operation_id == "getJobTypes"
    assert spec.find_operation("GET", "/api/v3/jobs/last-rendered").operation_id == "fetchGlobalLastRenderedInfo"
    assert spec.find_operation("POST", "/api/v3/jobs/check").operation_id == "submitJobCheck"
    assert spec.find_operation("DELETE", "/api/v3/jobs/mass-delete").operation_id == "deleteJobMass"
    assert spec.find_operation("GET", f"/api/v3/jobs/{JOB_ID}").operation_id == "fetchJob"
    assert spec.find_operation("post", f"/api/v3/jobs/{JOB_ID}/setstatus").operation_id == "setJobStatus"
    # The path is matched first, then the method: no fallback to fetchJob.
    with pytest.raises(OpenAPIValidationError, match=r"matches /api/v3/jobs/check, which has no GET operation"):
        spec.find_operation("GET", "/api/v3/jobs/check")


def test_undocumented_status_code_fails(spec):
    with pytest.raises(OpenAPIValidationError, match=r"status 404 is not documented \(documented: 200; no default\)"):
        spec.validate_response("GET", "/api/v3/jobs/types", 404, {"code": 404, "message": "nope"})
    # With a `default` response, any status falls back to it ...
    spec.validate_response("POST", "/api/v3/jobs", 500, {"code": 500, "message": "boom"})
    # ... and is validated against its schema (Error).
    with pytest.raises(OpenAPIValidationError) as exc:
        spec.validate_response("POST", "/api/v3/jobs", 500, {"message": "boom"})
    assert exc.value.pointer == "/code"


def test_wrong_format_uuid_fails(spec):
    bad = job() | {"id": "job-1"}
    with pytest.raises(OpenAPIValidationError, match="expected format 'uuid', got 'job-1'") as exc:
        spec.validate_response("POST", "/api/v3/jobs", 200, bad)
    assert exc.value.pointer == "/id"
    with pytest.raises(OpenAPIValidationError):
        spec.validate_schema("Job", job() | {"id": JOB_ID.replace("-", "")})
    # The document itself has no `format: uuid`; the check comes from UUID_FIELDS.
    load_spec(uuid_overlay=False).validate_schema("Job", bad)


def test_format_uuid_in_document_is_checked():
    doc = mini_doc({"Thing": {"type": "object", "properties": {"id": {"type": "string", "format": "uuid"}}}})
    spec = OpenAPISpec(doc)
    spec.validate_schema("Thing", {"id": JOB_ID.upper()})
    for bad in ("job-1", JOB_ID + "0", "{" + JOB_ID + "}", JOB_ID.replace("-", "")):
        with pytest.raises(OpenAPIValidationError, match="uuid"):
            spec.validate_schema("Thing", {"id": bad})


# ------------------------------------------------------------- more coverage

@pytest.mark.parametrize("value", [
    "2024-03-01T10:11:12Z",
    "2024-03-01T10:11:12.5+05:30",
    "2024-02-29T23:59:60-00:00",
    "0001-01-01T00:00:00Z",  # Go's zero time.Time
])
def test_date_time_valid(spec, value):
    spec.validate_schema("JobMassDeletionSelection", {"last_updated_max": value})


@pytest.mark.parametrize("value", [
    "2024-03-01", "2024-03-01T10:11:12", "2023-02-29T10:11:12Z", "2024-03-01 10:11:12Z",
    "2024-03-01T24:00:00Z", "2024-03-01T10:11:12+25:00", "yesterday",
])
def test_date_time_invalid(spec, value):
    with pytest.raises(OpenAPIValidationError, match="date-time") as exc:
        spec.validate_request("DELETE", "/api/v3/jobs/mass-delete", {"last_updated_max": value})
    assert exc.value.pointer == "/last_updated_max"


def test_other_formats(spec):
    schedule = {"is_active": True, "days_of_week": "mo tu", "start_time": "09:00", "end_time": "18:30"}
    spec.validate_schema("WorkerSleepSchedule", schedule)
    spec.validate_schema("WorkerSleepSchedule", schedule | {"start_time": ""})  # Manager's "no value"
    with pytest.raises(OpenAPIValidationError, match="HH:MM"):
        spec.validate_schema("WorkerSleepSchedule", schedule | {"end_time": "25:00"})
    with pytest.raises(OpenAPIValidationError, match="int32"):
        spec.validate_schema("Error", {"code": 2**31, "message": "x"})


def test_unknown_operation_and_method(spec):
    with pytest.raises(OpenAPIValidationError, match=r"GET /api/v3/jobz: no such path.*closest documented paths: /api/v3/jobs"):
        spec.validate_request("GET", "/api/v3/jobz", None)
    with pytest.raises(OpenAPIValidationError, match=r"no PATCH operation \(documented: GET, POST\)"):
        spec.validate_request("PATCH", "/api/v3/jobs", {})
    with pytest.raises(OpenAPIValidationError, match="no such path"):
        spec.validate_request("GET", "/api/v3/jobs/", None)  # trailing slash is a different path


def test_path_parameters_are_validated(spec):
    spec.find_operation("GET", "/api/v3/configuration/variables/users/windows")
    with pytest.raises(OpenAPIValidationError, match="path parameter audience='admins'"):
        spec.find_operation("GET", "/api/v3/configuration/variables/admins/windows")
    assert spec.find_operation("GET", "/api/v3/shaman/files/abc/1024").path_params["filesize"] == "1024"
    with pytest.raises(OpenAPIValidationError, match="filesize"):
        spec.find_operation("GET", "/api/v3/shaman/files/abc/1kB")


def test_request_body_presence(spec):
    with pytest.raises(OpenAPIValidationError, match="request body is required"):
        spec.validate_request("POST", "/api/v3/jobs", None)
    with pytest.raises(OpenAPIValidationError, match="takes no request body"):
        spec.validate_request("GET", "/api/v3/jobs", {"limit": 5})
    spec.validate_request("GET", "/api/v3/jobs", None)
    spec.validate_request("DELETE", f"/api/v3/jobs/{JOB_ID}/blocklist", None)  # body optional
    spec.validate_request("POST", f"/api/v3/jobs/{JOB_ID}/setpriority", {"priority": 100})
    with pytest.raises(OpenAPIValidationError, match="maximum"):
        spec.validate_request("POST", f"/api/v3/jobs/{JOB_ID}/setpriority", {"priority": 101})
    # JSON bodies may also be given undecoded.
    spec.validate_request("POST", f"/api/v3/jobs/{JOB_ID}/setpriority", b'{"priority": 3}')


def test_bodyless_and_non_json_responses(spec):
    spec.validate_response("POST", "/api/v3/jobs/check", 204, None)
    with pytest.raises(OpenAPIValidationError, match="response 204 has no body"):
        spec.validate_response("POST", "/api/v3/jobs/check", 204, {"ok": True})
    with pytest.raises(OpenAPIValidationError, match="must have a body"):
        spec.validate_response("GET", "/api/v3/jobs/types", 200, None)
    logtail = f"/api/v3/tasks/{JOB_ID}/logtail"
    spec.validate_response("GET", logtail, 200, "line 1\nline 2\n", content_type="text/plain; charset=utf-8")
    spec.validate_response("GET", logtail, 200, b"line 1\n", content_type="text/plain")
    with pytest.raises(OpenAPIValidationError, match="no media type 'application/json'"):
        spec.validate_response("GET", logtail, 200, "line 1")
    output = f"/api/v3/worker/task/{JOB_ID}/output-produced"
    spec.validate_request("POST", output, b"\xff\xd8\xff\xe0", content_type="image/jpeg")
    with pytest.raises(OpenAPIValidationError, match="binary"):
        spec.validate_request("POST", output, {"not": "an image"}, content_type="image/png")


def test_allof_required_across_branches(spec):
    worker = {
        "id": JOB_ID, "name": "w1", "status": "awake", "version": "3.6", "can_restart": False,
        "ip_address": "10.0.0.2", "platform": "linux", "supported_task_types": ["misc"],
    }
    spec.validate_response("GET", f"/api/v3/worker-mgt/workers/{JOB_ID}", 200, worker)
    for key in ("can_restart", "ip_address"):  # required by the first / second allOf branch
        with pytest.raises(OpenAPIValidationError) as exc:
            spec.validate_schema("Worker", {k: v for k, v in worker.items() if k != key})
        assert exc.value.pointer == f"/{key}"


def test_spec_errata_follow_the_real_manager(spec):
    # The Manager answers {"tasks": [...]}, not the {"jobs"} the document requires.
    spec.validate_schema("JobTasksSummary", {"tasks": []})
    # Variables are {name: {value, is_twoway}}; the per-variable `name` is not sent.
    spec.validate_response("GET", "/api/v3/configuration/variables/users/linux", 200,
                           {"blender": {"value": "/usr/bin/blender", "is_twoway": False}})
    with pytest.raises(OpenAPIValidationError, match="'is_twoway' is missing"):
        spec.validate_schema("ManagerVariables", {"blender": {"value": "x"}})
    assert sorted(SPEC_ERRATA) == [
        "/components/schemas/EventLastRenderedUpdate",
        "/components/schemas/JobTasksSummary",
        "/components/schemas/ManagerVariable",
        "/components/schemas/RegisteredWorker",
    ]
    assert sum("ignoring undeclared required" in q for q in spec.quirks) == len(SPEC_ERRATA)
    assert sum("format uuid" in q for q in spec.quirks) == len(UUID_FIELDS)


def test_every_operation_is_found_by_its_own_template(spec):
    samples = {"integer": "42", "string": JOB_ID}
    operations = spec.operations()
    assert len(operations) == 57
    for op in operations:
        def fill(m: re.Match) -> str:
            param = next(p for p in op.parameters if p.name == m.group(1))
            schema = param.schema
            if "$ref" in schema:
                schema = spec.document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
            return schema["enum"][0] if "enum" in schema else samples[schema["type"]]
        concrete = re.sub(r"\{([^}]+)\}", fill, op.path_template)
        assert spec.find_operation(op.method, concrete).operation == op, concrete


def test_validate_schema_unknown_name(spec):
    with pytest.raises(OpenAPIValidationError, match="did you mean SubmittedJob"):
        spec.validate_schema("SubmitedJob", {})


def test_load_spec_is_cached_and_env_override(monkeypatch, tmp_path):
    assert load_spec() is load_spec()
    shared = tmp_path / "shared"
    (shared / "flamenco").mkdir(parents=True)
    shutil.copy(default_spec_path(), shared / "flamenco" / "flamenco-openapi.yaml")
    monkeypatch.setenv("FLAMENCO_SHARED", str(shared))
    assert default_spec_path() == shared / "flamenco" / "flamenco-openapi.yaml"
    assert load_spec().source == str((shared / "flamenco" / "flamenco-openapi.yaml").resolve())
    monkeypatch.setenv("FLAMENCO_SHARED", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="FLAMENCO_SHARED"):
        load_spec()


# --------------------------------------------- OpenAPI constructs not in the Flamenco document

def mini_doc(schemas: dict, paths: dict | None = None) -> dict:
    return {"openapi": "3.0.0", "info": {"title": "t", "version": "1"},
            "paths": paths or {}, "components": {"schemas": schemas}}


def test_nullable_oneof_anyof_and_additional_properties():
    spec = OpenAPISpec(mini_doc({
        "Color": {"type": "string", "enum": ["red", "blue"], "nullable": True},
        "Thing": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "nullable": True},
                "color": {"$ref": "#/components/schemas/Color"},
                "size": {"oneOf": [{"type": "integer", "minimum": 1, "exclusiveMinimum": True},
                                   {"type": "string", "enum": ["S", "M"]}]},
                "tag": {"anyOf": [{"type": "string"}, {"type": "boolean"}]},
            },
        },
    }))
    spec.validate_schema("Thing", {"name": None, "color": None, "size": 2, "tag": True})
    spec.validate_schema("Thing", {"name": "x", "color": "red", "size": "M", "tag": "t"})
    cases = {
        "/color": {"color": "green"},
        "/size": {"size": 1},  # exclusiveMinimum (OpenAPI 3.0 boolean form)
        "/tag": {"tag": 3},
        "": {"extra": 1},
    }
    for pointer, value in cases.items():
        with pytest.raises(OpenAPIValidationError) as exc:
            spec.validate_schema("Thing", value)
        assert exc.value.pointer == pointer, exc.value


def test_read_only_and_write_only():
    doc = mini_doc(
        {"User": {
            "type": "object",
            "required": ["id", "name", "password"],
            "properties": {
                "id": {"type": "string", "readOnly": True},
                "name": {"type": "string"},
                "password": {"type": "string", "writeOnly": True},
            },
        }},
        {"/users": {"post": {
            "operationId": "createUser",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/User"}}}},
            "responses": {"200": {"description": "ok", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/User"}}}}},
        }}},
    )
    spec = OpenAPISpec(doc)
    spec.validate_request("POST", "/users", {"name": "a", "password": "p"})
    spec.validate_response("POST", "/users", 200, {"id": "1", "name": "a"})
    with pytest.raises(OpenAPIValidationError, match="'password' is missing"):
        spec.validate_request("POST", "/users", {"name": "a"})
    with pytest.raises(OpenAPIValidationError, match="'id' is missing"):
        spec.validate_response("POST", "/users", 200, {"name": "a"})
    with pytest.raises(OpenAPIValidationError, match="'id' is missing"):
        spec.validate_schema("User", {"name": "a", "password": "p"})  # no direction: all required


def test_unsupported_or_broken_documents_fail_loudly():
    with pytest.raises(OpenAPISpecError, match="unsupported schema keyword"):
        OpenAPISpec(mini_doc({"X": {"type": "object", "patternProperties": {}}}))
    with pytest.raises(OpenAPISpecError, match="not declared in properties"):
        OpenAPISpec(mini_doc({"X": {"type": "object", "properties": {"a": {}}, "required": ["b"]}}))
    with pytest.raises(OpenAPISpecError, match="no longer needed"):
        OpenAPISpec(mini_doc({"X": {"type": "object", "properties": {"a": {}}}}),
                    errata={"/components/schemas/X": ["b"]})
    with pytest.raises(OpenAPISpecError, match="OpenAPI 3.0"):
        OpenAPISpec({"swagger": "2.0"})
    flamenco = copy.deepcopy(load_spec(uuid_overlay=False).document)
    OpenAPISpec(flamenco, errata=SPEC_ERRATA, uuid_fields=UUID_FIELDS)  # as loaded normally
    flamenco["components"]["schemas"]["Job"]["allOf"][1]["properties"]["id"]["format"] = "uuid"
    with pytest.raises(OpenAPISpecError, match="no longer an unformatted UUID string"):
        OpenAPISpec(flamenco, errata=SPEC_ERRATA, uuid_fields=UUID_FIELDS)
