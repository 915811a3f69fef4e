"""How long the person at this computer has left it alone.

Each source answers ``idle_seconds()``: seconds since the last keyboard or
mouse input (or, for the CPU fallback, since other programs last kept the
processor busy). Which one a worker uses is chosen once at start and shown in
the log and in ``flamenco-peer status``:

- ``file``: a number of seconds read from a file, for tests and automation
  (``FLAMENCO_PEER_IDLE_FILE=/path`` or ``idle_source = "file:/path"``).
- ``x11``: the X screen saver extension (libXss through ctypes), when
  ``$DISPLAY`` opens. Not used by ``auto`` under Wayland, where X11 only sees
  input to X11 windows and would call a busy user idle.
- ``windows``: ``GetLastInputInfo`` (the interactive session's input).
- ``macos``: ``HIDIdleTime`` from ``ioreg``.
- ``cpu``: the fallback. Other programs' processor use, from ``/proc``
  (this worker and its children, e.g. Blender, are left out); without
  ``/proc`` the load average, which includes this worker's own work and is
  therefore only judged between tasks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import ctypes.util
import logging
import os
import platform
import re
import time
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

IDLE_FILE_ENV = "FLAMENCO_PEER_IDLE_FILE"
SOURCE_NAMES = ("auto", "x11", "windows", "macos", "cpu", "file:PATH")


class IdleSourceError(Exception):
    """The source cannot tell the idle time right now (the message says why)."""


class IdleSource:
    name = ""
    # Seconds between two looks; a returning user is noticed within this.
    poll_s = 0.25
    # True when the measure includes this worker's own work (load average):
    # then it is only judged while no task runs.
    includes_own_work = False

    def __init__(self, description: str) -> None:
        self.description = description

    async def idle_seconds(self) -> float:
        raise NotImplementedError

    def close(self) -> None:
        pass


class FileIdleSource(IdleSource):
    """Idle seconds written into a file: for tests, benchmarks and home automation."""

    name = "file"

    def __init__(self, path: Path) -> None:
        super().__init__(f"idle seconds read from {path} (test/automation source)")
        self.path = path

    async def idle_seconds(self) -> float:
        try:
            text = self.path.read_text(encoding="utf-8").strip()  # a few bytes: no thread needed
        except OSError as exc:
            raise IdleSourceError(f"cannot read {self.path} ({exc.strerror or exc}); write the idle seconds into it") from None
        try:
            value = float(text)
        except ValueError:
            raise IdleSourceError(f"{self.path} holds {text[:40]!r}, not a number of idle seconds") from None
        if value != value or value < 0:
            raise IdleSourceError(f"{self.path} holds {value}; idle seconds must be zero or more")
        return value


class _XScreenSaverInfo(ctypes.Structure):
    _fields_ = [
        ("window", ctypes.c_ulong), ("state", ctypes.c_int), ("kind", ctypes.c_int),
        ("til_or_since", ctypes.c_ulong), ("idle", ctypes.c_ulong), ("eventMask", ctypes.c_ulong),
    ]


_IO_ERROR_EXIT_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)
_IO_ERROR_HANDLER = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)


def _io_error_returns(_display: Any) -> int:
    return 0  # Xlib's own handler would exit(1); returning lets the per-display exit handler run


# Kept for the life of the process: Xlib holds a pointer to it.
_IO_ERROR_HANDLER_REF = _IO_ERROR_HANDLER(_io_error_returns)


class X11IdleSource(IdleSource):
    """XScreenSaverQueryInfo's ``idle``: milliseconds since the last input on this X display.

    Xlib calls run on one thread of their own (Xlib is not thread-safe, and
    a stuck X server must not block the event loop). Xlib normally ends the
    whole process when the X server goes away (the user logs out): the
    process-wide I/O error handler set here returns instead, and the
    display's exit handler (libX11 >= 1.7) marks this source as lost. A lost
    display is opened again at most every ``reopen_s``.
    """

    name = "x11"
    reopen_s = 10.0

    def __init__(self, display_name: str, display: int, xlib: Any, xss: Any, info: Any,
                 executor: concurrent.futures.ThreadPoolExecutor, exit_handler: Any) -> None:
        super().__init__(f"keyboard/mouse idle time from the X screen saver extension on {display_name}")
        self._display = display
        self._xlib = xlib
        self._xss = xss
        self._info = info
        self._executor = executor
        self._exit_handler = exit_handler  # kept alive: Xlib holds a pointer to it
        self.display_name = display_name
        self.lost = False
        self._last_reopen = 0.0

    @classmethod
    def open(cls, display_name: str) -> "X11IdleSource":
        """Connect to ``display_name``; raises IdleSourceError saying why it cannot be used."""
        xlib_path, xss_path = ctypes.util.find_library("X11"), ctypes.util.find_library("Xss")
        if not xlib_path or not xss_path:
            raise IdleSourceError("libX11 or libXss is not installed (Debian: apt install libxss1)")
        try:
            xlib, xss = ctypes.CDLL(xlib_path), ctypes.CDLL(xss_path)
        except OSError as exc:
            raise IdleSourceError(f"cannot load libX11/libXss ({exc})") from None
        if not hasattr(xlib, "XSetIOErrorExitHandler"):
            raise IdleSourceError("libX11 is older than 1.7: it would end the peer when the X server goes away")
        xlib.XOpenDisplay.restype = ctypes.c_void_p
        xlib.XOpenDisplay.argtypes = [ctypes.c_char_p]
        xlib.XDefaultRootWindow.restype = ctypes.c_ulong
        xlib.XDefaultRootWindow.argtypes = [ctypes.c_void_p]
        xlib.XSetIOErrorExitHandler.argtypes = [ctypes.c_void_p, _IO_ERROR_EXIT_HANDLER, ctypes.c_void_p]
        xlib.XSetIOErrorHandler.argtypes = [_IO_ERROR_HANDLER]
        xlib.XSetIOErrorHandler.restype = ctypes.c_void_p
        xss.XScreenSaverQueryExtension.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int),
                                                   ctypes.POINTER(ctypes.c_int)]
        xss.XScreenSaverAllocInfo.restype = ctypes.POINTER(_XScreenSaverInfo)
        xss.XScreenSaverQueryInfo.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.POINTER(_XScreenSaverInfo)]
        xlib.XSetIOErrorHandler(_IO_ERROR_HANDLER_REF)
        display = xlib.XOpenDisplay(display_name.encode())
        if not display:
            raise IdleSourceError(f"cannot open X display {display_name!r}")
        event_base, error_base = ctypes.c_int(), ctypes.c_int()
        if not xss.XScreenSaverQueryExtension(display, ctypes.byref(event_base), ctypes.byref(error_base)):
            raise IdleSourceError(f"the X server on {display_name} has no screen saver extension (MIT-SCREEN-SAVER)")
        info = xss.XScreenSaverAllocInfo()
        executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="x11-idle")
        source: X11IdleSource | None = None

        def on_lost(_display: Any, _data: Any) -> None:
            if source is not None:
                source.lost = True

        handler = _IO_ERROR_EXIT_HANDLER(on_lost)
        xlib.XSetIOErrorExitHandler(display, handler, None)
        source = cls(display_name, display, xlib, xss, info, executor, handler)
        return source

    def _query(self) -> float:
        if self.lost:
            self._reopen()
        root = self._xlib.XDefaultRootWindow(self._display)
        if not self._xss.XScreenSaverQueryInfo(self._display, root, self._info) or self.lost:
            raise IdleSourceError("the X server did not answer the idle-time query")
        return self._info.contents.idle / 1000.0

    def _reopen(self) -> None:
        """After the X server went away: try the display again, now and then (the user may log in again)."""
        now = time.monotonic()
        if now - self._last_reopen < self.reopen_s:
            raise IdleSourceError(f"the X server on {self.display_name} went away (logged out?)")
        self._last_reopen = now
        # The old connection is unusable and must not be touched again (not even closed).
        fresh = X11IdleSource.open(self.display_name)  # raises IdleSourceError while there is no X server
        fresh._executor.shutdown(wait=False)

        def on_lost(_display: Any, _data: Any) -> None:
            self.lost = True

        # Adopt its connection, with an exit handler that marks this object.
        self._display, self._info = fresh._display, fresh._info
        self._exit_handler = _IO_ERROR_EXIT_HANDLER(on_lost)
        self._xlib.XSetIOErrorExitHandler(self._display, self._exit_handler, None)
        self.lost = False

    async def idle_seconds(self) -> float:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._query)

    def close(self) -> None:
        self._executor.shutdown(wait=False)


class WindowsIdleSource(IdleSource):
    """``GetLastInputInfo``: input of the interactive session (a service in session 0 sees none)."""

    name = "windows"

    def __init__(self) -> None:
        super().__init__("keyboard/mouse idle time from Windows (GetLastInputInfo)")
        windll: Any = getattr(ctypes, "windll")

        class LastInputInfo(ctypes.Structure):
            _fields_ = [("cbSize", ctypes.c_uint), ("dwTime", ctypes.c_uint)]

        self._info = LastInputInfo()
        self._info.cbSize = ctypes.sizeof(LastInputInfo)
        self._user32 = windll.user32
        self._kernel32 = windll.kernel32
        self._kernel32.GetTickCount.restype = ctypes.c_uint

    async def idle_seconds(self) -> float:
        if not self._user32.GetLastInputInfo(ctypes.byref(self._info)):
            raise IdleSourceError("GetLastInputInfo failed")
        # Both are 32-bit millisecond tick counts; the difference survives their wrap-around.
        return ((self._kernel32.GetTickCount() - self._info.dwTime) & 0xFFFFFFFF) / 1000.0


class MacIdleSource(IdleSource):
    """``HIDIdleTime`` (nanoseconds) of IOHIDSystem, read with ``ioreg``."""

    name = "macos"
    poll_s = 1.0  # a subprocess per look: not four times a second
    _PATTERN = re.compile(rb'"HIDIdleTime"\s*=\s*(\d+)')

    def __init__(self) -> None:
        super().__init__("keyboard/mouse idle time from macOS (ioreg HIDIdleTime)")

    async def idle_seconds(self) -> float:
        try:
            proc = await asyncio.create_subprocess_exec(
                "ioreg", "-c", "IOHIDSystem", "-d", "4", stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL)
            out, _ = await asyncio.wait_for(proc.communicate(), 5.0)
        except (OSError, asyncio.TimeoutError) as exc:
            raise IdleSourceError(f"ioreg failed ({exc or 'timed out'})") from None
        match = self._PATTERN.search(out)
        if not match:
            raise IdleSourceError("ioreg printed no HIDIdleTime")
        return int(match.group(1)) / 1e9


class CpuIdleSource(IdleSource):
    """Seconds since programs other than this worker last kept the processor busy (Linux ``/proc``).

    Busy means more than ``busy_cores`` cores' worth of processor time used by
    processes that are not this peer or its children (Blender, FFmpeg).
    """

    name = "cpu"
    poll_s = 1.0

    def __init__(self, busy_cores: float = 0.5, proc: Path = Path("/proc"),
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(
            f"processor use of other programs (busy above {busy_cores:g} core; fallback: "
            "no keyboard/mouse idle time available)")
        self.busy_cores = busy_cores
        self.proc = proc
        self.clock = clock
        self._ticks_per_s = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._last_busy_at = clock()  # unknown history: count as just used
        self._sample: tuple[float, int, dict[int, int]] | None = None

    async def idle_seconds(self) -> float:
        now, total, own = await asyncio.to_thread(self._read)
        if self._sample is not None:
            then, total_before, own_before = self._sample
            own_delta = sum(ticks - own_before.get(pid, 0) for pid, ticks in own.items())
            others = max(0, (total - total_before) - own_delta) / self._ticks_per_s
            elapsed = max(now - then, 1e-3)
            if others / elapsed > self.busy_cores:
                self._last_busy_at = now
        self._sample = (now, total, own)
        return max(0.0, self.clock() - self._last_busy_at)

    def _read(self) -> tuple[float, int, dict[int, int]]:
        now = self.clock()
        try:
            first = (self.proc / "stat").read_text().split("\n", 1)[0].split()
        except OSError as exc:
            raise IdleSourceError(f"cannot read {self.proc / 'stat'} ({exc.strerror})") from None
        # user nice system idle iowait irq softirq steal: everything but idle and iowait is busy.
        values = [int(v) for v in first[1:9]]
        busy = sum(values) - values[3] - values[4]
        return now, busy, self._own_tree_ticks()

    def _own_tree_ticks(self) -> dict[int, int]:
        """CPU ticks (user + system) of this process and all its descendants."""
        parents: dict[int, int] = {}
        ticks: dict[int, int] = {}
        for entry in os.scandir(self.proc):
            if not entry.name.isdigit():
                continue
            try:
                raw = Path(entry.path, "stat").read_text()
            except OSError:
                continue  # ended meanwhile
            # The command name may contain spaces and parentheses: split after the last ')'.
            fields = raw[raw.rfind(")") + 2:].split()
            pid = int(entry.name)
            parents[pid] = int(fields[1])
            ticks[pid] = int(fields[11]) + int(fields[12])
        own = {os.getpid()}
        changed = True
        while changed:
            changed = False
            for pid, parent in parents.items():
                if parent in own and pid not in own:
                    own.add(pid)
                    changed = True
        return {pid: ticks[pid] for pid in own if pid in ticks}


class LoadAverageIdleSource(IdleSource):
    """The 1-minute load average below ``busy_load``: includes this worker's own work."""

    name = "cpu"
    poll_s = 1.0
    includes_own_work = True

    def __init__(self, busy_load: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(f"load average (busy above {busy_load:g}; fallback: no idle time or /proc available; "
                         "judged only between tasks)")
        self.busy_load = busy_load
        self.clock = clock
        self._last_busy_at = clock()

    async def idle_seconds(self) -> float:
        try:
            load = os.getloadavg()[0]
        except OSError as exc:
            raise IdleSourceError(f"no load average ({exc})") from None
        now = self.clock()
        if load > self.busy_load:
            self._last_busy_at = now
        return now - self._last_busy_at


def cpu_fallback(why: str) -> IdleSource:
    source: IdleSource = CpuIdleSource() if Path("/proc/stat").exists() else LoadAverageIdleSource()
    source.description += f" — {why}"
    return source


def choose_source(setting: str = "auto", env: dict[str, str] | None = None) -> IdleSource:
    """The idle source for the ``idle_source`` setting (``FLAMENCO_PEER_IDLE_FILE`` wins).

    Raises ValueError for a setting that names no source or one that cannot
    work here; ``auto`` always finds one (the CPU fallback, with the reason).
    """
    env = dict(os.environ) if env is None else env
    setting = (setting or "auto").strip()
    if env.get(IDLE_FILE_ENV):
        return FileIdleSource(Path(env[IDLE_FILE_ENV]))
    if setting.startswith("file:"):
        if not setting[5:].strip():
            raise ValueError('idle_source = "file:" names no file; write "file:/path/to/idle-seconds" or "auto"')
        return FileIdleSource(Path(setting[5:]))
    system = platform.system()
    if setting == "x11" or (setting == "auto" and system not in ("Windows", "Darwin")):
        display = env.get("DISPLAY", "")
        reason = ""
        if env.get("WAYLAND_DISPLAY") and setting == "auto":
            reason = "a Wayland session does not tell programs the keyboard/mouse idle time"
        elif not display:
            reason = "no $DISPLAY (no graphical session)"
        else:
            try:
                return X11IdleSource.open(display)
            except IdleSourceError as exc:
                reason = str(exc)
        if setting == "x11":
            raise ValueError(f'idle_source = "x11" cannot be used: {reason}; set idle_source = "auto" or "cpu"')
        return cpu_fallback(reason)
    if setting == "windows" or (setting == "auto" and system == "Windows"):
        if system != "Windows":
            raise ValueError('idle_source = "windows" works only on Windows; set idle_source = "auto"')
        return WindowsIdleSource()
    if setting == "macos" or (setting == "auto" and system == "Darwin"):
        if system != "Darwin":
            raise ValueError('idle_source = "macos" works only on macOS; set idle_source = "auto"')
        return MacIdleSource()
    if setting == "cpu":
        return cpu_fallback("chosen in the config")
    raise ValueError(f"idle_source = {setting!r} is not a source; use one of {', '.join(SOURCE_NAMES)}")
