"""The replicated state log: the coordinator serves it, every other peer pulls it.

Every change to jobs and tasks is one entry of the coordinator's event log
(``peer.coordinator.store``), tagged with the term ``(epoch, leader)`` that
decided it. Followers long-poll ``cluster/pull`` with the index and term of
their last entry:

- if the coordinator holds the same term at that index, the two logs agree up
  to there (a term's entries come from one coordinator, in order) and it
  answers with the entries that follow;
- otherwise the follower's log has entries the coordinator never decided
  (it led a partition of its own, or crashed before they were pulled). The
  coordinator answers ``diverged`` with its term segments; the follower cuts
  its log back to the common prefix, rebuilds its tables from it, and sends
  the cut entries to ``cluster/merge``, where the coordinator folds their
  progress into its own log (``Coordinator.merge_diverged``).

The pull after a batch acknowledges it, which is what ``wait_replicated``
(used before acknowledging a submission) waits for.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from ..coordinator.service import APIError, Coordinator, NotCoordinator
from ..coordinator.store import LogEntry, Term, TermSegment

if TYPE_CHECKING:
    from .membership import Membership

log = logging.getLogger(__name__)

MAX_ENTRIES_PER_PULL = 500


def common_prefix(mine: list[TermSegment], theirs: list[TermSegment]) -> int:
    """Length of the longest log prefix two peers provably share.

    Both logs are runs of terms; a term's entries are identical wherever they
    appear, so the logs agree while their segments agree, up to the shorter
    copy of the first term that differs in length.
    """
    agreed = 0
    for a, b in zip(mine, theirs):
        # Entries written without a cluster term (a peer running alone before
        # it ever joined a farm) belong to that peer only.
        if a.term != b.term or a.first != b.first or not a.leader:
            break
        agreed = min(a.last, b.last)
        if a.last != b.last:
            break
    return agreed


def segments_to_wire(segments: list[TermSegment]) -> list[list[Any]]:
    return [[s.epoch, s.leader, s.first, s.last] for s in segments]


def segments_from_wire(data: Any) -> list[TermSegment]:
    return [TermSegment(int(e), str(leader), int(first), int(last)) for e, leader, first, last in data]


class LogServer:
    """The coordinator's side: answer pulls, track what each follower holds."""

    def __init__(self, coordinator: Coordinator, membership: Membership, *, ack_timeout_s: float) -> None:
        self.coordinator = coordinator
        self.membership = membership
        self.ack_timeout_s = ack_timeout_s
        self.acked: dict[str, int] = {}
        # Bumped on every commit. A pull notes it before reading and waits
        # until it moves, so a commit between its read and its wait still
        # wakes it, whatever other pulls do meanwhile.
        self._commits = 0
        self._commits_changed = asyncio.Condition()
        self._notifying: asyncio.Task[None] | None = None
        self._acks_changed = asyncio.Event()
        coordinator.on_commit.append(self._on_commit)

    def _on_commit(self, index: int) -> None:
        self._commits += 1
        # Listeners are plain functions, and notifying takes the condition's
        # lock: one task does it, for however many commits land before it runs.
        if self._notifying is None:
            self._notifying = asyncio.get_running_loop().create_task(self._notify_pulls())

    async def _notify_pulls(self) -> None:
        async with self._commits_changed:
            self._notifying = None
            self._commits_changed.notify_all()

    async def pull(self, body: dict[str, Any]) -> dict[str, Any]:
        coordinator = self.coordinator
        term = coordinator.term
        if term is None:
            raise NotCoordinator()
        peer_id = str(body.get("peer_id", ""))
        try:
            after = int(body.get("after", 0))
            after_term = (int(body["after_term"][0]), str(body["after_term"][1]))
            wait_s = min(max(float(body.get("wait_s", 0.0)), 0.0), 10.0)
        except (KeyError, TypeError, ValueError, IndexError):
            raise APIError(400, "pull needs after (int), after_term ([epoch, leader]) and wait_s") from None

        store = coordinator.store
        seen = self._commits
        # One trip to the DB thread for the common case: the term check and
        # the entries that follow (a follower pulls after every commit). Reads
        # of the log alone: no need to wait for task-log files being written.
        entries = await coordinator.db.run_unordered(self._entries_if_continued, after, after_term)
        if entries is None:
            segments = await coordinator.db.run_unordered(store.segments)
            return {"diverged": True, "segments": segments_to_wire(segments), "epoch": term[0], "leader": term[1]}

        if after > self.acked.get(peer_id, 0):
            self.acked[peer_id] = after
            self._acks_changed.set()
        deadline = time.monotonic() + wait_s
        while True:
            if entries is None:
                seen = self._commits
                entries = await coordinator.db.run_unordered(store.entries_since, after, MAX_ENTRIES_PER_PULL)
            remaining = deadline - time.monotonic()
            if entries or remaining <= 0 or coordinator.term != term:
                break
            await self._wait_for_commit_after(seen, remaining)
            entries = None
        if coordinator.term != term:
            raise NotCoordinator()
        return {"epoch": term[0], "leader": term[1], "entries": [e.to_wire() for e in entries]}

    async def _wait_for_commit_after(self, seen: int, remaining: float) -> None:
        """Wait (at most ``remaining`` s) until a commit after the one counted
        as ``seen``; at once if one already happened."""
        async with self._commits_changed:
            try:
                async with asyncio.timeout(remaining):
                    await self._commits_changed.wait_for(lambda: self._commits != seen)
            except TimeoutError:
                pass

    def _entries_if_continued(self, after: int, after_term: Term) -> list[LogEntry] | None:
        """On the DB thread: the entries after ``after`` if the puller's log agrees
        with ours up to there, else None (it diverged)."""
        store = self.coordinator.store
        if store.term_at(after) != after_term or (after > 0 and not after_term[1]):
            return None
        return store.entries_since(after, MAX_ENTRIES_PER_PULL)

    async def wait_replicated(self, index: int) -> None:
        """Return once a live follower holds entry ``index``, or no other peer is alive.

        Followers ask again right after applying a batch, so this normally takes
        one round trip. A follower that dies meanwhile stops counting as alive
        after the lease, which bounds the wait.
        """
        deadline = time.monotonic() + self.ack_timeout_s
        while True:
            alive = [m.peer_id for m in self.membership.alive()]
            if not alive or any(self.acked.get(p, 0) >= index for p in alive):
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning("entry %d not confirmed by any of %s in time; acknowledging anyway", index, alive)
                return
            self._acks_changed.clear()
            try:
                async with asyncio.timeout(min(remaining, 0.25)):
                    await self._acks_changed.wait()
            except TimeoutError:
                pass

    async def read_entries(self, body: dict[str, Any]) -> dict[str, Any]:
        """Any peer's own log after ``after``, for a peer that is about to coordinate
        and may have missed the last entries the old coordinator sent to others."""
        store = self.coordinator.store
        try:
            after = int(body.get("after", 0))
            after_term = (int(body["after_term"][0]), str(body["after_term"][1]))
        except (KeyError, TypeError, ValueError, IndexError):
            raise APIError(400, "entries needs after (int) and after_term ([epoch, leader])") from None
        if await self.coordinator.db.run(store.term_at, after) != after_term:
            return {"entries": [], "diverged": True}
        entries = await self.coordinator.db.run(store.entries_since, after, MAX_ENTRIES_PER_PULL)
        return {"entries": [e.to_wire() for e in entries]}

    def forget(self, peer_id: str) -> None:
        self.acked.pop(peer_id, None)


def entries_from_wire(data: Any) -> list[LogEntry]:
    return [LogEntry.from_wire(item) for item in data]
