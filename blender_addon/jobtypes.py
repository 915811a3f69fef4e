# SPDX-License-Identifier: GPL-3.0-or-later
"""How a job type's ``settings`` become Blender properties, as Flamenco's add-on does it.

Pure data, no bpy: ``settings_props`` turns a :class:`SettingSpec` into a real
``bpy.props`` call. Rules (see Flamenco's AvailableJobSetting):

- ``type`` string/int32/float/bool → String/Int/Float/BoolProperty; a string with
  ``choices`` → EnumProperty. Choices on other types are ignored.
- ``subtype`` file_path/dir_path/file_name → FILE_PATH/DIR_PATH/FILE_NAME;
  hashed_file_path → FILE_PATH.
- Shown in Blender when ``visible`` is missing, ``visible`` or ``submission``.
- ``editable`` defaults to **true** here (the add-on's reading, not the API's):
  ``editable: false`` makes a read-only property showing the ``eval`` result.
- ``propargs`` are extra keyword arguments; ``min``/``max`` are coerced to the
  setting's type.
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass, field
from typing import Any

SHOWN_IN_BLENDER = {None, "", "visible", "submission"}
KINDS = {"string", "int32", "float", "bool"}
SUBTYPES = {"file_path": "FILE_PATH", "dir_path": "DIR_PATH", "file_name": "FILE_NAME", "hashed_file_path": "FILE_PATH"}
PATH_SUBTYPES = {"file_path", "dir_path", "hashed_file_path"}
ZERO: dict[str, Any] = {"string": "", "int32": 0, "float": 0.0, "bool": False, "enum": ""}
BPY_FUNCTION = {"string": "StringProperty", "int32": "IntProperty", "float": "FloatProperty",
                "bool": "BoolProperty", "enum": "EnumProperty"}

# Names a PropertyGroup already has; a setting with such a key gets another RNA name.
_RESERVED = {"name", "rna_type", "bl_rna", "id_data", "path_from_id", "get", "keys", "values", "items"}
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
INT32 = (-(2**31), 2**31 - 1)


@dataclass(frozen=True)
class SettingSpec:
    key: str
    prop_name: str           # RNA name on the generated PropertyGroup
    kind: str                # string, int32, float, bool or enum
    label: str
    description: str
    default: Any             # coerced to the kind; the zero value when the job type has none
    has_default: bool
    subtype: str             # bpy subtype ('' for none)
    choices: tuple[str, ...]
    propargs: dict[str, Any]
    expr: str                # the `eval` expression, '' when there is none
    shown: bool
    editable: bool
    link_button: bool
    eval_description: str
    is_path: bool
    warnings: tuple[str, ...] = field(default=())

    @property
    def autoeval_prop(self) -> str:
        return f"autoeval_{self.prop_name}"

    def bpy_property(self) -> tuple[str, dict[str, Any]]:
        """The ``bpy.props`` function name and its keyword arguments (without get/set)."""
        kwargs: dict[str, Any] = {"name": self.label, "description": self.description, "options": set()}
        if self.kind == "enum":
            kwargs["items"] = [(c, c, "") for c in self.choices]
            kwargs["default"] = self.default if self.default in self.choices else self.choices[0]
        else:
            kwargs["default"] = self.default
        if self.subtype and self.kind == "string":
            kwargs["subtype"] = self.subtype
        for name, value in self.propargs.items():
            kwargs[name] = value
        return BPY_FUNCTION[self.kind], kwargs


def coerce(kind: str, value: Any) -> Any:
    """Convert a value to the setting's type, as the add-on does with defaults; ValueError if it cannot."""
    if kind in ("string", "enum"):
        return "" if value is None else str(value)
    if kind == "bool":
        if isinstance(value, str):
            return value.strip().lower() in ("1", "true", "yes", "on")
        return bool(value)
    if kind == "int32":
        if isinstance(value, str):
            value = float(value.strip())
        number = int(value)
        return max(INT32[0], min(INT32[1], number))
    if kind == "float":
        return float(value)
    raise ValueError(f"unknown setting type {kind!r}")


