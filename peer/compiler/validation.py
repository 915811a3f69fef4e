"""Check submitted settings against the job type's declared settings.

Flamenco checks nothing (a wrong type just makes the script misbehave);
we report problems before the script runs so the submitter gets a message
naming the setting.  What we check, and why it does not break Flamenco's own
add-on (which always sends every key with the right type), is in
docs/job-types.md.  Settings the job type does not declare pass through.
"""

from __future__ import annotations

import json
import math
from typing import Any

from .schema import short_json

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _got(value: Any) -> str:
    return f"got {_json_type(value)} {short_json(value)}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _type_problem(key: str, setting_type: str, value: Any) -> str | None:
    if setting_type == "string":
        if not isinstance(value, str):
            return f"setting '{key}' must be a string, {_got(value)}"
    elif setting_type == "int32":
        # 3.0 is fine: JSON does not tell 3 and 3.0 apart, nor does the script.
        integral = _is_number(value) and math.isfinite(value) and float(value).is_integer()
        if not integral:
            return f"setting '{key}' must be an integer (int32), {_got(value)}"
        if not INT32_MIN <= value <= INT32_MAX:
            return f"setting '{key}' must be an integer (int32) between {INT32_MIN} and {INT32_MAX}, {_got(value)}"
    elif setting_type == "float":
        if not _is_number(value):
            return f"setting '{key}' must be a number (float), {_got(value)}"
    elif setting_type == "bool":
        if not isinstance(value, bool):
            return f"setting '{key}' must be true or false (bool), {_got(value)}"
    return None


def validate_settings(job_type: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """Problems with ``settings`` for ``job_type`` (an AvailableJobType dict);
    empty when the settings are acceptable."""
    problems: list[str] = []
    for setting in job_type.get("settings") or []:
        key, setting_type = setting["key"], setting["type"]
        required = bool(setting.get("required"))
        value = settings.get(key)
        if value is None:  # absent, or JSON null
            if required:
                problems.append(f"setting '{key}' is required, but the job does not have it")
            continue
        problem = _type_problem(key, setting_type, value)
        if problem:
            problems.append(problem)
            continue
        if required and value == "":
            problems.append(f"setting '{key}' is required, but it is empty")
            continue
        choices = setting.get("choices")
        if choices and isinstance(value, str) and value not in choices:
            allowed = ", ".join(json.dumps(c, ensure_ascii=False) for c in choices)
            problems.append(f"setting '{key}' must be one of {allowed}, {_got(value)}")
    return problems
