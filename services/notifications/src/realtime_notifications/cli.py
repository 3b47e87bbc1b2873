"""`notifications-service`: run the notifications service, or `notifications-service migrate`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys

from realtime_notifications.settings import NotificationsSettings
from realtime_shared.auth import KeyConfigError
from realtime_shared.logs import configure_logging, uvicorn_log_config
from realtime_shared.settings import add_process_arguments, settings_from_args
from realtime_shared.startup import freeze_startup_heap

DEFAULT_PORT = 8081


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="notifications-service",
        description="Run the realtime notifications service (REST API and outbox relay).",
        epilog="Configuration comes from the environment and .env: DATABASE_URL, AMQP_URL, "
        "REALTIME_EXCHANGE, JWT_SECRET, NOTIFICATIONS_CORS_ORIGINS... (docs/notifications.md)",
    )
    parser.add_argument(
        "command",
        nargs="?",
        choices=["serve", "migrate"],
        default="serve",
        help="serve (default), or migrate: apply the database migrations and exit",
    )
    add_process_arguments(parser, port=DEFAULT_PORT)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings_from_args(NotificationsSettings, args, "notifications-service")
    configure_logging(settings.log_level, settings.log_format)
    # Alembic announces each of its plugins at INFO on import: seven lines of noise per start.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    if args.command == "migrate":
        return asyncio.run(_migrate(settings))
    return _serve(settings, args.host, args.port)


async def _migrate(settings: NotificationsSettings) -> int:
    if problem := await _use_database(settings, migrate=True):
        print(f"notifications-service: {problem}", file=sys.stderr)
        return 1
    print("notifications-service: database is at the newest schema", file=sys.stderr)
    return 0


async def _use_database(settings: NotificationsSettings, *, migrate: bool) -> str | None:
    """Why the database cannot be used (a missing directory, a bad URL, no server), or None."""
    from sqlalchemy.exc import SQLAlchemyError

    from realtime_notifications import db

    try:
        database = db.open_database(settings.database_url)
        try:
            await (database.migrate() if migrate else database.ping())
        finally:
            await database.dispose()
    except (SQLAlchemyError, OSError, ValueError) as exc:
        return _cannot_use(settings.database_url, exc)
    return None


def _cannot_use(database_url: str, exc: Exception) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import DBAPIError, SQLAlchemyError

    try:
        url = make_url(database_url)
        where = url.render_as_string(hide_password=True)
        if url.get_backend_name() == "sqlite" and url.database:
            # `sqlite:///a.db` is relative to the working directory, `sqlite:////a.db` is not.
            where += f" (the file {os.path.abspath(url.database)})"
    except SQLAlchemyError:
        where = "in DATABASE_URL"
    reason = exc.orig if isinstance(exc, DBAPIError) else exc
    return f"cannot use the database {where}: {reason}"


def _serve(settings: NotificationsSettings, host: str, port: int) -> int:
    import uvicorn

    class _Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)  # the app's lifespan has run: migrated, relaying
            freeze_startup_heap()

    from realtime_notifications.app import create_app

    try:
        app = create_app(settings)
    except KeyConfigError as exc:
        print(f"notifications-service: {exc}", file=sys.stderr)
        return 2
    # Said in one line here, rather than as a traceback from the app's start-up.
    if problem := asyncio.run(_use_database(settings, migrate=False)):
        print(f"notifications-service: {problem}", file=sys.stderr)
        return 1
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=uvicorn_log_config(settings.log_level, settings.log_format),
        proxy_headers=True,
        lifespan="on",
    )
    _Server(config).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
