# SPDX-License-Identifier: GPL-3.0-or-later
"""The sidebar: 3D View ▸ Sidebar ▸ Flamenco (farm, job, progress)."""

from __future__ import annotations

import textwrap
from typing import Any

import bpy

from . import connection, preferences, settings_props
from .client import summarize_peer_status
from .jobtypes import SettingSpec
from .state import farm


# `placeholder` is recent in UILayout.prop; ask RNA instead of guessing the version.
_HAS_PLACEHOLDER = "placeholder" in bpy.types.UILayout.bl_rna.functions["prop"].parameters


class _FlamencoPanel:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Flamenco"


class FLAMENCO_PEER_PT_farm(_FlamencoPanel, bpy.types.Panel):
    bl_label = "Flamenco Farm"
    bl_idname = "FLAMENCO_PEER_PT_farm"

    def draw(self, context: Any) -> None:
        layout = self.layout
        prefs = preferences.get(context)
        col = layout.column(align=True)
        if connection.manager_mode(prefs):
            draw_manager_status(col)
        else:
            draw_peer_status(col, prefs)
        if farm.error:
            box = layout.box()
            for i, line in enumerate(_wrap(farm.error)):
                box.label(text=line, icon="ERROR" if i == 0 else "BLANK1")
        layout.operator("flamenco_peer.refresh", icon="FILE_REFRESH")


def draw_manager_status(col: Any) -> None:
    version = farm.version
    title = f"Manager {version.get('name', '')} {version.get('version', '')}".strip()
    col.label(text=title if version else f"Manager {farm.base_url}", icon="WORLD")
    if farm.manager_status:
        col.label(text=f"Status: {farm.manager_status}")


def draw_peer_status(col: Any, prefs: Any) -> None:
    if farm.status:
        summary = summarize_peer_status(farm.status)
        col.label(text=f"This peer: {summary.this_peer} ({summary.this_role})", icon="LINKED")
        col.label(text=f"Peers found: {summary.peers_alive}")
        col.label(text=f"Coordinator: {summary.coordinator or 'none right now'}")
        col.label(text=f"Workers: {summary.workers_idle} idle, {summary.workers_busy} busy")
        if summary.note:
            col.label(text=summary.note, icon="INFO")
    else:
        col.label(text="No Flamenco Peer found on this computer", icon="UNLINKED")
        row = col.row()
        row.operator("flamenco_peer.start_peer", icon="PLAY")
    if farm.peer_note:
        col.label(text=farm.peer_note)
    if isinstance(prefs, bpy.types.AddonPreferences):
        col.separator()
        col.prop(prefs, "use_as_worker")
        col.prop(prefs, "keep_peer_running")


class FLAMENCO_PEER_PT_job(_FlamencoPanel, bpy.types.Panel):
    bl_label = "Submit Job"
    bl_idname = "FLAMENCO_PEER_PT_job"
    bl_parent_id = "FLAMENCO_PEER_PT_farm"

    def draw(self, context: Any) -> None:
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False
        scene = context.scene
        layout.prop(scene, "flamenco_peer_job_type")
        if not farm.job_types:
            layout.label(text="No job types yet: press Refresh", icon="INFO")
        settings = settings_props.settings_of(context)
        if settings is not None and settings_props.current.specs:
            box = layout.box()
            for spec in settings_props.current.specs:
                if spec.shown:
                    draw_setting(box, settings, spec)
            for warning in settings_props.current.warnings:
                box.label(text=warning, icon="ERROR")
        if _HAS_PLACEHOLDER:  # shows the name the job gets when the field is empty
            layout.prop(scene, "flamenco_peer_job_name", placeholder=settings_props.job_name(context))
        else:
            layout.prop(scene, "flamenco_peer_job_name")
        layout.prop(scene, "flamenco_peer_job_priority")
        layout.prop(scene, "flamenco_peer_submit_paused")
        layout.operator("flamenco_peer.submit_job", icon="RENDER_ANIMATION")


def draw_setting(layout: Any, settings: Any, spec: SettingSpec) -> None:
    """One setting; with a link toggle the computed value's description replaces the field while linked."""
    row = layout.row(align=True)
    if spec.link_button and getattr(settings, spec.autoeval_prop):
        split = row.split(factor=0.4, align=True)
        split.label(text=spec.label)
        split.label(text=spec.eval_description or spec.expr)
        row.prop(settings, spec.autoeval_prop, text="", icon="LINKED")
        return
    row.prop(settings, spec.prop_name)
    if spec.expr and spec.editable:
        op = row.operator("flamenco_peer.eval_setting", text="", icon="SCRIPTPLUGINS")
        op.setting_key = spec.key
    if spec.link_button:
        row.prop(settings, spec.autoeval_prop, text="", icon="UNLINKED")


class FLAMENCO_PEER_PT_progress(_FlamencoPanel, bpy.types.Panel):
    bl_label = "Last Job"
    bl_idname = "FLAMENCO_PEER_PT_progress"
    bl_parent_id = "FLAMENCO_PEER_PT_farm"

    @classmethod
    def poll(cls, context: Any) -> bool:
        return farm.job is not None

    def draw(self, context: Any) -> None:
        job = farm.job
        if job is None:
            return
        layout = self.layout
        layout.label(text=job.name, icon="RENDER_RESULT")
        text = f"{job.status} ({job.steps_completed}/{job.steps_total} steps)" if job.steps_total else job.status
        if hasattr(layout, "progress"):
            layout.progress(factor=job.fraction, type="BAR", text=text)
        else:
            layout.label(text=text)
        if job.activity:
            layout.label(text=job.activity)
        if job.error:
            layout.label(text=job.error, icon="ERROR")
        layout.operator("flamenco_peer.open_dashboard", icon="URL")


def _wrap(text: str, width: int = 60) -> list[str]:
    """Labels do not wrap: cut long messages into lines."""
    return textwrap.wrap(text, width) or [""]


classes = (FLAMENCO_PEER_PT_farm, FLAMENCO_PEER_PT_job, FLAMENCO_PEER_PT_progress)
