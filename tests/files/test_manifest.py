"""Manifests: JSON round trip, a stable id, and refusal of anything malformed."""

from __future__ import annotations

import json

import pytest

from peer.files.manifest import BadManifest, Manifest
from peer.files.store import BlobRef

A = BlobRef("a" * 64, 10)
B = BlobRef("b" * 64, 32)


def manifest() -> Manifest:
    return Manifest(root_name="shot010", blend="scenes/main.blend",
                    files={"scenes/main.blend": A, "textures/wood.png": B, "textures/copy.png": B})


def test_json_round_trip_and_canonical_id() -> None:
    m = manifest()
    text = m.to_json()
    assert json.loads(text) == {
        "root_name": "shot010", "blend": "scenes/main.blend", "total_size": 74,
        "files": {"scenes/main.blend": ["a" * 64, 10], "textures/copy.png": ["b" * 64, 32],
                  "textures/wood.png": ["b" * 64, 32]},
    }
    again = Manifest.from_json(text)
    assert again == m and again.id == m.id and len(m.id) == 64
    assert m.refs() == {A, B} and m.total_size == 74
    # The same content in another order has the same id; another name does not.
    reordered = Manifest(root_name="shot010", blend="scenes/main.blend",
                         files=dict(reversed(list(m.files.items()))))
    assert reordered.id == m.id
    assert Manifest(root_name="shot011", blend=m.blend, files=m.files).id != m.id


@pytest.mark.parametrize(("data", "message"), [
    ([], "JSON object"),
    ({"root_name": "r", "blend": "a.blend", "files": {"a.blend": ["a" * 64, 10]}, "extra": 1}, "unknown fields"),
    ({"root_name": "r", "blend": "a.blend", "files": []}, "'files' must map"),
    ({"root_name": 3, "blend": "a.blend", "files": {}}, "must be strings"),
    ({"root_name": "r", "blend": "a.blend", "files": {"b.blend": ["a" * 64, 10]}}, "not among its files"),
    ({"root_name": "r", "blend": "a.blend", "files": {"a.blend": ["zz", 10]}}, "SHA-256"),
    ({"root_name": "r", "blend": "a.blend", "files": {"a.blend": ["a" * 64, -5]}}, "size"),
    ({"root_name": "r", "blend": "a.blend", "files": {"a.blend": ["a" * 64, 10], "../evil": ["a" * 64, 10]}}, "'..'"),
    ({"root_name": "r", "blend": "a.blend", "files": {"a.blend": ["a" * 64, 10], "/etc/x": ["a" * 64, 10]}},
     "absolute"),
    ({"root_name": "../up", "blend": "a.blend", "files": {"a.blend": ["a" * 64, 10]}}, "'..'"),
    ({"root_name": "a/b", "blend": "a.blend", "files": {"a.blend": ["a" * 64, 10]}}, "one folder name"),
    ({"root_name": "r", "blend": "a.blend", "files": {"a.blend": ["a" * 64, 10]}, "total_size": 11}, "add up to 10"),
])
def test_malformed_manifests_are_refused(data: object, message: str) -> None:
    with pytest.raises(BadManifest, match=message):
        Manifest.from_dict(data)


def test_invalid_json_is_refused() -> None:
    with pytest.raises(BadManifest, match="not valid JSON"):
        Manifest.from_json("{nope")
