"""Runs INSIDE Blender (bpy 5.0.1 from PyPI): ``python bpy_scenarios.py SCENARIO JSON-ARGS``.

Each scenario drives the add-on through Blender's own machinery
(``addon_utils``, ``bpy.ops``, RNA properties) and prints what it saw as one
``SCENARIO-RESULT:`` JSON line; the tests in this folder assert on it. An
exception fails the run (non-zero exit, traceback in the output).
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import bpy  # noqa: E402  (bpy first: it puts Blender's modules on sys.path)

import addon_utils  # noqa: E402

RESULT_PREFIX = "SCENARIO-RESULT: "
ADDON = "blender_addon"
SCENARIOS: dict[str, Callable[[dict[str, Any]], Any]] = {}


def scenario(fn: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], Any]:
    SCENARIOS[fn.__name__] = fn
    return fn


def enable(prefs: dict[str, Any] | None = None, module: str = ADDON) -> Any:
    mod = addon_utils.enable(module, default_set=True, handle_error=_raise)
    assert mod is not None, f"addon_utils.enable({module!r}) failed"
    addon_prefs = bpy.context.preferences.addons[module].preferences
    for key, value in (prefs or {}).items():
        setattr(addon_prefs, key, value)
    return mod


def _raise(exc: BaseException) -> None:
    raise exc


def addon_module(name: str) -> Any:
    return sys.modules[f"{ADDON}.{name}"]


def flamenco_types() -> list[str]:
    return sorted(name for name in dir(bpy.types) if name.startswith("FLAMENCO_PEER"))


class FakeLayout:
    """Stands in for UILayout: bpy never calls ``draw()`` without a window, so the tests call it."""

    def __init__(self, log: list[Any]) -> None:
        self.log = log
        self.use_property_split = False
        self.use_property_decorate = False

    def row(self, **_kw: Any) -> "FakeLayout":
        return self

    column = box = split = row

    def separator(self, **_kw: Any) -> None:
        pass

    def label(self, text: str = "", **_kw: Any) -> None:
        self.log.append(["label", text])

    def prop(self, data: Any, name: str, **_kw: Any) -> None:
        getattr(data, name)  # a missing property fails here, as it would in the UI
        self.log.append(["prop", name])

    def operator(self, idname: str, **_kw: Any) -> SimpleNamespace:
        module, _, op = idname.partition(".")
        assert getattr(getattr(bpy.ops, module), op).idname(), idname
        self.log.append(["operator", idname])
        return SimpleNamespace()

    def progress(self, factor: float = 0.0, type: str = "BAR", text: str = "") -> None:
        self.log.append(["progress", factor, text])


def draw(panel_name: str) -> list[Any]:
    log: list[Any] = []
    panel = getattr(bpy.types, panel_name)
    if hasattr(panel, "poll") and not panel.poll(bpy.context):
        return log
    panel.draw(SimpleNamespace(layout=FakeLayout(log)), bpy.context)
    return log


def labels(log: list[Any]) -> list[str]:
    return [entry[1] for entry in log if entry[0] == "label"]


def select_job_type(job_types: list[dict[str, Any]], name: str) -> None:
    addon_module("state").farm.job_types = job_types
    bpy.context.scene.flamenco_peer_job_type = name  # through the dropdown's RNA setter


def op_error(call: Callable[[], Any]) -> str:
    """Run an operator that must fail; its ERROR report becomes the RuntimeError text."""
    try:
        call()
    except RuntimeError as exc:
        return str(exc)
    raise AssertionError("the operator did not report an error")


# --- scenarios -----------------------------------------------------------------


@scenario
def register_cycle(args: dict[str, Any]) -> dict[str, Any]:
    enable()
    first = {
        "types": flamenco_types(),
        "ops": sorted(op for op in dir(bpy.ops.flamenco_peer) if not op.startswith("_")),
        "scene_props": sorted(p for p in dir(bpy.types.Scene) if p.startswith("flamenco_peer")),
        "submit_poll": bpy.ops.flamenco_peer.submit_job.poll(),
        "prefs": {k: getattr(bpy.context.preferences.addons[ADDON].preferences, k)
                  for k in ("manager_url", "use_as_worker", "keep_peer_running", "peer_port")},
        "farm_panel": draw("FLAMENCO_PEER_PT_farm"),
        "job_panel": draw("FLAMENCO_PEER_PT_job"),
        "progress_panel": draw("FLAMENCO_PEER_PT_progress"),
        "refresh_error": op_error(lambda: bpy.ops.flamenco_peer.refresh()),
        "stop_error": op_error(lambda: bpy.ops.flamenco_peer.stop_peer()),
    }
    addon_utils.disable(ADDON, default_set=True)
    after_disable = {
        "types": flamenco_types(),
        "scene_props": sorted(p for p in dir(bpy.types.Scene) if p.startswith("flamenco_peer")),
        "has_ops": hasattr(bpy.types, "FLAMENCO_PEER_OT_submit_job"),
    }
    enable()
    again = flamenco_types()
    addon_utils.disable(ADDON, default_set=True)
    return {"first": first, "after_disable": after_disable, "again": again}


@scenario
def settings_and_eval(args: dict[str, Any]) -> dict[str, Any]:
    enable()
    bpy.ops.wm.open_mainfile(filepath=args["scene"])
    scene = bpy.context.scene
    if args.get("frames"):
        scene.frame_start, scene.frame_end = args["frames"]
    scene.flamenco_peer_job_name = args.get("job_name", "")
    select_job_type(args["job_types"], args["job_type"])
    settings_props = addon_module("settings_props")
    settings = settings_props.settings_of(bpy.context)
    specs = {s.key: s for s in settings_props.current.specs}
    rna = settings.bl_rna.properties
    props = {
        key: {
            "rna_type": rna[spec.prop_name].type, "subtype": rna[spec.prop_name].subtype,
            "read_only": rna[spec.prop_name].is_readonly, "shown": spec.shown, "description": rna[spec.prop_name].description,
            "name": rna[spec.prop_name].name, "enum_items": [i.identifier for i in getattr(rna[spec.prop_name], "enum_items", [])],
            "has_autoeval": spec.autoeval_prop in rna.keys(),
        }
        for key, spec in specs.items()
    }
    filled = {key: _plain(getattr(settings, spec.prop_name)) for key, spec in specs.items()}
    panel_linked = draw("FLAMENCO_PEER_PT_job")
    for key, value in args.get("set", {}).items():
        setattr(settings, specs[key].prop_name, value)
    clamped = {key: _plain(getattr(settings, specs[key].prop_name)) for key in args.get("set", {})}
    read_only_write = ""
    for spec in specs.values():
        if not spec.editable:
            try:
                setattr(settings, spec.prop_name, "typed by hand")
            except AttributeError as exc:
                read_only_write = str(exc)
            break
    collected = settings_props.collect(bpy.context, blendfile=bpy.data.filepath)
    unlinked = {}
    for key in args.get("unlink", []):
        setattr(settings, specs[key].autoeval_prop, False)
        setattr(settings, specs[key].prop_name, "typed by hand")
        unlinked[key] = settings_props.collect(bpy.context, blendfile=bpy.data.filepath)[key]
    eval_button = {}
    for key in args.get("eval_button", []):
        setattr(settings, specs[key].prop_name, "")
        assert bpy.ops.flamenco_peer.eval_setting(setting_key=key) == {"FINISHED"}
        eval_button[key] = getattr(settings, specs[key].prop_name)
    return {
        "props": props, "filled_on_selection": filled, "after_set": clamped, "read_only_write": read_only_write,
        "collected": collected, "unlinked": unlinked, "eval_button": eval_button,
        "job_panel_linked": panel_linked, "job_panel": draw("FLAMENCO_PEER_PT_job"), "blendfile": bpy.data.filepath,
        "names": list(addon_module("eval").NAMES),
    }


@scenario
def eval_errors(args: dict[str, Any]) -> dict[str, Any]:
    enable()
    bpy.ops.wm.open_mainfile(filepath=args["scene"])
    out = {}
    for expr in args["exprs"]:
        job_type = {"name": "bad", "label": "Bad", "etag": "x", "settings": [
            {"key": "value", "type": "string", "eval": expr, "visible": "hidden"}]}
        select_job_type([job_type], "bad")
        try:
            addon_module("settings_props").collect(bpy.context, blendfile=bpy.data.filepath)
            out[expr] = ""
        except addon_module("eval").SettingEvalError as exc:
            out[expr] = str(exc)
        select_job_type([], "-")
    return out


def _plain(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


@scenario
def submit_to_peer(args: dict[str, Any]) -> dict[str, Any]:
    enable({"peer_data_dir": args["data_dir"]})
    bpy.ops.wm.open_mainfile(filepath=args["scene"])
    mtime = os.stat(args["scene"]).st_mtime_ns
    assert bpy.ops.flamenco_peer.refresh() == {"FINISHED"}
    state = addon_module("state")
    job_type_names = [t["name"] for t in state.farm.job_types]
    scene = bpy.context.scene
    scene.flamenco_peer_job_type = "simple-blender-render"
    settings = addon_module("settings_props").settings_of(bpy.context)
    settings.render_output_root = args["output_root"]
    settings.chunk_size = 2
    scene.flamenco_peer_job_name = "from-blender"
    farm_panel = draw("FLAMENCO_PEER_PT_farm")
    assert bpy.ops.flamenco_peer.submit_job() == {"FINISHED"}
    job = state.farm.job
    seen = []
    background = addon_module("background")
    deadline = time.monotonic() + args.get("timeout", 90)
    while not job.finished and time.monotonic() < deadline:
        background.refresh_now()
        if not seen or seen[-1][0] != job.status or seen[-1][1] != job.steps_completed:
            seen.append([job.status, job.steps_completed, job.steps_total, round(job.fraction, 3)])
        time.sleep(0.2)
    return {
        "job_types": job_type_names, "job_id": job.job_id, "status": job.status, "progress": seen,
        "farm_panel": farm_panel, "progress_panel": draw("FLAMENCO_PEER_PT_progress"),
        "dashboard": addon_module("operators").dashboard_url(), "file_untouched": os.stat(args["scene"]).st_mtime_ns == mtime,
        "is_dirty": bpy.data.is_dirty,
    }


@scenario
def submit_paused(args: dict[str, Any]) -> dict[str, Any]:
    """Submit from the sidebar as paused, as an artist would, and report what the add-on saw.

    Paused, so the test can move the project away before any worker looks at
    it. Settings in ``args["settings"]`` are typed into the panel's fields; a
    setting with a link toggle is unlinked first (the artist overriding the
    scene's value), so the scene itself is never edited.
    """
    enable({"peer_data_dir": args["data_dir"]})
    bpy.ops.wm.open_mainfile(filepath=args["scene"])
    mtime = os.stat(args["scene"]).st_mtime_ns
    assert bpy.ops.flamenco_peer.refresh() == {"FINISHED"}
    scene = bpy.context.scene
    scene.flamenco_peer_job_type = args["job_type"]
    settings_props = addon_module("settings_props")
    settings = settings_props.settings_of(bpy.context)
    specs = {s.key: s for s in settings_props.current.specs}
    for key, value in args["settings"].items():
        if specs[key].link_button:
            setattr(settings, specs[key].autoeval_prop, False)
        setattr(settings, specs[key].prop_name, value)
    scene.flamenco_peer_job_name = args["job_name"]
    scene.flamenco_peer_submit_paused = True
    assert bpy.ops.flamenco_peer.submit_job() == {"FINISHED"}
    state = addon_module("state")
    addon_module("background").refresh_now()
    return {
        "job_id": state.farm.job.job_id, "status": state.farm.job.status, "error": state.farm.error,
        "submit_timeout": addon_module("connection").client().submit_timeout,
        "file_untouched": os.stat(args["scene"]).st_mtime_ns == mtime, "is_dirty": bpy.data.is_dirty,
        "libraries": [lib.filepath for lib in bpy.data.libraries],
        "images": sorted(img.filepath for img in bpy.data.images if img.source == "FILE"),
    }


@scenario
def manager_mode(args: dict[str, Any]) -> dict[str, Any]:
    enable({"manager_url": args["manager_url"]})
    if args["scene"]:
        bpy.ops.wm.open_mainfile(filepath=args["scene"])
    result: dict[str, Any] = {}
    if args.get("expect_refresh_error"):
        result["refresh_error"] = op_error(lambda: bpy.ops.flamenco_peer.refresh())
        return result
    assert bpy.ops.flamenco_peer.refresh() == {"FINISHED"}
    scene = bpy.context.scene
    scene.flamenco_peer_job_type = "simple-blender-render"
    settings = addon_module("settings_props").settings_of(bpy.context)
    settings.render_output_root = "/render/out"
    scene.flamenco_peer_job_priority = 70
    assert bpy.ops.flamenco_peer.submit_job(job_name="manager-job") == {"FINISHED"}
    state = addon_module("state")
    addon_module("background").refresh_now()
    result["job"] = {"id": state.farm.job.job_id, "status": state.farm.job.status,
                     "steps_total": state.farm.job.steps_total}
    result["farm_panel"] = draw("FLAMENCO_PEER_PT_farm")
    result["dashboard"] = addon_module("operators").dashboard_url()
    result["stale_error"] = op_error(lambda: bpy.ops.flamenco_peer.submit_job(job_name="fail-412"))
    result["start_peer_error"] = op_error(lambda: bpy.ops.flamenco_peer.start_peer())
    return result


def _status(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/peer/v1/cluster/status", timeout=5) as resp:
        return json.loads(resp.read())


@scenario
def worker_opt_in(args: dict[str, Any]) -> dict[str, Any]:
    enable({"peer_data_dir": args["data_dir"], "share_on_network": False, "peer_port": 0,
            "keep_peer_running": args.get("keep_running", False)})
    prefs = bpy.context.preferences.addons[ADDON].preferences
    local_peer = addon_module("local_peer")
    state = addon_module("state")
    prefs.use_as_worker = True  # the checkbox: its update callback starts (or reuses) the peer
    owned = local_peer.owned.peer
    result: dict[str, Any] = {"note": state.farm.peer_note, "error": state.farm.error, "owned": owned is not None}
    if owned is not None:
        url = owned.wait_ready(30)
        result.update(pid=owned.process.pid, url=url, status_self=_status(url)["self"])
        addon_module("background").refresh_now()
        result["farm_panel"] = draw("FLAMENCO_PEER_PT_farm")
    if args.get("toggle_off"):
        prefs.use_as_worker = False
        result["after_off"] = {
            "owned": local_peer.owned.peer is not None,
            "exit_code": owned.process.poll() if owned is not None else None,
            "note": state.farm.peer_note,
        }
    return result


@scenario
def extension_install(args: dict[str, Any]) -> dict[str, Any]:
    status = bpy.ops.extensions.package_install_files(filepath=args["zip"], repo="user_default",
                                                      enable_on_install=True)
    module = "bl_ext.user_default.flamenco_peer"
    result: dict[str, Any] = {
        "install": sorted(status), "enabled": module in bpy.context.preferences.addons,
        "types": flamenco_types(), "ops": hasattr(bpy.ops.flamenco_peer, "submit_job"),
    }
    package = sys.modules[module]
    local_peer = sys.modules[f"{module}.local_peer"]
    addon_dir = Path(package.__file__).parent
    result["runtime_root"] = str(local_peer.runtime_root(addon_dir))
    dirs, missing = local_peer.module_dirs()
    result["module_dirs"], result["missing"] = dirs, missing
    peer = local_peer.start(local_peer.StartOptions(
        data_dir=Path(args["data_dir"]), python=args["python"], worker=True, port=0), addon_dir)
    try:
        url = peer.wait_ready(30)
        result["peer_self"] = _status(url)["self"]
    finally:
        peer.stop()
    result["peer_log"] = peer.log_tail(20)
    addon_utils.disable(module, default_set=True)
    result["after_disable"] = flamenco_types()
    return result


def main() -> None:
    name, args = sys.argv[1], json.loads(sys.argv[2])
    result = SCENARIOS[name](args)
    print(RESULT_PREFIX + json.dumps(result, default=str), flush=True)


if __name__ == "__main__":
    main()
