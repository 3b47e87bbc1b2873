"""Notifications and their events, without I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from realtime_notifications import domain
from realtime_notifications.domain import Notification, Severity

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_a_new_notification_is_unread_with_defaults() -> None:
    n = Notification.new(user_id="alice", type="t", now=T0)
    assert n.is_read is False and n.read_at is None
    assert n.severity is Severity.INFO and n.metadata == {}
    assert n.to_dict()["created_at"] == "2026-01-02T03:04:05+00:00"


def test_read_and_unread_move_timestamps_only_when_state_changes() -> None:
    n = Notification.new(user_id="alice", type="t", now=T0)
    later = T0 + timedelta(minutes=1)
    read = n.mark_read(later)
    assert read.is_read and read.read_at == later == read.updated_at
    assert read.mark_read(later + timedelta(minutes=1)) == read
    unread = read.mark_unread(later + timedelta(minutes=2))
    assert unread.is_read is False and unread.read_at is None
    assert unread.updated_at == later + timedelta(minutes=2)


def test_naive_database_datetimes_are_treated_as_utc() -> None:
    assert domain.isoformat(datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02T03:04:05+00:00"


def test_events_carry_the_contracts_data_meta_and_routing_key() -> None:
    n = Notification.new(user_id="a.b c", type="t", now=T0)
    created = domain.created(n, T0)
    assert created.routing_key == "notifications.a%2Eb%20c"
    envelope = created.envelope(7, "e1").to_dict()
    assert envelope == {
        "stream": "notifications",
        "event": "notification.created",
        "data": {"notification": n.to_dict(), "notification_id": n.id},
        "meta": {
            "event_id": created.id,
            "occurred_at": "2026-01-02T03:04:05+00:00",
            "seq": 7,
            "epoch": "e1",
        },
    }
    assert domain.deleted("a", "x", T0).data == {"notification_id": "x"}
    assert domain.read_all("a", 0, T0).envelope(1, "e1").to_dict()["data"] == {"count": 0}
    assert domain.created(n, T0).id != created.id
