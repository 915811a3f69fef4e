"""Flamenco Peer: a peer-to-peer render farm daemon compatible with Flamenco 3."""

__version__ = "0.1.0"
