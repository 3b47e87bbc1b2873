"""Browser security headers on every HTTP response a service makes (an ASGI middleware).

Each response says what a browser may do with it: no MIME sniffing, no framing by other
sites, no referrer leaking a URL, and a Content Security Policy. JSON, scripts and
errors get `default-src 'none'`: nothing in them is a document to render. A page gets
its own policy (the edge's demo page names its scripts, styles and the one API it
calls). HSTS is the TLS terminator's to send (docs/security.md).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

NOTHING_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"
"""For JSON, scripts and errors: nothing in them may load or run anything."""


def page_policy(api_origin: str | None) -> str:
    """A page of our own: its own scripts and styles, data: images (a favicon), its
    WebSocket (same origin: `'self'` covers ws:/wss: to it) and one API origin."""
    connect = "'self'" + (f" {api_origin}" if api_origin else "")
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src {connect}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


class SecurityHeaders:
    """Adds the headers to every HTTP response that does not set them itself.

    `policies` maps a path to its own CSP, or to None for a page that brings its own
    scripts from elsewhere (FastAPI's /docs): no CSP then, the other headers still.
    """

    def __init__(self, app: ASGIApp, policies: Mapping[str, str | None] | None = None) -> None:
        self.app = app
        self.policies = {
            path: None if policy is None else policy.encode()
            for path, policy in (policies or {}).items()
        }
        self.default = NOTHING_POLICY.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = self.policies.get(scope["path"], self.default)
        extra = [
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
            (b"referrer-policy", b"no-referrer"),
        ]
        if csp is not None:
            extra.append((b"content-security-policy", csp))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in extra if name not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
