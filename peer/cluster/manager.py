"""One peer's part in the farm: heartbeats, election, following the coordinator.

Every ``heartbeat_s`` this peer sends its state to every address it knows
(seeds, mDNS adverts, the cache, and addresses other peers told it about) and
learns theirs from the answers. After each round it runs the election
(:mod:`.election`) over the peers heard within ``lease_s`` and becomes
coordinator, follows one, or waits. While following, a separate loop pulls
the coordinator's log (:mod:`.replication`).

With the defaults (0.5 s heartbeats, 1.5 s lease) a vanished coordinator is
replaced, and dispatching again, about 2 s after its last heartbeat.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..coordinator import events as ev
from ..coordinator.service import APIError, Coordinator
from ..coordinator.store import NO_TERM
from . import election
from .election import COORDINATOR, ELECTING, FOLLOWER, Candidate
from .membership import Membership
from .replication import LogServer, common_prefix, entries_from_wire, segments_from_wire
from .transport import PeerRefused, PeerTransport, PeerUnreachable

log = logging.getLogger(__name__)


class LeaderMoved(PeerUnreachable):
    """This peer stopped following the coordinator a call was waiting on."""


@dataclass
class ClusterSettings:
    peer_id: str
    name: str
    farm_id: str
    version: str
    priority: int = 0
    eligible: bool = True
    ineligible_reason: str = ""
    heartbeat_s: float = 0.5
    lease_s: float = 1.5
    # How long a starting peer looks for others before it may take over alone.
    startup_grace_s: float = 1.0


class ClusterManager:
    def __init__(
        self,
        settings: ClusterSettings,
        coordinator: Coordinator,
        transport: PeerTransport,
        *,
        seeds: list[str] = (),  # type: ignore[assignment]
        worker_state: Callable[[], dict[str, Any] | None] | None = None,
        on_role_change: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.coordinator = coordinator
        self.transport = transport
        self.worker_state = worker_state
        self.on_role_change = on_role_change
        self.membership = Membership(settings.peer_id, settings.lease_s)
        for seed in seeds:
            self.membership.add_contact(seed, "seed")
        self.log_server = LogServer(coordinator, self.membership, ack_timeout_s=2 * settings.lease_s + 1.0)
        coordinator.replication_barrier = self.log_server.wait_replicated
        coordinator.on_commit.append(self._note_applied)
        self.url = ""
        self.role = ELECTING
        self.epoch = 0
        self.leader_id = ""
        self.leader_url = ""
        self.applied = 0
        self.waiting_reason = "starting"
        self.started = time.monotonic()
        self._leader_known = asyncio.Event()
        self._following = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._heartbeats_in_flight: dict[str, asyncio.Task[None]] = {}
        self._refused_by: set[str] = set()  # contacts that answered 401 (told once in the log)
        self._decide_lock = asyncio.Lock()
        self._closing = False
        # Entries this peer decided while the farm was split, not merged yet.
        self._pending_merge: list[Any] = []

    # --- life cycle -------------------------------------------------------

    async def start(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.membership.self_urls.add(self.url)
        self.membership.contacts.pop(self.url, None)
        store = self.coordinator.store
        self.epoch = await self.coordinator.db.run(store.max_epoch)
        self.applied = await self.coordinator.db.run(store.last_event_index)
        self._tasks = [
            asyncio.create_task(self._heartbeat_loop(), name="cluster-heartbeats"),
            asyncio.create_task(self._follow_loop(), name="cluster-follower"),
        ]

    async def stop(self) -> None:
        self._closing = True
        tasks = [*self._tasks, *self._heartbeats_in_flight.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks = []

    # --- what this peer says about itself --------------------------------

    def state(self) -> dict[str, Any]:
        s = self.settings
        return {
            "peer_id": s.peer_id, "name": s.name, "url": self.url, "farm_id": s.farm_id,
            "version": s.version, "role": self.role, "epoch": self.epoch,
            "leader_id": self.leader_id, "leader_url": self.leader_url, "applied": self.applied,
            "eligible": s.eligible, "ineligible_reason": s.ineligible_reason, "priority": s.priority,
            "waiting_reason": self.waiting_reason if self.role == ELECTING else "",
            "worker": self.worker_state() if self.worker_state else None,
            "known": [m.url for m in self.membership.alive() if m.url],
        }

    def coordinator_url(self) -> str | None:
        """Where workers and forwarded client requests go right now."""
        if self.role == COORDINATOR:
            return self.url
        if self.role == FOLLOWER and self.leader_url:
            return self.leader_url
        return None

    async def wait_for_coordinator(self, timeout: float) -> str | None:
        """The coordinator's URL, waiting up to ``timeout`` while an election runs."""
        deadline = time.monotonic() + timeout
        while True:
            url = self.coordinator_url()
            remaining = deadline - time.monotonic()
            if url or remaining <= 0:
                return url
            self._leader_known.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._leader_known.wait()
            except TimeoutError:
                pass

    def _note_applied(self, index: int) -> None:
        self.applied = max(self.applied, index)

    # --- incoming calls ---------------------------------------------------

    async def handle_heartbeat(self, state: dict[str, Any]) -> dict[str, Any]:
        if state.get("farm_id") != self.settings.farm_id:
            raise APIError(
                409, f"this peer belongs to farm {self.settings.farm_id}, not {state.get('farm_id')!r}; "
                     "peers of different farms do not work together",
            )
        self.membership.heard(state)
        return self.state()

    async def handle_merge(self, body: dict[str, Any]) -> dict[str, Any]:
        entries = entries_from_wire(body.get("entries") or [])
        events = [ev.from_wire(e.body) for e in entries]
        source = f"peer {body.get('name') or body.get('peer_id') or '?'}"
        return await self.coordinator.merge_diverged(events, source)

    # --- heartbeats and election -----------------------------------------

    async def _heartbeat_loop(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.heartbeat_round()
                await self.decide()
            except Exception:  # one bad round must not end the peer's membership
                log.exception("cluster heartbeat round failed")
            await asyncio.sleep(max(0.0, self.settings.heartbeat_s - (time.monotonic() - started)))

    async def heartbeat_round(self) -> None:
        """Send our state to every contact; wait for the answers at most until the next round.

        A peer that went silent (pulled cable, partition) only answers with a
        timeout; waiting for it would stretch every round to that timeout and
        delay the election that replaces it. Its call goes on in the
        background, and no second call to it starts while one is under way.
        """
        urls = self.membership.urls_to_contact()
        if not urls:
            return
        body = self.state()
        timeout = max(self.settings.lease_s * 0.66, 0.3)
        started = []
        for url in urls:
            if url in self._heartbeats_in_flight:
                continue
            task = asyncio.create_task(self._heartbeat(url, body, timeout), name=f"heartbeat {url}")
            self._heartbeats_in_flight[url] = task
            task.add_done_callback(lambda _t, url=url: self._heartbeats_in_flight.pop(url, None))
            started.append(task)
        if started:
            await asyncio.wait(started, timeout=self.settings.heartbeat_s * 0.8)

    async def _heartbeat(self, url: str, body: dict[str, Any], timeout: float) -> None:
        try:
            status, reply = await self.transport.call(url, "cluster/heartbeat", body, timeout=timeout)
        except PeerUnreachable as exc:
            if isinstance(exc, PeerRefused) and url not in self._refused_by:
                # Another farm's peer, or ours with a changed secret: say so once, not every round.
                log.warning("%s", exc)
                self._refused_by.add(url)
            self.membership.failed(url)
            return
        except Exception as exc:  # one peer's odd answer must not stop the others
            log.debug("heartbeat to %s failed: %r", url, exc)
            self.membership.failed(url)
            return
        if status == 200 and isinstance(reply, dict):
            self._refused_by.discard(url)
            self.membership.heard(reply)
        else:
            if status == 409 and isinstance(reply, dict):
                log.warning("peer at %s: %s", url, reply.get("message"))
            self.membership.failed(url)

    async def decide(self) -> None:
        async with self._decide_lock:
            alive = self.membership.alive()
            if self.role != COORDINATOR:
                # A coordinator's epoch is the one it was elected for, and it
                # must stay so while it leads: taking a higher number from a
                # follower of another coordinator (a partition healing) would
                # turn the old claim into one that beats the newer coordinator.
                for m in alive:
                    self.epoch = max(self.epoch, int(m.state.get("epoch", 0)))
            me = Candidate(
                peer_id=self.settings.peer_id, role=self.role, epoch=self.epoch, applied=self.applied,
                priority=self.settings.priority, eligible=self.settings.eligible,
            )
            may_claim = time.monotonic() - self.started >= self.settings.startup_grace_s
            decision = election.decide(me, [m.candidate() for m in alive], may_claim=may_claim)
            if decision.action == "lead":
                if self.role != COORDINATOR:
                    await self._become_coordinator(decision.epoch)
            elif decision.action == "follow":
                leader = self.membership.members[decision.leader_id]
                if self.role != FOLLOWER or self.leader_id != decision.leader_id or self.epoch < decision.epoch:
                    await self._become_follower(decision.leader_id, leader.url, decision.epoch)
            else:
                self.waiting_reason = decision.reason
                if self.role != ELECTING:
                    log.warning("lost the coordinator (%s); %s", self.leader_id or "?", decision.reason)
                    await self._set_role(ELECTING, "", "")

    async def _catch_up(self) -> None:
        """Before leading, take the entries a live peer holds beyond ours.

        The old coordinator may have sent its last entries to one follower but
        not to us, and the election saw slightly old log positions. Those
        entries were decided by the old coordinator (its completions, its
        acknowledged submissions): without them a finished task could run again.
        """
        store = self.coordinator.store
        ahead = sorted((m for m in self.membership.alive() if int(m.state.get("applied", 0)) > self.applied),
                       key=lambda m: -int(m.state.get("applied", 0)))
        for member in ahead:
            while True:
                after = await self.coordinator.db.run(store.last_event_index)
                after_term = await self.coordinator.db.run(store.term_at, after) or NO_TERM
                try:
                    status, body = await self.transport.call(
                        member.url, "cluster/entries", {"after": after, "after_term": list(after_term)},
                        timeout=max(self.settings.lease_s, 1.0))
                except PeerUnreachable:
                    break
                entries = entries_from_wire(body.get("entries") or []) if status == 200 and isinstance(body, dict) else []
                if not entries:
                    break
                await self.coordinator.db.run(store.append_replicated, entries)
                self.applied = entries[-1].idx
                log.info("caught up %d entries from peer %s before coordinating", len(entries), member.peer_id)

    async def _become_coordinator(self, epoch: int) -> None:
        try:
            await self._catch_up()
        except Exception:  # catching up is best effort; merging covers what it misses
            log.exception("catching up before coordinating failed")
        self.epoch = max(self.epoch, epoch)
        log.info("peer %s becomes the farm's coordinator (epoch %d)", self.settings.name, self.epoch)
        await self.coordinator.lead((self.epoch, self.settings.peer_id))
        await self._set_role(COORDINATOR, self.settings.peer_id, self.url)
        if self._pending_merge:
            pending, self._pending_merge = self._pending_merge, []
            await self.coordinator.merge_diverged([ev.from_wire(e.body) for e in pending], "this peer's own split")

    async def _become_follower(self, leader_id: str, leader_url: str, epoch: int) -> None:
        self.epoch = max(self.epoch, epoch)
        await self.coordinator.db.run(self.coordinator.store.note_epoch, self.epoch)
        if self.role == COORDINATOR:
            log.warning("stepping down: peer %s leads epoch %d", leader_id, epoch)
        await self.coordinator.follow()
        log.info("following coordinator %s at %s (epoch %d)", leader_id, leader_url, epoch)
        await self._set_role(FOLLOWER, leader_id, leader_url)

    async def _set_role(self, role: str, leader_id: str, leader_url: str) -> None:
        if role != COORDINATOR and self.coordinator.leading:
            await self.coordinator.follow()
        self.role, self.leader_id, self.leader_url = role, leader_id, leader_url
        if role == FOLLOWER:
            self._following.set()
        else:
            self._following.clear()
        if self.coordinator_url():
            self._leader_known.set()
        if self.on_role_change:
            self.on_role_change()

    # --- following ----------------------------------------------------------

    async def _follow_loop(self) -> None:
        while True:
            await self._following.wait()
            leader_url, leader_id = self.leader_url, self.leader_id
            try:
                await self.pull_once(leader_url, leader_id)
            except LeaderMoved:
                continue  # pull from the new coordinator at once
            except PeerUnreachable as exc:
                log.debug("pull from %s failed: %s", leader_url, exc)
                await asyncio.sleep(0.2)
            except Exception:
                log.exception("replicating from %s failed", leader_url)
                await asyncio.sleep(1.0)

    async def _call_leader(self, leader_url: str, leader_id: str, path: str, body: dict[str, Any],
                           timeout: float) -> tuple[int, Any]:
        """A call to the coordinator this peer follows, abandoned as soon as it follows another.

        A coordinator cut off by the network never answers a long-poll; waiting
        for the timeout would leave this peer without the new coordinator's log,
        and the new coordinator waiting for an acknowledgement that cannot come.
        """
        call = asyncio.ensure_future(self.transport.call(leader_url, path, body, timeout=timeout))
        try:
            while True:
                done, _ = await asyncio.wait({call}, timeout=0.1)
                if done:
                    return call.result()
                if (self.role, self.leader_id) != (FOLLOWER, leader_id):
                    raise LeaderMoved(f"stopped waiting for {leader_id}: this peer follows {self.leader_id or 'no one'} now")
        finally:
            if not call.done():
                call.cancel()

    async def pull_once(self, leader_url: str, leader_id: str, wait_s: float = 1.0) -> None:
        if self._pending_merge:
            await self._send_pending_merge(leader_url, leader_id)
        coordinator = self.coordinator
        store = coordinator.store
        after = await coordinator.db.run(store.last_event_index)
        after_term = await coordinator.db.run(store.term_at, after) or NO_TERM
        status, body = await self._call_leader(
            leader_url, leader_id, "cluster/pull",
            {"peer_id": self.settings.peer_id, "after": after, "after_term": list(after_term), "wait_s": wait_s},
            timeout=wait_s + 5,
        )
        if status != 200 or not isinstance(body, dict):
            await asyncio.sleep(0.2)
            return
        if (self.role, self.leader_id) != (FOLLOWER, leader_id) or body.get("leader") != leader_id:
            return  # we moved on (or it did) while the pull was under way
        if int(body.get("epoch", 0)) < self.epoch:
            return  # fencing: a coordinator of an older epoch decides nothing for us
        if body.get("diverged"):
            await self._rebase(leader_url, leader_id, body)
            return
        entries = entries_from_wire(body.get("entries") or [])
        if entries:
            await coordinator.db.run(store.append_replicated, entries)
            self.applied = entries[-1].idx

    async def _rebase(self, leader_url: str, leader_id: str, body: dict[str, Any]) -> None:
        coordinator = self.coordinator
        store = coordinator.store
        mine = await coordinator.db.run(store.segments)
        keep = common_prefix(mine, segments_from_wire(body.get("segments") or []))
        suffix = await coordinator.db.run(store.rebuild_from_prefix, keep)
        self.applied = keep
        log.warning(
            "this peer's log diverged from coordinator %s after entry %d; %d entries will be merged there",
            leader_id, keep, len(suffix),
        )
        self._pending_merge.extend(suffix)

    async def _send_pending_merge(self, leader_url: str, leader_id: str) -> None:
        """Hand entries cut from our log to the coordinator; kept until it accepts them."""
        payload = {
            "peer_id": self.settings.peer_id, "name": self.settings.name,
            "entries": [e.to_wire() for e in self._pending_merge],
        }
        status, reply = await self._call_leader(leader_url, leader_id, "cluster/merge", payload, timeout=30)
        if status != 200:
            raise PeerUnreachable(f"coordinator {leader_id} refused the merge ({status}): {reply}")
        log.info("merged %d diverged entries into coordinator %s: %s", len(self._pending_merge), leader_id, reply)
        self._pending_merge = []
