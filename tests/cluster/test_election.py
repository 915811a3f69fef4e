"""The election rules and log reconciliation, as pure functions."""

from __future__ import annotations

from peer.cluster.election import COORDINATOR, ELECTING, FOLLOWER, Candidate, decide
from peer.cluster.replication import common_prefix
from peer.coordinator.store import TermSegment


def peer(peer_id: str, role: str = FOLLOWER, epoch: int = 1, applied: int = 10, **kw) -> Candidate:
    return Candidate(peer_id=peer_id, role=role, epoch=epoch, applied=applied, **kw)


def test_a_live_coordinator_is_followed_even_by_a_more_up_to_date_peer():
    d = decide(peer("b", applied=99), [peer("a", COORDINATOR, applied=5)])
    assert (d.action, d.leader_id, d.epoch) == ("follow", "a", 1)


def test_coordinator_keeps_leading_while_no_better_claim_exists():
    d = decide(peer("a", COORDINATOR, epoch=3), [peer("b", epoch=3), peer("c", epoch=2)])
    assert (d.action, d.epoch) == ("lead", 3)


def test_two_coordinators_collapse_into_the_higher_epoch():
    old = peer("z", COORDINATOR, epoch=4)
    new = peer("a", COORDINATOR, epoch=5)
    assert decide(old, [new]) .action == "follow"
    assert decide(new, [old]).action == "lead"


def test_equal_epochs_are_broken_by_peer_id():
    a, b = peer("a", COORDINATOR, epoch=2), peer("b", COORDINATOR, epoch=2)
    assert decide(a, [b]).leader_id == "b"
    assert decide(b, [a]).action == "lead"


def test_without_a_coordinator_the_most_up_to_date_peer_takes_over_with_a_new_epoch():
    me = peer("a", ELECTING, epoch=7, applied=40)
    d = decide(me, [peer("b", ELECTING, epoch=6, applied=30), peer("c", ELECTING, epoch=7, applied=39)])
    assert (d.action, d.epoch) == ("lead", 8)
    # The others wait for it rather than claim themselves.
    d = decide(peer("c", ELECTING, epoch=7, applied=39), [me])
    assert (d.action, d.leader_id) == ("wait", "a")


def test_priority_then_id_break_ties_between_equally_up_to_date_peers():
    low, high = peer("z", ELECTING, priority=0), peer("a", ELECTING, priority=5)
    assert decide(high, [low]).action == "lead"
    assert decide(low, [high]).action == "wait"
    x, y = peer("x", ELECTING), peer("y", ELECTING)
    assert decide(y, [x]).action == "lead"
    assert decide(x, [y]).action == "wait"


def test_a_peer_without_v8_never_claims():
    d = decide(peer("a", ELECTING, applied=99, eligible=False), [peer("b", ELECTING, applied=1)])
    assert (d.action, d.leader_id) == ("wait", "b")
    d = decide(peer("a", ELECTING, eligible=False), [])
    assert d.action == "wait" and "V8" in d.reason


def test_a_starting_peer_looks_around_before_claiming_alone():
    d = decide(peer("a", ELECTING, epoch=0), [], may_claim=False)
    assert d.action == "wait"
    assert decide(peer("a", ELECTING, epoch=0), [], may_claim=True).epoch == 1


def seg(epoch, leader, first, last):
    return TermSegment(epoch, leader, first, last)


def test_common_prefix_of_identical_logs_is_the_whole_log():
    log = [seg(1, "a", 1, 5), seg(2, "b", 6, 9)]
    assert common_prefix(log, log) == 9


def test_common_prefix_stops_where_the_terms_differ():
    mine = [seg(1, "a", 1, 5), seg(2, "b", 6, 9)]  # b led a partition
    theirs = [seg(1, "a", 1, 5), seg(3, "c", 6, 12)]
    assert common_prefix(mine, theirs) == 5


def test_common_prefix_uses_the_shorter_copy_of_a_shared_term():
    mine = [seg(1, "a", 1, 8)]  # a wrote 6..8 but crashed before they were pulled
    theirs = [seg(1, "a", 1, 5), seg(2, "b", 6, 7)]
    assert common_prefix(mine, theirs) == 5
    assert common_prefix([seg(1, "a", 1, 3)], theirs) == 3  # a plain lagging follower


def test_entries_written_without_a_cluster_term_are_never_shared():
    assert common_prefix([seg(0, "", 1, 4)], [seg(0, "", 1, 4)]) == 0
