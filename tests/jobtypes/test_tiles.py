"""The single-image-tiles job type: compiled by the real V8 compiler, rendered by the real Blender.

The reference for "no seams" is a full-frame render of a deterministic scene
(Cycles, fixed seed, no denoising, no dither): Cycles samples every pixel
from its own frame coordinates, so a tile's pixels equal the full render's.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from peer.cli import prepare_job, wait_for_job
from peer.compiler import CompiledJob, CompiledTask, CompileError, JobTypeRegistry, JobTypeScript, compile_job
from peer.localfarm import LocalFarm
from peer.worker.commands import run_command
from peer.worker.commands.base import CommandError
from peer.worker.variables import expand_parameters

from tests.compiler.conftest import make_request
from tests.scenes import requires_blender, requires_ffmpeg
from tests.worker.conftest import RecordingContext

JOB_TYPE_NAME = "single-image-tiles"
WORKER_VARIABLES = {"blender": "blender", "blenderArgs": "-b -y -noaudio"}

# 194x122 at 50 %: an odd 97x61 image, so no tile count divides it evenly.
SCENE_RESOLUTION = (194, 122, 50)
IMAGE_SIZE = (97, 61)
SCENE_FRAME = 3

BASE_SETTINGS: dict[str, Any] = {
    "frame": 7,
    "tiles_x": 3,
    "tiles_y": 2,
    "render_output_root": "/out",
    "add_path_components": 0,
    "render_output_path": "/out/shot/{timestamp}/######",
    "blendfile": "/jobs/shot.blend",
    "scene": "Scene",
    "resolution_x": 97,
    "resolution_y": 61,
    "resolution_percentage": 100,
}

TILE_NAME = re.compile(r"^tile-(\d+)-of-(\d+) \(x (\d+)-(\d+), y (\d+)-(\d+)\)$")


# ---------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def tiles_script() -> JobTypeScript:
    registry = JobTypeRegistry.with_builtins()
    registry.refresh()
    assert registry.errors() == []
    script = registry.get(JOB_TYPE_NAME)
    assert script is not None
    return script


Compile = Callable[..., CompiledJob]


@pytest.fixture()
def compile_tiles(tiles_script: JobTypeScript) -> Compile:
    def run(**changes: Any) -> CompiledJob:
        return compile_job(tiles_script, make_request(JOB_TYPE_NAME, {**BASE_SETTINGS, **changes}))

    return run


def params_of(task: CompiledTask) -> dict[str, Any]:
    [command] = task.commands
    assert command.name == "blender-render"
    return command.parameters


def arg_after(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def tile_rectangles(job: CompiledJob) -> list[tuple[int, int, int, int]]:
    """(left, top, width, height) of each tile, read from the task names."""
    rects = []
    for task in job.tasks[:-1]:
        match = TILE_NAME.match(task.name)
        assert match, task.name
        x0, x1, y0, y1 = (int(g) for g in match.groups()[2:])
        rects.append((x0, y0, x1 - x0 + 1, y1 - y0 + 1))
    return rects


def tile_file(task: CompiledTask, frame: int) -> Path:
    """Where Blender writes a tile task's image: '######' becomes the frame."""
    pattern = arg_after(params_of(task)["args"], "--render-output")
    return Path(pattern.replace("######", f"{frame:06d}") + ".png")


def merged_file(job: CompiledJob) -> Path:
    return Path(params_of(job.tasks[-1])["args"][-1])


def decode_rgba(path: Path) -> bytes:
    return subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgba", "-"],
        check=True, capture_output=True, timeout=30,
    ).stdout


def image_size(path: Path) -> tuple[int, int]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=width,height",
         "-of", "json", str(path)],
        check=True, capture_output=True, text=True, timeout=30,
    ).stdout
    stream = json.loads(out)["streams"][0]
    return stream["width"], stream["height"]


