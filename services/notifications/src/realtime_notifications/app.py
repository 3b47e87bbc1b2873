"""The composition root: `create_app(settings)` wires the adapters; the lifespan runs them."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from starlette.responses import Response

from realtime_notifications import __version__, api, db, errors, outbox
from realtime_notifications.body_limit import BodyLimit
from realtime_notifications.broker import EventPublisher, RabbitEventPublisher, asyncapi_document
from realtime_notifications.history import HistoryFactory, OutboxHistory, responder
from realtime_notifications.metrics import Metrics, RequestMetrics
from realtime_notifications.models import positions
from realtime_notifications.relay import OutboxRelay
from realtime_notifications.services import NotificationService
from realtime_notifications.settings import NotificationsSettings
from realtime_notifications.unit_of_work import Transactions
from realtime_shared.auth import TokenVerifier
from realtime_shared.headers import SecurityHeaders

log = logging.getLogger(__name__)

VERIFIED_TOKENS = 1024

DOC_PAGES = ("/docs", "/docs/oauth2-redirect", "/redoc")


def create_app(
    settings: NotificationsSettings,
    *,
    publisher: EventPublisher | None = None,
    history: HistoryFactory | None = None,
) -> FastAPI:
    """Build the app; nothing connects until the lifespan starts. `publisher` and `history`
    are for tests."""
    # A bad key config fails here, not later. Producers send one token per request, often
    # the same one: a verified token is remembered (until its `exp`) instead of re-checked.
    verifier = TokenVerifier.from_settings(settings, cache_size=VERIFIED_TOKENS)
    metrics = Metrics()
    rabbit = RabbitEventPublisher(
        settings.amqp_url, settings.realtime_exchange, publish_timeout=settings.publish_timeout
    )
    events: EventPublisher = publisher or rabbit
    history_owner = history or responder(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        database = db.open_database(settings.database_url, settings.database_pool_size)
        relay_database = database.for_relay()
        try:
            await database.migrate()
            # Read once: only a new database (or a deleted row) changes it.
            epoch = await database.write(positions.create_epoch)
            relay = OutboxRelay(
                relay_database,
                events,
                metrics,
                poll_interval=settings.outbox_poll_interval,
                batch_size=settings.outbox_batch_size,
                batch_per_user=settings.outbox_batch_per_user,
                retention=timedelta(seconds=settings.outbox_retention_seconds),
                history=outbox.HistoryWindow(
                    settings.history_max_events_per_user,
                    timedelta(seconds=settings.history_min_age_seconds),
                ),
                backoff_cap=settings.outbox_backoff_cap,
            )
            owner = history_owner(OutboxHistory(database, epoch))
            app.state.database = database
            app.state.publisher = events
            app.state.relay = relay
            app.state.history = owner
            app.state.service = NotificationService(Transactions(database, relay.wake, epoch=epoch))
            relay.start()
            owner.start()
            try:
                yield
            finally:
                await owner.stop()
                await relay.stop()
                await events.close()
        finally:
            await relay_database.dispose()
            await database.dispose()

    app = FastAPI(
        # The API's paths have no trailing slash; a redirect to add or strip one would be
        # built from Host and scheme, which behind proxies is easy to get wrong.
        redirect_slashes=False,
        title="realtime notifications",
        version=__version__,
        description="Notification state for users; every change is also published as an event "
        "(see /asyncapi) on `notifications.<user>`.",
        lifespan=lifespan,
    )
    app.state.verifier = verifier
    app.include_router(api.router)
    errors.install(app, api.verify)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> Response:
        problems = []
        try:
            await request.app.state.database.ping()
        except Exception as exc:
            problems.append(f"database: {exc.__class__.__name__}")
        if not await request.app.state.publisher.is_connected():
            problems.append("broker: not connected")
        if not request.app.state.relay.running:
            problems.append("outbox relay stopped")
        if not await request.app.state.history.is_ready():
            problems.append("history: not consuming its queue")
        if problems:
            return errors.error_response(503, "; ".join(problems))
        return api.json({"status": "ready"})

    @app.get("/metrics", include_in_schema=False)
    async def prometheus(request: Request) -> Response:
        try:
            metrics.observe_backlog(await request.app.state.database.read(outbox.backlog))
        except Exception:
            log.warning("metrics: cannot read the outbox backlog", exc_info=True)
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    asyncapi: dict[str, Any] = asyncapi_document(rabbit)

    @app.get("/asyncapi", include_in_schema=False)
    async def asyncapi_json() -> dict[str, Any]:
        return asyncapi

    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.notifications_cors_origins,
        allow_origin_regex=settings.cors_origin_regex(),
        allow_methods=["GET", "POST", "DELETE"],
        allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
        max_age=600,
    )
    app.add_middleware(RequestMetrics, metrics=metrics)
    # Swagger UI and ReDoc load their scripts from a CDN: no CSP on those two pages.
    app.add_middleware(SecurityHeaders, policies=dict.fromkeys(DOC_PAGES))
    return app
