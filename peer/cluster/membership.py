"""The peers this peer knows about, and which of them are alive.

Liveness comes from HTTP heartbeats only: an mDNS advert says a peer exists,
not that it still runs (after a SIGKILL no mDNS goodbye is ever sent).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .election import Candidate


@dataclass
class Member:
    """The latest heartbeat state of another peer, as it described itself."""

    peer_id: str
    url: str
    state: dict[str, Any]
    last_heard: float = field(default_factory=time.monotonic)

    def candidate(self) -> Candidate:
        s = self.state
        return Candidate(
            peer_id=self.peer_id, role=str(s.get("role", "")), epoch=int(s.get("epoch", 0)),
            applied=int(s.get("applied", 0)), priority=int(s.get("priority", 0)),
            eligible=bool(s.get("eligible", False)),
        )


# Seeds and mDNS adverts are never forgotten; cache and gossip entries are, after a long silence.
_SOURCE_STRENGTH = {"gossip": 0, "cache": 1, "mdns": 2, "seed": 3}


def _never_forgotten(source: str | None) -> bool:
    return _SOURCE_STRENGTH.get(source or "", 0) >= _SOURCE_STRENGTH["mdns"]


class Membership:
    """Addresses to contact, and the peers that answered."""

    def __init__(self, self_id: str, lease_s: float) -> None:
        self.self_id = self_id
        self.lease_s = lease_s
        self.members: dict[str, Member] = {}
        # url -> why we know it ("seed", "mdns", "gossip", "cache"); seeds are never forgotten
        self.contacts: dict[str, str] = {}
        self._failing_since: dict[str, float] = {}
        self.self_urls: set[str] = set()
        # Called with a peer id when a peer is heard that was not alive before
        # (new, or back after a partition or a restart).
        self.on_return: list[Callable[[str], None]] = []

    def add_contact(self, url: str, source: str) -> None:
        """Remember ``url``; a contact keeps the strongest reason we know it by, so a
        peer found by mDNS that others also gossip about is never forgotten as gossip."""
        url = url.rstrip("/")
        if not url or url in self.self_urls:
            return
        known = self.contacts.get(url)
        if known is None or _SOURCE_STRENGTH.get(source, 0) >= _SOURCE_STRENGTH.get(known, 0):
            self.contacts[url] = source

    def heard(self, state: dict[str, Any]) -> Member | None:
        peer_id = str(state.get("peer_id", ""))
        url = str(state.get("url", "")).rstrip("/")
        if not peer_id or peer_id == self.self_id:
            if url:
                self.self_urls.add(url)
                self.contacts.pop(url, None)
            return None
        returned = not self.is_alive(peer_id)
        member = Member(peer_id, url, state)
        self.members[peer_id] = member
        if returned:
            for callback in self.on_return:
                callback(peer_id)
        if url:
            self.add_contact(url, "gossip")  # keeps a stronger source it is already known by
            self._failing_since.pop(url, None)
        for other in state.get("known", []) or []:
            if isinstance(other, str):
                self.add_contact(other, "gossip")
        return member

    def failed(self, url: str, forget_after_s: float = 60.0) -> None:
        """A contact did not answer; gossip/cache contacts silent for long are dropped."""
        now = time.monotonic()
        since = self._failing_since.setdefault(url, now)
        if now - since > forget_after_s and not _never_forgotten(self.contacts.get(url)):
            self.contacts.pop(url, None)
            self._failing_since.pop(url, None)

    def alive(self, now: float | None = None) -> list[Member]:
        now = time.monotonic() if now is None else now
        return [m for m in self.members.values() if now - m.last_heard <= self.lease_s]

    def is_alive(self, peer_id: str) -> bool:
        m = self.members.get(peer_id)
        return m is not None and time.monotonic() - m.last_heard <= self.lease_s

    def urls_to_contact(self) -> list[str]:
        return sorted(self.contacts)
