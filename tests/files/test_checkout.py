"""Checkouts built from the store: the project layout, hard links (or copies), never symlinks."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from peer.files.checkout import MARKER, CheckoutError, build_checkout, remove_checkout
from peer.files.manifest import Manifest
from peer.files.store import BlobRef, ContentStore


@pytest.fixture
def store(tmp_path: Path) -> ContentStore:
    return ContentStore(tmp_path / "store", cap_bytes=1 << 30)


def _manifest(store: ContentStore) -> Manifest:
    blend = store.add_bytes(b"BLENDER-v304 main")
    tex = store.add_bytes(b"\x89PNG texture")
    return Manifest(root_name="proj", blend="scenes/main.blend", files={
        "scenes/main.blend": blend, "textures/wood.png": tex, "textures/again.png": tex,
        "_outside_project/mnt/lib/x.png": store.add_bytes(b"outside"),
    })


def test_checkout_mirrors_the_layout_with_hard_links(store: ContentStore, tmp_path: Path) -> None:
    manifest = _manifest(store)
    co = build_checkout(manifest, store, tmp_path / "checkouts" / "job-1")
    assert co.root == tmp_path / "checkouts" / "job-1" / "proj"
    assert co.blend == co.root / "scenes" / "main.blend"
    assert co.blend.read_bytes() == b"BLENDER-v304 main"
    assert (co.root / "_outside_project" / "mnt" / "lib" / "x.png").read_bytes() == b"outside"
    assert co.linked == 4 and co.copied == 0 and not co.reused
    for rel, ref in manifest.files.items():
        path = co.root / rel
        assert not path.is_symlink()
        assert path.stat().st_ino == store.blob_path(ref).stat().st_ino
    # Only the files and the marker: no leftovers of the build.
    assert sorted(p.name for p in (tmp_path / "checkouts" / "job-1").iterdir()) == ["proj"]
    assert (co.root / MARKER).is_file()


def test_the_same_manifest_reuses_the_checkout_and_another_replaces_it(store: ContentStore, tmp_path: Path) -> None:
    manifest = _manifest(store)
    build_checkout(manifest, store, tmp_path / "co")
    assert build_checkout(manifest, store, tmp_path / "co").reused
    changed = Manifest(root_name="proj", blend="scenes/main.blend",
                       files={"scenes/main.blend": store.add_bytes(b"BLENDER-v304 v2")})
    co = build_checkout(changed, store, tmp_path / "co")
    assert not co.reused and co.blend.read_bytes() == b"BLENDER-v304 v2"
    assert not (co.root / "textures").exists()


def test_checkout_copies_when_hard_links_are_impossible(store: ContentStore, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def cross_device(src: object, dst: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    manifest = _manifest(store)
    co = build_checkout(manifest, store, tmp_path / "co")
    assert co.copied == 4 and co.linked == 0
    assert (co.root / "textures" / "wood.png").read_bytes() == b"\x89PNG texture"
    assert not (co.root / "textures" / "wood.png").is_symlink()


def test_checkout_refuses_when_blobs_are_missing(store: ContentStore, tmp_path: Path) -> None:
    manifest = Manifest(root_name="proj", blend="a.blend", files={"a.blend": BlobRef("c" * 64, 5)})
    with pytest.raises(CheckoutError, match="not fetched yet.*'a.blend'"):
        build_checkout(manifest, store, tmp_path / "co")
    assert not (tmp_path / "co" / "proj").exists()


def test_removing_a_checkout_keeps_the_blobs(store: ContentStore, tmp_path: Path) -> None:
    manifest = _manifest(store)
    co = build_checkout(manifest, store, tmp_path / "co")
    remove_checkout(co.root)
    assert not co.root.exists()
    assert all(store.has(ref) for ref in manifest.refs())
