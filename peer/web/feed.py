"""What changed on the farm, pushed to dashboards as small notifications.

Every peer holds a replica of the farm's event log, so every peer can tell
its browsers "something changed" without asking the coordinator. One poller
per peer reads the local store's last event index every ``interval_s`` and,
only when it moved (or the cluster's view of the coordinator changed), hands
a summary to every subscriber. The summary says what kind of thing changed,
(``kinds``: the event kinds written, plus ``cluster`` when the coordinator or
the live peers changed and ``peers`` when a peer's worker changed state), so a
browser refetches only what it shows and what changed; it never carries
the data itself (browsers fetch that through the normal JSON API, which any
peer forwards to the coordinator).

The poller runs only while at least one browser listens, so an idle peer
does no extra work.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from ..coordinator import events as ev
from ..coordinator.service import Coordinator

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 0.25
# Beyond this many new events in one tick, listing them costs more than a
# browser refetching everything it shows; say "everything" instead.
MAX_EVENTS_PER_TICK = 500
# Task ids named in one notification; more than that and browsers refetch logs anyway.
MAX_LOGGED_TASKS = 50

ClusterView = Callable[[], dict[str, Any] | None]


@dataclass
class Change:
    """What moved since a subscriber last heard; merged while it is busy."""

    index: int = 0
    kinds: set[str] = field(default_factory=set)
    logged_tasks: set[str] = field(default_factory=set)
    everything: bool = False
    cluster: dict[str, Any] | None = None

    def merge(self, other: Change) -> None:
        self.index = other.index
        self.kinds |= other.kinds
        self.logged_tasks |= other.logged_tasks
        self.everything = self.everything or other.everything or len(self.logged_tasks) > MAX_LOGGED_TASKS
        if other.cluster is not None:
            self.cluster = other.cluster

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "kinds": sorted(self.kinds),
            "logged_tasks": [] if self.everything else sorted(self.logged_tasks),
            "all": self.everything,
            "cluster": self.cluster,
        }


class Subscription:
    """One listening browser: a pending change and a flag that says there is one."""

    def __init__(self) -> None:
        self.pending: Change | None = None
        self.closed = False
        self._ready = asyncio.Event()

    def push(self, change: Change) -> None:
        if self.pending is None:
            self.pending = Change()
        self.pending.merge(change)
        self._ready.set()

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def next(self, timeout_s: float) -> Change | None:
        """The next change, or None after ``timeout_s`` (time for a keep-alive) or once closed."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._ready.wait()
        except TimeoutError:
            return None
        self._ready.clear()
        change, self.pending = self.pending, None
        return change


def cluster_signature(view: dict[str, Any] | None) -> dict[str, Any] | None:
    """The part of a peer's cluster view that browsers show: who coordinates, who is alive."""
    if view is None:
        return None
    return {
        "role": view.get("role", ""),
        "coordinator": view.get("coordinator", ""),
        "epoch": view.get("epoch", 0),
        "alive": sorted(view.get("alive", [])),
    }


def workers_signature(view: dict[str, Any] | None) -> list[tuple[str, str, str, str]]:
    """What each peer's worker is doing, as peers tell in heartbeats (not in the event log).

    Only the state, mode and task: reasons may carry counters ("idle for 12 s")
    that would otherwise notify browsers on every heartbeat.
    """
    workers = (view or {}).get("workers") or {}
    return sorted(
        (str(peer_id), str(w.get("state", "")), str(w.get("mode", "")), str(w.get("current_task") or ""))
        for peer_id, w in workers.items() if isinstance(w, dict)
    )


class FarmChangeFeed:
    """One shared poller per peer; any number of browsers subscribe to it."""

    def __init__(
        self, coordinator: Coordinator, cluster_view: ClusterView | None = None, *,
        interval_s: float = DEFAULT_INTERVAL_S,
    ) -> None:
        self.coordinator = coordinator
        self.cluster_view = cluster_view or (lambda: None)
        self.interval_s = interval_s
        self._subscribers: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None
        self._index: int | None = None
        self._cluster: dict[str, Any] | None = None
        self._workers: list[tuple[str, str, str, str]] = []
        self._closed = False
        self.ticks = 0  # store reads so far; tests check that clients share them

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    @property
    def polling(self) -> bool:
        return self._task is not None and not self._task.done()

    def subscribe(self) -> Subscription:
        sub = Subscription()
        if self._closed:
            sub.close()
            return sub
        self._subscribers.add(sub)
        if not self.polling:
            self._task = asyncio.create_task(self._poll(), name="dashboard-change-feed")
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)

    async def current(self) -> Change:
        """The farm's state right now, for a browser that just connected."""
        index = await self._last_index()
        return Change(index=index or 0, everything=True, cluster=cluster_signature(self.cluster_view()))

    async def close(self) -> None:
        """End every stream (the peer is stopping) and stop polling."""
        self._closed = True
        for sub in list(self._subscribers):
            sub.close()
        self._subscribers.clear()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _last_index(self) -> int | None:
        store = self.coordinator.store
        try:
            return await self.coordinator.db.run(store.last_event_index)
        except Exception as exc:  # store closing or closed: nothing to report
            log.debug("dashboard feed cannot read the store: %s", exc)
            return None

    async def _poll(self) -> None:
        # Baseline first, so a new subscriber is not told about old history.
        if self._index is None:
            self._index = await self._last_index()
            view = self.cluster_view()
            self._cluster, self._workers = cluster_signature(view), workers_signature(view)
        while self._subscribers:
            await asyncio.sleep(self.interval_s)
            self.ticks += 1
            change = await self._changes()
            if change is not None:
                for sub in list(self._subscribers):
                    sub.push(change)

    async def _changes(self) -> Change | None:
        index = await self._last_index()
        view = self.cluster_view()
        cluster, workers = cluster_signature(view), workers_signature(view)
        change: Change | None = None
        if index is not None and index != self._index:
            change = await self._summarise(self._index, index)
            self._index = index
        if cluster != self._cluster:
            self._cluster = cluster
            change = change or Change(index=self._index or 0)
            change.kinds.add("cluster")
        if workers != self._workers:
            self._workers = workers
            change = change or Change(index=self._index or 0)
            change.kinds.add("peers")
        if change is not None:
            change.cluster = cluster
        return change

    async def _summarise(self, since: int | None, index: int) -> Change:
        if since is None or index < since or index - since > MAX_EVENTS_PER_TICK:
            # A rebuilt log (after divergence) or a flood: refetch everything.
            return Change(index=index, everything=True)
        try:
            entries = await self.coordinator.db.run(self.coordinator.store.entries_since, since, MAX_EVENTS_PER_TICK)
        except Exception as exc:
            log.debug("dashboard feed cannot read events: %s", exc)
            return Change(index=index, everything=True)
        change = Change(index=index)
        for entry in entries:
            change.kinds.add(entry.kind)
            if entry.kind == ev.TaskLogged.kind:
                try:
                    event = ev.from_wire(entry.body)
                except (ValueError, TypeError):
                    continue
                if isinstance(event, ev.TaskLogged):
                    change.logged_tasks.add(event.task_id)
        if len(change.logged_tasks) > MAX_LOGGED_TASKS:
            change.everything = True
        return change
