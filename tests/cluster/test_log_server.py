"""The coordinator's side of replication: long-polling pulls on a real coordinator."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from peer.cluster.membership import Membership
from peer.cluster.replication import LogServer, entries_from_wire
from peer.compiler.loader import BUILTIN_JOB_TYPES_DIR, JobTypeRegistry
from peer.coordinator.service import Coordinator

TERM = (1, "peer-a")
WAIT_S = 10.0  # far longer than a wake-up takes: a pull still waiting was not woken


@pytest.fixture
async def coordinator(tmp_path: Path) -> AsyncIterator[Coordinator]:
    c = Coordinator(tmp_path / "data", JobTypeRegistry([BUILTIN_JOB_TYPES_DIR]))
    await c.start()
    await c.lead(TERM)
    try:
        yield c
    finally:
        await c.stop()


async def sign_on(coordinator: Coordinator, name: str) -> None:
    await coordinator.sign_on(f"id-{name}", name, "127.0.0.1", "linux", "test", ["misc"], None)


async def pull_body(coordinator: Coordinator, peer_id: str) -> dict[str, Any]:
    """A pull from a follower that holds everything written so far."""
    store = coordinator.store
    after = await coordinator.db.run(store.last_event_index)
    after_term = await coordinator.db.run(store.term_at, after)
    return {"peer_id": peer_id, "after": after, "after_term": list(after_term), "wait_s": WAIT_S}


@pytest.mark.timeout(30)
async def test_one_commit_wakes_every_waiting_pull(coordinator: Coordinator):
    server = LogServer(coordinator, Membership("peer-a", lease_s=5.0), ack_timeout_s=1.0)
    await sign_on(coordinator, "first")  # the followers hold a log with entries of this term
    bodies = [await pull_body(coordinator, peer) for peer in ("peer-b", "peer-c")]
    pulls = [asyncio.create_task(server.pull(body)) for body in bodies]
    await asyncio.sleep(0)  # both pulls queue their reads...
    await coordinator.db.run(lambda: None)  # ...which are done once this later call is
    await asyncio.sleep(0)
    assert not any(p.done() for p in pulls), "the pulls found nothing new: they wait"

    await sign_on(coordinator, "second")
    done, waiting = await asyncio.wait(pulls, timeout=WAIT_S / 2)
    assert not waiting, "a waiting pull missed the commit"
    index = await coordinator.db.run(coordinator.store.last_event_index)
    for pull, body in zip(pulls, bodies):
        reply = pull.result()
        assert (reply["epoch"], reply["leader"]) == TERM
        entries = entries_from_wire(reply["entries"])
        assert [e.idx for e in entries] == list(range(body["after"] + 1, index + 1))
        assert {e.kind for e in entries} >= {"worker-updated"}


@pytest.mark.timeout(30)
async def test_a_commit_during_a_pulls_read_is_not_lost_to_another_pull(coordinator: Coordinator):
    """The pull notes the commit count before its read: a commit that lands
    while the read runs, and a second pull that starts meanwhile, leave it
    nothing to wait for."""
    server = LogServer(coordinator, Membership("peer-a", lease_s=5.0), ack_timeout_s=1.0)
    await sign_on(coordinator, "first")
    body = await pull_body(coordinator, "peer-b")
    release = asyncio.Event()

    async def read_then_hold(*args: Any) -> Any:
        entries = await original_run_unordered(*args)
        await release.wait()  # the read is done; the pull has not looked at it yet
        return entries

    original_run_unordered = coordinator.db.run_unordered
    coordinator.db.run_unordered = read_then_hold  # type: ignore[method-assign]
    first = asyncio.create_task(server.pull(body))
    await asyncio.sleep(0)
    await coordinator.db.run(lambda: None)  # its read found nothing new
    coordinator.db.run_unordered = original_run_unordered  # type: ignore[method-assign]
    await sign_on(coordinator, "second")  # a commit after that read...
    other = asyncio.create_task(server.pull(await pull_body(coordinator, "peer-c")))  # ...and another pull
    await asyncio.sleep(0)
    release.set()
    done, waiting = await asyncio.wait([first], timeout=WAIT_S / 2)
    assert not waiting, "the pull slept through a commit that came while it read"
    assert entries_from_wire(first.result()["entries"])
    other.cancel()
    await asyncio.gather(other, return_exceptions=True)