def differences(a: bytes, b: bytes) -> tuple[int, float]:
    """Largest and mean absolute difference of two equally long byte strings."""
    assert len(a) == len(b)
    diffs = [abs(x - y) for x, y in zip(a, b)]
    return max(diffs), sum(diffs) / len(diffs)


async def run_blender_task(task: CompiledTask, ctx: RecordingContext) -> None:
    """Run a task's command as a worker would, with the worker's variables filled in."""
    [command] = task.commands
    await run_command(command.name, expand_parameters(command.parameters, WORKER_VARIABLES), ctx)


# ---------------------------------------------------------------- compiling

def test_job_type_is_listed_and_states_its_limits(tiles_script: JobTypeScript) -> None:
    job_type = tiles_script.job_type
    assert job_type["label"] == "Single Image in Tiles"
    description = job_type["description"].lower()
    for limit in ("compositing", "denoising", "seams", "bloom", "multiview"):
        assert limit in description, limit
    keys = [s["key"] for s in job_type["settings"]]
    assert {"frame", "tiles_x", "tiles_y", "blendfile", "render_output_path", "resolution_percentage"} <= set(keys)


def test_tasks_names_and_layout(compile_tiles: Compile) -> None:
    job = compile_tiles()
    assert [t.name for t in job.tasks] == [
        "tile-1-of-6 (x 0-31, y 0-29)",
        "tile-2-of-6 (x 32-63, y 0-29)",
        "tile-3-of-6 (x 64-96, y 0-29)",
        "tile-4-of-6 (x 0-31, y 30-60)",
        "tile-5-of-6 (x 32-63, y 30-60)",
        "tile-6-of-6 (x 64-96, y 30-60)",
        "merge",
    ]
    assert {t.type for t in job.tasks} == {"blender"}
    # Every pixel belongs to exactly one tile.
    covered = [(x, y) for left, top, w, h in tile_rectangles(job)
               for x in range(left, left + w) for y in range(top, top + h)]
    assert sorted(covered) == [(x, y) for x in range(97) for y in range(61)]


def test_merge_waits_for_every_tile(compile_tiles: Compile) -> None:
    job = compile_tiles(tiles_x=4, tiles_y=3)
    *tiles, merge = job.tasks
    assert len(tiles) == 12
    assert all(t.dependencies == [] for t in tiles)
    assert sorted(merge.dependencies) == sorted(t.uuid for t in tiles)
    assert [t.steps_total for t in job.tasks] == [1] * 13


def test_tile_command(compile_tiles: Compile) -> None:
    job = compile_tiles()
    params = params_of(job.tasks[2])
    assert params["exe"] == "{blender}"
    assert params["exeArgs"] == "{blenderArgs}"
    assert params["argsBefore"] == []
    assert params["blendfile"] == "/jobs/shot.blend"
    args = params["args"]
    assert args[:2] == ["--scene", "Scene"]
    # The exit code must reflect Python errors, or a failed setup would render the whole frame.
    assert args.index("--python-exit-code") < args.index("--python-expr") < args.index("--render-frame")
    assert arg_after(args, "--python-exit-code") == "1"
    assert arg_after(args, "--render-output") == "/out/shot/2006-01-02_150405/tiles/tile-3-of-6_######"
    assert arg_after(args, "--render-frame") == "7"
    code = arg_after(args, "--python-expr")
    # Tile 3 is top right: x 64..96, and Blender's rows from the bottom: 31..60.
    assert "edge(64, width), edge(97, width)" in code
    assert "edge(31, height), edge(61, height)" in code
    assert "(97, 61)" in code
    for setting in ("use_crop_to_border = True", "use_compositing = False", "use_sequencer = False",
                    'file_format = "PNG"', 'color_mode = "RGBA"'):
        assert setting in code, setting
    compile(code, "tile", "exec")  # valid Python


