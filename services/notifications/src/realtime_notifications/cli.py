"""`notifications-service`: run the notifications service, or `notifications-service migrate`."""

from __future__ import annotations

import argparse
import asyncio
import sys

from realtime_notifications.settings import NotificationsSettings
from realtime_shared.auth import KeyConfigError
from realtime_shared.logs import configure_logging, uvicorn_log_config
from realtime_shared.settings import add_process_arguments, settings_from_args

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
    if args.command == "migrate":
        return asyncio.run(_migrate(settings))
    return _serve(settings, args.host, args.port)


async def _migrate(settings: NotificationsSettings) -> int:
    from realtime_notifications import db

    database = db.open_database(settings.database_url)
    try:
        await database.migrate()
    finally:
        await database.dispose()
    print("notifications-service: database is at the newest schema", file=sys.stderr)
    return 0


def _serve(settings: NotificationsSettings, host: str, port: int) -> int:
    import uvicorn

    from realtime_notifications.app import create_app

    try:
        app = create_app(settings)
    except KeyConfigError as exc:
        print(f"notifications-service: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_config=uvicorn_log_config(settings.log_level, settings.log_format),
        proxy_headers=True,
        lifespan="on",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
