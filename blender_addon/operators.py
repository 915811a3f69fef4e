# SPDX-License-Identifier: GPL-3.0-or-later
"""Operators: refresh, evaluate a setting, submit, open the dashboard, start/stop the local peer.

Every failure is reported through Blender's reports with its cause and fix;
nothing raises into Blender.
"""

import getpass
import os
import platform
from typing import Any

import bpy
from bpy.props import StringProperty

from . import background, connection, preferences, props, settings_props
from .client import FarmError
from .eval import SettingEvalError
from .state import JobProgress, farm


# Annotations name these, so linters do not read the strings as type hints.
_SETTING_KEY = StringProperty(name="Setting")
_JOB_NAME = StringProperty(
    name="Job Name", description="Name of the job; empty = the Job Name field or the file's name", default="")


def _report_error(op: bpy.types.Operator, message: str) -> set[str]:
    farm.error = message
    op.report({"ERROR"}, message)
    return {"CANCELLED"}


def refresh_job_types(context: Any) -> str:
    """Ask the farm for its version and job types; raises FarmError. Returns a summary."""
    client = connection.client(preferences.get(context))
    version = client.version()
    job_types = client.job_types()
    farm.version = version
    farm.job_types = job_types
    farm.job_types_url = client.base_url
    farm.error = ""
    farm.save_cache()
    selected = context.scene.flamenco_peer_job_type_name
    settings_props.current.job_type = None  # regenerate: the job type may have changed
    props.select_job_type(context, selected if farm.job_type(selected) else "")
    summary = f"{client.what} {version.get('name', '')} {version.get('version', '')}: {len(job_types)} job types"
    if selected and farm.job_type(selected) is None:
        context.scene.flamenco_peer_job_type_name = ""
        summary += f"; job type {selected!r} is no longer available, choose another one"
    return summary


class FLAMENCO_PEER_OT_refresh(bpy.types.Operator):
    """Fetch the farm's version, status and job types"""

    bl_idname = "flamenco_peer.refresh"
    bl_label = "Refresh from Farm"

    def execute(self, context: Any) -> set[str]:
        try:
            summary = refresh_job_types(context)
        except FarmError as exc:
            return _report_error(self, str(exc))
        background.refresh_now(context)
        self.report({"INFO"}, summary)
        return {"FINISHED"}


class FLAMENCO_PEER_OT_eval_setting(bpy.types.Operator):
    """Set the value to the result of its expression"""

    bl_idname = "flamenco_peer.eval_setting"
    bl_label = "Evaluate Setting"
    bl_options = {"REGISTER", "UNDO", "INTERNAL"}

    setting_key: _SETTING_KEY

    @classmethod
    def description(cls, context: Any, properties: Any) -> str:
        spec = settings_props.spec_for(properties.setting_key)
        if spec is None:
            return "Set the value to the result of its expression"
        return f"Set value to: {spec.eval_description or spec.expr}"

    def execute(self, context: Any) -> set[str]:
        spec = settings_props.spec_for(self.setting_key)
        settings = settings_props.settings_of(context)
        if spec is None or settings is None or not spec.expr:
            return _report_error(self, f"The selected job type has no computed setting {self.setting_key!r}")
        try:
            settings_props.set_value(settings, spec, settings_props.evaluate(context, settings, spec))
        except SettingEvalError as exc:
            return _report_error(self, str(exc))
        return {"FINISHED"}


def build_job(context: Any, name: str) -> dict[str, Any]:
    """The Flamenco ``SubmittedJob`` for the current scene; raises SettingEvalError."""
    scene = context.scene
    job_type = settings_props.current.job_type or {}
    return {
        "name": name,
        "type": job_type.get("name", ""),
        "type_etag": job_type.get("etag", ""),
        "priority": int(scene.flamenco_peer_job_priority),
        "submitter_platform": platform.system().lower(),
        "initial_status": "paused" if scene.flamenco_peer_submit_paused else "queued",
        "settings": settings_props.collect(context, blendfile=os.path.abspath(bpy.data.filepath)),
        "metadata": {"user.name": _user_name()},
    }


def _user_name() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return ""