def test_merge_command(compile_tiles: Compile) -> None:
    job = compile_tiles()
    assert job.settings["render_output_path"] == "/out/shot/2006-01-02_150405/######"
    params = params_of(job.tasks[-1])
    assert params["exe"] == "{blender}"
    assert params["blendfile"] == ""
    assert params["argsBefore"] == ["--factory-startup"]
    args = params["args"]
    assert args[:3] == ["--python-exit-code", "1", "--python-expr"]
    assert args[4:] == ["--", "/out/shot/2006-01-02_150405/tiles", "/out/shot/2006-01-02_150405/000007.png"]
    compile(args[3], "merge", "exec")
    assert "merged image: /out/shot/2006-01-02_150405/000007.png" in job.messages[0]


def test_no_variable_placeholders_in_python(compile_tiles: Compile) -> None:
    """Workers expand "{name}" in every argument, so the Python code must not contain any."""
    job = compile_tiles(tiles_x=16, tiles_y=16, resolution_x=1920, resolution_y=1080)
    placeholder = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")
    for task in job.tasks:
        code = arg_after(params_of(task)["args"], "--python-expr")
        assert not placeholder.search(code), (task.name, placeholder.search(code))


def test_resolution_percentage_applies(compile_tiles: Compile) -> None:
    job = compile_tiles(resolution_x=1920, resolution_y=1080, resolution_percentage=50, tiles_x=2, tiles_y=1)
    assert [t.name for t in job.tasks] == ["tile-1-of-2 (x 0-479, y 0-539)", "tile-2-of-2 (x 480-959, y 0-539)", "merge"]


def test_single_tile(compile_tiles: Compile) -> None:
    job = compile_tiles(tiles_x=1, tiles_y=1)
    assert [t.name for t in job.tasks] == ["tile-1-of-1 (x 0-96, y 0-60)", "merge"]


@pytest.mark.parametrize("template, frame, expected", [
    ("/out/frame_####_x", 5, "/out/frame_0005_x.png"),
    ("/out/a_##_b_###", 12, "/out/a_##_b_012.png"),  # the last run only, like Blender
    ("/out/shot", 12, "/out/shot0012.png"),  # no '#': four digits appended, like Blender
    ("/out/f_##", 1234, "/out/f_1234.png"),
])
def test_merged_file_name_follows_blender(compile_tiles: Compile, template: str, frame: int, expected: str) -> None:
    job = compile_tiles(render_output_path=template, frame=frame)
    assert str(merged_file(job)) == expected


def test_tile_file_names_are_padded(compile_tiles: Compile) -> None:
    job = compile_tiles(tiles_x=4, tiles_y=3, frame=0)
    assert tile_file(job.tasks[0], 0).name == "tile-01-of-12_000000.png"
    assert '"tile-1-of-12","tile-01-of-12_000000.png"' in arg_after(params_of(job.tasks[-1])["args"], "--python-expr")


@pytest.mark.parametrize("changes, message", [
    ({"tiles_x": 0}, "setting tiles_x must be a whole number of tile columns from 1 to 16, got 0"),
    ({"tiles_y": 17}, "setting tiles_y must be a whole number of tile rows from 1 to 16, got 17"),
    ({"tiles_x": 2.5}, "from 1 to 16, got 2.5"),
    ({"tiles_x": "3"}, 'from 1 to 16, got "3"'),
    ({"tiles_y": None}, "got null"),
    ({"resolution_y": 8, "tiles_y": 9}, "setting tiles_y is 9, but the image is only 8 pixels high; use at most 8 tile rows"),
    ({"resolution_x": None}, "setting resolution_x must be a positive whole number, got null"),
    ({"resolution_percentage": 0}, "setting resolution_percentage must be a positive whole number"),
    ({"resolution_x": 1, "resolution_percentage": 50}, "renders at 0x30 pixels"),
    ({"frame": -3}, "setting frame must be a whole frame number from 0 to 1048574, got -3"),
    ({"frame": "1-10"}, 'got "1-10"'),
    ({"blendfile": ""}, "setting blendfile is empty"),
    ({"render_output_path": ""}, "no render_output_path setting!"),
])
def test_bad_settings_are_refused(compile_tiles: Compile, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(CompileError) as info:
        compile_tiles(**changes)
    assert info.value.kind == "script-error"
    assert message in info.value.message


# ---------------------------------------------------------------- merging made-up tiles

def make_pattern(path: Path, width: int, height: int) -> None:
    """An RGBA test picture whose alpha varies too, so the merge must keep all four channels."""
    subprocess.run(
        # All in the source graph: a plain colour source is YUV 4:2:0, which rounds odd sizes down.
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i",
         f"color=c=black:s={width}x{height},format=rgba,"
         "geq=r='mod(X*5,256)':g='mod(Y*9,256)':b='mod(X*Y,256)':a='mod(X*7+Y*3,256)'",
         "-frames:v", "1", "-y", str(path)],
        check=True, capture_output=True, timeout=30,
    )
    assert image_size(path) == (width, height)


