"""Go-compatible JSON encoding and the job-type etag.

Flamenco's etag is the SHA-1 of Go's ``encoding/json`` output for the
``AvailableJobType`` struct (with ``name`` set and ``etag`` empty).  The Blender
add-on caches job types and sends this etag back with every submission, so we
must produce byte-identical JSON to keep add-ons that talked to a real Flamenco
Manager (or to another peer) working.

Every Go struct involved (``AvailableJobType``, ``AvailableJobSetting``, the
``evalInfo`` object) declares its fields in alphabetical order, and Go sorts map
keys, so "sort keys everywhere" reproduces Go's key order exactly -- provided
the input has already been normalised to the known fields (see
:func:`peer.compiler.schema.normalize_job_type`).
"""

from __future__ import annotations

import hashlib
import math
from decimal import Decimal
from typing import Any

# Go's encoder escapes these in strings (HTML safety), plus the JS line
# separators.  Everything else outside ASCII control chars is written raw.
_GO_ESCAPES: dict[str, str] = {
    '"': '\\"',
    "\\": "\\\\",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\b": "\\b",  # Go >= 1.22 uses the short forms for \b and \f.
    "\f": "\\f",
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


def _go_string(s: str) -> str:
    out: list[str] = ['"']
    for ch in s:
        esc = _GO_ESCAPES.get(ch)
        if esc is not None:
            out.append(esc)
        elif ch < " ":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _go_float(f: float) -> str:
    """Format a float64 the way Go's encoding/json does."""
    if math.isnan(f) or math.isinf(f):
        # Go refuses to marshal these ("json: unsupported value").
        raise ValueError(f"cannot encode {f!r} as JSON")
    if f == int(f) and abs(f) < 1e21:
        # JS integral numbers are exported by goja as int64 -> plain integer.
        return str(int(f))
    a = abs(f)
    if a < 1e-6 or a >= 1e21:
        # Shortest round-trip digits in exponent form; Go strips the leading
        # zero of a one-digit exponent ("1e-07" -> "1e-7").
        s = repr(f)
        if "e" not in s:
            s = f"{Decimal(s):e}"
        mant, exp = s.split("e")
        sign = exp[0] if exp[0] in "+-" else "+"
        digits = exp.lstrip("+-").lstrip("0") or "0"
        return f"{mant}e{sign}{digits}"
    # Shortest round-trip digits, written without exponent.
    return format(Decimal(repr(f)), "f")


def go_json(obj: Any) -> str:
    """Serialise ``obj`` like Go's ``json.Marshal`` of the equivalent value.

    Compact separators, keys sorted, HTML-escaped strings, non-ASCII kept as
    UTF-8, integral numbers written as integers.
    """
    if obj is None:
        return "null"
    if obj is True:
        return "true"
    if obj is False:
        return "false"
    if isinstance(obj, int):
        return str(obj)
    if isinstance(obj, float):
        return _go_float(obj)
    if isinstance(obj, str):
        return _go_string(obj)
    if isinstance(obj, dict):
        items = sorted(obj.items(), key=lambda kv: kv[0])
        return "{" + ",".join(f"{_go_string(str(k))}:{go_json(v)}" for k, v in items) + "}"
    if isinstance(obj, (list, tuple)):
        return "[" + ",".join(go_json(v) for v in obj) + "]"
    raise TypeError(f"cannot encode {type(obj).__name__} as Go JSON")


def job_type_etag(job_type: dict[str, Any]) -> str:
    """SHA-1 hex etag of a normalised ``AvailableJobType`` dict.

    The ``etag`` field is blanked before hashing, as Flamenco does, so passing
    a dict that already carries an etag gives the same result.
    """
    blanked = dict(job_type)
    blanked["etag"] = ""
    return hashlib.sha1(go_json(blanked).encode("utf-8")).hexdigest()


class JobTypeEtagMismatch(Exception):
    """The submitter's cached job type is older than ours (HTTP 412 in Flamenco)."""

    def __init__(self, expected: str, submitted: str) -> None:
        # Flamenco's own wording, so logs and the add-on read the same.
        super().__init__(f'job type etag does not match: expecting "{expected}", submitted job has "{submitted}"')
        self.expected = expected
        self.submitted = submitted


def check_submitted_etag(current_etag: str, submitted: str | None) -> None:
    """Raise :class:`JobTypeEtagMismatch` unless ``submitted`` matches.

    Like Flamenco, a missing or empty submitted etag skips the check (hand-made
    submissions rarely carry one).  Run it before compiling.
    """
    if submitted and submitted != current_etag:
        raise JobTypeEtagMismatch(current_etag, submitted)