class FLAMENCO_PEER_OT_submit_job(bpy.types.Operator):
    """Save the file and submit it to the farm as a job"""

    bl_idname = "flamenco_peer.submit_job"
    bl_label = "Submit to Flamenco"

    job_name: _JOB_NAME

    @classmethod
    def poll(cls, context: Any) -> bool:
        if settings_props.current.job_type is None:
            cls.poll_message_set("Select a job type first (press Refresh if the list is empty)")
            return False
        return True

    def execute(self, context: Any) -> set[str]:
        prefs = preferences.get(context)
        try:
            client = connection.client(prefs)
            client.version()
        except FarmError as exc:
            return _report_error(self, str(exc))
        if not bpy.data.filepath:
            return _report_error(self, "Please save your .blend file before submitting to Flamenco")
        if bpy.data.is_dirty:
            try:
                bpy.ops.wm.save_mainfile()
            except RuntimeError as exc:
                return _report_error(self, f"Could not save {bpy.data.filepath} before submitting: {exc}")
        if self.job_name.strip():  # scripted submission: the name is also `jobname` in expressions
            context.scene.flamenco_peer_job_name = self.job_name.strip()
        name = settings_props.job_name(context)
        try:
            job = build_job(context, name)
        except SettingEvalError as exc:
            return _report_error(self, str(exc))
        try:
            client.check_job(job)
            # A local peer packs the .blend and what it uses while it answers (docs/files.md);
            # a Manager reads the file where it is (shared storage).
            submitted = client.submit_job(job)
        except FarmError as exc:
            return _report_error(self, str(exc))
        farm.error = ""
        farm.job = JobProgress(job_id=str(submitted["id"]), name=name, base_url=client.base_url)
        farm.job.update(submitted)
        self.report({"INFO"}, f"Job {name!r} submitted to {client.base_url} (id {submitted['id']})")
        return {"FINISHED"}


class FLAMENCO_PEER_OT_open_dashboard(bpy.types.Operator):
    """Open the farm's web dashboard for the last submitted job"""

    bl_idname = "flamenco_peer.open_dashboard"
    bl_label = "Open Dashboard"

    def execute(self, context: Any) -> set[str]:
        url = dashboard_url()
        if not url:
            return _report_error(self, "No farm to show: press Refresh first")
        bpy.ops.wm.url_open(url=url)
        return {"FINISHED"}


def dashboard_url() -> str:
    if farm.job is not None:
        return f"{farm.job.base_url}/app/jobs/{farm.job.job_id}"
    return f"{farm.base_url}/app/" if farm.base_url else ""


class FLAMENCO_PEER_OT_start_peer(bpy.types.Operator):
    """Start a Flamenco Peer on this computer (or use the one already running)"""

    bl_idname = "flamenco_peer.start_peer"
    bl_label = "Start Peer"

    def execute(self, context: Any) -> set[str]:
        prefs = preferences.get(context)
        if connection.manager_mode(prefs):
            return _report_error(self, "A Flamenco Manager URL is set; clear it to use a peer")
        try:
            note = connection.ensure_local_peer(prefs, worker=bool(prefs.use_as_worker))
        except FarmError as exc:
            return _report_error(self, str(exc))
        self.report({"INFO"}, note)
        return {"FINISHED"}


class FLAMENCO_PEER_OT_stop_peer(bpy.types.Operator):
    """Stop the Flamenco Peer that Blender started"""

    bl_idname = "flamenco_peer.stop_peer"
    bl_label = "Stop Peer"

    def execute(self, context: Any) -> set[str]:
        if not connection.stop_local_peer():
            return _report_error(self, "Blender did not start a peer; a peer started elsewhere is left alone")
        self.report({"INFO"}, "Peer stopped")
        return {"FINISHED"}


classes = (
    FLAMENCO_PEER_OT_refresh,
    FLAMENCO_PEER_OT_eval_setting,
    FLAMENCO_PEER_OT_submit_job,
    FLAMENCO_PEER_OT_open_dashboard,
    FLAMENCO_PEER_OT_start_peer,
    FLAMENCO_PEER_OT_stop_peer,
)
