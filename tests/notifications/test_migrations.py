"""The Alembic migrations build exactly the tables the code uses, on both databases."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from support.notifications import SCRIPT

from realtime_notifications import db
from realtime_notifications.models import metadata

pytestmark = pytest.mark.integration


def _diff(connection: sa.Connection) -> list[object]:
    context = MigrationContext.configure(connection)
    return list(compare_metadata(context, metadata))


async def test_migrations_match_the_models_and_are_idempotent(database_url: str) -> None:
    database = db.open_database(database_url)
    try:
        await database.migrate()
        await database.migrate()  # a restart migrates again: nothing to do, no error
        assert await database.read(_diff) == []
        version = await database.read(
            lambda conn: conn.scalar(sa.text("SELECT version_num FROM alembic_version"))
        )
        assert version == "0001"
    finally:
        await database.dispose()


def test_the_migrate_command_prepares_an_empty_database(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/fresh.db"
    done = subprocess.run(
        [str(SCRIPT), "migrate"],
        env={**os.environ, "DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "newest schema" in done.stderr
    engine = sa.create_engine(url.replace("+aiosqlite", ""))
    try:
        assert {"notifications", "outbox", "idempotency_keys"} <= set(
            sa.inspect(engine).get_table_names()
        )
    finally:
        engine.dispose()
