"""The sleep schedule: hours of the week when this worker takes no tasks.

Flamenco's rules: ``days`` names weekdays by their first two letters
(``"mo tu we th fr sa su"``, separated by spaces or commas; empty means every
day), ``start`` and ``end`` are local ``HH:MM`` times, and a start after the
end is swapped (there are no windows across midnight). Inside
``[start, end)`` on one of the days the worker sleeps. ``end = "24:00"``
reaches the end of the day.

Configured in ``config.toml`` as::

    sleep_days = "mo tu we th fr"
    sleep_start = "09:00"
    sleep_end = "18:00"
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

DAY_NAMES = ("mo", "tu", "we", "th", "fr", "sa", "su")  # index = datetime.weekday()
_FULL_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_TIME = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*$")


class ScheduleError(ValueError):
    pass


@dataclass(frozen=True)
class SleepSchedule:
    days: frozenset[int]  # weekday numbers, Monday = 0; all seven when the setting was empty
    start_minute: int  # minutes after midnight, inclusive
    end_minute: int  # exclusive; 1440 = end of day

    @classmethod
    def parse(cls, days: str, start: str, end: str) -> "SleepSchedule | None":
        """The schedule of these settings, or None when none is set (start and end both empty)."""
        if not start.strip() and not end.strip():
            if days.strip():
                raise ScheduleError(
                    f"sleep_days = {days!r} is set but sleep_start and sleep_end are not; "
                    'add for example sleep_start = "09:00" and sleep_end = "18:00", or remove sleep_days')
            return None
        if not start.strip() or not end.strip():
            missing = "sleep_start" if not start.strip() else "sleep_end"
            raise ScheduleError(f"the sleep schedule needs both sleep_start and sleep_end; set {missing} "
                                '(a local time like "18:00") or remove both')
        first, last = _minutes("sleep_start", start), _minutes("sleep_end", end)
        if first > last:  # Flamenco swaps a reversed window
            first, last = last, first
        return cls(_days(days), first, last)

    def is_asleep(self, when: datetime) -> bool:
        minute = when.hour * 60 + when.minute
        return when.weekday() in self.days and self.start_minute <= minute < self.end_minute

    def describe(self) -> str:
        days = "every day" if len(self.days) == 7 else " ".join(DAY_NAMES[d] for d in sorted(self.days))
        return f"{days} {_hhmm(self.start_minute)}-{_hhmm(self.end_minute)}"


def _minutes(key: str, text: str) -> int:
    match = _TIME.match(text)
    if match:
        hours, minutes = int(match.group(1)), int(match.group(2))
        if (hours < 24 and minutes < 60) or (hours == 24 and minutes == 0):
            return hours * 60 + minutes
    raise ScheduleError(f'{key} = {text!r} is not a time; write it as "HH:MM" in 24-hour local time, like "18:30"')


def _days(text: str) -> frozenset[int]:
    words = [w for w in re.split(r"[\s,]+", text.strip().lower()) if w]
    if not words:
        return frozenset(range(7))
    days: set[int] = set()
    for word in words:
        # "mo", "mon" and "monday" all name Monday.
        if len(word) < 2 or not any(full.startswith(word) for full in _FULL_NAMES):
            raise ScheduleError(
                f"sleep_days = {text!r}: {word!r} is not a day; use two-letter days separated by spaces, "
                f'like "mo tu we th fr" ({", ".join(DAY_NAMES)})')
        days.add(DAY_NAMES.index(word[:2]))
    return frozenset(days)


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"
