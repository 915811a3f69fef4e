# SPDX-License-Identifier: GPL-3.0-or-later
"""Flamenco Peer add-on for Blender: submit to the farm from 3D View ▸ Sidebar ▸ Flamenco.

The add-on talks HTTP to its local peer (or to a Flamenco Manager) like any
client and never imports the peer's modules. bpy is imported only when
Blender registers the add-on, so ``client``, ``jobtypes``, ``local_peer`` and
``state`` can be used (and tested) without Blender.
"""

from __future__ import annotations

# Read by Blender when the add-on is installed the legacy way (not as an
# extension); an extension uses blender_manifest.toml instead.
bl_info = {
    "name": "Flamenco Peer",
    "author": "Flamenco Peer developers",
    "version": (0, 1, 0),
    "blender": (4, 2, 0),
    "location": "3D View > Sidebar > Flamenco",
    "description": "Submit render jobs to a Flamenco Peer farm or a Flamenco 3 Manager",
    "category": "System",
}


def _modules():
    from . import background, operators, panels, preferences, props

    return background, operators, panels, preferences, props


def register() -> None:
    import bpy

    from . import connection, local_peer, state

    background, operators, panels, preferences, props = _modules()
    for cls in (*preferences.classes, *operators.classes, *panels.classes):
        bpy.utils.register_class(cls)
    props.register()
    state.farm.load_cache(_cache_path())
    prefs = preferences.get()
    local_peer.owned.keep_running = bool(prefs.keep_peer_running)
    if not bpy.app.background:
        background.start()
        # Start the peer the artist opted into, once Blender has finished starting.
        if prefs.use_as_worker and not connection.manager_mode(prefs):
            bpy.app.timers.register(lambda: connection.apply_worker_preference(preferences.get()),
                                    first_interval=1.0)


def unregister() -> None:
    import bpy

    from . import local_peer

    background, operators, panels, preferences, props = _modules()
    background.stop()
    # Also runs when Blender quits (it disables every add-on then).
    local_peer.stop_owned(quitting=True)
    props.unregister()
    for cls in reversed((*preferences.classes, *operators.classes, *panels.classes)):
        bpy.utils.unregister_class(cls)


def _cache_path():
    from pathlib import Path

    import bpy

    from .state import CACHE_NAME

    return Path(bpy.utils.user_resource("CONFIG")) / CACHE_NAME
