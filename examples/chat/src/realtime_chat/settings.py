"""The chat backend's settings: the shared variables plus where its database is."""

from __future__ import annotations

from realtime_shared.settings import DEFAULT_INBOUND_EXCHANGE, RealtimeSettings

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./chat.db"
"""A file in the working directory: nothing to install to try it."""


class ChatSettings(RealtimeSettings):
    """AMQP_URL, REALTIME_EXCHANGE, REALTIME_INBOUND_EXCHANGE, CHAT_DATABASE_URL, LOG_*."""

    realtime_inbound_exchange: str = DEFAULT_INBOUND_EXCHANGE
    chat_database_url: str = DEFAULT_DATABASE_URL
