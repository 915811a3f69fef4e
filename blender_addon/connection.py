# SPDX-License-Identifier: GPL-3.0-or-later
"""Which farm the add-on talks to, and the local peer it may run.

Manager mode: a Flamenco Manager URL is set in the preferences. Peer mode
(the default): the Flamenco Peer on this computer, found through its
``peer.json``, or started by the add-on when the artist opts in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bpy

from . import local_peer, preferences
from .client import PACKING_SUBMIT_TIMEOUT_S, FarmClient, FarmError
from .state import farm

ADDON_DIR = Path(__file__).resolve().parent

NO_PEER_HINT = ("No Flamenco Peer runs on this computer: tick 'Render for the farm' or press 'Start Peer' in the "
                "Flamenco panel, run `flamenco-peer run`, or set a Flamenco Manager URL in the add-on preferences.")
MANAGER_HINT = "Check the Flamenco Manager URL in the add-on preferences, and that the Manager runs."


def data_dir(prefs: Any) -> Path:
    custom = str(prefs.peer_data_dir or "").strip()
    return Path(bpy.path.abspath(custom)) if custom else local_peer.default_data_dir()


def manager_mode(prefs: Any) -> bool:
    return bool(str(prefs.manager_url or "").strip())


def client(prefs: Any | None = None, *, timeout: float | None = None) -> FarmClient:
    """A client for the farm the preferences point to (no request is made for a Manager)."""
    prefs = prefs or preferences.get()
    kwargs = {"timeout": timeout} if timeout else {}
    if manager_mode(prefs):
        farm.mode = "manager"
        farm.base_url = FarmClient(str(prefs.manager_url)).base_url
        return FarmClient(farm.base_url, what="Flamenco Manager", unreachable_hint=MANAGER_HINT, **kwargs)
    farm.mode = "peer"
    farm.base_url = local_peer_url(prefs)
    # The local peer packs the project during the check and the submission.
    return FarmClient(farm.base_url, what="Flamenco Peer", unreachable_hint=NO_PEER_HINT,
                      submit_timeout=PACKING_SUBMIT_TIMEOUT_S, **kwargs)


def local_peer_url(prefs: Any) -> str:
    """The URL of this computer's peer: the one Blender started, else the one its ``peer.json`` names."""
    owned = local_peer.owned.peer
    if owned is not None:
        try:
            url = owned.ready()
        except local_peer.PeerStartError as exc:
            local_peer.owned.peer = None
            farm.peer_note = ""
            farm.error = f"The peer started by Blender stopped: {exc}"
            return ""
        if url:
            return url
        farm.peer_note = "The peer is starting..."
        return ""
    running = local_peer.find_running(data_dir(prefs), timeout=0.5)
    return running.url if running else ""


def forget_farm() -> None:
    """The preferences now point elsewhere: what the panel shows is stale."""
    farm.status = None
    farm.version = {}
    farm.manager_status = ""
    farm.error = ""


def start_options(prefs: Any, *, worker: bool) -> local_peer.StartOptions:
    return local_peer.StartOptions(
        data_dir=data_dir(prefs),
        python=bpy.path.abspath(str(prefs.peer_python)) if str(prefs.peer_python or "").strip() else "",
        worker=worker,
        host="0.0.0.0" if prefs.share_on_network else "127.0.0.1",
        port=int(prefs.peer_port),
        join_code=str(prefs.join_code or ""),
        # The worker renders with this very Blender ('' for the bpy module: the peer's default).
        blender=bpy.app.binary_path or "",
    )


def ensure_local_peer(prefs: Any, *, worker: bool) -> str:
    """Reuse the running peer, or start one. Returns what happened, for the UI; raises FarmError."""
    local_peer.owned.keep_running = bool(prefs.keep_peer_running)
    owned = local_peer.owned.peer
    if owned is not None and owned.alive():
        if owned.worker == worker:
            return "The peer started by Blender is running."
        local_peer.stop_owned()  # restart it with or without its worker
    running = local_peer.find_running(data_dir(prefs), timeout=0.5)
    if running is not None:
        farm.peer_note = f"Using the peer already running at {running.url} (not started by Blender)."
        return farm.peer_note
    try:
        local_peer.owned.peer = local_peer.start(start_options(prefs, worker=worker), ADDON_DIR)
    except local_peer.PeerStartError as exc:
        raise FarmError(f"Cannot start a Flamenco Peer: {exc}") from None
    farm.peer_note = "Starting a peer on this computer" + (" (renders for the farm)." if worker else ".")
    return farm.peer_note


def stop_local_peer() -> bool:
    stopped = local_peer.stop_owned()
    if stopped:
        farm.peer_note = "The peer started by Blender was stopped."
        forget_farm()
    return stopped


def apply_worker_preference(prefs: Any) -> None:
    """The 'Render for the farm' checkbox changed."""
    if manager_mode(prefs):
        farm.error = "A Flamenco Manager URL is set: workers of a Manager are started with flamenco-worker."
        return
    try:
        if prefs.use_as_worker:
            ensure_local_peer(prefs, worker=True)
        else:
            stop_local_peer()
        farm.error = ""
    except FarmError as exc:
        farm.error = str(exc)
