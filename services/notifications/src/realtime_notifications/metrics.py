"""Prometheus metrics, in a registry per app so several apps (tests, replicas) never collide."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from realtime_notifications.outbox import Backlog
from realtime_shared.history import Outcome


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "notifications_http_requests",
            "HTTP requests answered, by route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "notifications_http_request_duration_seconds",
            "Time to answer an HTTP request",
            ["method", "route"],
            registry=self.registry,
        )
        self.backlog = Gauge(
            "notifications_outbox_backlog",
            "Outbox events not yet confirmed by RabbitMQ",
            registry=self.registry,
        )
        self.oldest_pending_age = Gauge(
            "notifications_outbox_oldest_pending_age_seconds",
            "Age of the oldest unpublished event (0 when none)",
            registry=self.registry,
        )
        self.published = Counter(
            "notifications_outbox_published",
            "Events published and confirmed by RabbitMQ",
            registry=self.registry,
        )
        self.relay_crashes = Counter(
            "notifications_relay_crashes",
            "Times the outbox relay stopped unexpectedly; it is restarted with backoff",
            registry=self.registry,
        )
        self.publish_failures = Counter(
            "notifications_outbox_publish_failures",
            "Relay attempts that failed (broker or database errors); each is retried",
            registry=self.registry,
        )

        self.history_requests = Counter(
            "notifications_history_requests",
            "History requests handled, by outcome: complete, incomplete (other epoch, history "
            "trimmed, more than the limit), failed (database or broker), malformed (unanswered)",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in Outcome:
            self.history_requests.labels(outcome.value)  # every outcome shows, at 0
        self.history_latency = Histogram(
            "notifications_history_request_duration_seconds",
            "Time from taking a history request to publishing its answer",
            registry=self.registry,
        )
        self.history_messages = Counter(
            "notifications_history_messages_returned",
            "Events sent back in history answers",
            registry=self.registry,
        )

    def observe_history(self, outcome: Outcome, seconds: float, messages: int) -> None:
        self.history_requests.labels(outcome.value).inc()
        self.history_latency.observe(seconds)
        self.history_messages.inc(messages)

    def observe_backlog(self, backlog: Backlog) -> None:
        self.backlog.set(backlog.size)
        if backlog.oldest is None:
            self.oldest_pending_age.set(0)
            return
        oldest = backlog.oldest
        if oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=UTC)
        self.oldest_pending_age.set(max(0.0, (datetime.now(UTC) - oldest).total_seconds()))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestMetrics:
    """ASGI middleware: counts and times HTTP requests by route template (bounded labels)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"]
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - start)
