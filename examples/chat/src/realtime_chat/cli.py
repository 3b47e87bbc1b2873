"""`chat-example`: run the reference chat backend until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from realtime_chat.app import NAME, ChatBackend
from realtime_chat.settings import ChatSettings
from realtime_shared.logs import configure_logging
from realtime_shared.settings import load_settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chat-example",
        description="Run the reference chat backend: direct messages between users on the "
        "`chat` stream. It consumes `message.send` from clients (through the edge), stores "
        "each message, publishes `message.created` to the sender and the recipient "
        "(numbered, so clients recover what they missed) and answers `chat` history "
        "requests. Invalid messages get `message.rejected` on the sending connection.",
        epilog="Configuration comes from the environment and .env: AMQP_URL, "
        "REALTIME_EXCHANGE, REALTIME_INBOUND_EXCHANGE, CHAT_DATABASE_URL (default "
        "sqlite+aiosqlite:///./chat.db; postgresql+asyncpg://... for PostgreSQL), "
        "LOG_LEVEL, LOG_FORMAT. See examples/chat/README.md.",
    )
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING... (LOG_LEVEL)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {"log_level": args.log_level.upper()} if args.log_level else {}
    settings = load_settings(ChatSettings, "chat-example", **overrides)
    configure_logging(settings.log_level, settings.log_format)
    return asyncio.run(serve(settings))


async def serve(settings: ChatSettings) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    chat = ChatBackend(settings)
    try:
        await chat.store.open()
    except (SQLAlchemyError, OSError, ValueError) as exc:
        await chat.store.dispose()
        print(f"{NAME}: cannot use the database in CHAT_DATABASE_URL: {exc}", file=sys.stderr)
        return 1
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    consuming = asyncio.create_task(chat.consume())
    try:
        await stopping.wait()
    finally:
        consuming.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consuming
        await chat.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
