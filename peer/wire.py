"""The peers' wire format: msgpack bodies over HTTP (the client API speaks JSON).

One place for the content type and for packing and posting, so every peer
route and every peer-to-peer call agrees on them.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import msgpack
from aiohttp import web

MSGPACK = "application/msgpack"


def pack(body: Any) -> bytes:
    return msgpack.packb(body, use_bin_type=True)


def unpack(raw: bytes) -> Any:
    """Raises ValueError or msgpack.UnpackException on a malformed body."""
    return msgpack.unpackb(raw, raw=False)


def msgpack_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=pack(body), status=status, content_type=MSGPACK, headers=headers)


async def post(session: aiohttp.ClientSession, url: str, body: Any, *, timeout: float
               ) -> tuple[int, str, bytes]:
    """POST ``body`` as msgpack: (status, the answer's content type, its raw bytes).

    Raises what aiohttp raises (``aiohttp.ClientError``, ``TimeoutError``); callers
    turn those into their own "unreachable" errors."""
    async with session.post(url, data=pack(body), headers={"Content-Type": MSGPACK},
                            timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
        return resp.status, resp.content_type, await resp.read()
