"""Notification rows and idempotency keys, read and written on the unit of work's connection.

Plain synchronous SQLAlchemy Core: `db.Database` decides where a transaction runs.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from realtime_notifications.domain import Notification, Severity
from realtime_notifications.models import idempotency_keys, notifications

_COLUMNS = [c for c in notifications.c if c.name != "seq"]

# Built once, values passed as parameters: no statement to build and key per execution.
_INSERT_NOTIFICATION = notifications.insert()
_INSERT_IDEMPOTENCY_KEY = idempotency_keys.insert()


def _to_domain(row: sa.Row[Any]) -> Notification:
    return Notification(
        id=row.id,
        user_id=row.user_id,
        type=row.type,
        title=row.title,
        message=row.message,
        severity=Severity(row.severity),
        action_url=row.action_url,
        metadata=row.metadata,
        is_read=row.is_read,
        read_at=row.read_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _to_row(n: Notification) -> dict[str, Any]:
    return {
        "id": n.id,
        "user_id": n.user_id,
        "type": n.type,
        "title": n.title,
        "message": n.message,
        "severity": str(n.severity),
        "action_url": n.action_url,
        "metadata": n.metadata,
        "is_read": n.is_read,
        "read_at": n.read_at,
        "created_at": n.created_at,
        "updated_at": n.updated_at,
    }


class NotificationRepository:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def add(self, n: Notification) -> None:
        self._conn.execute(_INSERT_NOTIFICATION, _to_row(n))

    def get(
        self, user_id: str, notification_id: str, *, for_update: bool = False
    ) -> Notification | None:
        query = sa.select(*_COLUMNS).where(
            notifications.c.id == notification_id, notifications.c.user_id == user_id
        )
        if for_update:
            query = query.with_for_update()  # ignored by SQLite, whose writers are serial anyway
        row = (self._conn.execute(query)).first()
        return None if row is None else _to_domain(row)

    def save(self, n: Notification) -> None:
        self._conn.execute(
            notifications.update()
            .where(notifications.c.id == n.id)
            .values(is_read=n.is_read, read_at=n.read_at, updated_at=n.updated_at)
        )

    def delete(self, user_id: str, notification_id: str) -> bool:
        result = self._conn.execute(
            notifications.delete().where(
                notifications.c.id == notification_id, notifications.c.user_id == user_id
            )
        )
        return result.rowcount > 0

    def list(
        self, user_id: str, *, limit: int, offset: int, unread_only: bool
    ) -> list[Notification]:
        query = sa.select(*_COLUMNS).where(notifications.c.user_id == user_id)
        if unread_only:
            query = query.where(notifications.c.is_read.is_(False))
        query = query.order_by(notifications.c.seq.desc()).limit(limit).offset(offset)
        return [_to_domain(row) for row in self._conn.execute(query)]

    def unread_count(self, user_id: str) -> int:
        query = (
            sa.select(sa.func.count())
            .select_from(notifications)
            .where(notifications.c.user_id == user_id, notifications.c.is_read.is_(False))
        )
        return int((self._conn.execute(query)).scalar_one())

    def mark_all_read(self, user_id: str, now: datetime) -> int:
        result = self._conn.execute(
            notifications.update()
            .where(notifications.c.user_id == user_id, notifications.c.is_read.is_(False))
            .values(is_read=True, read_at=now, updated_at=now)
        )
        return result.rowcount


class IdempotencyRepository:
    """First responses of `POST` requests, by (caller, Idempotency-Key)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def get(self, caller: str, key: str) -> bytes | None:
        query = sa.select(idempotency_keys.c.response).where(
            idempotency_keys.c.caller == caller, idempotency_keys.c.key == key
        )
        return (self._conn.execute(query)).scalar_one_or_none()

    def add(self, caller: str, key: str, response: bytes, now: datetime) -> None:
        """Raises `sqlalchemy.exc.IntegrityError` when a concurrent request stored it first."""
        self._conn.execute(
            _INSERT_IDEMPOTENCY_KEY,
            {"caller": caller, "key": key, "response": response, "created_at": now},
        )

    def prune(self, before: datetime, limit: int) -> int:
        """Delete at most `limit` keys stored before `before`; how many it deleted."""
        doomed = (
            sa.select(idempotency_keys.c.caller, idempotency_keys.c.key)
            .where(idempotency_keys.c.created_at < before)
            .limit(limit)
        )
        primary_key = sa.tuple_(idempotency_keys.c.caller, idempotency_keys.c.key)
        result = self._conn.execute(idempotency_keys.delete().where(primary_key.in_(doomed)))
        return result.rowcount
