"""Turn a script's ``JOB_TYPE`` value into an ``AvailableJobType`` dict.

The result has exactly the fields Flamenco's Go struct has -- unknown
properties dropped, absent or ``null`` optional ones left out, ``evalInfo``
completed with its two members -- because that is what the etag hashes and
what the Blender add-on reads.  Anything the add-on could not turn into a
Blender property is rejected here with a message naming the setting.
"""

from __future__ import annotations

import json
from typing import Any

from .etag import job_type_etag

SETTING_TYPES = ("string", "int32", "float", "bool")
SETTING_SUBTYPES = ("file_path", "dir_path", "file_name", "hashed_file_path")
SETTING_VISIBILITIES = ("visible", "submission", "web", "hidden")

# Members whose value may be any JSON value (Go ``interface{}``).
_ANY_FIELDS = ("default", "description", "label")


class JobTypeSchemaError(ValueError):
    """JOB_TYPE does not have the shape of a Flamenco job type."""


def short_json(value: Any) -> str:
    """``value`` as JSON, cut to fit in one line of an error message."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_type(where: str, field: str, value: Any, expected: type, what: str) -> None:
    # bool is a subclass of int in Python; no field here wants an int anyway.
    if not isinstance(value, expected):
        raise JobTypeSchemaError(f"{where}: '{field}' must be {what}, got {short_json(value)}")


def _check_enum(where: str, field: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise JobTypeSchemaError(
            f"{where}: '{field}' must be one of {', '.join(allowed)}, got {short_json(value)}"
        )


def _normalize_setting(index: int, raw: Any) -> dict[str, Any]:
    where = f"JOB_TYPE.settings[{index}]"
    if not isinstance(raw, dict):
        raise JobTypeSchemaError(f"{where} must be an object like {{key: 'frames', type: 'string'}}")
    key = raw.get("key")
    if not isinstance(key, str) or not key:
        raise JobTypeSchemaError(f"{where} needs a 'key' (a non-empty string), got {short_json(key)}")
    where = f"{where} ('{key}')"
    if "type" not in raw or raw["type"] is None:
        raise JobTypeSchemaError(f"{where} needs a 'type': one of {', '.join(SETTING_TYPES)}")
    _check_enum(where, "type", raw["type"], SETTING_TYPES)

    out: dict[str, Any] = {"key": key, "type": raw["type"]}
    for field in _ANY_FIELDS:
        if raw.get(field) is not None:
            out[field] = raw[field]

    def present(field: str) -> bool:
        return raw.get(field) is not None

    if present("choices"):
        choices = raw["choices"]
        if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
            raise JobTypeSchemaError(f"{where}: 'choices' must be a list of strings, got {short_json(choices)}")
        out["choices"] = list(choices)
    for field in ("editable", "required"):
        if present(field):
            _check_type(where, field, raw[field], bool, "true or false")
            out[field] = raw[field]
    if present("eval"):
        _check_type(where, "eval", raw["eval"], str, "a string (a Python expression)")
        out["eval"] = raw["eval"]
    if present("evalInfo"):
        info = raw["evalInfo"]
        _check_type(where, "evalInfo", info, dict, "an object {showLinkButton, description}")
        show = info.get("showLinkButton", False)
        desc = info.get("description", "")
        _check_type(where, "evalInfo.showLinkButton", show, bool, "true or false")
        _check_type(where, "evalInfo.description", desc, str, "a string")
        out["evalInfo"] = {"description": desc, "showLinkButton": show}
    if present("propargs"):
        _check_type(where, "propargs", raw["propargs"], dict, "an object")
        out["propargs"] = raw["propargs"]
    if present("subtype"):
        _check_enum(where, "subtype", raw["subtype"], SETTING_SUBTYPES)
        out["subtype"] = raw["subtype"]
    if present("visible"):
        _check_enum(where, "visible", raw["visible"], SETTING_VISIBILITIES)
        out["visible"] = raw["visible"]
    return out


def normalize_job_type(raw: Any, name: str) -> dict[str, Any]:
    """Validate ``JOB_TYPE`` and return the ``AvailableJobType`` dict with
    ``name`` and ``etag`` filled in.  Raises :class:`JobTypeSchemaError`."""
    if not isinstance(raw, dict):
        raise JobTypeSchemaError(
            f"JOB_TYPE must be an object like {{label: 'My Job', settings: [...]}}, got {short_json(raw)}"
        )
    label = raw.get("label")
    if label is None:
        label = ""  # Flamenco accepts a missing label (Go zero value).
    _check_type("JOB_TYPE", "label", label, str, "a string")
    settings_raw = raw.get("settings")
    if settings_raw is None:
        settings_raw = []
    _check_type("JOB_TYPE", "settings", settings_raw, list, "a list of settings")

    settings = [_normalize_setting(i, s) for i, s in enumerate(settings_raw)]
    seen: set[str] = set()
    for setting in settings:
        if setting["key"] in seen:
            raise JobTypeSchemaError(f"JOB_TYPE.settings: key '{setting['key']}' is used more than once")
        seen.add(setting["key"])

    job_type: dict[str, Any] = {"name": name, "label": label, "settings": settings, "etag": ""}
    if raw.get("description") is not None:
        _check_type("JOB_TYPE", "description", raw["description"], str, "a string")
        job_type["description"] = raw["description"]
    job_type["etag"] = job_type_etag(job_type)
    return job_type
