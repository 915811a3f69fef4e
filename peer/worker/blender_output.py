"""Understanding Blender's command-line output, one line at a time.

Two formats exist in the wild:

- Blender ≤ 4.5 prints bare lines:
      Fra:1 Mem:8.49M (Peak 10.20M) | Time:00:00.04 | ... | Sample 1/1
      Saved: '/tmp/out/frame_000001.png'
       Time: 00:00.15 (Saving: 00:00.11)
      skipping existing frame "/tmp/out/frame_000001.png"
- Blender ≥ 5.0 logs through CLOG, with a timestamp and a category column:
      00:01.184  render           | Saved: '/tmp/out/frame_000001.png'

The parser is pure (no I/O) so it can be tested on captured output.
`StepCounter` turns its events into Flamenco-style progress steps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# `00:01.184  render           | message`. The timestamp is optional so a
# log configured without it still parses; the category is a lowercase
# dotted identifier, which keeps `Fra:1 Mem:... | ...` from matching.
_LOG_PREFIX = re.compile(r"^(?:\d+:\d{2}(?::\d{2})?\.\d+\s+)?[a-z][\w.]*\s+\| (?P<msg>.*)$")
_FRAME = re.compile(r"^Fra:(?P<frame>-?\d+) ")
_SAVED = re.compile(r"^Saved: '(?P<path>.*)'\s*$")
_TIME = re.compile(r"^\s*Time: ?(?P<time>\d+(?::\d+)*(?:\.\d+)?)")
_SKIPPED = re.compile(r'^\s*skipping existing frame(?:\s+"(?P<path>.*)")?', re.IGNORECASE)
_SAMPLES = re.compile(r"\b(?:Sample|Rendering) (?P<done>\d+) ?/ ?(?P<total>\d+)")


@dataclass(frozen=True)
class FrameStarted:
    frame: int


@dataclass(frozen=True)
class FrameSaved:
    path: str


@dataclass(frozen=True)
class FrameTime:
    """The ` Time:` summary Blender prints after finishing a frame."""

    seconds: float | None


@dataclass(frozen=True)
class FrameSkipped:
    """Blender skipped a frame because its output exists (no-overwrite mode).

    The file is still the task's output: an earlier, interrupted run of the
    same task wrote it, and it may never have left this worker."""

    path: str | None = None


@dataclass(frozen=True)
class SampleProgress:
    done: int
    total: int


Event = FrameStarted | FrameSaved | FrameTime | FrameSkipped | SampleProgress


def parse_duration(text: str) -> float | None:
    """'00:00.15' -> 0.15, '01:02:03.50' -> 3723.5; None if unreadable."""
    try:
        seconds = 0.0
        for part in text.split(":"):
            seconds = seconds * 60 + float(part)
    except ValueError:
        return None
    return seconds


def strip_log_prefix(line: str) -> str:
    """Remove a Blender 5.x `timestamp  category | ` prefix, if present."""
    m = _LOG_PREFIX.match(line)
    return m.group("msg") if m else line


class BlenderOutputParser:
    """Feed it lines; it tells you what happened."""

    def __init__(self) -> None:
        self._current_frame: int | None = None
        self._last_samples: tuple[int, int] | None = None

    @property
    def current_frame(self) -> int | None:
        return self._current_frame

    def feed(self, line: str) -> list[Event]:
        msg = strip_log_prefix(line.rstrip("\r\n"))
        events: list[Event] = []

        if m := _FRAME.match(msg):
            frame = int(m.group("frame"))
            # ~40 `Fra:` lines per frame; only the first one is news.
            if frame != self._current_frame:
                self._current_frame = frame
                self._last_samples = None
                events.append(FrameStarted(frame))
            if s := _SAMPLES.search(msg):
                samples = (int(s.group("done")), int(s.group("total")))
                if samples != self._last_samples:
                    self._last_samples = samples
                    events.append(SampleProgress(*samples))
            return events

        if m := _SAVED.match(msg):
            events.append(FrameSaved(m.group("path")))
        elif m := _TIME.match(msg):
            events.append(FrameTime(parse_duration(m.group("time"))))
            # The same frame number may be rendered again (`-f 1,1`).
            self._current_frame = None
        elif m := _SKIPPED.match(msg):
            events.append(FrameSkipped(m.group("path")))
            self._current_frame = None
        elif s := _SAMPLES.search(msg):
            # Blender 5.x may log render progress without a `Fra:` prefix.
            events.append(SampleProgress(int(s.group("done")), int(s.group("total"))))
        return events


class StepCounter:
    """Decides which events complete one step (≈ one frame) of a render.

    Flamenco counts a step per ` Time:` line and per skipped frame; we do the
    same. A Blender whose log has no ` Time:` lines would then never report
    progress, so until the first ` Time:` line is seen, each `Saved:` counts
    instead, and the ` Time:` line that closes such a frame is not counted
    again. (The only cost: a multi-view frame that saves several files before
    the first ` Time:` line counts once per file.)
    """

    def __init__(self) -> None:
        self._time_lines_seen = False
        self._counted_open_frame = False
        self.steps = 0
        self.saved = 0
        self.skipped = 0

    def feed(self, event: Event) -> bool:
        """Return True when `event` completes a step."""
        done = False
        if isinstance(event, FrameSkipped):
            self.skipped += 1
            done = True
        elif isinstance(event, FrameSaved):
            self.saved += 1
            if not self._time_lines_seen:
                self._counted_open_frame = True
                done = True
        elif isinstance(event, FrameTime):
            done = self._time_lines_seen or not self._counted_open_frame
            self._time_lines_seen = True
            self._counted_open_frame = False
        if done:
            self.steps += 1
        return done
