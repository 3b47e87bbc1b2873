"""`/ws` and `/ws/{stream}`: the handshake checks, then one connection's read loop.

A raw ASGI app rather than Starlette's `WebSocket` wrapper: this is the hot path, and
the denial response (401/403/404 before any upgrade) is the ASGI
`websocket.http.response` extension, which the wrapper does not make simpler.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Callable
from urllib.parse import parse_qsl

import orjson
from starlette.types import Receive, Scope, Send

from realtime_edge.closecodes import CloseCode
from realtime_edge.connection import Connection
from realtime_edge.deadlines import Deadlines
from realtime_edge.errors import BrokerUnavailable, EdgeError, OriginForbidden, TooManyConnections
from realtime_edge.handshake import Admission
from realtime_edge.node import Node
from realtime_edge.protocol import (
    BINARY_FRAME_MESSAGE,
    PONG_FRAME,
    TOKEN_EXPIRED_FRAME,
    UNSUPPORTED_FRAME,
    ControlRefused,
    Ping,
    ProtocolError,
    Publish,
    PublishRefused,
    Refresh,
    Session,
    Subscribe,
    Unsubscribe,
    parse_command,
)
from realtime_edge.recovery import Gate, gather_replays
from realtime_edge.wsprotocol import ABORT_EXTENSION
from realtime_shared.auth import AuthError
from realtime_shared.envelope import Position

log = logging.getLogger(__name__)


def error_body(code: str, message: str) -> bytes:
    return orjson.dumps({"success": False, "error": {"code": code, "message": message}})


async def deny(scope: Scope, send: Send, status: int, code: str, message: str) -> None:
    """An HTTP response instead of the upgrade, so the client sees why it was refused."""
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": int(CloseCode.POLICY_VIOLATION)})
        return
    body = error_body(code, message)
    await send(
        {
            "type": "websocket.http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "websocket.http.response.body", "body": body})


class WebSocketEndpoint:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.deadlines = Deadlines(self._expire)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        admission = await self._admit(scope, send)
        if admission is not None:
            scope["headers"] = ()  # only the checks read them; idle connections stay smaller
            # Captured now: a middleware wrapping `send` would hide uvicorn's socket later.
            abort = scope.get("extensions", {}).get(ABORT_EXTENSION)
            await self._serve(admission, receive, send, scope.get("client"), abort)

    async def _admit(self, scope: Scope, send: Send) -> Admission | None:
        node = self.node
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        try:
            if not node.ready:
                raise BrokerUnavailable("the edge is not connected to RabbitMQ; retry shortly")
            admission = node.handshake.admit(
                path_stream=scope.get("path_params", {}).get("stream"),
                query=query,
                headers=headers,
            )
            limit = node.settings.edge_max_connections_per_user
            if node.user_connections(admission.claims.sub) >= limit:
                raise TooManyConnections(f"at most {limit} connections per user")
        except AuthError as exc:
            node.metrics.auth_failures.labels(exc.reason).inc()
            await deny(scope, send, 401, "UNAUTHORIZED", str(exc))
            return None
        except EdgeError as exc:
            if isinstance(exc, OriginForbidden):
                node.metrics.auth_failures.labels("origin").inc()
            await deny(scope, send, exc.status, exc.code, str(exc))
            return None
        return admission

    async def _serve(
        self,
        admission: Admission,
        receive: Receive,
        send: Send,
        client: tuple[str, int] | None,
        abort: Callable[[], None] | None,
    ) -> None:
        node = self.node
        settings = node.settings
        # the raw payload is not needed after verification; idle connections stay smaller
        claims = dataclasses.replace(admission.claims, raw={})
        session = Session(
            claims,
            settings.edge_max_streams_per_connection,
            node.publish_limits,
            node.control_limits,
        )
        session.commit(session.plan(admission.streams))
        conn = Connection(
            uuid.uuid4().hex,
            session,
            send,
            settings.edge_send_queue,
            abort or node.cannot_abort,
            settings.edge_close_timeout,
        )
        pending = node.hold(conn.user_id, session.streams)  # binding overlaps the upgrade
        try:
            await send({"type": "websocket.accept"})
        except BaseException:
            node.release(conn.user_id, session.streams)
            raise
        node.opened(conn)
        trail = settings.edge_log_connections
        if trail:
            opened_at = time.monotonic()
            log.info(
                "connection opened from %s for %s",
                client[0] if client else "unknown",
                ",".join(sorted(session.streams)) or "no stream",
                extra={"connection_id": conn.id, "user_id": conn.user_id},
            )
        code: int = CloseCode.INTERNAL_ERROR
        try:
            await node.bound(pending)
            if not conn.closing:
                node.started(conn)
                self._schedule_expiry(conn)
            code = await self._read(conn, receive)
        finally:
            if conn.close_code is not None:
                code = conn.close_code
            self.deadlines.cancel(conn)
            node.closed(conn, code)
            if trail:
                log.info(
                    "connection closed after %.1f s",
                    time.monotonic() - opened_at,
                    extra={"connection_id": conn.id, "user_id": conn.user_id, "close_code": code},
                )
            await conn.dispose()

    async def _read(self, conn: Connection, receive: Receive) -> int:
        """Handle client frames until the socket closes; returns the close code seen."""
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return int(message.get("code", CloseCode.NORMAL))
            if conn.closing:
                continue  # closed by the edge: its close frame is on its way, nothing else
            try:
                await self._handle(conn, message.get("text"))
            except ProtocolError as exc:
                self._refused(conn, exc)

    async def _handle(self, conn: Connection, text: str | None) -> None:
        """One client frame; ProtocolError when it is refused (answered by `_refused`)."""
        node = self.node
        try:
            if text is None:
                raise ProtocolError(UNSUPPORTED_FRAME, BINARY_FRAME_MESSAGE)
            command = parse_command(text)
        except ProtocolError as exc:
            conn.session.admit_control(exc.frame_id)  # garbage is not a way around the limit
            raise
        if not isinstance(command, Publish):
            conn.session.admit_control()
        if isinstance(command, Subscribe):
            await self._subscribe(conn, command)
        elif isinstance(command, Unsubscribe):
            self._leave(conn, conn.session.drop(command.streams))
            node.send(conn, conn.session.unsubscribed_frame())
        elif isinstance(command, Ping):
            node.send(conn, PONG_FRAME)
        elif isinstance(command, Publish):
            conn.session.admit_publish(command)
            node.publish(conn, command)
        elif isinstance(command, Refresh):
            self._refresh(conn, command)

    def _refused(self, conn: Connection, exc: ProtocolError) -> None:
        """Answer a refused frame; close a connection that keeps flooding past its limit."""
        node = self.node
        kind = "publish" if isinstance(exc, PublishRefused) else "control"
        node.metrics.client_refused.labels(exc.code, kind).inc()
        session = conn.session
        if not isinstance(exc, ControlRefused):
            log.info("bad client frame: %s", exc.message, extra={"connection_id": conn.id})
        elif session.refused_in_row == 1:  # one line per run of refusals, not one per frame
            log.info("control frames rate limited", extra={"connection_id": conn.id})
        node.send(conn, exc.frame)
        if isinstance(exc, ControlRefused) and session.flooding:
            log.warning(
                "closing a connection that kept flooding: %d frames refused in a row",
                session.refused_in_row,
                extra={"connection_id": conn.id, "user_id": conn.user_id},
            )
            node.hub.unregister(conn)
            conn.close(CloseCode.POLICY_VIOLATION)

    async def _subscribe(self, conn: Connection, command: Subscribe) -> None:
        node = self.node
        session = conn.session
        plan = session.plan(command.streams)
        recovering = {
            stream: position
            for stream, position in command.recover.items()
            if stream in plan.add or session.holds(stream)
        }
        gate = self._hold_back(conn, recovering)
        futures = node.hold(conn.user_id, plan.add)
        try:
            await node.bound(futures)
        except BaseException:
            node.release(conn.user_id, plan.add)
            raise
        session.commit(plan)
        if conn.started and not conn.closing:
            for stream in plan.add:
                node.hub.join(conn, stream)
        if gate is None:
            node.send(conn, session.subscribed_frame(plan))
            return
        # The bindings are in place: the history asked for now covers everything that
        # was not, or will not be, delivered live to this connection.
        replays, _ = await gather_replays(
            node.history, conn.user_id, recovering, metrics=node.metrics, connection_id=conn.id
        )
        recovered: dict[str, bool] = {}
        for stream in recovering:
            replay = replays.get(stream)
            if replay is not None and stream in gate.overflowed:
                node.metrics.recovery_failures.labels("overflow").inc()
                replay = None  # live messages were dropped while held back: refetch
            recovered[stream] = replay is not None
            if replay is not None:
                node.metrics.recoveries_succeeded.inc()
                node.metrics.replayed.inc(len(replay.frames))
                conn.replay(replay.frames)
        node.send(conn, session.subscribed_frame(plan, recovered))
        for stream in recovering:
            replay = replays.get(stream) if recovered[stream] else None
            conn.replay(gate.release(stream, None if replay is None else replay.last))
        if gate.idle:
            conn.gate = None

    def _hold_back(self, conn: Connection, streams: dict[str, Position]) -> Gate | None:
        """From now on, live messages of `streams` wait for this connection's recovery."""
        if not streams:
            return None
        gate = conn.gate or Gate(self.node.settings.edge_recovery_max)
        for stream in streams:
            gate.hold(stream)
        conn.gate = gate
        return gate

    def _leave(self, conn: Connection, dropped: list[str]) -> None:
        """Streams the session no longer holds: no delivery from now on, bindings released."""
        for stream in dropped:
            self.node.hub.leave(conn, stream)
        self.node.release(conn.user_id, dropped)

    def _refresh(self, conn: Connection, command: Refresh) -> None:
        try:
            reply, dropped = conn.session.refresh(command.token, self.node.verifier.verify)
        except ProtocolError:
            self.node.metrics.auth_failures.labels("refresh").inc()
            raise
        self._leave(conn, dropped)
        self._schedule_expiry(conn)
        self.node.send(conn, reply)

    def _schedule_expiry(self, conn: Connection) -> None:
        self.deadlines.schedule(conn, conn.session.exp)

    def _expire(self, conn: Connection) -> None:
        if conn.closing:
            return  # already on its way out for another reason
        self.node.hub.unregister(conn)  # nothing after `token.expired`
        conn.deliver(TOKEN_EXPIRED_FRAME)
        conn.close(CloseCode.TOKEN_EXPIRED)
