"""The REST API (FastAPI): the contract's routes, owner-only access, the contract's bodies."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.responses import Response

from realtime_notifications.domain import NotificationNotFound
from realtime_notifications.schemas import (
    MAX_IDEMPOTENCY_KEY_CHARS,
    CreateNotification,
    Deleted,
    ErrorBody,
    NotificationOut,
    UnreadCount,
    Updated,
)
from realtime_notifications.services import NewNotification, NotificationService
from realtime_shared.auth import Claims, TokenVerifier

MAX_LIMIT = 100
MAX_OFFSET = 2**31 - 1

bearer = HTTPBearer(
    auto_error=False,
    description="A JWT (HS256 by default) whose `sub` is the caller's user id.",
)

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in (
        (401, "no token, or an invalid or expired one"),
        (404, "no such notification for this caller"),
        (413, "request body too large"),
        (422, "bad JSON, bad fields or bad query parameters"),
    )
}


def bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def verify(request: Request) -> Claims:
    verifier: TokenVerifier = request.app.state.verifier
    return verifier.verify(bearer_token(request))


async def caller(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Claims:
    """The authenticated caller (401 otherwise); `_credentials` documents the scheme."""
    return verify(request)


async def service(request: Request) -> NotificationService:
    svc: NotificationService = request.app.state.service
    return svc


Caller = Annotated[Claims, Depends(caller)]
Service = Annotated[NotificationService, Depends(service)]


def json(content: object, status: int = 200) -> Response:
    # Bodies are the domain's own dicts: the same bytes as in the events, no re-encoding.
    return Response(orjson.dumps(content), status, media_type="application/json")


def canonical_id(notification_id: str) -> str:
    """A notification id in its stored form; anything that is not a UUID names nothing."""
    try:
        return str(uuid.UUID(notification_id))
    except ValueError:
        raise NotificationNotFound(notification_id) from None


router = APIRouter(prefix="/api/notifications", tags=["notifications"], responses=ERRORS)


@router.get("", response_model=list[NotificationOut], summary="The caller's notifications")
async def list_notifications(
    who: Caller,
    svc: Service,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 25,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    unread: Annotated[bool, Query(description="only unread ones")] = False,
) -> Response:
    """Newest first."""
    found = await svc.list(who, limit=limit, offset=offset, unread_only=unread)
    return json([n.to_dict() for n in found])


@router.get("/unread-count", response_model=UnreadCount, summary="How many are unread")
async def unread_count(who: Caller, svc: Service) -> Response:
    return json({"count": await svc.unread_count(who)})


@router.post(
    "",
    status_code=201,
    response_model=NotificationOut,
    responses={403: {"model": ErrorBody, "description": "the token lacks notification.manage"}},
    summary="Create a notification (needs notification.manage)",
)
async def create_notification(
    body: CreateNotification,
    who: Caller,
    svc: Service,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=MAX_IDEMPOTENCY_KEY_CHARS,
            description="a retry with the same key returns the first result, publishes nothing",
        ),
    ] = None,
) -> Response:
    new = NewNotification(**body.model_dump())
    return json(await svc.create(who, new, idempotency_key), 201)


@router.post("/read-all", response_model=Updated, summary="Mark all of the caller's as read")
async def read_all(who: Caller, svc: Service) -> Response:
    return json({"updated": await svc.read_all(who)})


@router.get("/{notification_id}", response_model=NotificationOut, summary="One notification")
async def get_notification(notification_id: str, who: Caller, svc: Service) -> Response:
    return json((await svc.get(who, canonical_id(notification_id))).to_dict())


@router.post("/{notification_id}/read", response_model=NotificationOut, summary="Mark read")
async def mark_read(notification_id: str, who: Caller, svc: Service) -> Response:
    return json((await svc.mark_read(who, canonical_id(notification_id))).to_dict())


@router.post("/{notification_id}/unread", response_model=NotificationOut, summary="Mark unread")
async def mark_unread(notification_id: str, who: Caller, svc: Service) -> Response:
    return json((await svc.mark_unread(who, canonical_id(notification_id))).to_dict())


@router.delete("/{notification_id}", response_model=Deleted, summary="Delete one")
async def delete_notification(notification_id: str, who: Caller, svc: Service) -> Response:
    await svc.delete(who, canonical_id(notification_id))
    return json({"deleted": True})
