"""Prometheus metrics of one edge process, in a registry of its own (one per app)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "EdgeMetrics"]


class EdgeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections = Gauge("edge_connections", "Open WebSocket connections", registry=r)
        self.stream_connections = Gauge(
            "edge_stream_connections", "Connections holding each stream", ["stream"], registry=r
        )
        self.opened = Counter("edge_connections_opened", "Connections accepted", registry=r)
        self.closed = Counter(
            "edge_connections_closed", "Connections closed, by close code", ["code"], registry=r
        )
        self.consumed = Counter(
            "edge_messages_consumed", "Messages consumed from RabbitMQ", registry=r
        )
        self.delivered = Counter(
            "edge_messages_delivered", "Frames queued to connections from RabbitMQ", registry=r
        )
        self.dropped = Counter(
            "edge_messages_invalid", "Consumed messages dropped as not an envelope", registry=r
        )
        self.slow_consumers = Counter(
            "edge_slow_consumer_drops",
            "Connections closed because their queue was full",
            registry=r,
        )
        self.auth_failures = Counter(
            "edge_auth_failures",
            "Refused handshakes and refreshes, by reason",
            ["reason"],
            registry=r,
        )
        self.abort_unavailable = Counter(
            "edge_abort_unavailable",
            "Stalled sockets that could not be dropped: the server offers no abort",
            registry=r,
        )
        self.bindings = Gauge("edge_bindings", "Routing keys bound to the node's queue", registry=r)
        self.broker_reconnects = Counter(
            "edge_broker_reconnects", "Times consumption resumed after losing RabbitMQ", registry=r
        )
        self.consumer_cancels = Counter(
            "edge_consumer_cancels",
            "Times RabbitMQ cancelled the edge's consumer (its queue deleted); each reconnects",
            registry=r,
        )
        self.oversized = Counter(
            "edge_messages_oversized",
            "Consumed messages dropped for being over EDGE_MAX_MESSAGE_BYTES",
            registry=r,
        )
        self.recoveries = Counter(
            "edge_recoveries",
            "Streams a client asked to recover (subscribe with recover)",
            registry=r,
        )
        self.recoveries_succeeded = Counter(
            "edge_recoveries_succeeded", "Streams recovered exactly (recovered: true)", registry=r
        )
        self.recovery_failures = Counter(
            "edge_recovery_failures",
            "Streams not recovered (recovered: false; the client refetches), by reason",
            ["reason"],
            registry=r,
        )
        self.replayed = Counter(
            "edge_recovery_replayed_messages", "Missed messages sent by recoveries", registry=r
        )
        self.recovery_seconds = Histogram(
            "edge_recovery_seconds",
            "From reading a subscribe with recover to having the owners' answers",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )
        self.client_published = Counter(
            "edge_client_messages_published",
            "Client messages RabbitMQ confirmed, by stream",
            ["stream"],
            registry=r,
        )
        self.client_refused = Counter(
            "edge_client_messages_refused",
            "Client frames refused with an error frame, by error code and kind "
            "(publish: a client message; control: any other frame)",
            ["code", "kind"],
            registry=r,
        )
        self.publish_confirm_seconds = Histogram(
            "edge_client_publish_confirm_seconds",
            "From publishing a client message to RabbitMQ's confirm",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
            registry=r,
        )
        self.replies = Counter(
            "edge_replies",
            "Replies to one connection (@ keys), by outcome",
            ["outcome"],
            registry=r,
        )
        self.broker_up = Gauge("edge_broker_up", "1 while consuming from RabbitMQ", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
