"""Packing a real Blender 3.4 project and rendering its checkout.

The project (made at test time, see ``project.py``) has a .blend that links an
object from a library .blend, whose material uses an image texture, plus a
texture referenced by an absolute path outside the project.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from peer.files.checkout import build_checkout
from peer.files.packing import PackError, find_project_root, outside_project_path, pack
from peer.files.store import BlobRef, ContentStore
from tests.files.project import GREEN, RED, Project, make_project, region_colour, render
from tests.scenes import requires_blender, requires_ffmpeg

pytestmark = [pytest.mark.blender, requires_blender, requires_ffmpeg]


def ref_of(path: Path) -> BlobRef:
    data = path.read_bytes()
    return BlobRef(hashlib.sha256(data).hexdigest(), len(data))


def close_to(actual: tuple[int, int, int], expected: tuple[int, int, int]) -> bool:
    return all(abs(a - e) <= 8 for a, e in zip(actual, expected))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    base = tmp_path_factory.mktemp("packing")
    return make_project(base / "proj", base / "outside")


def test_pack_lists_the_blend_its_library_and_both_textures(project: Project, tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "store", cap_bytes=1 << 30)
    main_before = ref_of(project.main)
    result = pack(project.main, store)
    manifest = result.manifest
    assert manifest is not None
    outside_rel = outside_project_path(project.outside_texture)
    assert outside_rel == "_outside_project/" + project.outside_texture.as_posix().lstrip("/")
    assert set(manifest.files) == {"scenes/main.blend", "libs/lib.blend", "textures/green.png", outside_rel}
    assert manifest.root_name == "proj" and manifest.blend == "scenes/main.blend"
    # The library (found through the link) and its texture are stored as they are.
    assert manifest.files["libs/lib.blend"] == ref_of(project.lib)
    assert manifest.files["textures/green.png"] == ref_of(project.texture)
    assert manifest.files[outside_rel] == ref_of(project.outside_texture)
    # main.blend points at a file outside the project: its stored copy is rewritten,
    # the artist's file is not touched.
    assert result.rewritten == ["scenes/main.blend"]
    assert ref_of(project.main) == main_before
    assert manifest.files["scenes/main.blend"] != main_before
    rewritten = store.path_of(manifest.files["scenes/main.blend"]).read_bytes()
    assert b"//../_outside_project/" in rewritten
    assert result.outside_project == [project.outside_texture] and result.missing == []
    for path, ref in manifest.files.items():
        assert store.has(ref), path
    assert manifest.total_size == sum(r.size for r in manifest.files.values())


def test_assets_on_shared_storage_are_left_out_and_not_rewritten(project: Project, tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "store", cap_bytes=1 << 30)
    result = pack(project.main, store, shared_roots=[str(project.outside_texture.parent)])
    assert result.manifest is not None
    assert set(result.manifest.files) == {"scenes/main.blend", "libs/lib.blend", "textures/green.png"}
    assert result.shared_assets == [project.outside_texture]
    assert result.rewritten == []
    assert result.manifest.files["scenes/main.blend"] == ref_of(project.main)
    # A .blend that is itself on shared storage is not packed at all.
    on_shared = pack(project.main, store, shared_roots=[str(project.root)])
    assert on_shared.manifest is None and on_shared.blend_on_shared_storage


def test_project_root_and_refusals(project: Project, tmp_path: Path) -> None:
    assert find_project_root(project.main) == project.root  # the .blender_project marker
    loose = tmp_path / "loose" / "x.blend"
    assert find_project_root(loose) == loose.parent
    store = ContentStore(tmp_path / "store", cap_bytes=1 << 30)
    with pytest.raises(PackError, match="no such file"):
        pack(tmp_path / "nope.blend", store)
    with pytest.raises(PackError, match="not inside the project folder"):
        pack(project.main, store, project_root=project.root / "libs")


@pytest.fixture(scope="module")
def original_render(project: Project, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render(project.main, tmp_path_factory.mktemp("render-original"))


@pytest.mark.timeout(240)
def test_the_checkout_renders_like_the_original_without_the_original_files(
    project: Project, original_render: Path, tmp_path: Path,
) -> None:
    assert close_to(region_colour(original_render, left=True), GREEN)
    assert close_to(region_colour(original_render, left=False), RED)
    store = ContentStore(tmp_path / "store", cap_bytes=1 << 30)
    manifest = pack(project.main, store).manifest
    assert manifest is not None
    # The worker has none of the artist's files: move them out of reach while it renders.
    hidden = [(folder, folder.with_name(folder.name + ".away")) for folder in
              (project.root, project.outside_texture.parent)]
    for folder, away in hidden:
        folder.rename(away)
    try:
        checkout = build_checkout(manifest, store, tmp_path / "worker" / "job")
        rendered = render(checkout.blend, tmp_path / "render-checkout")
        assert close_to(region_colour(rendered, left=True), region_colour(original_render, left=True))
        assert close_to(region_colour(rendered, left=False), region_colour(original_render, left=False))

        # Without the textures the same regions come out differently (Blender's magenta),
        # so the comparison above really depends on the transferred files.
        bare = build_checkout(manifest, store, tmp_path / "worker" / "bare")
        (bare.root / "textures" / "green.png").unlink()
        shutil.rmtree(bare.root / "_outside_project")
        missing = render(bare.blend, tmp_path / "render-bare")
        assert not close_to(region_colour(missing, left=True), GREEN)
        assert not close_to(region_colour(missing, left=False), RED)
    finally:
        for folder, away in hidden:
            away.rename(folder)


def test_missing_dependencies_are_reported(project: Project, tmp_path: Path) -> None:
    copy = tmp_path / "proj"
    shutil.copytree(project.root, copy)
    (copy / "textures" / "green.png").unlink()
    store = ContentStore(tmp_path / "store", cap_bytes=1 << 30)
    result = pack(copy / "scenes" / "main.blend", store)
    assert result.missing == [copy / "textures" / "green.png"]
    assert result.manifest is not None and "textures/green.png" not in result.manifest.files
    assert "libs/lib.blend" in result.manifest.files
