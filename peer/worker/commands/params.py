"""Reading command parameters with Flamenco's error messages.

Task parameters arrive as decoded JSON, written by job-type scripts that may
be third-party. Every accessor here either returns a value of the promised
type or raises CommandError in one of Flamenco's two shapes:

    <cmd>: mandatory parameter "<p>" is missing
    <cmd>: parameter "<p>" has invalid value <v>: <why>
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from .base import CommandError

_MISSING = object()


def missing(cmd: str, name: str) -> CommandError:
    return CommandError(f'{cmd}: mandatory parameter "{name}" is missing')


def invalid(cmd: str, name: str, value: Any, why: str) -> CommandError:
    return CommandError(f'{cmd}: parameter "{name}" has invalid value {show_value(value)}: {why}')


def show_value(value: Any) -> str:
    """Render a parameter value unambiguously (strings quoted, null visible)."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=True)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def require_mapping(cmd: str, params: Any) -> Mapping[str, Any]:
    if not isinstance(params, Mapping):
        raise CommandError(
            f"{cmd}: parameters must be a JSON object, got {type(params).__name__}; "
            "the job type that created this task is broken"
        )
    return params


def mandatory_str(cmd: str, params: Mapping[str, Any], name: str, *, allow_empty: bool = False) -> str:
    value = params.get(name, _MISSING)
    if value is _MISSING:
        raise missing(cmd, name)
    if not isinstance(value, str):
        raise invalid(cmd, name, value, "must be a string")
    if not value and not allow_empty:
        raise invalid(cmd, name, value, "must not be empty")
    return value


def optional_str(cmd: str, params: Mapping[str, Any], name: str) -> str:
    value = params.get(name, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise invalid(cmd, name, value, "must be a string")
    return value


def shell_split(cmd: str, params: Mapping[str, Any], name: str) -> list[str]:
    """A string parameter holding extra CLI arguments, split like a POSIX shell would."""
    text = optional_str(cmd, params, name)
    try:
        return shlex.split(text)
    except ValueError as ex:
        raise invalid(
            cmd, name, text, f"cannot be split into arguments ({ex}); check the quoting"
        ) from None


def string_list(cmd: str, params: Mapping[str, Any], name: str) -> list[str]:
    """An optional list parameter; non-string items are formatted like Go's %v.

    Job scripts commonly put numbers in argument lists (`["-r", 24]`), and
    Flamenco accepts that, so we do too.
    """
    value = params.get(name, _MISSING)
    if value is _MISSING or value is None:
        return []
    if not isinstance(value, list):
        raise invalid(cmd, name, value, "must be a list of strings")
    return [go_format(item) for item in value]


def number(cmd: str, params: Mapping[str, Any], name: str) -> float | int:
    value = params.get(name, _MISSING)
    if value is _MISSING:
        raise missing(cmd, name)
    # bool is an int subclass in Python, but `true` is not a number in JSON.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise invalid(cmd, name, value, "must be a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise invalid(cmd, name, value, "must be a finite number")
    return value


def go_format(value: Any) -> str:
    """Format a JSON value the way Go's fmt `%v` does, which Flamenco uses."""
    if isinstance(value, str):
        return value
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format_float(value)
    if isinstance(value, list):
        return "[" + " ".join(go_format(v) for v in value) + "]"
    if isinstance(value, Mapping):
        items = sorted(value.items(), key=lambda kv: str(kv[0]))
        return "map[" + " ".join(f"{go_format(k)}:{go_format(v)}" for k, v in items) + "]"
    return str(value)


def format_float(value: float) -> str:
    """Shortest round-trip digits; plain notation for exponents in [-4, 21) like Go's %v.

    So 24.0 -> "24", 23.976 -> "23.976", 1e-05 -> "1e-05".
    """
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "0"
    dec = Decimal(repr(value))
    exponent = dec.adjusted()
    if -4 <= exponent < 21:
        text = format(dec, "f")
        if "." in text:
            text = text.rstrip("0").rstrip(".")
        return text
    sign, digits, _ = dec.as_tuple()
    mantissa = str(digits[0])
    rest = "".join(str(d) for d in digits[1:]).rstrip("0")
    if rest:
        mantissa += "." + rest
    return f"{'-' if sign else ''}{mantissa}e{'+' if exponent >= 0 else '-'}{abs(exponent):02d}"
