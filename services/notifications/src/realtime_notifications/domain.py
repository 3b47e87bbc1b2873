"""Notifications as the service sees them: the record, its severities, its events, its errors.

No I/O here: the service layer decides, the adapters store and publish.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from realtime_shared.envelope import Envelope, JsonObject
from realtime_shared.routing import user_key

STREAM = "notifications"


class Severity(StrEnum):
    INFO = "info"
    SUCCESS = "success"
    WARNING = "warning"
    ERROR = "error"


class EventName(StrEnum):
    CREATED = "notification.created"
    READ = "notification.read"
    UPDATED = "notification.updated"
    DELETED = "notification.deleted"
    READ_ALL = "notification.read_all"


class NotificationsError(Exception):
    """Base of the service's domain errors; the API maps each to one HTTP status."""


class NotificationNotFound(NotificationsError):
    """No such notification for this caller (another user's is "not found" too)."""


class PermissionDenied(NotificationsError):
    """The caller lacks a permission the use case needs."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def isoformat(moment: datetime) -> str:
    """ISO 8601 in UTC (`+00:00`), which every JSON client's date parser accepts."""
    if moment.tzinfo is None:  # SQLite hands back naive datetimes; they were stored as UTC
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat()


@dataclass(frozen=True, slots=True)
class Notification:
    id: str
    user_id: str
    type: str
    title: str | None
    message: str | None
    severity: Severity
    action_url: str | None
    metadata: JsonObject
    is_read: bool
    read_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def new(
        cls,
        *,
        user_id: str,
        type: str,
        title: str | None = None,
        message: str | None = None,
        severity: Severity = Severity.INFO,
        action_url: str | None = None,
        metadata: JsonObject | None = None,
        now: datetime | None = None,
    ) -> Notification:
        moment = now or utcnow()
        return cls(
            id=str(uuid.uuid4()),
            user_id=user_id,
            type=type,
            title=title,
            message=message,
            severity=severity,
            action_url=action_url,
            metadata=metadata or {},
            is_read=False,
            read_at=None,
            created_at=moment,
            updated_at=moment,
        )

    def mark_read(self, now: datetime) -> Notification:
        if self.is_read:
            return self
        return replace(self, is_read=True, read_at=now, updated_at=now)

    def mark_unread(self, now: datetime) -> Notification:
        if not self.is_read:
            return self
        return replace(self, is_read=False, read_at=None, updated_at=now)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "user_id": self.user_id,
            "type": self.type,
            "title": self.title,
            "message": self.message,
            "severity": str(self.severity),
            "action_url": self.action_url,
            "metadata": self.metadata,
            "is_read": self.is_read,
            "read_at": isoformat(self.read_at) if self.read_at else None,
            "created_at": isoformat(self.created_at),
            "updated_at": isoformat(self.updated_at),
        }


@dataclass(frozen=True, slots=True)
class Event:
    """One `notification.*` event for one user, as it is stored in the outbox and published."""

    user_id: str
    name: EventName
    data: JsonObject
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    occurred_at: datetime = field(default_factory=utcnow)

    @property
    def routing_key(self) -> str:
        return user_key(STREAM, self.user_id)

    def envelope(self, seq: int, epoch: str) -> Envelope:
        """As published: `seq` and `epoch` are its position in the user's numbered events."""
        meta = {
            "event_id": self.id,
            "occurred_at": isoformat(self.occurred_at),
            "seq": seq,
            "epoch": epoch,
        }
        return Envelope(STREAM, str(self.name), self.data, meta)


def created(n: Notification, now: datetime) -> Event:
    return _about(n, EventName.CREATED, now)


def read(n: Notification, now: datetime) -> Event:
    return _about(n, EventName.READ, now)


def updated(n: Notification, now: datetime) -> Event:
    return _about(n, EventName.UPDATED, now)


def deleted(user_id: str, notification_id: str, now: datetime) -> Event:
    return Event(user_id, EventName.DELETED, {"notification_id": notification_id}, occurred_at=now)


def read_all(user_id: str, count: int, now: datetime) -> Event:
    return Event(user_id, EventName.READ_ALL, {"count": count}, occurred_at=now)


def _about(n: Notification, name: EventName, now: datetime) -> Event:
    data = {"notification": n.to_dict(), "notification_id": n.id}
    return Event(n.user_id, name, data, occurred_at=now)
