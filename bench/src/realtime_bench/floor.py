"""The floor: the least a RabbitMQ-to-WebSocket forwarder can do.

A bare Starlette WebSocket endpoint, a JWT decode, one exclusive queue bound to
``notifications.<uid>`` per connected user (and to ``notifications`` for
broadcasts), bodies forwarded unchanged. No control frames, no send queues, no
metrics. It binds before accepting, so an open socket is a subscribed one.

``python -m realtime_bench.floor --port P --amqp-url URL --exchange X --secret S``
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import aio_pika
import jwt
from aio_pika.abc import AbstractIncomingMessage
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from realtime_bench.runtime import serve_target
from realtime_shared.routing import stream_key, user_key

STREAM = "notifications"


def create_app(amqp_url: str, exchange_name: str, secret: str) -> Starlette:
    by_user: dict[str, set[WebSocket]] = {}
    everyone: set[WebSocket] = set()
    state: dict[str, aio_pika.abc.AbstractQueue | aio_pika.abc.AbstractExchange] = {}

    async def forward(message: AbstractIncomingMessage) -> None:
        text = message.body.decode()
        key = message.routing_key or ""
        targets = everyone if key == STREAM else by_user.get(key, ())
        for ws in list(targets):
            with contextlib.suppress(Exception):
                await ws.send_text(text)

    async def endpoint(ws: WebSocket) -> None:
        try:
            sub = jwt.decode(ws.query_params.get("token", ""), secret, algorithms=["HS256"])["sub"]
        except (jwt.PyJWTError, KeyError):
            await ws.close(1008)
            return
        key = user_key(STREAM, sub)
        queue, exchange = state["queue"], state["exchange"]
        assert isinstance(queue, aio_pika.abc.AbstractQueue)
        assert isinstance(exchange, aio_pika.abc.AbstractExchange)
        holders = by_user.setdefault(key, set())
        if not holders:
            await queue.bind(exchange, key)
        holders.add(ws)
        everyone.add(ws)
        try:
            await ws.accept()
            while True:
                await ws.receive_bytes()
        except (WebSocketDisconnect, KeyError, RuntimeError):
            pass
        finally:
            everyone.discard(ws)
            holders.discard(ws)
            if not holders:
                del by_user[key]
                with contextlib.suppress(Exception):
                    await queue.unbind(exchange, key)

    async def healthz(_: object) -> PlainTextResponse:
        return PlainTextResponse("ok")

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            channel = await connection.channel()
            exchange = await channel.get_exchange(exchange_name, ensure=True)
            queue = await channel.declare_queue(exclusive=True, auto_delete=True)
            await queue.bind(exchange, stream_key(STREAM))
            state.update(queue=queue, exchange=exchange)
            await queue.consume(forward, no_ack=True)
            yield

    return Starlette(
        routes=[Route("/healthz", healthz), WebSocketRoute("/ws", endpoint)], lifespan=lifespan
    )


if __name__ == "__main__":
    serve_target("python -m realtime_bench.floor", __doc__, create_app)
