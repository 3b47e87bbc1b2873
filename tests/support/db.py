"""Scratch PostgreSQL databases: created empty for a test, dropped after it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg  # type: ignore[import-untyped]


async def _execute(server_url: str, statement: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def create_database(server_url: str, prefix: str = "t") -> tuple[str, str]:
    """Create an empty database; return its name and SQLAlchemy async URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:16]}"
    await _execute(server_url, f'CREATE DATABASE "{name}"')
    base = server_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return name, f"{base}/{name}"


async def drop_database(server_url: str, name: str) -> None:
    await _execute(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@asynccontextmanager
async def scratch_database(server_url: str, prefix: str = "t") -> AsyncIterator[str]:
    name, url = await create_database(server_url, prefix)
    try:
        yield url
    finally:
        await drop_database(server_url, name)