def crop(source: Path, target: Path, rect: tuple[int, int, int, int]) -> None:
    left, top, width, height = rect
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(source), "-vf", f"crop={width}:{height}:{left}:{top}",
         "-pix_fmt", "rgba", "-y", str(target)],
        check=True, capture_output=True, timeout=30,
    )


@pytest.fixture()
def made_up_tiles(compile_tiles: Compile, tmp_path: Path) -> tuple[CompiledJob, Path]:
    """A 3x2 job whose tiles are cut from a test picture with FFmpeg instead of rendered."""
    job = compile_tiles(render_output_path=str(tmp_path / "out" / "######"), frame=7)
    pattern = tmp_path / "pattern.png"
    make_pattern(pattern, *IMAGE_SIZE)
    for task, rect in zip(job.tasks[:-1], tile_rectangles(job)):
        crop(pattern, tile_file(task, 7), rect)
    return job, pattern


@requires_blender
@requires_ffmpeg
@pytest.mark.blender
async def test_merge_is_lossless(made_up_tiles: tuple[CompiledJob, Path]) -> None:
    job, pattern = made_up_tiles
    ctx = RecordingContext()
    await run_blender_task(job.tasks[-1], ctx)
    merged = merged_file(job)
    assert ctx.outputs == [str(merged)]  # reported like a rendered frame
    assert image_size(merged) == IMAGE_SIZE
    assert decode_rgba(merged) == decode_rgba(pattern)  # every byte, alpha included
    assert not merged.with_name(merged.name + ".partial").exists()


@requires_blender
@requires_ffmpeg
@pytest.mark.blender
@pytest.mark.parametrize("damage, complaint", [
    ("missing", "is missing: task tile-5-of-6 has not rendered it. Re-queue task tile-5-of-6"),
    ("wrong size", "is 10x10 pixels with 4 channels, expected 32x31 RGBA"),
    ("not an image", "cannot be read as an image. Re-queue task tile-5-of-6"),
])
async def test_merge_fails_loudly_on_a_bad_tile(
    made_up_tiles: tuple[CompiledJob, Path], tmp_path: Path, damage: str, complaint: str,
) -> None:
    job, _ = made_up_tiles
    bad = tile_file(job.tasks[4], 7)
    bad.unlink()
    if damage == "wrong size":
        make_pattern(bad, 10, 10)
    elif damage == "not an image":
        bad.write_text("this is not a PNG\n")
    ctx = RecordingContext()
    with pytest.raises(CommandError) as info:
        await run_blender_task(job.tasks[-1], ctx)
    first_line = info.value.message.splitlines()[0]
    assert first_line.startswith("blender-render: command exited abnormally with code 1: Error: merge: tile file ")
    assert f"tile file {bad} " in first_line
    assert complaint in first_line
    assert not merged_file(job).exists()


# ---------------------------------------------------------------- rendering for real

