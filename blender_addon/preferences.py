# SPDX-License-Identifier: GPL-3.0-or-later
"""Add-on preferences: where the farm is, and whether this workstation renders for it."""

from types import SimpleNamespace
from typing import Any

import bpy
from bpy.props import BoolProperty, IntProperty, StringProperty

ADDON_ID = __package__ or "blender_addon"


def _worker_changed(self: Any, context: Any) -> None:
    from . import connection

    connection.apply_worker_preference(self)


def _keep_running_changed(self: Any, context: Any) -> None:
    from . import local_peer

    local_peer.owned.keep_running = bool(self.keep_peer_running)


def _farm_changed(self: Any, context: Any) -> None:
    from . import connection

    connection.forget_farm()


# Annotations name these, so linters do not read the strings as type hints.
_MANAGER_URL = StringProperty(
    name="Flamenco Manager URL",
    description="Submit to this Flamenco 3 Manager instead of the peer farm; leave empty to use "
                "the Flamenco Peer on this computer",
    default="", update=_farm_changed,
)

_USE_AS_WORKER = BoolProperty(
    name="Render for the farm",
    description="Run a Flamenco Peer on this computer that renders tasks for the farm. A peer that is "
                "already running is used as it is",
    default=False, update=_worker_changed,
)

_KEEP_PEER_RUNNING = BoolProperty(
    name="Keep the peer running after Blender quits",
    description="Leave the peer started by Blender running when Blender quits or the add-on is disabled",
    default=False, update=_keep_running_changed,
)

_SHARE_ON_NETWORK = BoolProperty(
    name="Reachable from the network",
    description="The peer listens on all network interfaces so other peers of the farm can reach it; "
                "off keeps it on this computer only (a farm of one)",
    default=True,
)

_JOIN_CODE = StringProperty(
    name="Farm join code",
    description="The code of the studio's farm (`flamenco-peer farm join-code` on a peer of that farm); "
                "empty = the farm this computer's peer already belongs to",
    default="", subtype="PASSWORD",
)

_PEER_PORT = IntProperty(
    name="Peer port", description="HTTP port of a peer started by Blender (0 = any free port)",
    default=8780, min=0, max=65535,
)

_PEER_DATA_DIR = StringProperty(
    name="Peer data folder",
    description="The peer's data folder (jobs, logs, peer.json); empty = the peer's default",
    default="", subtype="DIR_PATH", update=_farm_changed,
)

_PEER_PYTHON = StringProperty(
    name="Python for the peer",
    description="Python 3.11+ that runs the peer; empty = Blender's own Python",
    default="", subtype="FILE_PATH",
)


class FLAMENCO_PEER_AddonPreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    manager_url: _MANAGER_URL
    use_as_worker: _USE_AS_WORKER
    keep_peer_running: _KEEP_PEER_RUNNING
    share_on_network: _SHARE_ON_NETWORK
    join_code: _JOIN_CODE
    peer_port: _PEER_PORT
    peer_data_dir: _PEER_DATA_DIR
    peer_python: _PEER_PYTHON

    def draw(self, context: Any) -> None:
        layout = self.layout
        layout.prop(self, "manager_url")
        col = layout.column(heading="This computer")
        col.prop(self, "use_as_worker")
        col.prop(self, "keep_peer_running")
        col.prop(self, "share_on_network")
        col.prop(self, "join_code")
        col.prop(self, "peer_port")
        col.prop(self, "peer_data_dir")
        col.prop(self, "peer_python")


_DEFAULTS = SimpleNamespace(
    manager_url="", use_as_worker=False, keep_peer_running=False, share_on_network=True, join_code="",
    peer_port=8780, peer_data_dir="", peer_python="",
)


def get(context: Any = None) -> Any:
    """The preferences; their defaults when the add-on was registered without being enabled."""
    context = context or bpy.context
    addon = context.preferences.addons.get(ADDON_ID)
    return addon.preferences if addon is not None and addon.preferences is not None else _DEFAULTS


classes = (FLAMENCO_PEER_AddonPreferences,)
