"""The use cases. Each write is one unit of work: a state change and its event commit together.

Each write first locks the user it changes (`UnitOfWork.lock_user`), so one user's
writes commit one after another and their events leave in that order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import orjson
from sqlalchemy.exc import IntegrityError

from realtime_notifications import domain
from realtime_notifications.domain import (
    Notification,
    NotificationNotFound,
    PermissionDenied,
    Severity,
    utcnow,
)
from realtime_notifications.unit_of_work import Transactions, UnitOfWork
from realtime_shared.auth import PERMISSION_MANAGE_NOTIFICATIONS, Claims
from realtime_shared.envelope import JsonObject


@dataclass(frozen=True, slots=True)
class NewNotification:
    user_id: str
    type: str
    title: str | None = None
    message: str | None = None
    severity: Severity = Severity.INFO
    action_url: str | None = None
    metadata: JsonObject | None = None


class NotificationService:
    def __init__(self, transactions: Transactions) -> None:
        self._tx = transactions

    async def create(
        self, caller: Claims, new: NewNotification, idempotency_key: str | None = None
    ) -> JsonObject:
        """The created notification as the API returns it (the first one, for a repeated key)."""
        if not caller.has(PERMISSION_MANAGE_NOTIFICATIONS):
            raise PermissionDenied(
                f"creating notifications needs {PERMISSION_MANAGE_NOTIFICATIONS}"
            )
        if idempotency_key is not None:
            first = await self._first_response(caller, idempotency_key)
            if first is not None:
                return first
        now = utcnow()
        n = Notification.new(**asdict(new), now=now)
        body = n.to_dict()

        def write(uow: UnitOfWork) -> None:
            uow.lock_user(n.user_id)
            uow.notifications.add(n)
            if idempotency_key is not None:
                uow.idempotency.add(caller.sub, idempotency_key, orjson.dumps(body), now)
            uow.publish(domain.created(n, now))

        try:
            await self._tx.write(write)
        except IntegrityError:
            if idempotency_key is None:
                raise
            # A concurrent retry with the same key committed first: answer with its result.
            first = await self._first_response(caller, idempotency_key)
            if first is None:
                raise
            return first
        return body

    async def _first_response(self, caller: Claims, key: str) -> JsonObject | None:
        raw = await self._tx.read(lambda uow: uow.idempotency.get(caller.sub, key))
        return None if raw is None else _loads(raw)

    async def get(self, caller: Claims, notification_id: str) -> Notification:
        n = await self._tx.read(lambda uow: uow.notifications.get(caller.sub, notification_id))
        if n is None:
            raise NotificationNotFound(notification_id)
        return n

    async def list(
        self, caller: Claims, *, limit: int, offset: int, unread_only: bool
    ) -> list[Notification]:
        return await self._tx.read(
            lambda uow: uow.notifications.list(
                caller.sub, limit=limit, offset=offset, unread_only=unread_only
            )
        )

    async def unread_count(self, caller: Claims) -> int:
        return await self._tx.read(lambda uow: uow.notifications.unread_count(caller.sub))

    async def mark_read(self, caller: Claims, notification_id: str) -> Notification:
        return await self._change(caller, notification_id, read=True)

    async def mark_unread(self, caller: Claims, notification_id: str) -> Notification:
        return await self._change(caller, notification_id, read=False)

    async def _change(self, caller: Claims, notification_id: str, *, read: bool) -> Notification:
        # Every call emits its event, even when the flag was already set: clients may
        # have missed the first one, and the event is the confirmation they wait for.
        now = utcnow()

        def write(uow: UnitOfWork) -> Notification:
            uow.lock_user(caller.sub)
            n = uow.notifications.get(caller.sub, notification_id, for_update=True)
            if n is None:
                raise NotificationNotFound(notification_id)
            n = n.mark_read(now) if read else n.mark_unread(now)
            uow.notifications.save(n)
            uow.publish(domain.read(n, now) if read else domain.updated(n, now))
            return n

        return await self._tx.write(write)

    async def delete(self, caller: Claims, notification_id: str) -> None:
        now = utcnow()

        def write(uow: UnitOfWork) -> None:
            uow.lock_user(caller.sub)
            if not uow.notifications.delete(caller.sub, notification_id):
                raise NotificationNotFound(notification_id)
            uow.publish(domain.deleted(caller.sub, notification_id, now))

        await self._tx.write(write)

    async def read_all(self, caller: Claims) -> int:
        now = utcnow()

        def write(uow: UnitOfWork) -> int:
            uow.lock_user(caller.sub)
            count = uow.notifications.mark_all_read(caller.sub, now)
            uow.publish(domain.read_all(caller.sub, count, now))
            return count

        return await self._tx.write(write)


def _loads(raw: bytes) -> JsonObject:
    value = orjson.loads(raw)
    assert isinstance(value, dict)
    return value
