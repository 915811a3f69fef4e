#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Build the Blender extension zip: the add-on, the peer, and the peer's wheels.

    python scripts/build_addon.py                       # all platforms, Python 3.11 + 3.13 → dist/
    python scripts/build_addon.py --platform linux-x64 --python 3.11
    python scripts/build_addon.py --update-manifest     # after changing a pin in pyproject.toml

Layout of the zip (Blender installs it with Edit ▸ Preferences ▸ Get Extensions ▸
Install from Disk, or ``bpy.ops.extensions.package_install_files``):

    blender_manifest.toml        from the repository, wheels/platforms narrowed to this build
    __init__.py, *.py            the add-on (blender_addon/)
    peer_runtime/peer/           the peer, run as ``python -m peer`` by the add-on
    peer_runtime/job_types/      the built-in job types
    wheels/*.whl                 the peer's dependencies, unmodified PyPI wheels

The wheels come from PyPI through ``pip download`` for each target platform
and Python version (Blender 4.2–5.0 embed Python 3.11, 5.1+ embed 3.13: bpy
5.1+ is published for cp313 only). ``blender_manifest.toml`` lists every
wheel; the build fails when what pip resolves differs from that list, so the
manifest is always the truth about what ships. Standard library only.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MANIFEST = REPO / "blender_manifest.toml"
PYPROJECT = REPO / "pyproject.toml"
ADDON_SRC = REPO / "blender_addon"


@dataclass(frozen=True)
class Target:
    blender: str                 # Blender's platform name in the manifest
    pip_platforms: tuple[str, ...]
    system_tag: str              # sysconfig.get_platform() there, as Blender compares it


TARGETS = {
    t.blender: t for t in (
        # Blender 4.2+ needs glibc 2.28; pip does not expand manylinux_2_28 to older tags by itself.
        Target("linux-x64", ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                             "manylinux2014_x86_64"), "linux_x86_64"),
        Target("windows-x64", ("win_amd64",), "win_amd64"),
        Target("macos-arm64", ("macosx_11_0_arm64",), "macosx_11_0_arm64"),
        Target("macos-x64", ("macosx_11_0_x86_64",), "macosx_11_0_x86_64"),
    )
}
PYTHONS = ("3.11", "3.13")

# zeroconf stopped publishing macOS x86_64 wheels after 0.148.0 (for cp311 and cp313);
# that platform gets the last one. Its API is the one the peer uses.
PIN_OVERRIDES: dict[str, dict[str, str]] = {"macos-x64": {"zeroconf": "zeroconf==0.148.0"}}


class BuildError(Exception):
    pass


def requirements(target: str) -> list[str]:
    pins = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["dependencies"]
    overrides = PIN_OVERRIDES.get(target, {})
    out = []
    for pin in pins:
        name = re.split(r"[=<>!~ \[;]", pin, maxsplit=1)[0].lower()
        out.append(overrides.get(name, pin))
    return out


def download(target: Target, python: str, dest: Path) -> list[str]:
    """The wheels pip resolves for one platform and Python version (files land in ``dest``)."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--progress-bar", "off",
           "--only-binary=:all:", "--implementation", "cp", "--python-version", python, "--dest", str(dest)]
    for platform_tag in target.pip_platforms:
        cmd += ["--platform", platform_tag]
    cmd += requirements(target.blender)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"pip could not get the wheels for {target.blender} / Python {python}:\n"
                         f"{proc.stderr.strip() or proc.stdout.strip()}")
    # The folder may hold wheels of earlier pins: take what pip reports for this run.
    names = set(re.findall(r"(?:Saved|File was already downloaded) (?:.*[/\\])?([^/\\\s]+\.whl)", proc.stdout))
    if not names:
        raise BuildError(f"pip downloaded nothing for {target.blender} / Python {python}:\n{proc.stdout}")
    return sorted(names)


# --- the same wheel matching Blender does (bl_pkg: _extensions_wheel_filter_for_this_system) ---


def _wheel_tags(filename: str) -> tuple[str, str, str, str]:
    parts = filename[:-4].split("-")
    if not filename.endswith(".whl") or not 5 <= len(parts) <= 6:
        raise BuildError(f"{filename} is not a wheel file name")
    return parts[0].lower().replace("_", "-"), parts[-3], parts[-2], parts[-1]


def blender_accepts(filename: str, system_tag: str, python: str) -> bool:
    _, python_tags, abi_tags, platform_tags = _wheel_tags(filename)
    if not any(_platform_ok(tag, system_tag) for tag in platform_tags.split(".")):
        return False
    major, minor = (int(x) for x in python.split("."))
    for tag in python_tags.split("."):
        digits = tag[2:] if tag[:2] in ("py", "cp") else ""
        if not digits.isdigit():
            continue
        if len(digits) == 1:
            if int(digits) == major:
                return True
            continue
        version = (int(digits[0]), int(digits[1:]))
        if version == (major, minor):
            return True
        if "abi3" in abi_tags.split(".") and version[0] == major and version <= (major, minor):
            return True
    return False


def _platform_ok(tag: str, system_tag: str) -> bool:
    if tag in ("any", system_tag):
        return True
    arch = system_tag.rpartition("_")[2] if system_tag.startswith("macosx_") else system_tag.partition("_")[2]
    if system_tag.startswith("macosx_"):
        return tag.startswith("macosx_") and (tag.endswith("_" + arch) or tag.endswith("_universal2"))
    if system_tag.startswith("linux_"):
        return tag.startswith("manylinux") and tag.endswith("_" + arch)
    return False


def check_one_per_distribution(wheels: list[str], target: Target, python: str) -> None:
    """Blender installs every matching wheel: two of one package on one platform would collide."""
    seen: dict[str, str] = {}
    for name in wheels:
        if not blender_accepts(name, target.system_tag, python):
            continue
        dist = _wheel_tags(name)[0]
        if dist in seen:
            raise BuildError(f"{target.blender} / Python {python} would get two wheels of {dist}: {seen[dist]} and {name}")
        seen[dist] = name


# --- manifest ---------------------------------------------------------------------


def manifest_wheels(text: str) -> list[str]:
    return [w.removeprefix("./wheels/") for w in tomllib.loads(text).get("wheels", [])]


def _toml_list(name: str, values: list[str]) -> str:
    if not values:
        return f"{name} = []"
    return f"{name} = [\n" + "".join(f'  "{v}",\n' for v in values) + "]"


def replace_list(text: str, name: str, values: list[str]) -> str:
    pattern = re.compile(rf"^{name} = \[.*?\]", re.S | re.M)
    if not pattern.search(text):
        raise BuildError(f"{MANIFEST.name} has no `{name} = [...]` line to fill in")
    return pattern.sub(lambda _m: _toml_list(name, values), text, count=1)


def manifest_for_zip(text: str, platforms: list[str], wheels: list[str]) -> str:
    text = replace_list(text, "platforms", platforms)
    text = replace_list(text, "wheels", [f"./wheels/{w}" for w in wheels])
    # [build] only steers Blender's own builder; an installed manifest does not need it.
    return re.sub(r"^\[build\].*?(?=^\[|\Z)", "", text, flags=re.S | re.M).rstrip() + "\n"


# --- zip ---------------------------------------------------------------------------


def _source_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo"))


def write_zip(out: Path, manifest_text: str, wheel_dir: Path, wheels: list[str]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".partial")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("blender_manifest.toml", manifest_text)
        for path in _source_files(ADDON_SRC):
            zf.write(path, path.relative_to(ADDON_SRC).as_posix())
        zf.write(REPO / "LICENSE", "LICENSE")
        for path in _source_files(REPO / "peer"):
            zf.write(path, "peer_runtime/" + path.relative_to(REPO).as_posix())
        for path in sorted((REPO / "job_types").glob("*.js")):
            zf.write(path, "peer_runtime/" + path.relative_to(REPO).as_posix())
        for name in wheels:  # already compressed
            zf.write(wheel_dir / name, f"wheels/{name}", compress_type=zipfile.ZIP_STORED)
    tmp.replace(out)


def blender_ext_cli() -> Path | None:
    """Blender's own extension tool, shipped inside the bpy wheel (a plain Python script)."""
    import importlib.util

    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
        if found:
            return found[-1]
    return None


def validate(zip_path: Path) -> str:
    cli = blender_ext_cli()
    if cli is None:
        return "not validated (Blender's blender_ext.py comes with bpy: pip install bpy==5.0.1)"
    proc = subprocess.run([sys.executable, str(cli), "validate", str(zip_path)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"Blender's validator rejects {zip_path}:\n{proc.stdout}{proc.stderr}")
    return proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "valid"


def build(platforms: list[str], pythons: list[str], output: Path | None, cache: Path,
          update_manifest: bool) -> Path:
    manifest_text = MANIFEST.read_text(encoding="utf-8")
    resolved: dict[tuple[str, str], list[str]] = {}
    for name in platforms:
        target = TARGETS[name]
        for python in pythons:
            print(f"wheels for {name} / Python {python} ...", flush=True)
            resolved[(name, python)] = download(target, python, cache / f"{name}-py{python}")
    wheels = sorted({w for names in resolved.values() for w in names})
    full_build = set(platforms) == set(TARGETS) and set(pythons) == set(PYTHONS)
    if update_manifest:
        if not full_build:
            raise BuildError("--update-manifest needs the full build (every platform and Python version)")
        manifest_text = replace_list(manifest_text, "platforms", list(TARGETS))
        manifest_text = replace_list(manifest_text, "wheels", [f"./wheels/{w}" for w in wheels])
        MANIFEST.write_text(manifest_text, encoding="utf-8")
        print(f"updated {MANIFEST.name}: {len(wheels)} wheels")
    declared = manifest_wheels(manifest_text)
    for (name, python), names in resolved.items():
        target = TARGETS[name]
        expected = sorted(w for w in declared if blender_accepts(w, target.system_tag, python))
        if expected != names:
            missing, extra = sorted(set(names) - set(expected)), sorted(set(expected) - set(names))
            raise BuildError(
                f"{MANIFEST.name} does not list the wheels pip resolves for {name} / Python {python}.\n"
                f"  not listed: {missing}\n  listed but not resolved: {extra}\n"
                "Run `python scripts/build_addon.py --update-manifest` and commit the manifest."
            )
        check_one_per_distribution(declared, target, python)
    flat = cache / "all"
    flat.mkdir(parents=True, exist_ok=True)
    for (name, python), names in resolved.items():
        for wheel in names:
            if not (flat / wheel).exists():
                shutil.copy2(cache / f"{name}-py{python}" / wheel, flat / wheel)
    version = tomllib.loads(manifest_text)["version"]
    if output is None:
        suffix = "" if full_build else "-" + "-".join(
            [*(p.replace("-", "_") for p in platforms), *("py" + v.replace(".", "") for v in pythons)])
        output = REPO / "dist" / f"flamenco_peer-{version}{suffix}.zip"
    write_zip(output, manifest_for_zip(manifest_text, platforms, wheels), flat, wheels)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--platform", action="append", choices=sorted(TARGETS),
                        help="build for this platform only (repeatable; default: all)")
    parser.add_argument("--python", action="append", choices=PYTHONS,
                        help="Blender's Python version (repeatable; default: all)")
    parser.add_argument("--output", type=Path, help="zip to write (default: dist/flamenco_peer-VERSION[...].zip)")
    parser.add_argument("--cache", type=Path, default=REPO / "build" / "addon-wheels",
                        help="where downloaded wheels are kept between builds (default: %(default)s)")
    parser.add_argument("--update-manifest", action="store_true",
                        help="write the resolved wheel list into blender_manifest.toml")
    parser.add_argument("--no-validate", action="store_true", help="skip Blender's manifest validator")
    args = parser.parse_args(argv)
    try:
        out = build(args.platform or list(TARGETS), args.python or list(PYTHONS), args.output,
                    args.cache, args.update_manifest)
        verdict = "not validated" if args.no_validate else validate(out)
    except BuildError as exc:
        print(f"build_addon: {exc}", file=sys.stderr)
        return 1
    size = out.stat().st_size / 1e6
    print(f"built {out} ({size:.1f} MB); {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
