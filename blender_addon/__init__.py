# SPDX-License-Identifier: GPL-3.0-or-later
"""Flamenco Peer add-on for Blender.

The add-on talks HTTP to its local peer like any client and never imports
the peer's modules. The sidebar panel ("Submit to Flamenco") is built in the
add-on issue; this package is its home.
"""


def register() -> None:
    pass


def unregister() -> None:
    pass
