"""The python-socketio peer: `AsyncServer` under uvicorn with `AsyncAioPikaManager`.

One room per user (the JWT's ``sub``, checked in the connect handler); the
publisher emits through a write-only manager on the same RabbitMQ exchange.
WebSocket transport only, so clients skip long-polling.

``python -m realtime_bench.socketio_server --port P --amqp-url URL --exchange X --secret S``
"""

from __future__ import annotations

from typing import Any

import jwt
import socketio  # type: ignore[import-untyped]
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from realtime_bench.runtime import serve_target


def create_app(amqp_url: str, exchange: str, secret: str) -> Any:
    manager = socketio.AsyncAioPikaManager(amqp_url, channel=exchange)
    sio = socketio.AsyncServer(
        async_mode="asgi", client_manager=manager, transports=["websocket"], cors_allowed_origins=[]
    )

    async def connect(sid: str, environ: dict[str, Any], auth: dict[str, Any] | None) -> bool:
        try:
            sub = jwt.decode((auth or {}).get("token", ""), secret, algorithms=["HS256"])["sub"]
        except (jwt.PyJWTError, KeyError):
            return False
        await sio.enter_room(sid, sub)
        return True

    sio.on("connect", connect)

    async def healthz(_: object) -> PlainTextResponse:
        return PlainTextResponse("ok")

    health = Starlette(routes=[Route("/healthz", healthz)])
    return socketio.ASGIApp(sio, other_asgi_app=health)


if __name__ == "__main__":
    serve_target("python -m realtime_bench.socketio_server", __doc__, create_app)