# Runs inside Blender: a few coloured objects over a transparent background,
# rendered deterministically (Cycles, fixed seed, no denoising, no dither).
_SCENE_SCRIPT = r'''
import sys
import bpy
from mathutils import Vector

out_path, res_x, res_y, percentage, frame = sys.argv[sys.argv.index("--") + 1:]
bpy.ops.wm.read_factory_settings(use_empty=True)
scene = bpy.context.scene
r = scene.render
r.resolution_x, r.resolution_y, r.resolution_percentage = int(res_x), int(res_y), int(percentage)
scene.frame_start, scene.frame_end, scene.frame_current = 1, 5, int(frame)
r.engine = "CYCLES"
r.film_transparent = True
r.dither_intensity = 0.0
r.image_settings.file_format = "PNG"
r.image_settings.color_mode = "RGBA"
r.image_settings.color_depth = "8"
scene.cycles.device = "CPU"
scene.cycles.samples = 4
scene.cycles.seed = 0
scene.cycles.use_denoising = False
scene.cycles.use_adaptive_sampling = False
if scene.world is None:
    scene.world = bpy.data.worlds.new("World")

def material(name, rgb):
    mat = bpy.data.materials.new(name)
    mat.use_nodes = True
    mat.node_tree.nodes["Principled BSDF"].inputs["Base Color"].default_value = (*rgb, 1.0)
    return mat

def add(name, op, location, rgb, **kwargs):
    op(location=location, **kwargs)
    bpy.context.object.data.materials.append(material(name, rgb))

add("Ground", bpy.ops.mesh.primitive_plane_add, (0, 0, -1), (0.8, 0.8, 0.8), size=6)
add("Red", bpy.ops.mesh.primitive_cube_add, (-2.2, 0, 0), (0.9, 0.1, 0.1))
add("Green", bpy.ops.mesh.primitive_uv_sphere_add, (0, 0.5, 0), (0.1, 0.8, 0.2), segments=24, ring_count=12)
add("Blue", bpy.ops.mesh.primitive_monkey_add, (2.2, 0, 0.2), (0.1, 0.3, 0.9))

light = bpy.data.objects.new("Sun", bpy.data.lights.new("Sun", type="SUN"))
light.data.energy = 4.0
light.rotation_euler = (0.7, 0.3, 0.9)
scene.collection.objects.link(light)
cam = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
cam.location = Vector((0.5, -9.0, 5.0))
cam.rotation_euler = (Vector((0.0, 0.0, -0.3)) - cam.location).to_track_quat("-Z", "Y").to_euler()
scene.collection.objects.link(cam)
scene.camera = cam
bpy.ops.wm.save_as_mainfile(filepath=out_path)
'''


