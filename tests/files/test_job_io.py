"""The glue between jobs and files: which paths are rewritten on a worker, and where outputs go."""

from __future__ import annotations

from peer.files.job_io import output_root_of, rewrite_paths

REPLACEMENTS = [("/home/ann/shot/main.blend", "/data/checkouts/j/shot/main.blend"),
                ("/home/ann/renders/", "/data/job-outputs/j")]


def test_paths_under_a_replaced_prefix_are_rewritten_at_folder_boundaries_only():
    params = {
        "blendfile": "/home/ann/shot/main.blend",
        "args": ["--render-output", "/home/ann/renders/shot/######", "--render-format", "PNG"],
        "inputGlob": "/home/ann/renders/shot/*.png",
        "nested": {"other": "/home/ann/renders2/x.png", "windows": "/home/ann/renders\\x.png"},
        "exe": "{blender}", "count": 3,
    }
    assert rewrite_paths(params, REPLACEMENTS) == {
        "blendfile": "/data/checkouts/j/shot/main.blend",
        "args": ["--render-output", "/data/job-outputs/j/shot/######", "--render-format", "PNG"],
        "inputGlob": "/data/job-outputs/j/shot/*.png",
        "nested": {"other": "/home/ann/renders2/x.png", "windows": "/data/job-outputs/j\\x.png"},
        "exe": "{blender}", "count": 3,
    }


def test_output_root_comes_from_flamencos_output_settings():
    assert output_root_of({"render_output_root": "/r", "render_output_path": "/x/y/####"}) == "/r"
    assert output_root_of({"render_output_path": "/x/y/####"}) == "/x/y"
    assert output_root_of({"frames": "1-10"}) == ""
