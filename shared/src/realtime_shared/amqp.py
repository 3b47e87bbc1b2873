"""AMQP connection URLs as both services use them.

RabbitMQ and the client agree on a heartbeat when they connect. aiormq (under aio-pika
and FastStream too) asks for 60 s and gives up on a silent broker only after three
missed intervals: a broker that vanished without closing the TCP connection (a host
down, a NAT or load balancer dropping state) was noticed after about three minutes.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

DEFAULT_HEARTBEAT = 10
"""Seconds: a dead broker is noticed within about 30 s, and the broker notices a dead
client within about 20 s (two missed heartbeats), for one small frame each way per 5 s."""


def with_heartbeat(url: str, seconds: int = DEFAULT_HEARTBEAT) -> str:
    """`url` asking for `seconds` of heartbeat, unless the URL already says (`?heartbeat=`)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(name == "heartbeat" for name, _ in query):
        return url
    return urlunsplit(parts._replace(query=urlencode([*query, ("heartbeat", str(seconds))])))
