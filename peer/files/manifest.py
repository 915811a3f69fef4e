"""What a job needs on disk: relative path → blob, plus which file is the .blend to open.

JSON form (``to_json``)::

    {"root_name": "shot010", "blend": "scenes/main.blend",
     "files": {"scenes/main.blend": ["<sha256>", 12345], "textures/wood.png": [...]},
     "total_size": 23456}

``root_name`` is the name of the folder the files are checked out in (the
project folder's name, so Blender shows familiar paths). The manifest id is
the SHA-256 of the canonical JSON (sorted keys, no spaces, UTF-8), so the same
files under the same names always have the same id.

Manifests travel between peers: ``from_json`` checks every path with
``names.check_relative_paths`` and every blob ref, and refuses anything else.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from .names import UnsafePath, check_relative_path, check_relative_paths
from .store import BadBlobRef, BlobRef

MAX_MANIFEST_BYTES = 32 * 1024 * 1024


class BadManifest(ValueError):
    """A manifest that cannot be used; ``str()`` says which field is wrong."""


@dataclass(frozen=True)
class Manifest:
    root_name: str
    blend: str
    files: Mapping[str, BlobRef] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            check_relative_path(self.root_name)
            if "/" in self.root_name:
                raise UnsafePath(f"root_name {self.root_name!r} must be one folder name, without '/'")
            check_relative_paths(self.files)
            check_relative_path(self.blend)
        except UnsafePath as exc:
            raise BadManifest(f"manifest: {exc}") from None
        if self.blend not in self.files:
            raise BadManifest(f"manifest: the blend file {self.blend!r} is not among its files")
        for path, ref in self.files.items():
            if not isinstance(ref, BlobRef):
                raise BadManifest(f"manifest: file {path!r} must map to a BlobRef, got {type(ref).__name__}")

    @property
    def total_size(self) -> int:
        return sum(ref.size for ref in self.files.values())

    def refs(self) -> set[BlobRef]:
        """The distinct blobs (two paths may hold the same bytes)."""
        return set(self.files.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "root_name": self.root_name,
            "blend": self.blend,
            "files": {path: ref.to_wire() for path, ref in sorted(self.files.items())},
            "total_size": self.total_size,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @property
    def id(self) -> str:
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    @classmethod
    def from_dict(cls, data: object) -> Manifest:
        if not isinstance(data, dict):
            raise BadManifest("a manifest must be a JSON object with root_name, blend, files and total_size")
        unknown = set(data) - {"root_name", "blend", "files", "total_size"}
        if unknown:
            raise BadManifest(f"manifest: unknown fields {sorted(unknown)}")
        root_name, blend, files = data.get("root_name"), data.get("blend"), data.get("files")
        if not isinstance(root_name, str) or not isinstance(blend, str):
            raise BadManifest("manifest: 'root_name' and 'blend' must be strings")
        if not isinstance(files, dict):
            raise BadManifest("manifest: 'files' must map relative paths to [sha256, size]")
        parsed: dict[str, BlobRef] = {}
        for path, value in files.items():
            try:
                parsed[path] = BlobRef.parse(value)
            except BadBlobRef as exc:
                raise BadManifest(f"manifest: file {path!r:.120}: {exc}") from None
        manifest = cls(root_name=root_name, blend=blend, files=parsed)
        total = data.get("total_size")
        if total is not None and total != manifest.total_size:
            raise BadManifest(f"manifest: total_size says {total!r} but the files add up to {manifest.total_size}")
        return manifest

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        if len(text) > MAX_MANIFEST_BYTES:
            raise BadManifest(f"manifest is {len(text)} bytes; at most {MAX_MANIFEST_BYTES} are accepted")
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise BadManifest(f"manifest is not valid JSON: {exc}") from None
        return cls.from_dict(data)
