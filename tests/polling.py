"""Waiting for a farm to reach a state, in tests that drive real processes."""

from __future__ import annotations

import time
from typing import Any, Callable

from peer.clientlib import ClientError


def eventually(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy; ClientErrors count as "not yet"."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except ClientError as exc:
            last = exc
        if last and not isinstance(last, ClientError):
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout:.0f} s (last: {last!r})")
        time.sleep(interval)
