# SPDX-License-Identifier: GPL-3.0-or-later
"""Farm status and job progress, polled without freezing Blender.

A ``bpy.app.timers`` callback runs on Blender's main thread every couple of
seconds: it takes a snapshot of what to ask (plain values), hands the HTTP
calls to a worker thread, and applies the answer on a later tick. bpy is
only touched on the main thread.
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bpy

from . import connection, local_peer, preferences
from .client import FarmClient, FarmError, READ_TIMEOUT_S
from .state import farm

POLL_INTERVAL_S = 2.0


@dataclass(frozen=True)
class Snapshot:
    manager_url: str
    data_dir: Path
    peer_url: str          # the URL of the peer Blender started, when it is ready
    job_id: str
    job_url: str


@dataclass
class PollResult:
    mode: str
    base_url: str = ""
    status: dict[str, Any] | None = None
    manager_status: str = ""
    version: dict[str, Any] | None = None
    job: dict[str, Any] | None = None
    job_error: str = ""
    error: str = ""


def snapshot(context: Any = None) -> Snapshot:
    prefs = preferences.get(context)
    peer_url = ""
    if local_peer.owned.peer is not None and not connection.manager_mode(prefs):
        peer_url = connection.local_peer_url(prefs)
    job = farm.job
    return Snapshot(
        manager_url=str(prefs.manager_url or "").strip(), data_dir=connection.data_dir(prefs), peer_url=peer_url,
        job_id=job.job_id if job and not job.finished else "", job_url=job.base_url if job else "",
    )


def poll(snap: Snapshot) -> PollResult:
    """The HTTP part: safe to run in any thread."""
    if snap.manager_url:
        client = FarmClient(snap.manager_url, what="Flamenco Manager", unreachable_hint=connection.MANAGER_HINT)
        result = PollResult(mode="manager", base_url=client.base_url)
        try:
            result.version = client.version()
            result.manager_status = client.manager_status() or "unknown"
        except FarmError as exc:
            result.error = str(exc)
    else:
        url = snap.peer_url
        if not url:
            running = local_peer.find_running(snap.data_dir, timeout=0.5)
            url = running.url if running else ""
        result = PollResult(mode="peer", base_url=url)
        if url:
            try:
                result.status = FarmClient(url).farm_status()
            except FarmError as exc:
                result.error = str(exc)
        else:
            result.error = connection.NO_PEER_HINT
    if snap.job_id and snap.job_url:
        try:
            result.job = FarmClient(snap.job_url, timeout=READ_TIMEOUT_S).job(snap.job_id)
        except FarmError as exc:
            result.job_error = str(exc)
    return result


def apply(result: PollResult) -> None:
    """Main thread: store the answer for the panel."""
    farm.mode = result.mode
    farm.base_url = result.base_url
    farm.status = result.status
    farm.manager_status = result.manager_status
    if result.version is not None:
        farm.version = result.version
    farm.error = result.error
    if farm.job is not None:
        if result.job is not None:
            farm.job.update(result.job)
        elif result.job_error:
            farm.job.error = result.job_error
    _redraw()


def refresh_now(context: Any = None) -> PollResult:
    """Poll on the calling thread (operators, tests)."""
    result = poll(snapshot(context))
    apply(result)
    return result


def _redraw() -> None:
    wm = getattr(bpy.context, "window_manager", None)
    for window in getattr(wm, "windows", []):
        for area in window.screen.areas:
            if area.type in ("VIEW_3D", "PREFERENCES"):
                area.tag_redraw()


class _Poller:
    executor: concurrent.futures.ThreadPoolExecutor | None = None
    pending: concurrent.futures.Future | None = None


_poller = _Poller()


def _tick() -> float | None:
    if _poller.executor is None:
        return None
    pending = _poller.pending
    if pending is not None:
        if not pending.done():
            return 0.2
        _poller.pending = None
        try:
            apply(pending.result())
        except Exception as exc:  # a bug must not stop the polling; show it
            farm.error = f"Polling the farm failed: {type(exc).__name__}: {exc}"
        return POLL_INTERVAL_S
    try:
        _poller.pending = _poller.executor.submit(poll, snapshot())
    except Exception as exc:
        farm.error = f"Polling the farm failed: {type(exc).__name__}: {exc}"
        return POLL_INTERVAL_S
    return 0.2


def start() -> None:
    if _poller.executor is None:
        _poller.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="flamenco-peer")
    if not bpy.app.timers.is_registered(_tick):
        bpy.app.timers.register(_tick, first_interval=0.5, persistent=True)


def stop() -> None:
    if bpy.app.timers.is_registered(_tick):
        bpy.app.timers.unregister(_tick)
    executor, _poller.executor, _poller.pending = _poller.executor, None, None
    if executor is not None:
        executor.shutdown(wait=False, cancel_futures=True)
