"""Validate HTTP traffic against the Flamenco Manager OpenAPI 3.0 document.

Test utility: our peer's client API must look like Flamenco Manager API v3 to
the Blender add-on and other Flamenco clients. This module loads
``shared/flamenco/flamenco-openapi.yaml``, converts its schemas to JSON Schema
(draft 2020-12) and checks request and response bodies against it::

    spec = load_spec()
    spec.validate_request("POST", "/api/v3/jobs", submitted_job)
    spec.validate_response("POST", "/api/v3/jobs", 200, job)
    spec.validate_schema("AvailableJobTypes", job_types)

Every failure raises :class:`OpenAPIValidationError` (an ``AssertionError``)
naming the operation, the JSON pointer of the offending value and what the
document expected there.

Where the document and the real Manager disagree, the real Manager wins; every
such deviation is listed in ``SPEC_ERRATA`` / ``UUID_FIELDS`` below and is
checked against the document when it is loaded, so a new version of the
document cannot silently change what we validate.
"""

from __future__ import annotations

import copy
import datetime
import difflib
import functools
import json
import os
import re
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import unquote, urlsplit

import jsonschema
import referencing
import referencing.jsonschema
import yaml

__all__ = [
    "OpenAPISpec",
    "OpenAPISpecError",
    "OpenAPIValidationError",
    "Operation",
    "OperationMatch",
    "Parameter",
    "SPEC_ERRATA",
    "UUID_FIELDS",
    "default_spec_path",
    "load_spec",
]

SPEC_ENV_VAR = "FLAMENCO_SHARED"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

# Required property names that the document lists but never declares, and that
# Flamenco Manager does not send (its Go types are generated from `properties`).
# Validating them literally would reject the real Manager's responses, so they
# are dropped. Any *other* undeclared required name makes loading fail.
SPEC_ERRATA: Mapping[str, frozenset[str]] = {
    "/components/schemas/RegisteredWorker": frozenset({"current_task"}),
    "/components/schemas/ManagerVariable": frozenset({"name"}),
    # Typo for `tasks` in the document; the Manager answers {"tasks": [...]}.
    "/components/schemas/JobTasksSummary": frozenset({"jobs"}),
    "/components/schemas/EventLastRenderedUpdate": frozenset({"task_id"}),
}

# The document has no `format: uuid` at all. These string properties are
# identifiers the Manager generates as UUIDs and the document names as UUIDs
# (by the property name `uuid` or a "UUID of ..." description); the Manager
# rejects non-UUID job IDs (400 "job ID not valid"). With ``uuid_overlay=True``
# (the default) they get `format: uuid`. Client-chosen values
# (SocketIOSubscription.uuid, JobTagChange.id) are deliberately left out.
UUID_FIELDS: tuple[str, ...] = (
    "/components/schemas/Job/allOf/1/properties/id",
    "/components/schemas/RegisteredWorker/properties/uuid",
    "/components/schemas/AssignedTask/properties/uuid",
    "/components/schemas/AssignedWorker/properties/uuid",
    "/components/schemas/WorkerTag/properties/id",
    "/components/schemas/EventJobUpdate/properties/id",
    "/components/schemas/EventTaskUpdate/properties/id",
    "/components/schemas/EventTaskLogUpdate/properties/task_id",
    "/components/schemas/EventWorkerUpdate/properties/id",
)

_SCHEMA_REF_PREFIX = "#/components/schemas/"
_DRAFT = "https://json-schema.org/draft/2020-12/schema"

# OpenAPI 3.0 schema keywords that mean the same in JSON Schema 2020-12.
_PASSTHROUGH = frozenset({
    "title", "description", "default", "enum", "format", "type",
    "multipleOf", "maximum", "minimum", "maxLength", "minLength", "pattern",
    "maxItems", "minItems", "uniqueItems", "maxProperties", "minProperties",
    "readOnly", "writeOnly", "deprecated",
})
# OpenAPI-only annotations without validation meaning.
_DROPPED = frozenset({"example", "externalDocs", "xml", "discriminator"})
_HANDLED = frozenset({
    "$ref", "nullable", "properties", "required", "additionalProperties", "items",
    "allOf", "oneOf", "anyOf", "not", "exclusiveMaximum", "exclusiveMinimum",
})


