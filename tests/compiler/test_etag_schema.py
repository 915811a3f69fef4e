"""Go-compatible JSON, the job-type etag, and JOB_TYPE normalisation."""

from __future__ import annotations

import pytest

from peer.compiler import (
    JobTypeEtagMismatch,
    JobTypeSchemaError,
    check_submitted_etag,
    go_json,
    job_type_etag,
    normalize_job_type,
)

ECHO_SLEEP_JOB_TYPE = {
    "label": "Echo Sleep Test",
    "settings": [
        {"key": "message", "type": "string", "required": True},
        {"key": "sleep_duration_seconds", "type": "int32", "default": 1},
        {"key": "sleep_repeats", "type": "int32", "default": 1},
    ],
}


def test_go_json_matches_go_encoding() -> None:
    assert go_json({"b": 1, "a": [True, None, 2.5]}) == '{"a":[true,null,2.5],"b":1}'
    assert go_json("<a & b>") == '"\\u003ca \\u0026 b\\u003e"'
    assert go_json("Stüvel 3Д") == '"Stüvel 3Д"'  # UTF-8, not \u escapes
    assert go_json('q"\\\n\t\x01\u2028') == '"q\\"\\\\\\n\\t\\u0001\\u2028"'
    assert go_json(24.0) == "24"
    assert go_json(0.1) == "0.1"
    assert go_json(1e-7) == "1e-7"
    assert go_json(1e21) == "1e+21"
    assert go_json(123456789.125) == "123456789.125"


def test_echo_sleep_etag_matches_flamenco() -> None:
    job_type = normalize_job_type(ECHO_SLEEP_JOB_TYPE, "echo-sleep-test")
    assert job_type["etag"] == "eba586e16d6b55baaa43e32f9e78ae514b457fee"
    assert job_type_etag(job_type) == job_type["etag"]  # an etag already present is ignored


def test_etag_ignores_unknown_fields_and_nulls_but_not_values() -> None:
    base = normalize_job_type(ECHO_SLEEP_JOB_TYPE, "echo-sleep-test")["etag"]
    noisy = {
        **ECHO_SLEEP_JOB_TYPE,
        "extra": 1,
        "description": None,
        "settings": [{**s, "unknown": True, "visible": None} for s in ECHO_SLEEP_JOB_TYPE["settings"]],
    }
    assert normalize_job_type(noisy, "echo-sleep-test")["etag"] == base
    changed = {**ECHO_SLEEP_JOB_TYPE, "label": "Echo Sleep Test!"}
    assert normalize_job_type(changed, "echo-sleep-test")["etag"] != base
    assert normalize_job_type(ECHO_SLEEP_JOB_TYPE, "other-name")["etag"] != base


def test_eval_info_is_completed() -> None:
    raw = {"label": "x", "settings": [{"key": "f", "type": "string", "evalInfo": {"showLinkButton": True}}]}
    setting = normalize_job_type(raw, "x")["settings"][0]
    assert setting["evalInfo"] == {"description": "", "showLinkButton": True}


@pytest.mark.parametrize(
    "raw,message",
    [
        ([], "JOB_TYPE must be an object"),
        ({"label": 3, "settings": []}, "'label' must be a string"),
        ({"label": "x", "settings": {}}, "'settings' must be a list"),
        ({"label": "x", "settings": ["frames"]}, "JOB_TYPE.settings[0] must be an object"),
        ({"label": "x", "settings": [{"type": "string"}]}, "needs a 'key'"),
        ({"label": "x", "settings": [{"key": "a"}]}, "('a') needs a 'type'"),
        ({"label": "x", "settings": [{"key": "a", "type": "text"}]}, "'type' must be one of string, int32"),
        ({"label": "x", "settings": [{"key": "a", "type": "string", "visible": "never"}]}, "'visible' must be one of"),
        ({"label": "x", "settings": [{"key": "a", "type": "string", "choices": [1]}]}, "'choices' must be a list of strings"),
        ({"label": "x", "settings": [{"key": "a", "type": "bool", "required": "yes"}]}, "'required' must be true or false"),
        (
            {"label": "x", "settings": [{"key": "a", "type": "bool"}, {"key": "a", "type": "bool"}]},
            "key 'a' is used more than once",
        ),
    ],
)
def test_invalid_job_types_are_explained(raw: object, message: str) -> None:
    with pytest.raises(JobTypeSchemaError) as caught:
        normalize_job_type(raw, "x")
    assert message in str(caught.value)


def test_submitted_etag_check() -> None:
    check_submitted_etag("abc", None)
    check_submitted_etag("abc", "")
    check_submitted_etag("abc", "abc")
    with pytest.raises(JobTypeEtagMismatch) as caught:
        check_submitted_etag("abc", "old")
    assert str(caught.value) == 'job type etag does not match: expecting "abc", submitted job has "old"'
