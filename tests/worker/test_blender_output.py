"""BlenderOutputParser and StepCounter on captured (and documented) Blender output."""

from __future__ import annotations

import pytest

from peer.worker.blender_output import (
    BlenderOutputParser,
    Event,
    FrameSaved,
    FrameSkipped,
    FrameStarted,
    FrameTime,
    SampleProgress,
    StepCounter,
    parse_duration,
    strip_log_prefix,
)

from .conftest import read_fixture

pytestmark = pytest.mark.timeout(10)

CAPTURE = "/tmp/flamenco-peer-capture/render"


def parse_all(lines: list[str]) -> list[Event]:
    parser = BlenderOutputParser()
    return [event for line in lines for event in parser.feed(line)]


def count_steps(events: list[Event]) -> int:
    counter = StepCounter()
    return sum(counter.feed(e) for e in events)


def of_type(events: list[Event], kind: type) -> list[Event]:
    return [e for e in events if isinstance(e, kind)]


def test_blender_34_cycles_capture() -> None:
    events = parse_all(read_fixture("blender-3.4-cycles.txt"))
    assert of_type(events, FrameStarted) == [FrameStarted(1), FrameStarted(2), FrameStarted(3)]
    assert of_type(events, FrameSaved) == [FrameSaved(f"{CAPTURE}/frame_00000{n}.png") for n in (1, 2, 3)]
    assert of_type(events, FrameTime) == [FrameTime(0.14), FrameTime(0.0), FrameTime(0.0)]
    assert of_type(events, SampleProgress) == [SampleProgress(0, 1), SampleProgress(1, 1)] * 3
    assert count_steps(events) == 3


def test_blender_34_event_order_per_frame() -> None:
    events = parse_all(read_fixture("blender-3.4-cycles.txt"))
    kinds = [type(e).__name__ for e in events if not isinstance(e, SampleProgress)]
    assert kinds == ["FrameStarted", "FrameSaved", "FrameTime"] * 3


def test_blender_34_skip_existing_capture() -> None:
    events = parse_all(read_fixture("blender-3.4-skip-existing.txt"))
    assert of_type(events, FrameSkipped) == [FrameSkipped(f"{CAPTURE}/frame_00000{n}.png") for n in (1, 2, 3)]
    assert of_type(events, FrameSaved) == [FrameSaved(f"{CAPTURE}/frame_000004.png")]
    assert count_steps(events) == 4  # three skipped + one rendered, like Flamenco


def test_blender_34_eevee_capture() -> None:
    events = parse_all(read_fixture("blender-3.4-eevee.txt"))
    assert of_type(events, SampleProgress) == [SampleProgress(1, 4), SampleProgress(4, 4)]
    assert of_type(events, FrameSaved) == [FrameSaved(f"{CAPTURE}/eevee_000001.png")]
    assert of_type(events, FrameTime) == [FrameTime(3.82)]
    assert count_steps(events) == 1


def test_blender_34_broken_file_has_no_events() -> None:
    assert parse_all(read_fixture("blender-3.4-broken-blendfile.txt")) == []


def test_blender_5x_log_format() -> None:
    events = parse_all(read_fixture("blender-5.x-log-format-reconstructed.txt"))
    assert of_type(events, FrameSaved) == [FrameSaved(f"{CAPTURE}/frame_00000{n}.png") for n in (1, 2, 3)]
    assert of_type(events, FrameTime) == [FrameTime(0.21), FrameTime(0.04), FrameTime(0.04)]
    assert count_steps(events) == 3


def test_blender_5x_without_time_lines_counts_saved_files() -> None:
    # bpy 5.0 was observed printing only the `Saved:` lines; progress must still move.
    lines = [l for l in read_fixture("blender-5.x-log-format-reconstructed.txt") if "Time:" not in l]
    events = parse_all(lines)
    assert len(of_type(events, FrameSaved)) == 3
    assert count_steps(events) == 3