class OpenAPIValidationError(AssertionError):
    """A request/response/value does not conform to the OpenAPI document.

    ``operation`` is e.g. ``"submitJob (POST /api/v3/jobs)"`` (None for
    :meth:`OpenAPISpec.validate_schema`), ``problems`` a list of
    ``(json_pointer, explanation)`` tuples; ``pointer`` is the first one's.
    """

    def __init__(self, message: str, *, operation: str | None = None,
                 problems: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.operation = operation
        self.problems = list(problems)
        self.pointer = self.problems[0][0] if self.problems else None


class OpenAPISpecError(Exception):
    """The OpenAPI document uses something this module does not understand."""


@dataclass(frozen=True)
class Parameter:
    name: str
    location: str  # "path", "query", "header", "cookie"
    required: bool
    schema: Any = field(repr=False)
    pointer: str = field(repr=False)  # where it is defined in the document


@dataclass(frozen=True)
class Operation:
    method: str  # upper case
    path_template: str
    operation_id: str
    definition: Mapping[str, Any] = field(repr=False, compare=False)
    parameters: tuple[Parameter, ...] = field(repr=False, compare=False)

    @property
    def label(self) -> str:
        return f"{self.operation_id} ({self.method} {self.path_template})"

    @property
    def pointer(self) -> str:
        return "/paths/" + _escape(self.path_template) + "/" + self.method.lower()


@dataclass(frozen=True)
class OperationMatch:
    operation: Operation
    path: str
    path_params: Mapping[str, str]

    @property
    def operation_id(self) -> str:
        return self.operation.operation_id


# --------------------------------------------------------------------- formats

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.\d+)?"
    r"(?:[Zz]|[+-](\d{2}):(\d{2}))"
)
_UUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_HH_MM = re.compile(r"(?:[01]\d|2[0-3]):[0-5]\d")


def _is_date_time(value: object) -> bool:
    """RFC 3339 `date-time` (what Go's time.Time marshals to)."""
    if not isinstance(value, str):
        return True
    m = _RFC3339.fullmatch(value)
    if not m:
        return False
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    try:
        datetime.date(year, month, day)
    except ValueError:
        return False
    if hour > 23 or minute > 59 or second > 60:  # 60: leap second
        return False
    if m.group(7) is not None and (int(m.group(7)) > 23 or int(m.group(8)) > 59):
        return False
    return True


def _is_uuid(value: object) -> bool:
    """Canonical 8-4-4-4-12 hex form, as the Manager generates them."""
    return not isinstance(value, str) or _UUID.fullmatch(value) is not None


def _is_time_of_day(value: object) -> bool:
    """`HH:MM` (WorkerSleepSchedule); "" is the Manager's 'no value'."""
    return not isinstance(value, str) or value == "" or _HH_MM.fullmatch(value) is not None


