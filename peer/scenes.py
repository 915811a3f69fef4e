"""Generate tiny animated scenes with the installed Blender.

Used by ``flamenco-peer demo`` and the tests. A scene is always written by the
same Blender that renders it: a file saved by a newer Blender may be
unreadable ("not a blend file") or even crash an older one.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path


class SceneError(RuntimeError):
    pass


# Runs inside Blender. Uses only API that exists from 3.x to 5.x.
_SCENE_SCRIPT = r'''
import json
import sys

import bpy
from mathutils import Vector

argv = sys.argv[sys.argv.index("--") + 1:]
out_path, options = argv[0], json.loads(argv[1])

bpy.ops.wm.read_factory_settings(use_empty=True)
scene = bpy.context.scene

scene.frame_start, scene.frame_end = options["frames"]
scene.frame_current = scene.frame_start
scene.render.resolution_x, scene.render.resolution_y = options["resolution"]
scene.render.resolution_percentage = 100
scene.render.image_settings.file_format = "PNG"
scene.render.filepath = "//render/frame_####"
scene.render.engine = options["engine"]
if options["engine"] == "CYCLES":
    scene.cycles.device = "CPU"
    scene.cycles.samples = options["samples"]
    scene.cycles.use_denoising = False
    if hasattr(scene.cycles, "use_adaptive_sampling"):
        scene.cycles.use_adaptive_sampling = False

if scene.world is None:
    scene.world = bpy.data.worlds.new("World")

# A cube sliding from left to right, so every frame is a different image.
mesh = bpy.data.meshes.new("Cube")
s = 1.0
verts = [(x, y, z) for x in (-s, s) for y in (-s, s) for z in (-s, s)]
faces = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
mesh.from_pydata(verts, [], faces)
mesh.update()
cube = bpy.data.objects.new("Cube", mesh)
scene.collection.objects.link(cube)
first, last = options["frames"]
cube.location = (-2.0, 0.0, 0.0)
cube.keyframe_insert("location", frame=first)
cube.location = (2.0, 0.0, 0.0)
cube.keyframe_insert("location", frame=max(last, first + 1))

light_data = bpy.data.lights.new("Sun", type="SUN")
light_data.energy = 3.0
light = bpy.data.objects.new("Sun", light_data)
light.rotation_euler = (0.6, 0.2, 0.8)
scene.collection.objects.link(light)

cam_data = bpy.data.cameras.new("Camera")
cam = bpy.data.objects.new("Camera", cam_data)
cam.location = Vector((0.0, -10.0, 4.0))
cam.rotation_euler = (Vector((0.0, 0.0, 0.0)) - cam.location).to_track_quat("-Z", "Y").to_euler()
scene.collection.objects.link(cam)
scene.camera = cam

bpy.ops.wm.save_as_mainfile(filepath=out_path)
'''


def make_scene(
    path: Path,
    *,
    frames: tuple[int, int] = (1, 4),
    resolution: tuple[int, int] = (64, 48),
    engine: str = "CYCLES",
    samples: int = 1,
    blender: str = "blender",
    timeout: float = 60.0,
) -> Path:
    """Write a small animated scene to `path` using the `blender` executable.

    Raises RuntimeError with Blender's output when the scene could not be made,
    because a bare "file not found" later on would hide the real cause.
    """
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {
        "frames": list(frames),
        "resolution": list(resolution),
        "engine": engine,
        "samples": samples,
    }
    with tempfile.TemporaryDirectory(prefix="flamenco-peer-scene-") as tmp:
        script = Path(tmp) / "make_scene.py"
        script.write_text(_SCENE_SCRIPT, encoding="utf-8")
        cmd = [
            blender, "-b", "-noaudio", "--factory-startup",
            "--python-exit-code", "1",
            "--python", str(script),
            "--", str(path), json.dumps(options),
        ]
        proc = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            timeout=timeout,
        )
    if proc.returncode != 0 or not path.is_file():
        raise SceneError(
            f"make_scene: Blender could not write {path} (exit code {proc.returncode}); "
            f"its output was:\n{proc.stdout}"
        )
    return path
