"""Reading a server-sent events stream in tests."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, Callable

import aiohttp


@dataclass
class Message:
    event: str          # "" for a comment-only block (keep-alive) or a bare "retry:"
    data: Any
    comment: str = ""
    retry: int | None = None


def parse_block(block: str) -> Message:
    event, data, comment, retry = "", [], "", None
    for line in block.splitlines():
        if line.startswith(":"):
            comment = line[1:].strip()
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif line.startswith("retry:"):
            retry = int(line[6:].strip())
    text = "\n".join(data)
    return Message(event, json.loads(text) if text else None, comment, retry)


class EventReader:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.seen: list[Message] = []

    async def next(self, timeout: float = 10.0) -> Message:
        async with asyncio.timeout(timeout):
            raw = await self.response.content.readuntil(b"\n\n")
        if not raw.endswith(b"\n\n"):
            raise EOFError("the event stream ended")
        message = parse_block(raw.decode())
        self.seen.append(message)
        return message

    async def until(self, wanted: Callable[[Message], bool], timeout: float = 15.0) -> Message:
        """Read until a message matches; fails with what was seen instead."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"no matching message within {timeout} s; saw {self.seen[-10:]}")
            try:
                message = await self.next(left)
            except TimeoutError:
                continue
            if wanted(message):
                return message