def _int_range_check(bits: int):
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    def check(value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return True
        return float(value).is_integer() and low <= value <= high

    return check


def _make_format_checker() -> jsonschema.FormatChecker:
    # Start empty, so results don't depend on which optional packages
    # (rfc3339-validator, ...) happen to be installed.
    checker = jsonschema.FormatChecker(formats=())
    checker.checks("date-time")(_is_date_time)
    checker.checks("uuid")(_is_uuid)
    checker.checks("HH:MM")(_is_time_of_day)
    checker.checks("int32")(_int_range_check(32))
    checker.checks("int64")(_int_range_check(64))
    return checker


FORMAT_CHECKER = _make_format_checker()


# -------------------------------------------------------------------- helpers

def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _pointer(parts: Iterable[object]) -> str:
    return "".join("/" + _escape(str(p)) for p in parts)


def _resolve_local(document: Mapping[str, Any], pointer: str) -> Any:
    """Resolve a pointer like ``/components/schemas/Job`` (or ``#/...``)."""
    node: Any = document
    for raw in pointer.lstrip("#").split("/")[1:]:
        token = unquote(raw).replace("~1", "/").replace("~0", "~")
        if isinstance(node, list):
            node = node[int(token)]
        else:
            node = node[token]
    return node


def _media_base(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _is_json_media(media: str) -> bool:
    return media == "application/json" or media.endswith("+json")


_short = reprlib.Repr()
_short.maxstring = 80
_short.maxother = 80
_short.maxlist = 8
_short.maxdict = 6


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def default_spec_path() -> Path:
    """``$FLAMENCO_SHARED/flamenco/flamenco-openapi.yaml``, else ``<repo>/../shared/...``.

    ``FLAMENCO_SHARED`` points at the shared directory (the one holding
    ``flamenco/``); pointing it at ``shared/flamenco`` itself also works.
    """
    override = os.environ.get(SPEC_ENV_VAR)
    if override:
        shared = Path(override).expanduser()
        candidate = shared / "flamenco" / "flamenco-openapi.yaml"
        if not candidate.is_file() and (shared / "flamenco-openapi.yaml").is_file():
            candidate = shared / "flamenco-openapi.yaml"
        return candidate
    return Path(__file__).resolve().parents[2] / "shared" / "flamenco" / "flamenco-openapi.yaml"


# ----------------------------------------------------------------- conversion

class _Converter:
    """OpenAPI 3.0 Schema Objects -> JSON Schema 2020-12, for one direction.

    ``direction`` is "request" (readOnly properties are not required),
    "response" (writeOnly properties are not required) or None (neither).
    ``$ref: '#/components/schemas/X'`` becomes a reference into a registry
    resource holding every component under ``$defs``. Each converted schema
    carries its location in the document as ``$comment``, which error messages
    quote.
    """

    def __init__(self, document: Mapping[str, Any], direction: str | None, base_uri: str,
                 errata: Mapping[str, frozenset[str]], quirks: list[str]) -> None:
        self.document = document
        self.direction = direction
        self.base_uri = base_uri
        self.errata = errata
        self.quirks = quirks
        self.used_errata: set[str] = set()

    def ref_uri(self, name: str) -> str:
        return f"{self.base_uri}#/$defs/{_escape(name)}"

    def components(self) -> dict[str, Any]:
        schemas = self.document.get("components", {}).get("schemas", {}) or {}
        return {
            name: self.convert(schema, f"/components/schemas/{_escape(name)}")
            for name, schema in schemas.items()
        }

    def deref(self, schema: Any) -> Any:
        seen = set()
        while isinstance(schema, dict) and "$ref" in schema:
            ref = schema["$ref"]
            if ref in seen:
                raise OpenAPISpecError(f"circular $ref {ref}")
            seen.add(ref)
            schema = _resolve_local(self.document, ref)
        return schema

    def declared_properties(self, schema: Any) -> set[str]:
        """Property names a schema declares, through $ref and compositions."""
        schema = self.deref(schema)
        if not isinstance(schema, dict):
            return set()
        names = set(schema.get("properties", {}) or {})
        for key in ("allOf", "anyOf", "oneOf"):
            for sub in schema.get(key, []) or []:
                names |= self.declared_properties(sub)
        return names

    def convert(self, schema: Any, where: str, sibling_properties: frozenset[str] = frozenset()) -> Any:
        if isinstance(schema, bool):
            return schema
        if not isinstance(schema, dict):
            raise OpenAPISpecError(f"{where}: schema must be an object, got {schema!r}")

        if "$ref" in schema:
            # OpenAPI 3.0: siblings of $ref are ignored (TaskUpdate.taskStatus
            # has a `description` next to its $ref).
            ref = schema["$ref"]
            if not isinstance(ref, str) or not ref.startswith(_SCHEMA_REF_PREFIX):
                raise OpenAPISpecError(f"{where}: unsupported schema $ref {ref!r}")
            name = unquote(ref[len(_SCHEMA_REF_PREFIX):]).replace("~1", "/").replace("~0", "~")
            if name not in (self.document.get("components", {}).get("schemas", {}) or {}):
                raise OpenAPISpecError(f"{where}: $ref to unknown schema {ref!r}")
            out: dict[str, Any] = {"$ref": self.ref_uri(name), "$comment": where}
            return self._nullable(out, schema)

        unknown = set(schema) - _PASSTHROUGH - _DROPPED - _HANDLED
        unknown = {k for k in unknown if not k.startswith("x-")}
        if unknown:
            raise OpenAPISpecError(f"{where}: unsupported schema keyword(s) {sorted(unknown)}")

        out = {"$comment": where}
        for key in _PASSTHROUGH:
            if key in schema:
                out[key] = copy.deepcopy(schema[key])
        if isinstance(out.get("type"), str) and out["type"] not in (
                "string", "number", "integer", "boolean", "array", "object"):
            raise OpenAPISpecError(f"{where}: unknown type {out['type']!r}")
        if out.get("type") == "string" and any(not isinstance(v, str) for v in out.get("enum", ())):
            raise OpenAPISpecError(f"{where}: non-string enum value (YAML 1.1 coercion?) in {out['enum']!r}")

        # OpenAPI 3.0 boolean exclusiveMinimum/Maximum -> 2020-12 numeric form.
        for excl, bound in (("exclusiveMaximum", "maximum"), ("exclusiveMinimum", "minimum")):
            if schema.get(excl) is True:
                if bound not in schema:
                    raise OpenAPISpecError(f"{where}: {excl} without {bound}")
                out[excl] = schema[bound]
                out.pop(bound, None)

        props = schema.get("properties")
        if props is not None:
            out["properties"] = {
                name: self.convert(sub, f"{where}/properties/{_escape(name)}")
                for name, sub in props.items()
            }
        if "additionalProperties" in schema:
            ap = schema["additionalProperties"]
            out["additionalProperties"] = ap if isinstance(ap, bool) else self.convert(ap, f"{where}/additionalProperties")
        if "items" in schema:
            out["items"] = self.convert(schema["items"], f"{where}/items")
        if "not" in schema:
            out["not"] = self.convert(schema["not"], f"{where}/not")
        for key in ("oneOf", "anyOf"):
            if key in schema:
                out[key] = [self.convert(sub, f"{where}/{key}/{i}") for i, sub in enumerate(schema[key])]
        if "allOf" in schema:
            branches = schema["allOf"]
            declared = [frozenset(self.declared_properties(b)) for b in branches]
            out["allOf"] = []
            for i, sub in enumerate(branches):
                others = frozenset().union(*(d for j, d in enumerate(declared) if j != i))
                out["allOf"].append(self.convert(sub, f"{where}/allOf/{i}", others | sibling_properties))
        if "required" in schema:
            out["required"] = self._required(schema, where, sibling_properties)
        return self._nullable(out, schema)

    def _required(self, schema: Mapping[str, Any], where: str, sibling_properties: frozenset[str]) -> list[str]:
        props = schema.get("properties", {}) or {}
        required = list(schema["required"])
        if "properties" in schema or sibling_properties:
            declared = set(props) | sibling_properties | self.declared_properties(
                {k: v for k, v in schema.items() if k in ("allOf", "anyOf", "oneOf")})
            phantom = [n for n in required if n not in declared]
            allowed = self.errata.get(where, frozenset())
            unexpected = [n for n in phantom if n not in allowed]
            if unexpected:
                raise OpenAPISpecError(
                    f"{where}: required {unexpected} not declared in properties; "
                    "decide whether the Manager sends it and list it in the errata (SPEC_ERRATA)")
            if phantom:
                self.used_errata.add(where)
                self.quirks.append(f"{where}: ignoring undeclared required {phantom}")
                required = [n for n in required if n not in phantom]
        # A request need not carry readOnly properties, a response not writeOnly ones.
        skip_flag = {"request": "readOnly", "response": "writeOnly"}.get(self.direction or "")
        if skip_flag:
            required = [n for n in required if (self.deref(props.get(n)) or {}).get(skip_flag) is not True]
        return required

    @staticmethod
    def _nullable(out: dict[str, Any], schema: Mapping[str, Any]) -> dict[str, Any]:
        if schema.get("nullable") is not True:
            return out
        simple = isinstance(out.get("type"), str) and not (set(out) & {"$ref", "allOf", "anyOf", "oneOf", "not"})
        if simple:
            out["type"] = [out["type"], "null"]
            if "enum" in out and None not in out["enum"]:
                out["enum"] = [*out["enum"], None]
            return out
        return {"$comment": out["$comment"], "anyOf": [{"type": "null"}, out]}


def _apply_uuid_overlay(document: dict[str, Any], pointers: Iterable[str]) -> None:
    for pointer in pointers:
        try:
            node = _resolve_local(document, pointer)
        except (KeyError, IndexError, ValueError):
            raise OpenAPISpecError(f"uuid field {pointer} not found in the document") from None
        name = pointer.rsplit("/", 1)[1]
        if (not isinstance(node, dict) or node.get("type") != "string" or "format" in node
                or not (name == "uuid" or "UUID" in str(node.get("description", "")))):
            raise OpenAPISpecError(f"uuid field {pointer} is no longer an unformatted UUID string: {node!r}")
        node["format"] = "uuid"


# ----------------------------------------------------------------------- spec

@dataclass
class _PathTemplate:
    template: str
    regex: re.Pattern[str]  # one group per parameter, in `names` order
    names: tuple[str, ...]
    specificity: tuple[int, ...]  # per segment: 0 literal, 1 templated; lower wins
    item: Mapping[str, Any]


class OpenAPISpec:
    """A loaded OpenAPI 3.0 document with request/response validation."""

    def __init__(self, document: Mapping[str, Any], *, source: str = "<dict>",
                 errata: Mapping[str, Iterable[str]] | None = None,
                 uuid_fields: Iterable[str] = ()) -> None:
        """Wrap an already-parsed OpenAPI 3.0 document.

        ``errata`` maps schema pointers to required names to ignore (each must
        be needed); ``uuid_fields`` lists string properties to check as UUIDs.
        :func:`load_spec` passes ``SPEC_ERRATA`` and ``UUID_FIELDS``.
        """
        version = str(document.get("openapi", ""))
        if not version.startswith("3.0"):
            raise OpenAPISpecError(f"{source}: expected an OpenAPI 3.0 document, got openapi={version!r}")
        doc = copy.deepcopy(dict(document))
        uuid_fields = tuple(uuid_fields)
        _apply_uuid_overlay(doc, uuid_fields)
        self.document: Mapping[str, Any] = doc
        self.source = source
        self.uuid_fields = uuid_fields
        self.errata = {k: frozenset(v) for k, v in (errata or {}).items()}
        #: Human-readable notes about where validation deviates from the document.
        self.quirks: list[str] = [f"{p}: checked as format uuid" for p in uuid_fields]

        self._converters: dict[str | None, _Converter] = {}
        self._registries: dict[str | None, referencing.Registry] = {}
        self._validators: dict[tuple[str | None, str], Any] = {}
        for direction in (None, "request", "response"):
            self._build_registry(direction)
        unused = set(self.errata) - self._converters[None].used_errata
        if unused:
            raise OpenAPISpecError(f"{source}: errata no longer needed (fixed in the document?): {sorted(unused)}")

        self._paths: list[_PathTemplate] = [
            self._compile_path(template, item) for template, item in (doc.get("paths") or {}).items()
        ]
        self._paths.sort(key=lambda p: p.specificity)  # stable: document order among equals
        self._operations: dict[tuple[str, str], Operation] = {}
        for template, item in (doc.get("paths") or {}).items():
            for method in HTTP_METHODS:
                if method in item:
                    op = self._make_operation(template, item, method)
                    # Convert every operation schema now, so unsupported constructs fail at load time.
                    self._check_operation(op)
                    self._operations[(template, method)] = op

    # -- construction -------------------------------------------------------

    def _build_registry(self, direction: str | None) -> None:
        uri = f"urn:flamenco-openapi:{direction or 'any'}"
        # Errata notes are the same for every direction; keep one copy.
        quirks = self.quirks if direction is None else []
        converter = _Converter(self.document, direction, uri, self.errata, quirks)
        defs = converter.components()
        resource_doc = {"$schema": _DRAFT, "$id": uri, "$defs": defs}
        if direction is None:  # the other directions differ only in `required` lists
            jsonschema.Draft202012Validator.check_schema(resource_doc)
        resource = referencing.Resource.from_contents(resource_doc, default_specification=referencing.jsonschema.DRAFT202012)
        self._converters[direction] = converter
        self._registries[direction] = referencing.Registry().with_resource(uri, resource)

    @staticmethod
    def _compile_path(template: str, item: Mapping[str, Any]) -> _PathTemplate:
        if not template.startswith("/"):
            raise OpenAPISpecError(f"path {template!r} does not start with '/'")
        pattern, names, specificity = [], [], []
        for segment in template.split("/")[1:]:
            parts = re.split(r"(\{[^{}/]+\})", segment)
            regex = ""
            for part in parts:
                if part.startswith("{") and part.endswith("}"):
                    regex += "([^/]+)"
                    names.append(part[1:-1])
                else:
                    regex += re.escape(part)
            pattern.append(regex)
            specificity.append(0 if len(parts) == 1 else 1)
        return _PathTemplate(template, re.compile("/" + "/".join(pattern)), tuple(names), tuple(specificity), item)

    def _schema_validator(self, schema: Any, where: str, direction: str | None):
        key = (direction, where)
        validator = self._validators.get(key)
        if validator is None:
            converted = self._converters[direction].convert(schema, where)
            validator = jsonschema.Draft202012Validator(
                converted, registry=self._registries[direction], format_checker=FORMAT_CHECKER)
            self._validators[key] = validator
        return validator

    def _check_operation(self, op: Operation) -> None:
        body = self._deref_object(op.definition.get("requestBody"))
        for media, media_obj in ((body or {}).get("content") or {}).items():
            if "schema" in media_obj:
                self._schema_validator(media_obj["schema"], f"{op.pointer}/requestBody/content/{_escape(media)}/schema", "request")
        for status, response in (op.definition.get("responses") or {}).items():
            response = self._deref_object(response)
            for media, media_obj in (response.get("content") or {}).items():
                if "schema" in media_obj:
                    self._schema_validator(media_obj["schema"], f"{op.pointer}/responses/{status}/content/{_escape(media)}/schema", "response")
        for param in op.parameters:
            if param.schema is not None:
                self._schema_validator(param.schema, f"{param.pointer}/schema", "request")

    def _deref_object(self, obj: Any) -> Any:
        """Resolve non-schema $refs (#/components/responses, parameters, ...)."""
        seen = set()
        while isinstance(obj, dict) and "$ref" in obj:
            if obj["$ref"] in seen:
                raise OpenAPISpecError(f"circular $ref {obj['$ref']}")
            seen.add(obj["$ref"])
            obj = _resolve_local(self.document, obj["$ref"])
        return obj

    # -- operations ---------------------------------------------------------

    def operations(self) -> list[Operation]:
        """Every operation in the document, in document order."""
        return list(self._operations.values())

    def _make_operation(self, template: str, item: Mapping[str, Any], method: str) -> Operation:
        definition = item[method]
        item_pointer = "/paths/" + _escape(template)
        params: dict[tuple[str, str], Parameter] = {}
        for base, raws in ((item_pointer, item.get("parameters")),
                           (f"{item_pointer}/{method}", definition.get("parameters"))):
            for i, raw in enumerate(raws or []):
                param = self._deref_object(raw)
                if "content" in param:
                    raise OpenAPISpecError(f"{base}/parameters/{i}: parameters with 'content' are not supported")
                # Operation-level parameters override path-level ones.
                params[(param["name"], param["in"])] = Parameter(
                    name=param["name"], location=param["in"],
                    required=bool(param.get("required")) or param["in"] == "path",
                    schema=param.get("schema"), pointer=f"{base}/parameters/{i}")
        return Operation(
            method=method.upper(),
            path_template=template,
            operation_id=definition.get("operationId") or f"{method.upper()} {template}",
            definition=definition,
            parameters=tuple(params.values()),
        )

    def find_operation(self, method: str, path: str) -> OperationMatch:
        """Match a concrete request path (query string and host allowed) to an operation.

        Concrete paths win over templated ones (``/api/v3/jobs/types`` is
        getJobTypes, not fetchJob); the path is matched first, then the method,
        so ``GET /api/v3/jobs/check`` is an error rather than fetchJob. Path
        parameters are percent-decoded and checked against their schemas.
        """
        method_l = method.lower()
        if method_l not in HTTP_METHODS:
            raise OpenAPIValidationError(f"{method!r} is not an HTTP method")
        raw_path = urlsplit(path).path if "://" in path else path.split("?", 1)[0].split("#", 1)[0]
        for candidate in self._paths:  # most specific first
            m = candidate.regex.fullmatch(raw_path)
            if not m:
                continue
            op = self._operations.get((candidate.template, method_l))
            if op is None:
                allowed = [x.upper() for x in HTTP_METHODS if x in candidate.item]
                raise OpenAPIValidationError(
                    f"{method.upper()} {raw_path}: path matches {candidate.template}, "
                    f"which has no {method.upper()} operation (documented: {', '.join(allowed)})")
            values = {name: unquote(value) for name, value in zip(candidate.names, m.groups())}
            self._check_path_params(op, values)
            return OperationMatch(op, raw_path, values)
        close = difflib.get_close_matches(raw_path, [p.template for p in self._paths], n=3, cutoff=0.5)
        hint = f"; closest documented paths: {', '.join(close)}" if close else ""
        raise OpenAPIValidationError(f"{method.upper()} {raw_path}: no such path in the Flamenco API{hint}")

    def _check_path_params(self, op: Operation, values: Mapping[str, str]) -> None:
        for param in op.parameters:
            if param.location != "path" or param.name not in values or param.schema is None:
                continue
            raw = values[param.name]
            schema = self._converters["request"].deref(param.schema)
            value: Any = raw
            kind = schema.get("type") if isinstance(schema, dict) else None
            if kind == "integer" and re.fullmatch(r"[+-]?\d+", raw):
                value = int(raw)
            elif kind == "number":
                try:
                    value = float(raw)
                except ValueError:
                    pass
            elif kind == "boolean" and raw in ("true", "false"):
                value = raw == "true"
            validator = self._schema_validator(param.schema, f"{param.pointer}/schema", "request")
            problems = _problems(validator, value)
            if problems:
                detail = "; ".join(explanation for _, explanation in problems)
                raise OpenAPIValidationError(
                    f"{op.label}: path parameter {param.name}={raw!r}: {detail}",
                    operation=op.label, problems=[(f"{{{param.name}}}", detail)])

    # -- validation ---------------------------------------------------------

    def validate_request(self, method: str, path: str, body: object | None,
                         content_type: str = "application/json") -> None:
        """Validate a request body (the decoded JSON value, or bytes for binary bodies).

        ``body=None`` means "no body".
        """
        match = self.find_operation(method, path)
        op = match.operation
        request_body = self._deref_object(op.definition.get("requestBody"))
        if request_body is None:
            if body is not None:
                raise OpenAPIValidationError(
                    f"{op.label}: this operation takes no request body, got {_short.repr(body)}",
                    operation=op.label, problems=[("", "no request body expected")])
            return
        if body is None:
            if request_body.get("required"):
                raise OpenAPIValidationError(
                    f"{op.label}: request body is required ({', '.join(request_body.get('content', {}))})",
                    operation=op.label, problems=[("", "request body is required")])
            return
        where = f"{op.pointer}/requestBody"
        self._validate_content(op, "request body", request_body, where, body, content_type, "request")

    def validate_response(self, method: str, path: str, status: int, body: object | None,
                          content_type: str = "application/json") -> None:
        """Validate a response: status code documented, body matches its schema.

        ``body`` is the decoded JSON value (bytes/str for non-JSON media types);
        ``None`` means an empty body. Undocumented status codes fall back to
        ``default``; without one they are an error.
        """
        match = self.find_operation(method, path)
        op = match.operation
        responses = op.definition.get("responses") or {}
        status_key = next((k for k in (str(status), f"{str(status)[0]}XX", "default") if k in responses), None)
        if status_key is None:
            documented = ", ".join(str(k) for k in responses)
            raise OpenAPIValidationError(
                f"{op.label}: status {status} is not documented (documented: {documented}; no default)",
                operation=op.label, problems=[("", f"status {status} not documented")])
        response = self._deref_object(responses[status_key])
        where = f"{op.pointer}/responses/{status_key}"
        what = f"response {status}" + (" (default)" if status_key == "default" else "")
        if not response.get("content"):
            if body not in (None, b"", ""):
                raise OpenAPIValidationError(
                    f"{op.label}: {what} has no body in the document, got {_short.repr(body)}",
                    operation=op.label, problems=[("", "no body expected")])
            return
        if body is None:
            raise OpenAPIValidationError(
                f"{op.label}: {what} must have a body ({', '.join(response['content'])}), got none",
                operation=op.label, problems=[("", "body expected")])
        self._validate_content(op, what, response, where, body, content_type, "response")

    def validate_schema(self, name: str, value: object, direction: str | None = None) -> None:
        """Validate ``value`` against ``#/components/schemas/<name>``.

        ``direction`` "request" / "response" relaxes readOnly / writeOnly
        required properties like the operation validators do.
        """
        schemas = self.document.get("components", {}).get("schemas", {}) or {}
        if name not in schemas:
            close = difflib.get_close_matches(name, list(schemas), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise OpenAPIValidationError(f"no schema #/components/schemas/{name}{hint}")
        if direction not in (None, "request", "response"):
            raise ValueError(f"direction must be None, 'request' or 'response', not {direction!r}")
        ref = {"$ref": _SCHEMA_REF_PREFIX + _escape(name)}
        validator = self._schema_validator(ref, f"/components/schemas/{_escape(name)}", direction)
        _raise_problems(validator, value, f"schema {name}", operation=None)

    def _validate_content(self, op: Operation, what: str, holder: Mapping[str, Any], where: str,
                          body: object, content_type: str, direction: str) -> None:
        content: Mapping[str, Any] = holder.get("content") or {}
        media = _media_base(content_type)
        lowered = {k.lower(): k for k in content}
        key = lowered.get(media) or lowered.get(media.split("/")[0] + "/*") or lowered.get("*/*")
        if key is None:
            raise OpenAPIValidationError(
                f"{op.label}: {what} has no media type {media!r} (documented: {', '.join(content)})",
                operation=op.label, problems=[("", f"media type {media} not documented")])
        media_obj = content[key]
        if "schema" not in media_obj:
            return
        schema = media_obj["schema"]
        resolved = self._converters[direction].deref(schema)
        if isinstance(resolved, dict) and resolved.get("type") == "string" and resolved.get("format") == "binary":
            if not isinstance(body, (bytes, bytearray, memoryview, str)):
                raise OpenAPIValidationError(
                    f"{op.label}: {what} ({key}) must be binary data, got {_json_type(body)}",
                    operation=op.label, problems=[("", "binary body expected")])
            return
        if isinstance(body, (bytes, bytearray, memoryview)):
            try:
                text = bytes(body).decode("utf-8")
                body = json.loads(text) if _is_json_media(media) else text
            except (UnicodeDecodeError, ValueError) as ex:
                raise OpenAPIValidationError(
                    f"{op.label}: {what} ({key}) cannot be decoded: {ex}",
                    operation=op.label, problems=[("", "undecodable body")]) from None
        validator = self._schema_validator(schema, f"{where}/content/{_escape(key)}/schema", direction)
        _raise_problems(validator, body, f"{op.label} {what}", operation=op.label)


# --------------------------------------------------------------- error output

def _schema_location(error: jsonschema.ValidationError) -> str:
    schema = error.schema if isinstance(error.schema, dict) else {}
    where = schema.get("$comment")
    return f" [#{where}]" if isinstance(where, str) else ""


def _explain(error: jsonschema.ValidationError) -> list[tuple[str, str]]:
    """(pointer, explanation) pairs for one jsonschema error."""
    path = list(error.absolute_path)
    kind = error.validator
    value = error.validator_value
    inst = error.instance
    loc = _schema_location(error)
    if kind == "required":
        missing = [n for n in value if isinstance(inst, dict) and n not in inst]
        named = [n for n in missing if error.message == f"{n!r} is a required property"] or missing
        return [(_pointer(path + [n]), f"required property {n!r} is missing{loc}") for n in named]
    if kind == "enum":
        text = f"expected one of {value!r}, got {_short.repr(inst)}"
    elif kind == "type":
        text = f"expected type {value!r}, got {_json_type(inst)} {_short.repr(inst)}"
    elif kind == "format":
        text = f"expected format {value!r}, got {_short.repr(inst)}"
    elif kind in ("anyOf", "oneOf") and error.context:
        first_per_branch: dict[int, jsonschema.ValidationError] = {}
        for sub in error.context:
            first_per_branch.setdefault(sub.relative_schema_path[0], sub)
        branches = []
        for index, sub in sorted(first_per_branch.items()):
            p, t = _explain(sub)[0]
            here = p[len(_pointer(path)):]
            branches.append(f"[{index}]{' at ' + here if here else ''} {t}")
        text = f"matches none of the {kind} alternatives: " + "; ".join(branches)
    else:
        text = error.message
    return [(_pointer(path), text + loc)]


def _problems(validator, value: object) -> list[tuple[str, str]]:
    errors = sorted(validator.iter_errors(value), key=lambda e: (list(map(str, e.absolute_path)), str(e.validator)))
    problems: list[tuple[str, str]] = []
    for error in errors:
        for problem in _explain(error):
            if problem not in problems:
                problems.append(problem)
    return problems


def _raise_problems(validator, value: object, subject: str, operation: str | None) -> None:
    problems = _problems(validator, value)
    if not problems:
        return
    shown = problems[:10]
    lines = [f"{subject} does not match the Flamenco OpenAPI document:"]
    lines += [f"  at {pointer or '/'}: {text}" for pointer, text in shown]
    if len(problems) > len(shown):
        lines.append(f"  ... and {len(problems) - len(shown)} more")
    raise OpenAPIValidationError("\n".join(lines), operation=operation, problems=problems)


# -------------------------------------------------------------------- loading

@functools.lru_cache(maxsize=None)
def _load_cached(path: str, mtime_ns: int, uuid_overlay: bool) -> OpenAPISpec:
    with open(path, "rb") as f:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        document = yaml.load(f, Loader=loader)  # noqa: S506 - a SafeLoader
    return OpenAPISpec(document, source=path, errata=SPEC_ERRATA,
                       uuid_fields=UUID_FIELDS if uuid_overlay else ())


def load_spec(path: str | os.PathLike[str] | None = None, *, uuid_overlay: bool = True) -> OpenAPISpec:
    """Load (once; cached per file and options) the Flamenco Manager OpenAPI document.

    ``uuid_overlay`` adds ``format: uuid`` to the fields in ``UUID_FIELDS``;
    pass False to validate those as plain strings, as the document has them.
    ``SPEC_ERRATA`` always applies.
    """
    resolved = Path(path) if path is not None else default_spec_path()
    if not resolved.is_file():
        raise FileNotFoundError(
            f"Flamenco OpenAPI document not found at {resolved} "
            f"(set {SPEC_ENV_VAR} to the shared directory holding flamenco/flamenco-openapi.yaml)")
    resolved = resolved.resolve()
    return _load_cached(str(resolved), resolved.stat().st_mtime_ns, uuid_overlay)
