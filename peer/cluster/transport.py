"""msgpack calls from one peer to another (``/peer/v1/...``), signed for the farm."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import msgpack

from .. import wire


class PeerUnreachable(Exception):
    """The other peer did not answer (refused, timed out, or not a Flamenco peer)."""


class PeerRefused(PeerUnreachable):
    """The other peer answered but does not accept us (another farm's secret)."""


def _message(raw: bytes) -> str:
    try:
        return str(json.loads(raw).get("message", "")) or "HTTP 401"
    except (ValueError, AttributeError):
        return "HTTP 401"


class PeerTransport:
    """One ``ClientSession`` for every call this peer makes to other peers.

    The session is created by the caller (signed with the farm's secret, see
    ``peer.cluster.auth.signing_session``) so this class stays about framing.
    """

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def call(self, base_url: str, path: str, body: dict[str, Any], *, timeout: float) -> tuple[int, Any]:
        url = f"{base_url.rstrip('/')}/peer/v1/{path}"
        try:
            status, content_type, raw = await wire.post(self.session, url, body, timeout=timeout)
            if status == 401:
                # The auth middleware answers in JSON, with what to do about it.
                raise PeerRefused(f"{url} refused this peer: {_message(raw)}")
            if content_type != wire.MSGPACK:
                raise PeerUnreachable(f"{url} answered HTTP {status} with {content_type or 'no body'}")
            return status, wire.unpack(raw) if raw else None
        except (aiohttp.ClientError, TimeoutError, ValueError, msgpack.UnpackException) as exc:
            raise PeerUnreachable(f"{url}: {exc or type(exc).__name__}") from None
