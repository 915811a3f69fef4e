"""Fill in a job's settings from its job type, as Flamenco's add-on does.

``--set key=value`` strings are converted to the setting's declared type;
settings not given get their ``default`` (or Blender's zero value, since the
add-on always sends every key); settings with an ``eval`` expression are
computed by running Blender on the .blend file (``blender_side.py``).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

BLENDER_SIDE = Path(__file__).with_name("blender_side.py")

_ZERO = {"string": "", "int32": 0, "float": 0.0, "bool": False}


class SettingsError(Exception):
    pass


def parse_assignments(pairs: list[str], job_type: dict[str, Any]) -> dict[str, Any]:
    """Turn ``key=value`` strings into typed settings."""
    declared = {s["key"]: s for s in job_type.get("settings", [])}
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SettingsError(f"--set {pair!r}: write it as key=value, e.g. --set frames=1-10")
        setting = declared.get(key)
        out[key] = convert(key, text, setting["type"] if setting else None)
    return out


def convert(key: str, text: str, kind: str | None) -> Any:
    if kind == "string":
        return text
    if kind == "int32":
        try:
            return int(text)
        except ValueError:
            raise SettingsError(f"setting {key!r} is an integer; {text!r} is not one") from None
    if kind == "float":
        try:
            return float(text)
        except ValueError:
            raise SettingsError(f"setting {key!r} is a number; {text!r} is not one") from None
    if kind == "bool":
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"setting {key!r} is a yes/no value; use true or false, not {text!r}")
    # Undeclared setting: pass JSON through when it parses, else the string.
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def with_defaults(job_type: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for setting in job_type.get("settings", []):
        key = setting["key"]
        if key in given:
            values[key] = given[key]
        elif "default" in setting:
            values[key] = setting["default"]
        else:
            values[key] = _ZERO.get(setting.get("type", "string"), "")
    for key, value in given.items():
        values.setdefault(key, value)
    return values


def needs_blender(job_type: dict[str, Any], given: dict[str, Any]) -> bool:
    return any(s.get("eval") and s["key"] not in given for s in job_type.get("settings", []))


def evaluate_in_blender(
    blender: str, blendfile: Path, job_type: dict[str, Any], jobname: str,
    values: dict[str, Any], user_set: set[str], timeout_s: float = 120.0,
) -> dict[str, Any]:
    """Run Blender on ``blendfile`` to compute every ``eval`` setting the user did not set."""
    with tempfile.TemporaryDirectory(prefix="flamenco-eval-") as tmp:
        in_path, out_path = Path(tmp) / "in.json", Path(tmp) / "out.json"
        in_path.write_text(json.dumps({
            "settings": job_type.get("settings", []), "values": values,
            "user_set": sorted(user_set), "jobname": jobname,
        }))
        cmd = [blender, "-b", "--factory-startup", "-noaudio", str(blendfile),
               "--python-exit-code", "3", "--python", str(BLENDER_SIDE), "--", str(in_path), str(out_path)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except FileNotFoundError:
            raise SettingsError(
                f"Blender not found ({blender!r}); it is needed to compute the job settings from "
                f"{blendfile.name}. Install it (apt install blender) or pass --blender PATH."
            ) from None
        except subprocess.TimeoutExpired:
            raise SettingsError(f"Blender took longer than {timeout_s:.0f} s to open {blendfile}") from None
        if proc.returncode != 0 or not out_path.exists():
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
            raise SettingsError(f"Blender could not evaluate the settings of {blendfile} (exit {proc.returncode}):\n{tail}")
        result = json.loads(out_path.read_text())
    if result["errors"]:
        raise SettingsError("; ".join(result["errors"]))
    return result["values"]