def make_tiles_scene(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tiles-scene-") as tmp:
        script = Path(tmp) / "scene.py"
        script.write_text(_SCENE_SCRIPT, encoding="utf-8")
        proc = subprocess.run(
            ["blender", "-b", "-noaudio", "--factory-startup", "--python-exit-code", "1",
             "--python", str(script), "--", str(path), *map(str, SCENE_RESOLUTION), str(SCENE_FRAME)],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        )
    assert proc.returncode == 0 and path.is_file(), proc.stdout + proc.stderr
    return path


def render_full_frame(scene: Path, output_dir: Path) -> Path:
    """The reference: the whole frame, rendered directly by the Blender CLI."""
    proc = subprocess.run(
        ["blender", "-b", "-noaudio", str(scene), "--render-output", str(output_dir / "full_######"),
         "--render-frame", str(SCENE_FRAME)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )
    full = output_dir / f"full_{SCENE_FRAME:06d}.png"
    assert proc.returncode == 0 and full.is_file(), proc.stdout[-2000:]
    return full


@pytest.fixture(scope="module")
def tiles_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiles_scene(tmp_path_factory.mktemp("tiles-scene") / "tiles-scene.blend")


@pytest.fixture
def farm(tmp_path: Path):
    farm = LocalFarm(tmp_path / "farm")
    yield farm
    farm.stop()


@requires_blender
@requires_ffmpeg
@pytest.mark.blender
@pytest.mark.timeout(180)
def test_tiles_on_a_farm_match_a_full_render(farm: LocalFarm, tiles_scene: Path, tmp_path: Path) -> None:
    farm.start(workers=2)
    full = render_full_frame(tiles_scene, tmp_path / "reference")
    farm.wait_for_workers(2)
    client = farm.client
    job = prepare_job(client, JOB_TYPE_NAME,
                      sets=[f"render_output_root={tmp_path / 'renders'}", "tiles_x=3", "tiles_y=2"],
                      blend=str(tiles_scene), name="tiled-shot", verbose=False)
    # Evaluated in Blender from the scene.
    assert job["settings"]["frame"] == SCENE_FRAME
    assert [job["settings"][k] for k in ("resolution_x", "resolution_y", "resolution_percentage")] == list(SCENE_RESOLUTION)
    submitted = client.submit(job)
    final = wait_for_job(client, submitted["id"], quiet=True)
    tasks = client.tasks(submitted["id"])
    assert final["status"] == "completed", [(t["name"], t["status"], client.task_log(t["id"])[-2000:]) for t in tasks]
    assert [t["name"] for t in tasks] == [
        "tile-1-of-6 (x 0-31, y 0-29)", "tile-2-of-6 (x 32-63, y 0-29)", "tile-3-of-6 (x 64-96, y 0-29)",
        "tile-4-of-6 (x 0-31, y 30-60)", "tile-5-of-6 (x 32-63, y 30-60)", "tile-6-of-6 (x 64-96, y 30-60)",
        "merge",
    ]
    assert len({t["worker"]["name"] for t in tasks[:-1]}) == 2  # the tiles were shared out

    out_dir = Path(final["settings"]["render_output_path"]).parent
    tiles = sorted((out_dir / "tiles").glob("*.png"))
    assert [t.name for t in tiles] == [f"tile-{n}-of-6_{SCENE_FRAME:06d}.png" for n in range(1, 7)]
    assert [image_size(t) for t in tiles] == [(32, 30), (32, 30), (33, 30), (32, 31), (32, 31), (33, 31)]
    merged = out_dir / f"{SCENE_FRAME:06d}.png"
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(["tiles", merged.name])  # no leftovers
    assert image_size(merged) == image_size(full) == IMAGE_SIZE

    merged_pixels, full_pixels = decode_rgba(merged), decode_rgba(full)
    # The scene must be worth comparing: objects, and transparent background.
    alphas = full_pixels[3::4]
    assert alphas.count(0) > 100 and alphas.count(255) > 1000
    assert len({full_pixels[i:i + 3] for i in range(0, len(full_pixels), 4)}) > 200
    largest, mean = differences(merged_pixels, full_pixels)
    # Cycles renders a pixel the same in a tile as in the full frame; the
    # tolerance only allows for noise, while a tile off by one pixel differs
    # by tens of levels along every object edge.
    assert largest <= 2 and mean < 0.05, (largest, mean)


@requires_blender
@pytest.mark.blender
async def test_tile_refuses_a_scene_with_another_resolution(
    tiles_scene: Path, compile_tiles: Compile, tmp_path: Path,
) -> None:
    """The tile borders were computed for the submitted resolution; a changed file must not be cut wrongly."""
    # Compiling blocks, so not on the event loop.
    job = await asyncio.to_thread(
        compile_tiles, blendfile=str(tiles_scene), render_output_path=str(tmp_path / "######"),
        frame=SCENE_FRAME, resolution_x=194, resolution_y=122, resolution_percentage=100,
    )
    ctx = RecordingContext()
    with pytest.raises(CommandError) as info:
        await run_blender_task(job.tasks[0], ctx)
    assert info.value.message.splitlines()[0] == (
        "blender-render: command exited abnormally with code 1: Error: tile: the scene renders at 97x61 pixels, "
        "but this job was made for 194x122; submit the job again after changing the resolution"
    )
    assert not (tmp_path / "tiles").exists()
