"""A fresh, empty database for one REST run: an SQLite file or a new PostgreSQL database."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path


@contextlib.asynccontextmanager
async def fresh_database(kind: str, work_dir: Path, postgres_url: str | None) -> AsyncIterator[str]:
    """Yield an SQLAlchemy async URL; the database is removed afterwards."""
    if kind == "sqlite":
        path = work_dir / f"notifications-{uuid.uuid4().hex[:8]}.db"
        try:
            yield f"sqlite+aiosqlite:///{path}"
        finally:
            for leftover in path.parent.glob(path.name + "*"):
                leftover.unlink(missing_ok=True)
        return
    if not postgres_url:
        raise RuntimeError("POSTGRES_URL is not set: cannot run the PostgreSQL REST scenario")
    import asyncpg  # type: ignore[import-untyped]

    name = f"bench_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        base = postgres_url.rsplit("/", 1)[0]
        yield f"{base}/{name}".replace("postgresql://", "postgresql+asyncpg://", 1)
    finally:
        conn = await asyncpg.connect(postgres_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()
