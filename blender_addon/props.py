# SPDX-License-Identifier: GPL-3.0-or-later
"""Scene properties of a submission: job name, priority, paused, job type.

The job type is stored by *name* (``flamenco_peer_job_type_name``); the
dropdown maps it to the job types the farm offers, so the choice survives a
farm that lists its job types in another order.
"""

from __future__ import annotations

from typing import Any

import bpy
from bpy.app.handlers import persistent
from bpy.props import BoolProperty, EnumProperty, IntProperty, StringProperty

from . import settings_props
from .state import farm

NO_JOB_TYPE = "-"
# Blender keeps pointers to the item strings: they must stay referenced from Python.
_enum_items: list[tuple[str, str, str, int]] = []


def _job_type_items(self: Any, context: Any) -> list[tuple[str, str, str, int]]:
    items = [(NO_JOB_TYPE, "Select a Job Type", "", 0)]
    for i, jt in enumerate(farm.job_types, start=1):
        items.append((str(jt["name"]), str(jt.get("label") or jt["name"]), str(jt.get("description") or ""), i))
    _enum_items[:] = items
    return _enum_items


def _get_job_type(self: Any) -> int:
    name = self.flamenco_peer_job_type_name
    for i, jt in enumerate(farm.job_types, start=1):
        if jt.get("name") == name:
            return i
    return 0


def _set_job_type(self: Any, value: int) -> None:
    name = str(farm.job_types[value - 1]["name"]) if 0 < value <= len(farm.job_types) else ""
    self.flamenco_peer_job_type_name = name
    select_job_type(bpy.context, name)


def select_job_type(context: Any, name: str) -> list[str]:
    """Generate the settings of job type ``name`` and fill in the empty computed ones."""
    job_type = farm.job_type(name) if name else None
    settings_props.apply(job_type)
    if job_type is None:
        return []
    errors = settings_props.fill_empty_settings(context)
    if errors:
        farm.error = errors[0]
    return errors


@persistent
def _on_load_post(*_args: Any) -> None:
    """Another .blend file: show the job type it was set up for."""
    scene = bpy.context.scene
    if scene is not None:
        select_job_type(bpy.context, scene.flamenco_peer_job_type_name)


SCENE_PROPS: dict[str, Any] = {
    "flamenco_peer_job_name": StringProperty(
        name="Job Name", description="Name of the job on the farm; empty = the name of the .blend file",
        default="", options=set()),
    "flamenco_peer_job_priority": IntProperty(
        name="Priority", description="Higher runs first (0-100)", default=50, min=0, max=100, options=set()),
    "flamenco_peer_submit_paused": BoolProperty(
        name="Submit as Paused", description="The job waits until it is started from the dashboard",
        default=False, options=set()),
    "flamenco_peer_job_type_name": StringProperty(name="Job Type Name", default="", options={"HIDDEN"}),
    "flamenco_peer_job_type": EnumProperty(
        name="Job Type", description="What the farm does with this file",
        items=_job_type_items, get=_get_job_type, set=_set_job_type, options=set()),
}


def register() -> None:
    for name, prop in SCENE_PROPS.items():
        setattr(bpy.types.Scene, name, prop)
    bpy.app.handlers.load_post.append(_on_load_post)


def unregister() -> None:
    if _on_load_post in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.remove(_on_load_post)
    settings_props.unregister_current()
    for name in SCENE_PROPS:
        if hasattr(bpy.types.Scene, name):
            delattr(bpy.types.Scene, name)
