"""The invariant checker on synthetic sequences: each fault is reported, and only it."""

from __future__ import annotations

import pytest
from support.invariants import Checker, Gap

from realtime_shared.envelope import Envelope

pytestmark = pytest.mark.unit

STREAM = "notifications"


def event(seq: int, user: str = "alice") -> Envelope:
    meta = {"event_id": f"{user}-{seq}", "seq": seq, "epoch": "e1"}
    return Envelope(STREAM, "notification.created", {"n": seq}, meta)


def recovered(replayed: int) -> Envelope:
    data = {"stream": STREAM, "recovered": True, "replayed": replayed, "reason": "reconnect"}
    return Envelope("system", "recovered", data)


def resync() -> Envelope:
    return Envelope("system", "resync", {"reason": "reconnect", "streams": [STREAM]})


def fed(received: list[Envelope], published: int = 5) -> Checker:
    checker = Checker()
    checker.follow("c1", "alice")
    for seq in range(1, published + 1):
        checker.publish("alice", event(seq))
    for envelope in received:
        checker.receive("c1", envelope)
    return checker


def test_everything_once_in_order_is_ok() -> None:
    report = fed([event(n) for n in range(1, 6)]).report()
    assert report.ok, report.summary()
    assert (report.published, report.delivered, report.gaps) == (5, 5, [])


def test_a_gap_is_reported_as_lost() -> None:
    report = fed([event(1), event(2), event(5)]).report()
    assert not report.ok
    assert report.gaps == [Gap("c1", STREAM, ("alice-3", "alice-4"), "lost")]
    assert "1 lost (2 events)" in report.summary()


def test_a_missing_tail_is_lost_too() -> None:
    report = fed([event(1), event(2)]).report()
    assert [gap.event_ids for gap in report.lost] == [("alice-3", "alice-4", "alice-5")]


def test_a_duplicate_is_reported_once_deduped() -> None:
    report = fed([event(1), event(2), event(2), event(3), event(4), event(5)]).report()
    assert not report.ok
    assert report.duplicates == {("c1", "alice-2"): 1}
    assert (report.gaps, report.disorders) == ([], [])


def test_a_reorder_is_reported() -> None:
    report = fed([event(1), event(3), event(2), event(4), event(5)]).report()
    assert not report.ok
    assert [(d.before, d.after) for d in report.disorders] == [("alice-3", "alice-2")]
    assert report.gaps == []


def test_a_gap_closed_by_recovery_is_not_lost() -> None:
    # Away for 3 and 4: the client yields them replayed, then its `recovered` frame.
    received = [event(1), event(2), event(3), event(4), recovered(2), event(5)]
    report = fed(received).report()
    assert report.ok, report.summary()
    assert report.gaps == [Gap("c1", STREAM, ("alice-3", "alice-4"), "recovery")]


def test_a_gap_left_to_a_refetch_is_not_lost_but_told_apart() -> None:
    report = fed([event(1), resync(), event(4), event(5)]).report()
    assert report.ok, report.summary()
    assert report.gaps == [Gap("c1", STREAM, ("alice-2", "alice-3"), "resync")]


def test_a_resync_elsewhere_does_not_excuse_a_gap() -> None:
    report = fed([resync(), event(1), event(2), event(4), event(5)]).report()
    assert [gap.event_ids for gap in report.lost] == [("alice-3",)]


def test_a_frame_never_published_is_unexpected() -> None:
    stray = Envelope(STREAM, "notification.created", {}, {"event_id": "forged", "seq": 9})
    report = fed([event(1), stray, event(2), event(3), event(4), event(5)]).report()
    assert report.unexpected == [("c1", "forged")]
    assert not report.ok


def test_a_follower_expects_only_what_came_after_it_began() -> None:
    checker = Checker()
    checker.publish("alice", event(1))
    checker.follow("late", "alice")
    checker.publish("alice", event(2))
    checker.receive("late", event(2))
    assert checker.report().ok


def test_each_user_is_checked_on_its_own_events() -> None:
    checker = Checker()
    checker.follow("a", "alice")
    checker.follow("b", "bob")
    checker.publish("alice", event(1))
    checker.publish("bob", event(1, "bob"))
    checker.receive("a", event(1))
    report = checker.report()
    assert [(g.client, g.event_ids) for g in report.lost] == [("b", ("bob-1",))]


def test_committed_but_unpublished_and_published_but_uncommitted_are_reported() -> None:
    checker = Checker()
    checker.commit("alice", STREAM, "n1")
    checker.commit("alice", STREAM, "n2")
    checker.publish("alice", event(1), ref="n1")
    checker.publish("alice", event(2), ref="n3")  # a request that failed, yet went out
    report = checker.report()
    assert (report.unpublished, report.uncommitted) == (["n2"], ["n3"])
    assert not report.ok


def test_a_republished_event_is_counted_and_expected_once() -> None:
    checker = fed([event(n) for n in range(1, 6)])
    checker.publish("alice", event(3))  # the relay published it again after a fault
    report = checker.report()
    assert report.ok, report.summary()
    assert (report.published, report.republished) == (5, 1)
    checker.receive("c1", event(3))  # yielded twice: that is a duplicate
    assert checker.report().duplicates == {("c1", "alice-3"): 1}
