"""The contract's error body, and the one place where exceptions become HTTP statuses."""

from __future__ import annotations

import logging
from collections.abc import Callable
from http import HTTPStatus

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from realtime_notifications.domain import NotificationNotFound, PermissionDenied
from realtime_shared.auth import AuthError

log = logging.getLogger(__name__)

CODES = {
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    413: "PAYLOAD_TOO_LARGE",
    422: "VALIDATION_ERROR",
}


def code_for(status: int) -> str:
    if status in CODES:
        return CODES[status]
    try:
        return HTTPStatus(status).name
    except ValueError:
        return "ERROR"


def error_body(status: int, message: str) -> bytes:
    return orjson.dumps({"success": False, "error": {"code": code_for(status), "message": message}})


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(
        error_body(status, message), status, headers=headers, media_type="application/json"
    )


def unauthorized(exc: AuthError) -> Response:
    # RFC 6750 §3: say which scheme, and why, to a client without a usable token.
    challenge = f'Bearer error="invalid_token", error_description="{exc.reason}"'
    return error_response(401, str(exc), {"WWW-Authenticate": challenge})


def describe(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors()[:10]:
        where = ".".join(str(p) for p in error.get("loc", ()))
        parts.append(f"{where}: {error.get('msg', 'invalid')}" if where else error["msg"])
    return "; ".join(parts) or "invalid request"


def install(app: FastAPI, check_token: Callable[[Request], object]) -> None:
    """Register the handlers; `check_token` lets a 401 win over a 422 for unauthenticated calls."""

    async def on_auth(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, AuthError)
        return unauthorized(exc)

    async def on_forbidden(_request: Request, exc: Exception) -> Response:
        return error_response(403, str(exc))

    async def on_not_found(_request: Request, _exc: Exception) -> Response:
        return error_response(404, "no such notification")

    def invalid(request: Request, message: str) -> Response:
        # FastAPI reads the body before any dependency runs, so a bad body is found before
        # the token is checked: check it here, or a caller without one would learn a 422.
        try:
            check_token(request)
        except AuthError as auth:
            return unauthorized(auth)
        return error_response(422, message)

    async def on_invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return invalid(request, describe(exc))

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 400:
            # FastAPI's only 400 is a body it cannot decode (e.g. not UTF-8): bad JSON to us.
            return invalid(request, f"request body is not valid JSON: {exc.detail}")
        return error_response(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    async def on_database_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, DBAPIError)
        if exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError):
            return await on_database_down(request, exc)
        return await on_unexpected(request, exc)

    async def on_database_down(request: Request, exc: Exception) -> Response:
        # Nothing was committed; the client may retry (with its Idempotency-Key, for create).
        log.warning("database unavailable on %s %s: %r", request.method, request.url.path, exc)
        return error_response(503, "database unavailable, retry later", {"Retry-After": "1"})

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal error")

    app.add_exception_handler(AuthError, on_auth)
    app.add_exception_handler(PermissionDenied, on_forbidden)
    app.add_exception_handler(NotificationNotFound, on_not_found)
    app.add_exception_handler(RequestValidationError, on_invalid)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(DBAPIError, on_database_error)
    for unavailable in (OSError, TimeoutError):
        app.add_exception_handler(unavailable, on_database_down)
    app.add_exception_handler(Exception, on_unexpected)
