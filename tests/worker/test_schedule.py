"""The sleep schedule: Flamenco's days and HH:MM window, and messages for bad settings."""

from __future__ import annotations

from datetime import datetime

import pytest

from peer.worker.schedule import ScheduleError, SleepSchedule

# 2024-01-01 was a Monday.
MONDAY = datetime(2024, 1, 1)


def at(day_offset: int, hhmm: str) -> datetime:
    hours, minutes = map(int, hhmm.split(":"))
    return MONDAY.replace(day=1 + day_offset, hour=hours, minute=minutes)


def test_no_schedule_when_start_and_end_are_empty():
    assert SleepSchedule.parse("", "", "") is None


def test_inside_the_window_on_a_listed_day_the_worker_sleeps():
    schedule = SleepSchedule.parse("mo tu we", "09:00", "18:00")
    assert schedule is not None
    assert schedule.is_asleep(at(0, "09:00"))  # start is inclusive
    assert schedule.is_asleep(at(2, "17:59"))
    assert not schedule.is_asleep(at(0, "18:00"))  # end is exclusive
    assert not schedule.is_asleep(at(0, "08:59"))
    assert not schedule.is_asleep(at(3, "12:00"))  # Thursday is not listed
    assert schedule.describe() == "mo tu we 09:00-18:00"


def test_empty_days_mean_every_day_and_a_reversed_window_is_swapped():
    schedule = SleepSchedule.parse("", "18:00", "09:00")
    assert schedule is not None
    assert all(schedule.is_asleep(at(d, "12:00")) for d in range(7))
    assert not schedule.is_asleep(at(5, "20:00"))  # no window across midnight: Flamenco swaps instead
    assert schedule.describe() == "every day 09:00-18:00"


def test_days_accept_commas_full_names_and_any_case():
    schedule = SleepSchedule.parse("Sat,sunday", "00:00", "24:00")
    assert schedule is not None
    assert schedule.is_asleep(at(5, "00:00")) and schedule.is_asleep(at(6, "23:59"))
    assert not schedule.is_asleep(at(4, "23:59"))


@pytest.mark.parametrize(("days", "start", "end", "names"), [
    ("mo", "9", "18:00", ["sleep_start", "HH:MM"]),
    ("mo", "09:00", "25:00", ["sleep_end", "HH:MM"]),
    ("mo", "09:60", "18:00", ["sleep_start"]),
    ("monday funday", "09:00", "18:00", ["'funday'", "mo tu we th fr"]),
    ("m", "09:00", "18:00", ["'m'"]),
    ("mo", "09:00", "", ["sleep_end"]),
    ("mo tu", "", "", ["sleep_start", "sleep_end"]),
])
def test_bad_settings_name_the_setting_and_the_fix(days, start, end, names):
    with pytest.raises(ScheduleError) as info:
        SleepSchedule.parse(days, start, end)
    for name in names:
        assert name in str(info.value)
