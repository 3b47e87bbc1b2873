"""`ws-edge`: run the WebSocket edge."""

from __future__ import annotations

import argparse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ws-edge", description="Run the realtime WebSocket edge.")
    parser.add_argument("--host", default="0.0.0.0", help="bind address (0.0.0.0)")
    parser.add_argument("--port", type=int, default=8080, help="bind port (8080)")
    parser.add_argument("--dev", action="store_true", help="development mode (insecure dev key)")
    return parser


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    return 0
