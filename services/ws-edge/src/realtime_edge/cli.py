"""`ws-edge`: run the WebSocket edge under uvicorn (uvloop, httptools, sans-I/O websockets)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import resource
import socket
import sys

import uvicorn

from realtime_edge.app import create_app
from realtime_edge.node import Node
from realtime_edge.settings import EdgeSettings
from realtime_edge.wsprotocol import EdgeWebSocketProtocol, QuietAccepts, QuietBadText
from realtime_shared.auth import KeyConfigError
from realtime_shared.logs import configure_logging, uvicorn_log_config
from realtime_shared.settings import add_process_arguments, settings_from_args
from realtime_shared.startup import freeze_startup_heap

DRAIN_TIMEOUT = 3
"""How long SIGTERM waits for clients to acknowledge the 1001 close before exiting anyway."""


class EdgeServer(uvicorn.Server):
    """uvicorn closes sockets with 1012 on shutdown; the contract wants 1001 first."""

    def __init__(self, config: uvicorn.Config, node: Node) -> None:
        super().__init__(config)
        self.node = node

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        freeze_startup_heap()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()  # stop accepting before telling clients to go elsewhere
        await self.node.drain(DRAIN_TIMEOUT)
        await super().shutdown(sockets)


def raise_fd_limit() -> None:
    """Every connection is a file descriptor, and many hosts start with a soft limit of 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ws-edge",
        description="Run the realtime WebSocket edge (settings from the environment and .env).",
    )
    add_process_arguments(parser, port=8080)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings_from_args(EdgeSettings, args, "ws-edge")
    configure_logging(settings.log_level, settings.log_format)
    try:
        app = create_app(settings)
    except KeyConfigError as exc:
        print(f"ws-edge: {exc}", file=sys.stderr)
        return 2
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        ws=EdgeWebSocketProtocol,
        ws_max_size=settings.edge_max_frame_bytes,
        ws_ping_interval=settings.edge_ping_interval,
        ws_ping_timeout=settings.pong_wait,
        ws_per_message_deflate=settings.edge_per_message_deflate,
        log_config=uvicorn_log_config(settings.log_level, settings.log_format),
        lifespan="on",
        timeout_graceful_shutdown=DRAIN_TIMEOUT,
        backlog=4096,
    )
    logging.getLogger("uvicorn.error").addFilter(QuietAccepts())  # after uvicorn's log config
    logging.getLogger("uvicorn.error").addFilter(QuietBadText())
    raise_fd_limit()
    server = EdgeServer(config, app.state.node)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        return 3  # the lifespan failed (e.g. RabbitMQ unreachable); uvicorn logged why
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
