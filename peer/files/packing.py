"""Packing at submission: a .blend and everything it uses become a manifest of blobs.

Dependencies are found with blender-asset-tracer (BAT 1.23), recursively: linked
libraries, their own images and libraries, image sequences, caches. Every file
is copied into the submitting peer's content store (never linked: the artist
may edit the files while the job runs) and listed in the manifest under its
path relative to the *project root*. A worker checks the manifest out into a
folder with the same layout, so relative paths inside the .blend files
(``//../textures/wood.png``) resolve there exactly as on the artist's computer.

What we transfer, and how it differs from Flamenco's add-on
-----------------------------------------------------------

Flamenco's add-on copies only assets referenced by relative paths and assumes
absolute paths are reachable from every worker. Without shared storage that is
rarely true, so we transfer every dependency except those on shared storage:

- an asset inside the project, referenced by a relative path: kept at its
  project-relative path; its .blend is not changed;
- an asset outside the project, or referenced by an absolute path: stored under
  ``_outside_project/<its absolute path without the root>`` (BAT's layout), and
  the .blend files referring to it are *rewritten copies* whose paths point
  there, relatively. BAT's Packer does the rewriting; we measured it on Blender
  3.4 files (``tests/files/test_packing.py`` renders the result). The artist's
  files are never modified: only the copies in the store are;
- an asset referenced by an absolute path on shared storage (under a two-way
  path variable's folder, compat §6.5): left out, and its path left as is,
  since every worker sees it (on the same platform; Flamenco does not remap
  paths inside .blend files either). A relative reference to shared storage is
  transferred like any other, because the checkout moves the .blend;
- a .blend that is itself on shared storage: nothing is packed at all
  (``PackResult.manifest is None``): Flamenco's "work directly on shared storage".

Referenced files that do not exist are listed in ``PackResult.missing`` (Blender
renders without them, as it would on the artist's computer).

BAT keeps a process-wide cache of open .blend files; packing holds a lock and
empties that cache when done, so two packs never share stale state. Everything
here blocks: call ``pack`` with ``asyncio.to_thread``.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath
from typing import Iterable

from .manifest import BadManifest, Manifest
from .names import UnsafePath, check_relative_path
from .shared_storage import path_is_under
from .store import BlobRef, ContentStore

log = logging.getLogger(__name__)

PROJECT_MARKERS = (".blender_project", ".git", ".svn")
OUTSIDE_PROJECT = "_outside_project"
_PACK_LOCK = threading.Lock()


class PackError(Exception):
    """The .blend could not be packed; ``str()`` says which file and why."""


@dataclass
class PackResult:
    manifest: Manifest | None  # None: the .blend is on shared storage, nothing to transfer
    blend_on_shared_storage: bool = False
    shared_assets: list[Path] = field(default_factory=list)  # left out: on shared storage
    missing: list[Path] = field(default_factory=list)  # referenced but not found
    rewritten: list[str] = field(default_factory=list)  # manifest paths of rewritten .blend copies
    outside_project: list[Path] = field(default_factory=list)  # stored under _outside_project/


def find_project_root(blend: Path) -> Path:
    """The nearest folder above ``blend`` holding a project marker, else the .blend's folder
    (what Flamenco's add-on does with its default preferences)."""
    blend = Path(blend).absolute()
    for folder in blend.parents:
        if any((folder / marker).exists() for marker in PROJECT_MARKERS):
            return folder
    return blend.parent


def outside_project_path(path: Path) -> str:
    """Where an asset outside the project goes in the pack: ``_outside_project/<path without root>``.

    ``C:\\tex\\a.png`` → ``_outside_project/C/tex/a.png``;
    ``\\\\server\\share\\a.png`` → ``_outside_project/server/share/a.png``.
    """
    pure: PurePath = PureWindowsPath(path) if isinstance(path, PureWindowsPath) else PurePosixPath(path)
    parts = list(pure.parts)
    if pure.drive:
        drive = pure.drive.replace("\\", "/").strip("/")
        parts = [p for p in drive.replace(":", "").split("/") if p] + parts[1:]
    elif parts and parts[0] in ("/", "\\"):
        parts = parts[1:]
    return "/".join([OUTSIDE_PROJECT, *parts])


def _make_packer_class() -> type:
    """BAT's Packer, changed to plan instead of copying (imported lazily: BAT is big)."""
    from blender_asset_tracer.pack import Packer

    class StorePacker(Packer):  # type: ignore[misc,valid-type]
        """Collects (read from, path in pack) pairs; rewritten .blend copies stay in BAT's temp dir."""

        def __init__(self, bfile: Path, project: Path, target: Path, shared_roots: list[str]) -> None:
            super().__init__(bfile, project, str(target))
            self.shared_roots = shared_roots
            self.shared_assets: set[Path] = set()
            self.planned: list[tuple[Path, PurePath]] = []

        def _visit_asset(self, asset_path: Path, usage: object) -> None:
            relative = usage.asset_path.is_blendfile_relative()  # type: ignore[attr-defined]
            if not relative and self.shared_roots and path_is_under(asset_path, self.shared_roots):
                self.shared_assets.add(asset_path)
                return
            super()._visit_asset(asset_path, usage)

        def _find_new_paths(self) -> None:
            for path in self._new_location_paths:
                self._actions[path].new_path = Path(self._target_path, *outside_project_path(path).split("/"))

        def _send_to_target(self, asset_path: Path, target: PurePath, may_move: bool = False) -> None:
            self.planned.append((Path(asset_path), PurePath(target)))

        def plan(self) -> None:
            self.strategise()
            self._rewrite_paths()
            for asset_path, action in self._actions.items():
                self._copy_asset_and_deps(asset_path, action)

    return StorePacker


def pack(
    blend_path: Path, store: ContentStore, *, project_root: Path | None = None,
    shared_roots: Iterable[str | PurePath] = (),
) -> PackResult:
    """Put ``blend_path`` and its dependencies in ``store``; return the manifest and what was left out.

    ``project_root``: the folder whose layout the checkout mirrors (default:
    ``find_project_root``). ``shared_roots``: folders every worker sees, as this
    computer names them (``PathVariables.shared_roots()``).
    """
    blend = Path(blend_path).absolute()
    roots = [str(r) for r in shared_roots]
    if not blend.is_file():
        raise PackError(f"cannot pack {blend}: no such file; save the .blend file before submitting")
    if roots and path_is_under(blend, roots):
        return PackResult(manifest=None, blend_on_shared_storage=True)
    project = Path(project_root).absolute() if project_root is not None else find_project_root(blend)
    try:
        blend_rel = blend.relative_to(project).as_posix()
    except ValueError:
        raise PackError(
            f"cannot pack {blend}: it is not inside the project folder {project}; choose a project folder that "
            "contains the .blend file"
        ) from None
    with _PACK_LOCK:
        return _pack_locked(blend, blend_rel, project, store, roots)


def _pack_locked(blend: Path, blend_rel: str, project: Path, store: ContentStore, roots: list[str]) -> PackResult:
    from blender_asset_tracer import blendfile

    packer_class = _make_packer_class()
    with tempfile.TemporaryDirectory(prefix="flamenco-peer-pack-") as fake_target:
        # The target folder is only used to compute paths; nothing is written to it.
        target = Path(fake_target) / "pack"
        try:
            with packer_class(blend, project, target, roots) as packer:
                try:
                    packer.plan()
                except (OSError, ValueError, KeyError) as exc:
                    raise PackError(f"cannot read the dependencies of {blend}: {type(exc).__name__}: {exc}") from None
                rewritten = [p for p, action in packer._actions.items() if action.read_from is not None]
                files: dict[str, BlobRef] = {}
                result = PackResult(manifest=None)
                for source, in_pack in packer.planned:
                    rel = PurePath(in_pack).relative_to(target).as_posix()
                    try:
                        check_relative_path(rel)
                    except UnsafePath as exc:
                        raise PackError(f"cannot pack {source}: {exc}") from None
                    if rel in files:
                        continue
                    try:
                        files[rel] = store.add_file(source)
                    except OSError as exc:
                        raise PackError(f"cannot read {source} to pack it: {exc.strerror or exc}") from None
                    if rel.startswith(OUTSIDE_PROJECT + "/"):
                        result.outside_project.append(source)
                result.rewritten = sorted(
                    PurePath(packer._actions[p].new_path).relative_to(target).as_posix() for p in rewritten
                )
                result.missing = sorted(packer.missing_files)
                result.shared_assets = sorted(packer.shared_assets)
        finally:
            blendfile.close_all_cached()
    try:
        result.manifest = Manifest(root_name=_root_name(project), blend=blend_rel, files=files)
    except BadManifest as exc:
        raise PackError(f"cannot pack {blend}: {exc}") from None
    log.info("packed %s: %d files, %d bytes, %d rewritten, %d on shared storage, %d missing",
             blend, len(files), result.manifest.total_size, len(result.rewritten), len(result.shared_assets),
             len(result.missing))
    return result


def _root_name(project: Path) -> str:
    name = project.name
    try:
        check_relative_path(name)
    except UnsafePath:
        return "project"
    return name