def rna_name(key: str, index: int) -> str:
    if _IDENT.match(key) and not keyword.iskeyword(key) and key not in _RESERVED and not key.startswith("autoeval_"):
        return key
    return f"setting_{index}"


def label_for(key: str) -> str:
    return key.title().replace("_", " ")


def setting_spec(raw: dict[str, Any], index: int = 0) -> SettingSpec:
    warnings: list[str] = []
    key = str(raw.get("key", "")) or f"setting_{index}"
    declared = raw.get("type")
    kind = declared if declared in KINDS else "string"
    if declared not in KINDS:
        warnings.append(f"setting {key!r}: unknown type {declared!r}, shown as text")
    choices: tuple[str, ...] = ()
    if raw.get("choices"):
        if kind == "string" and isinstance(raw["choices"], list) and raw["choices"]:
            choices = tuple(str(c) for c in raw["choices"])
            kind = "enum"
        else:
            warnings.append(f"setting {key!r}: choices are only supported on strings; ignored")
    has_default = "default" in raw and raw["default"] is not None
    default = ZERO[kind]
    if has_default:
        try:
            default = coerce(kind, raw["default"])
        except (TypeError, ValueError):
            warnings.append(f"setting {key!r}: default {raw['default']!r} is not a {kind}; ignored")
            has_default = False
    subtype_raw = raw.get("subtype")
    subtype = SUBTYPES.get(subtype_raw, "") if kind == "string" else ""
    propargs: dict[str, Any] = {}
    raw_propargs = raw.get("propargs")
    if isinstance(raw_propargs, dict):
        for name, value in raw_propargs.items():
            if name in ("min", "max", "soft_min", "soft_max") and kind in ("int32", "float"):
                try:
                    value = coerce(kind, value)
                except (TypeError, ValueError):
                    warnings.append(f"setting {key!r}: propargs {name}={value!r} is not a number; ignored")
                    continue
            propargs[str(name)] = value
    eval_info = raw.get("evalInfo") if isinstance(raw.get("evalInfo"), dict) else {}
    expr = raw.get("eval") if isinstance(raw.get("eval"), str) else ""
    label = raw.get("label")
    return SettingSpec(
        key=key,
        prop_name=rna_name(key, index),
        kind=kind,
        label=str(label) if label else label_for(key),
        description=str(raw.get("description") or ""),
        default=default,
        has_default=has_default,
        subtype=subtype,
        choices=choices,
        propargs=propargs,
        expr=expr.strip(),
        shown=raw.get("visible") in SHOWN_IN_BLENDER,
        editable=raw.get("editable", True) is not False,
        link_button=bool(eval_info.get("showLinkButton")) and bool(expr.strip()),
        eval_description=str(eval_info.get("description") or ""),
        is_path=kind == "string" and subtype_raw in PATH_SUBTYPES,
        warnings=tuple(warnings),
    )


def job_type_specs(job_type: dict[str, Any]) -> list[SettingSpec]:
    raw_settings = job_type.get("settings") or []
    return [setting_spec(s, i) for i, s in enumerate(raw_settings) if isinstance(s, dict)]


def class_name(job_type_name: str) -> str:
    """``simple-blender-render`` → ``FLAMENCO_PEER_PG_SimpleBlenderRender``."""
    words = re.split(r"[^A-Za-z0-9]+", job_type_name)
    camel = "".join(w[:1].upper() + w[1:] for w in words if w) or "JobType"
    return f"FLAMENCO_PEER_PG_{camel}"


def evaluated_at_submit(spec: SettingSpec, linked: bool, current: Any) -> bool:
    """Whether submission computes this setting instead of sending the value in the UI.

    Flamenco's rules: settings not shown in Blender, settings whose link
    toggle is on, and read-only (``editable: false``) ones. Shown, editable
    settings with an ``eval`` but no link toggle keep what the artist typed;
    only an empty value is computed (Flamenco fills those in when the job
    type is chosen).
    """
    if not spec.shown:
        return True
    if spec.link_button:
        return linked
    if not spec.expr:
        return False
    if not spec.editable:
        return True
    return not current
