# Runs INSIDE Blender: `blender -b FILE.blend --python blender_side.py -- IN.json OUT.json`.
#
# Evaluates job-type settings' `eval` expressions against the open .blend file
# with the same names Flamenco's add-on provides (jobname, settings, bpy, C,
# Path, abspath, last_n_dir_parts), so a job submitted from the command line
# gets the same settings as one submitted from Blender's sidebar.
# Standard library and bpy only: this file is executed by Blender's Python.

import json
import os.path
import sys
import traceback
from pathlib import Path
from types import SimpleNamespace

import bpy


def abspath(path):
    resolved = bpy.path.abspath(str(path))
    # Normalise like the add-on does (resolve "..", do not follow symlinks).
    return Path(os.path.normpath(os.path.abspath(resolved)))


def last_n_dir_parts(n, filepath=None):
    if filepath is None:
        filepath = bpy.data.filepath
    else:
        filepath = bpy.path.abspath(str(filepath))
    parts = Path(filepath).parent.parts
    anchor = Path(filepath).anchor
    if parts and parts[0] == anchor:
        parts = parts[1:]
    if n <= 0:
        return Path()
    return Path(*parts[-n:]) if parts[-n:] else Path()


def main(argv):
    in_path, out_path = argv[argv.index("--") + 1:][:2]
    with open(in_path, encoding="utf-8") as f:
        request = json.load(f)
    values = dict(request["values"])
    keep = set(request.get("user_set", []))
    settings = SimpleNamespace(**values)
    errors = []
    for setting in request["settings"]:
        key = setting["key"]
        expr = setting.get("eval")
        if not expr or key in keep:
            continue
        names = {
            "bpy": bpy, "C": bpy.context, "jobname": request["jobname"], "Path": Path,
            "abspath": abspath, "last_n_dir_parts": last_n_dir_parts, "settings": settings,
        }
        try:
            value = eval(expr, {}, names)
        except Exception as exc:
            errors.append(f"Evaluation error of setting {key!r}: {type(exc).__name__}: {exc} (expression: {expr})")
            continue
        values[key] = value
        setattr(settings, key, value)
    result = {"values": values, "errors": errors, "blendfile": bpy.data.filepath}
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(result, f, default=str)


try:
    main(sys.argv)
except Exception:
    traceback.print_exc()
    sys.exit(3)
