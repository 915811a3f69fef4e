"""Whether this worker may take work right now, and why not.

Three things decide, in this order:

1. ``worker_mode``: ``never`` (this computer only coordinates and serves
   clients), ``always`` (Flamenco's behaviour, the default) or ``when-idle``.
2. The sleep schedule (``sleep_days``/``sleep_start``/``sleep_end``): inside
   the window the worker sleeps.
3. For ``when-idle``: the user has left the keyboard and mouse alone for at
   least ``idle_threshold_s``. Any input makes the idle time drop below the
   threshold again, and the worker stops (see ``Worker``).

The policy looks at its idle source every ``poll_s`` (0.25 s for input idle
times), so a returning user is noticed well within the 2 s the worker has to
stop rendering.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Awaitable, Callable

from ..schedule import ScheduleError, SleepSchedule
from .sources import IdleSource, IdleSourceError, choose_source

log = logging.getLogger(__name__)

WORKER_MODES = ("always", "when-idle", "never")
ON_SHUTDOWN = ("requeue", "finish")

AVAILABLE = "available"
USER_ACTIVE = "user active"
ASLEEP = "asleep (schedule)"
DISABLED = "disabled"
UNKNOWN_IDLE = "idle time unknown"


@dataclass(frozen=True)
class Availability:
    may_work: bool
    state: str  # AVAILABLE, USER_ACTIVE, ASLEEP, DISABLED or UNKNOWN_IDLE
    reason: str  # one line for people: why (not)


class AvailabilityPolicy:
    """Tracks whether the worker may work; ``wait_for_change`` wakes on every flip."""

    def __init__(
        self,
        mode: str = "always",
        *,
        idle_threshold_s: float = 300.0,
        schedule: SleepSchedule | None = None,
        source: IdleSource | None = None,
        source_setting: str = "auto",
        open_source: Callable[[str], IdleSource] = choose_source,
        now: Callable[[], datetime] = datetime.now,
    ) -> None:
        if mode not in WORKER_MODES:
            raise ValueError(f"worker_mode = {mode!r} is not a mode; use one of {', '.join(WORKER_MODES)}")
        self.mode = mode
        self.idle_threshold_s = idle_threshold_s
        self.schedule = schedule
        self.source = source
        self.source_setting = source_setting
        self._open_source = open_source
        self._now = now
        self.working = False  # set by the worker: a load-average source is judged only between tasks
        self.current = Availability(mode != "never" and mode != "when-idle", *self._static_state())
        self._version = 0
        self._changed = asyncio.Event()
        self._source_error = ""

    def _static_state(self) -> tuple[str, str]:
        if self.mode == "never":
            return DISABLED, 'worker_mode = "never": this computer takes no tasks'
        if self.mode == "when-idle":
            return UNKNOWN_IDLE, "looking at the user's idle time"
        return AVAILABLE, ""

    @property
    def uses_idle_time(self) -> bool:
        return self.mode == "when-idle"

    @property
    def needs_watching(self) -> bool:
        return self.uses_idle_time or self.schedule is not None

    @property
    def poll_s(self) -> float:
        if self.uses_idle_time and self.source is not None:
            return self.source.poll_s
        return 1.0 if self.uses_idle_time else 5.0

    def describe(self) -> str:
        """The settings in one line, for the log and ``status``."""
        parts = [f"worker_mode={self.mode}"]
        if self.uses_idle_time:
            what = self.source.description if self.source else f"idle source {self.source_setting!r} (opening)"
            parts.append(f"idle after {self.idle_threshold_s:g} s of {what}")
        if self.schedule is not None:
            parts.append(f"sleeps {self.schedule.describe()}")
        return "; ".join(parts)

    async def open(self) -> None:
        """Open the idle source (it may talk to an X server: not on the event loop)."""
        if self.uses_idle_time and self.source is None:
            try:
                self.source = await asyncio.to_thread(self._open_source, self.source_setting)
            except ValueError as exc:
                self._source_error = str(exc)
                log.error("worker: %s; the worker takes no tasks until this is fixed", exc)
            else:
                log.info("worker: when-idle uses %s", self.source.description)
        await self.refresh()

    def close(self) -> None:
        if self.source is not None:
            self.source.close()

    async def refresh(self) -> Availability:
        """Look again; wakes ``wait_for_change`` if the verdict flipped."""
        verdict = await self._decide()
        if verdict != self.current:
            flipped = verdict.may_work != self.current.may_work
            self.current = verdict
            if flipped:
                log.info("worker: %s", "may work" if verdict.may_work else f"stops taking work: {verdict.reason}")
                self._version += 1
                self._changed.set()
                self._changed = asyncio.Event()
        return self.current

    async def _decide(self) -> Availability:
        if self.mode == "never":
            return Availability(False, *self._static_state())
        if self.schedule is not None and self.schedule.is_asleep(self._now()):
            return Availability(False, ASLEEP, f"inside the sleep schedule ({self.schedule.describe()})")
        if not self.uses_idle_time:
            return Availability(True, AVAILABLE, "")
        if self.source is None:
            return Availability(False, UNKNOWN_IDLE, self._source_error or "the idle source is not open yet")
        if self.source.includes_own_work and self.working and self.current.may_work:
            return self.current  # our own render would look like a user: keep the verdict until the task ends
        try:
            idle = await self.source.idle_seconds()
        except IdleSourceError as exc:
            return Availability(False, UNKNOWN_IDLE, f"{exc}; not taking work")
        if idle >= self.idle_threshold_s:
            return Availability(True, AVAILABLE, f"user idle for {idle:.0f} s")
        return Availability(False, USER_ACTIVE,
                            f"last input {idle:.0f} s ago; works after {self.idle_threshold_s:g} s without input")

    def wait_for_change(self, timeout: float | None = None) -> Awaitable[bool]:
        """Until ``may_work`` flips (True) or ``timeout`` passes (False).

        Counts from the call, not from when the wait starts running: a flip
        in between (the watch task may run first) is not missed.
        """
        return self._wait(self._changed, timeout)

    @staticmethod
    async def _wait(event: asyncio.Event, timeout: float | None) -> bool:
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
            return True
        except TimeoutError:
            return False

    async def watch(self) -> None:
        """Look at the idle source and the clock until cancelled."""
        if not self.needs_watching:
            return
        while True:
            started = time.monotonic()
            try:
                await self.refresh()
            except Exception:  # a broken source must not stop the worker; say so and keep looking
                log.exception("worker: checking availability failed")
            await asyncio.sleep(max(0.05, self.poll_s - (time.monotonic() - started)))


def policy_from_settings(
    *, worker_mode: str, idle_threshold_s: float, idle_source: str, sleep_days: str, sleep_start: str,
    sleep_end: str,
) -> AvailabilityPolicy:
    """The policy for the config settings; ValueError names the setting and the fix."""
    if idle_threshold_s < 0:
        raise ValueError(f"idle_threshold_s = {idle_threshold_s} must be zero or more seconds")
    try:
        schedule = SleepSchedule.parse(sleep_days, sleep_start, sleep_end)
    except ScheduleError as exc:
        raise ValueError(str(exc)) from None
    _check_source_setting(idle_source)
    return AvailabilityPolicy(worker_mode, idle_threshold_s=idle_threshold_s, schedule=schedule,
                              source_setting=idle_source)


def _check_source_setting(setting: str) -> None:
    from .sources import SOURCE_NAMES

    if setting.startswith("file:") and len(setting) > 5:
        return
    if setting not in SOURCE_NAMES or setting == "file:PATH":
        raise ValueError(f"idle_source = {setting!r} is not a source; use one of {', '.join(SOURCE_NAMES)}")