def test_steps_are_live_not_only_at_the_end() -> None:
    """Each frame's step is reported by the line that finishes it, not later."""
    counter = StepCounter()
    parser = BlenderOutputParser()
    steps_after_line = []
    for line in read_fixture("blender-3.4-cycles.txt"):
        for event in parser.feed(line):
            counter.feed(event)
        steps_after_line.append(counter.steps)
    saved_rows = [i for i, l in enumerate(read_fixture("blender-3.4-cycles.txt")) if l.startswith("Saved:")]
    # Frame 1 counts at its Saved line (no Time line seen yet), later ones at their Time line.
    assert steps_after_line[saved_rows[0]] == 1
    assert steps_after_line[saved_rows[1]] == 1
    assert steps_after_line[saved_rows[1] + 1] == 2
    assert steps_after_line[-1] == 3


def test_movie_output_counts_time_lines() -> None:
    # Rendering to a movie prints `Append frame N` instead of `Saved:`.
    events = parse_all(["Fra:1 Mem:1M | Time:00:00.01 | Sample 1/1", "Append frame 1", " Time: 00:00.10 (Saving: 00:00.01)",
                        "Fra:2 Mem:1M | Time:00:00.01 | Sample 1/1", "Append frame 2", " Time: 00:00.10 (Saving: 00:00.01)"])
    assert count_steps(events) == 2
    assert of_type(events, FrameSaved) == []


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("Saved: '/tmp/it''s here/0001.png'", [FrameSaved("/tmp/it''s here/0001.png")]),
        ("00:00.327  render           | Saved: '/o/0001.png'", [FrameSaved("/o/0001.png")]),
        ("render           | Saved: '/o/0001.png'", [FrameSaved("/o/0001.png")]),
        ("01:02:03.004  render           | Time: 01:00:00.50 (Saving: 00:00.01)", [FrameTime(3600.5)]),
        ('Skipping existing frame "/o/0001.png"', [FrameSkipped("/o/0001.png")]),
        ('00:00.100  render           | skipping existing frame "/o/0001.png"', [FrameSkipped("/o/0001.png")]),
        ("skipping existing frame", [FrameSkipped(None)]),
        ("Fra:7 Mem:1M (Peak 2M) | Time:00:00.04 | Mem:0.8M, Peak:0.8M | Scene, ViewLayer | Sample 3/16",
         [FrameStarted(7), SampleProgress(3, 16)]),
        ("Fra:1 Mem:10.24M (Peak 11.35M) | Time:00:01.70 | Rendering 1 / 4 samples", [FrameStarted(1), SampleProgress(1, 4)]),
        ("print('Saved: nothing')", []),
        ("Read blend: /tmp/x.blend", []),
        ("", []),
    ],
)
def test_single_lines(line: str, expected: list[Event]) -> None:
    assert BlenderOutputParser().feed(line) == expected


def test_fra_time_column_is_not_a_frame_time() -> None:
    parser = BlenderOutputParser()
    events = parser.feed("Fra:1 Mem:8.89M (Peak 10.20M) | Time:00:00.04 | Mem:0.00M, Peak:0.00M | Scene, ViewLayer | Updating Lights")
    assert events == [FrameStarted(1)]
    assert parser.current_frame == 1


def test_same_frame_twice_starts_twice() -> None:
    parser = BlenderOutputParser()
    lines = ["Fra:1 Mem:1M | Time:00:00.00 | Sync", "Saved: '/o/1.png'", " Time: 00:00.01 (Saving: 00:00.00)",
             "Fra:1 Mem:1M | Time:00:00.00 | Sync"]
    events = [e for l in lines for e in parser.feed(l)]
    assert of_type(events, FrameStarted) == [FrameStarted(1), FrameStarted(1)]


def test_strip_log_prefix_leaves_other_lines_alone() -> None:
    fra = "Fra:1 Mem:8.49M (Peak 10.20M) | Time:00:00.00 | Mem:0.00M, Peak:0.00M | Scene, ViewLayer | Initializing"
    assert strip_log_prefix(fra) == fra
    assert strip_log_prefix('00:00.477  blend            | Read blend: "/x.blend"') == 'Read blend: "/x.blend"'


@pytest.mark.parametrize(("text", "seconds"), [("00:00.15", 0.15), ("01:30.00", 90.0), ("01:00:00.5", 3600.5), ("x", None)])
def test_parse_duration(text: str, seconds: float | None) -> None:
    if seconds is None:
        assert parse_duration(text) is None
    else:
        assert parse_duration(text) == pytest.approx(seconds)
