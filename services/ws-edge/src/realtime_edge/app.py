"""`create_app(settings)`: the edge's routes, built without I/O; the lifespan connects."""

from __future__ import annotations

import contextlib
import mimetypes
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from realtime_edge.endpoint import WebSocketEndpoint, error_body
from realtime_edge.handshake import extract_token
from realtime_edge.metrics import CONTENT_TYPE_LATEST
from realtime_edge.node import Node
from realtime_edge.settings import EdgeSettings
from realtime_shared.auth import PERMISSION_ADMIN, AuthError, TokenVerifier, issue_token
from realtime_shared.headers import SecurityHeaders, page_policy
from realtime_shared.routing import fits_routing_key
from realtime_shared.streams import DEFAULT_STREAM

STATIC_DIR = Path(__file__).parent / "static"

CLIENT_FILES = frozenset({"realtime.js", "realtime.d.ts"})
"""Always served: the browser client and its types."""

DEMO_FILES = frozenset({"index.html", "demo.js", "demo.css"})
"""Served only while the demo is on; otherwise nothing of it answers."""

DEV_TOKEN_TTL = 3600


class EdgeApp(Starlette):
    """Starlette, except that `/ws` and `/ws/{stream}` go straight to the endpoint.

    Every open connection keeps its whole ASGI call stack alive for its lifetime;
    skipping Starlette's middleware and router frames saves memory per idle connection
    and a little CPU per connect. The endpoint handles its own errors.
    """

    def __init__(self, endpoint: WebSocketEndpoint, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            path: str = scope["path"]
            if path == "/ws":
                scope["path_params"] = {}
                return await self.endpoint(scope, receive, send)
            stream = path[4:] if path.startswith("/ws/") else ""
            if stream and "/" not in stream:
                scope["path_params"] = {"stream": stream}
                return await self.endpoint(scope, receive, send)
        return await super().__call__(scope, receive, send)


class StaticFilesOf(StaticFiles):
    """`StaticFiles`, answering only for the listed file names (404 for the rest)."""

    def __init__(self, names: frozenset[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.names = names

    async def get_response(self, path: str, scope: Scope) -> Response:
        if path not in self.names:
            return _error(404, "NOT_FOUND", "no such file")
        return await super().get_response(path, scope)


def _origin(url: str) -> str | None:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else None


def _error(status: int, code: str, message: str) -> Response:
    return Response(error_body(code, message), status, media_type="application/json")


def create_app(settings: EdgeSettings, verifier: TokenVerifier | None = None) -> Starlette:
    """Raises KeyConfigError when the JWT settings cannot verify tokens safely."""
    verifier = verifier or TokenVerifier.from_settings(settings)
    node = Node(settings, verifier)
    endpoint = WebSocketEndpoint(node)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "node": node.link.node_id})

    async def readyz(request: Request) -> Response:
        if node.ready:
            return JSONResponse({"status": "ready"})
        reason = "draining" if node.draining else "not connected to RabbitMQ"
        return _error(503, "UNAVAILABLE", reason)

    async def metrics(request: Request) -> Response:
        return Response(node.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def admin_connections(request: Request) -> Response:
        try:
            claims = verifier.verify(extract_token((), request.headers))
        except AuthError as exc:
            node.metrics.auth_failures.labels(exc.reason).inc()
            return _error(401, "UNAUTHORIZED", str(exc))
        if not claims.has(PERMISSION_ADMIN):
            return _error(403, "FORBIDDEN", f"the {PERMISSION_ADMIN!r} permission is required")
        return JSONResponse(node.hub.summary())

    # The client's `.d.ts` would otherwise be served as MPEG transport stream (video/mp2t).
    mimetypes.add_type("application/typescript", ".ts")
    routes: list[Route | Mount] = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        Route("/admin/connections", admin_connections),
        Mount(
            "/static",
            StaticFilesOf(
                CLIENT_FILES | (DEMO_FILES if settings.demo_enabled else frozenset()),
                directory=STATIC_DIR,
            ),
            name="static",
        ),
    ]

    if settings.demo_enabled:

        async def index(request: Request) -> Response:
            return FileResponse(STATIC_DIR / "index.html")

        async def demo_config(request: Request) -> Response:
            return JSONResponse({"notifications_url": settings.edge_notifications_url})

        routes += [Route("/", index), Route("/demo/config.json", demo_config)]

    if settings.dev:
        secret = settings.effective_jwt_secret()

        async def dev_token(request: Request) -> Response:
            """Dev only: a token for any user, so the demo page needs no identity provider."""
            user = request.query_params.get("user", "").strip()
            if not user or not fits_routing_key(DEFAULT_STREAM, user) or secret is None:
                return _error(422, "VALIDATION_ERROR", "'user' must be a usable user id")
            perms = [p for p in request.query_params.get("permissions", "").split(",") if p]
            token = issue_token(
                user,
                secret,
                ttl=DEV_TOKEN_TTL,
                permissions=perms,
                audience=settings.jwt_audience,
                issuer=settings.jwt_issuer,
            )
            return JSONResponse({"token": token, "exp": verifier.verify(token).exp})

        routes.append(Route("/dev/token", dev_token))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await node.start()
        try:
            yield
        finally:
            await node.stop()

    page_csp = page_policy(_origin(settings.edge_notifications_url))
    app = EdgeApp(
        endpoint,
        routes=routes,
        lifespan=lifespan,
        middleware=[
            Middleware(SecurityHeaders, policies={"/": page_csp, "/static/index.html": page_csp})
        ],
    )
    app.state.node = node
    return app
