# SPDX-License-Identifier: GPL-3.0-or-later
"""The selected job type's settings as a generated PropertyGroup on the scene.

Like Flamenco's add-on: one RNA property per setting (``jobtypes`` decides
which kind), plus ``autoeval_<key>`` link toggles; the class is registered as
``Scene.flamenco_peer_job_settings`` and regenerated whenever the job type
changes. Values live in the scene's ID properties, so they are saved with the
.blend file and come back when the same job type is selected again.
"""

from __future__ import annotations

from typing import Any

import bpy

from . import eval as flamenco_eval
from . import jobtypes
from .jobtypes import SettingSpec

SCENE_ATTR = "flamenco_peer_job_settings"


class _Current:
    cls: type | None = None
    job_type: dict[str, Any] | None = None
    specs: list[SettingSpec] = []
    warnings: list[str] = []


current = _Current()


def job_name(context: Any) -> str:
    """The job name field, or the blend file's name (Flamenco's default)."""
    scene = context.scene
    name = str(getattr(scene, "flamenco_peer_job_name", "") or "").strip()
    if name:
        return name
    filepath = bpy.data.filepath
    return bpy.path.display_name_from_filepath(filepath) if filepath else "untitled"


def eval_names(context: Any, settings: Any) -> dict[str, Any]:
    return flamenco_eval.names(context, settings, job_name(context))


def evaluate(context: Any, settings: Any, spec: SettingSpec) -> Any:
    """The setting's ``eval`` result, converted to its type; raises SettingEvalError."""
    value = flamenco_eval.evaluate(spec.key, spec.expr, eval_names(context, settings))
    try:
        return jobtypes.coerce(spec.kind, value)
    except (TypeError, ValueError) as exc:
        raise flamenco_eval.SettingEvalError(spec.key, spec.expr, exc) from None


def _read_only_getter(spec: SettingSpec):
    """``editable: false``: the property shows the live ``eval`` result (or the default)."""

    def get(self: Any) -> Any:
        value = spec.default
        if spec.expr:
            try:
                value = evaluate(bpy.context, self, spec)
            except flamenco_eval.SettingEvalError:
                value = jobtypes.ZERO[spec.kind]  # drawn every redraw: no exception here
        if spec.kind == "enum":
            return spec.choices.index(value) if value in spec.choices else 0
        return value

    return get


def _make_property(spec: SettingSpec, warnings: list[str]) -> Any:
    function, kwargs = spec.bpy_property()
    if not spec.editable:
        kwargs["get"] = _read_only_getter(spec)
    factory = getattr(bpy.props, function)
    try:
        return factory(**kwargs)
    except (TypeError, ValueError) as exc:
        # A Manager's job type may carry propargs this Blender does not know.
        warnings.append(f"setting {spec.key!r}: propargs {spec.propargs} ignored ({exc})")
        for name in spec.propargs:
            kwargs.pop(name, None)
        return factory(**kwargs)


def build_class(job_type: dict[str, Any]) -> tuple[type, list[SettingSpec], list[str]]:
    specs = jobtypes.job_type_specs(job_type)
    warnings = [w for s in specs for w in s.warnings]
    annotations: dict[str, Any] = {}
    for spec in specs:
        annotations[spec.prop_name] = _make_property(spec, warnings)
        if spec.link_button:
            annotations[spec.autoeval_prop] = bpy.props.BoolProperty(
                name="Use Automatic Value",
                description=f"Compute the value at submission: {spec.eval_description or spec.expr}",
                default=True, options=set(),
            )
    cls = type(jobtypes.class_name(str(job_type.get("name", ""))), (bpy.types.PropertyGroup,),
               {"__annotations__": annotations})
    return cls, specs, warnings


def unregister_current() -> None:
    if hasattr(bpy.types.Scene, SCENE_ATTR):
        delattr(bpy.types.Scene, SCENE_ATTR)
    if current.cls is not None:
        try:
            bpy.utils.unregister_class(current.cls)
        except RuntimeError:
            pass  # already gone (add-on reload)
    current.cls, current.job_type, current.specs, current.warnings = None, None, [], []


def apply(job_type: dict[str, Any] | None) -> None:
    """Make the scene's settings those of ``job_type`` (None: no job type selected)."""
    if job_type is not None and current.job_type is not None and current.job_type == job_type:
        return
    unregister_current()
    if job_type is None:
        return
    cls, specs, warnings = build_class(job_type)
    bpy.utils.register_class(cls)
    setattr(bpy.types.Scene, SCENE_ATTR, bpy.props.PointerProperty(type=cls))
    current.cls, current.job_type, current.specs, current.warnings = cls, job_type, specs, warnings


def settings_of(context: Any) -> Any:
    return getattr(context.scene, SCENE_ATTR, None)


def spec_for(key: str) -> SettingSpec | None:
    return next((s for s in current.specs if s.key == key), None)


def fill_empty_settings(context: Any) -> list[str]:
    """On job-type selection: compute shown settings that have an ``eval`` and no value yet.

    Returns the evaluation errors (the artist sees them; nothing is raised).
    """
    settings = settings_of(context)
    errors: list[str] = []
    if settings is None:
        return errors
    for spec in current.specs:
        if not (spec.shown and spec.expr and spec.editable):
            continue
        if getattr(settings, spec.prop_name):
            continue
        try:
            set_value(settings, spec, evaluate(context, settings, spec))
        except flamenco_eval.SettingEvalError as exc:
            errors.append(str(exc))
    return errors


def set_value(settings: Any, spec: SettingSpec, value: Any) -> None:
    if spec.kind == "enum" and value not in spec.choices:
        raise flamenco_eval.SettingEvalError(
            spec.key, spec.expr, ValueError(f"{value!r} is not one of {', '.join(spec.choices)}"))
    setattr(settings, spec.prop_name, value)


def collect(context: Any, *, blendfile: str) -> dict[str, Any]:
    """The ``settings`` of the job to submit; raises SettingEvalError.

    Every setting is sent (hidden ones with their default or Blender's zero
    value, as Flamenco's add-on does). Settings that are not shown, linked,
    read-only, or left empty are computed now from their ``eval``, or take
    their default when they have none. ``blendfile`` is the file as the farm sees it.
    """
    settings = settings_of(context)
    out: dict[str, Any] = {}
    for spec in current.specs:
        value = spec.default if settings is None else _plain(getattr(settings, spec.prop_name))
        if spec.key == "blendfile" and spec.kind == "string":
            out[spec.key] = blendfile
            continue
        linked = bool(getattr(settings, spec.autoeval_prop, True)) if spec.link_button else False
        if jobtypes.evaluated_at_submit(spec, linked, value):
            if spec.expr:
                value = evaluate(context, settings, spec)
            elif spec.has_default:
                value = spec.default
        out[spec.key] = value
    return out


def _plain(value: Any) -> Any:
    """RNA values as JSON-able Python values."""
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    return str(value)
