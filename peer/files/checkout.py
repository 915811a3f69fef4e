"""Build a job's folder on a worker from the blobs in its store.

The checkout mirrors the project's layout (``<folder>/<root_name>/<path>``), so
the relative paths inside the .blend files resolve. Each file is a hard link to
its blob when the store and the folder are on the same file system, a copy
otherwise. Never a symbolic link: those need a privilege on Windows, and
Blender would resolve ``//`` paths against the link's target.

A finished checkout carries a marker with the manifest id; building the same
manifest into the same folder again reuses it. A checkout is built in a
temporary folder next to the final one and renamed into place, so a crash
never leaves a half-built checkout that looks finished.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from .manifest import Manifest
from .names import safe_join
from .store import BlobMissing, ContentStore

MARKER = ".flamenco-checkout.json"


class CheckoutError(Exception):
    """The checkout could not be built; ``str()`` names the file and the cause."""


@dataclass(frozen=True)
class Checkout:
    root: Path  # <folder>/<root_name>
    blend: Path  # the .blend to open
    linked: int  # files hard-linked to the store
    copied: int  # files copied (other file system, or links refused)
    reused: bool  # an identical checkout was already there


def _link_or_copy(source: Path, target: Path) -> bool:
    """True when hard-linked, False when copied."""
    try:
        os.link(source, target)
        return True
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES, errno.ENOTSUP, errno.EOPNOTSUPP) \
                and not isinstance(exc, PermissionError):
            raise
    shutil.copyfile(source, target)
    return False


def _marker_matches(root: Path, manifest_id: str) -> bool:
    try:
        return json.loads((root / MARKER).read_text(encoding="utf-8")).get("manifest") == manifest_id
    except (OSError, ValueError, AttributeError):
        return False


def build_checkout(manifest: Manifest, store: ContentStore, folder: Path) -> Checkout:
    """Materialise ``manifest`` as ``folder/<root_name>/...``; every blob must be in ``store``.

    Raises ``CheckoutError`` naming the first blob that is missing. Blocks on
    disk: call from a thread.
    """
    folder = Path(folder)
    final = folder / manifest.root_name
    manifest_id = manifest.id
    if _marker_matches(final, manifest_id):
        for ref in manifest.refs():
            store.touch(ref)
        return Checkout(root=final, blend=safe_join(final, manifest.blend), linked=0, copied=0, reused=True)
    missing = store.missing(manifest.files.values())
    if missing:
        names = [p for p, r in manifest.files.items() if r in set(missing)]
        raise CheckoutError(
            f"cannot build the checkout in {final}: {len(missing)} file(s) not fetched yet, e.g. {names[0]!r} "
            f"(blob {missing[0].short}); fetch them first"
        )
    os.makedirs(folder, exist_ok=True)
    building = folder / f".{manifest.root_name}.building-{uuid.uuid4().hex[:8]}"
    linked = copied = 0
    try:
        building.mkdir()
        for rel, ref in sorted(manifest.files.items()):
            target = safe_join(building, rel)
            os.makedirs(target.parent, exist_ok=True)
            try:
                source = store.path_of(ref)
            except BlobMissing as exc:  # collected between the check and now
                raise CheckoutError(f"cannot build the checkout in {final}: {rel!r}: {exc}") from None
            try:
                if _link_or_copy(source, target):
                    linked += 1
                else:
                    copied += 1
            except OSError as exc:
                raise CheckoutError(f"cannot put {rel!r} into the checkout at {final}: {exc.strerror or exc}") from None
        (building / MARKER).write_text(json.dumps({"manifest": manifest_id}), encoding="utf-8")
        if final.exists():
            remove_checkout(final)
        os.replace(building, final)
    except BaseException:
        remove_checkout(building)
        raise
    return Checkout(root=final, blend=safe_join(final, manifest.blend), linked=linked, copied=copied, reused=False)


def remove_checkout(path: Path) -> None:
    """Delete a checkout; the blobs its hard links point to stay in the store."""

    def writable_then_retry(func, target, _exc):  # read-only files block deletion on Windows
        try:
            os.chmod(target, 0o600)
            func(target)
        except OSError:
            pass

    if path.exists():
        shutil.rmtree(path, onerror=writable_then_retry)
