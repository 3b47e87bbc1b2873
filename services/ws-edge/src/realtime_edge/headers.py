"""Browser security headers on every HTTP response the edge makes.

The edge serves a page (the demo), scripts and JSON. Each response says what a browser
may do with it: no MIME sniffing, no framing by other sites, no referrer leaking a URL,
and a Content Security Policy. The demo page's policy is strict (its own scripts and
styles only, no inline code) and names the one other origin it talks to, the
notifications API; everything else is `default-src 'none'`, since nothing else is a
document to render. HSTS is the TLS terminator's to send (docs/security.md).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

NOTHING_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"
"""For JSON, scripts and errors: nothing in them may load or run anything."""


def page_policy(api_origin: str | None) -> str:
    """The demo page: its own scripts and styles, the favicon's data: URI, its WebSocket
    (same origin: `'self'` covers ws:/wss: to it) and the notifications API."""
    connect = "'self'" + (f" {api_origin}" if api_origin else "")
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src {connect}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


class SecurityHeaders:
    """Adds the headers to every `http.response.start` that does not set them itself."""

    def __init__(self, app: ASGIApp, page_paths: frozenset[str], page_csp: str) -> None:
        self.app = app
        self.page_paths = page_paths
        self.page_csp = page_csp.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = self.page_csp if scope["path"] in self.page_paths else NOTHING_POLICY.encode()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                for name, value in (
                    (b"content-security-policy", csp),
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"),
                ):
                    if name not in present:
                        headers.append((name, value))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
