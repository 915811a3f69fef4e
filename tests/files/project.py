"""A small Blender project made at test time: a .blend that links an object from a
library .blend, whose material uses an image texture by a relative path, and
a local object whose texture is referenced by an absolute path outside the project.

    <project>/.blender_project
    <project>/scenes/main.blend      links "LibPlane" from //../libs/lib.blend;
                                     "AbsPlane" uses <outside>/red.png (absolute)
    <project>/libs/lib.blend         "LibPlane", emission from //../textures/green.png
    <project>/textures/green.png
    <outside>/red.png

Rendered (Cycles, emission, Standard view) from above, the left half of the
image is the green texture and the right half the red one. A missing texture
renders magenta and a missing library leaves the left half black, so a pixel
check tells whether every file was found.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from peer.scenes import SceneError

RESOLUTION = 32
GREEN = (0, 255, 0)
RED = (255, 0, 0)

# One Blender run writes both files: starting Blender is the slow part.
_SCRIPT = r'''
import sys
import bpy
lib_path, texture_rel, main_path, abs_texture, res = sys.argv[sys.argv.index("--") + 1:]
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.wm.save_as_mainfile(filepath=lib_path)
img = bpy.data.images.new("green", 4, 4)
img.source = "FILE"
img.filepath = texture_rel
mat = bpy.data.materials.new("GreenMat")
mat.use_nodes = True
nt = mat.node_tree
nt.nodes.clear()
tex = nt.nodes.new("ShaderNodeTexImage")
tex.image = img
em = nt.nodes.new("ShaderNodeEmission")
out = nt.nodes.new("ShaderNodeOutputMaterial")
nt.links.new(tex.outputs["Color"], em.inputs["Color"])
nt.links.new(em.outputs["Emission"], out.inputs["Surface"])
mesh = bpy.data.meshes.new("LibPlane")
mesh.from_pydata([(-1, -1, 0), (0, -1, 0), (0, 1, 0), (-1, 1, 0)], [], [(0, 1, 2, 3)])
mesh.materials.append(mat)
obj = bpy.data.objects.new("LibPlane", mesh)
bpy.context.scene.collection.objects.link(obj)
bpy.ops.wm.save_as_mainfile(filepath=lib_path)

bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.wm.save_as_mainfile(filepath=main_path)
scene = bpy.context.scene
with bpy.data.libraries.load(lib_path, link=True, relative=True) as (src, dst):
    dst.objects = ["LibPlane"]
for obj in dst.objects:
    scene.collection.objects.link(obj)
img = bpy.data.images.new("red", 4, 4)
img.source = "FILE"
img.filepath = abs_texture
mat = bpy.data.materials.new("RedMat")
mat.use_nodes = True
nt = mat.node_tree
nt.nodes.clear()
tex = nt.nodes.new("ShaderNodeTexImage")
tex.image = img
em = nt.nodes.new("ShaderNodeEmission")
out = nt.nodes.new("ShaderNodeOutputMaterial")
nt.links.new(tex.outputs["Color"], em.inputs["Color"])
nt.links.new(em.outputs["Emission"], out.inputs["Surface"])
mesh = bpy.data.meshes.new("AbsPlane")
mesh.from_pydata([(0, -1, 0), (1, -1, 0), (1, 1, 0), (0, 1, 0)], [], [(0, 1, 2, 3)])
mesh.materials.append(mat)
plane = bpy.data.objects.new("AbsPlane", mesh)
scene.collection.objects.link(plane)
cam_data = bpy.data.cameras.new("Camera")
cam_data.type = "ORTHO"
cam_data.ortho_scale = 2.0
cam = bpy.data.objects.new("Camera", cam_data)
cam.location = (0.0, 0.0, 5.0)
scene.collection.objects.link(cam)
scene.camera = cam
scene.render.engine = "CYCLES"
scene.cycles.device = "CPU"
scene.cycles.samples = 1
scene.cycles.use_denoising = False
scene.render.resolution_x = scene.render.resolution_y = int(res)
scene.render.resolution_percentage = 100
scene.render.image_settings.file_format = "PNG"
scene.render.filepath = "//render/frame_####"
scene.view_settings.view_transform = "Standard"
scene.frame_start = scene.frame_end = 1
bpy.ops.wm.save_as_mainfile(filepath=main_path)
'''


@dataclass(frozen=True)
class Project:
    root: Path
    main: Path
    lib: Path
    texture: Path
    outside_texture: Path


def _solid_png(path: Path, rgb: tuple[int, int, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = "0x%02x%02x%02x" % rgb
    subprocess.run(
        ["ffmpeg", "-v", "error", "-nostdin", "-y", "-f", "lavfi", "-i", f"color=c={color}:s=16x16",
         "-frames:v", "1", "-pix_fmt", "rgb24", str(path)],
        check=True, timeout=30,
    )
    return path


def _blender(script: str, *args: str) -> None:
    proc = subprocess.run(
        ["blender", "-b", "-noaudio", "--factory-startup", "--python-exit-code", "1",
         "--python-expr", script, "--", *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
        timeout=120,
    )
    if proc.returncode != 0:
        raise SceneError(f"Blender could not make the test project (exit {proc.returncode}):\n{proc.stdout}")


def make_project(root: Path, outside: Path) -> Project:
    (root / ".blender_project").parent.mkdir(parents=True, exist_ok=True)
    (root / ".blender_project").write_text("")
    texture = _solid_png(root / "textures" / "green.png", GREEN)
    outside_texture = _solid_png(outside / "red.png", RED)
    lib = root / "libs" / "lib.blend"
    lib.parent.mkdir(parents=True, exist_ok=True)
    main = root / "scenes" / "main.blend"
    main.parent.mkdir(parents=True, exist_ok=True)
    _blender(_SCRIPT, str(lib), "//../textures/green.png", str(main), str(outside_texture), str(RESOLUTION))
    return Project(root=root, main=main, lib=lib, texture=texture, outside_texture=outside_texture)


def render(blend: Path, out_dir: Path) -> Path:
    """Render frame 1 of ``blend`` to a PNG in ``out_dir``; returns its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["blender", "-b", str(blend), "-noaudio", "-o", str(out_dir / "frame_####"), "-F", "PNG", "-f", "1"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
        timeout=120,
    )
    frame = out_dir / "frame_0001.png"
    if proc.returncode != 0 or not frame.is_file():
        raise SceneError(f"Blender could not render {blend} (exit {proc.returncode}):\n{proc.stdout}")
    return frame


def pixels(png: Path) -> list[tuple[int, int, int]]:
    """Row-major RGB pixels of a PNG (decoded by ffmpeg)."""
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-nostdin", "-i", str(png), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        check=True, stdout=subprocess.PIPE, timeout=30,
    ).stdout
    return [tuple(raw[i:i + 3]) for i in range(0, len(raw), 3)]  # type: ignore[misc]


def region_colour(png: Path, *, left: bool, size: int = RESOLUTION) -> tuple[int, int, int]:
    """The average colour of the middle of the left or right half."""
    px = pixels(png)
    xs = range(size // 8, size * 3 // 8) if left else range(size * 5 // 8, size * 7 // 8)
    ys = range(size // 4, size * 3 // 4)
    picked = [px[y * size + x] for y in ys for x in xs]
    return tuple(round(sum(p[i] for p in picked) / len(picked)) for i in range(3))  # type: ignore[return-value]
