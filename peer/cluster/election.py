"""Who coordinates the farm: a pure decision over what this peer can see.

Each peer runs :func:`decide` after every heartbeat round, over the peers it
heard from within the lease (plus itself). The rules, in order:

1. **A live claim wins.** If any visible peer (or this one) says it is the
   coordinator, the claim with the highest ``(epoch, peer_id)`` is followed.
   A coordinator that sees a better claim steps down. This keeps a working
   coordinator in place when peers come and go, and makes two coordinators
   (after a partition heals) collapse into one: the higher epoch wins.
2. **Otherwise the most up-to-date eligible peer takes over.** Ranked by the
   last log index it applied, then its configured priority, then its id. Only
   that peer claims, with an epoch one above the highest it has seen; the
   others wait for its claim to arrive in the next heartbeat.

Epochs only grow, and every log entry records the epoch (and leader) that
decided it, which is what fencing and log reconciliation build on.

There is deliberately no majority quorum: desktops leave at night and the farm
must keep working with whoever is left. The price is that a partitioned farm
runs one coordinator per side; the sides are merged when they meet again
(see :mod:`peer.cluster.replication`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

COORDINATOR = "coordinator"
FOLLOWER = "follower"
ELECTING = "electing"


@dataclass(frozen=True)
class Candidate:
    """What the election needs to know about one peer."""

    peer_id: str
    role: str
    epoch: int  # for a coordinator: the epoch it leads; otherwise the highest it has seen
    applied: int
    priority: int = 0
    eligible: bool = True

    @property
    def claim_rank(self) -> tuple[int, str]:
        return (self.epoch, self.peer_id)

    @property
    def candidate_rank(self) -> tuple[int, int, str]:
        return (self.applied, self.priority, self.peer_id)


@dataclass(frozen=True)
class Decision:
    """``lead`` (this peer, at ``epoch``), ``follow`` (``leader_id`` at ``epoch``) or ``wait``."""

    action: str
    epoch: int = 0
    leader_id: str = ""
    reason: str = ""


def decide(me: Candidate, others: Iterable[Candidate], *, may_claim: bool = True) -> Decision:
    """What this peer should do now, given the peers it currently hears from."""
    visible = [me, *others]
    claims = [c for c in visible if c.role == COORDINATOR]
    if claims:
        best = max(claims, key=lambda c: c.claim_rank)
        if best.peer_id == me.peer_id:
            return Decision("lead", epoch=me.epoch, leader_id=me.peer_id)
        return Decision("follow", epoch=best.epoch, leader_id=best.peer_id)

    eligible = [c for c in visible if c.eligible]
    if not eligible:
        return Decision("wait", reason="no peer that can coordinate is reachable (coordinating needs V8)")
    best = max(eligible, key=lambda c: c.candidate_rank)
    if best.peer_id != me.peer_id:
        return Decision("wait", leader_id=best.peer_id, reason=f"waiting for peer {best.peer_id} to take over")
    if not may_claim:
        return Decision("wait", reason="still looking for other peers before taking over")
    highest = max(c.epoch for c in visible)
    return Decision("lead", epoch=highest + 1, leader_id=me.peer_id)
