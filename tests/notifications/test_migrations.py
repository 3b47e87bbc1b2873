"""The Alembic migrations build exactly the tables the code uses, on both databases."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from support.notifications import SCRIPT

from realtime_notifications import db
from realtime_notifications import outbox as outbox_module
from realtime_notifications.db import open_database
from realtime_notifications.domain import Event, EventName, utcnow
from realtime_notifications.models import metadata, outbox, positions

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
        assert version == "0002"
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


def _upgrade_to(revision: str) -> Callable[[sa.Connection], None]:
    def upgrade(connection: sa.Connection) -> None:
        config = db.alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    return upgrade


def _old_row(user_id: str, sent: bool) -> dict[str, Any]:
    """An outbox row as 0001 wrote it: its body has no meta.seq or meta.epoch."""
    event_id = str(uuid.uuid4())
    body = {"stream": "notifications", "event": "notification.read_all", "data": {"count": 0}}
    body["meta"] = {"event_id": event_id, "occurred_at": "2026-11-30T10:00:00+00:00"}
    return {
        "event_id": event_id,
        "user_id": user_id,
        "routing_key": f"notifications.{user_id}",
        "body": orjson.dumps(body),
        "created_at": utcnow(),
        "sent_at": utcnow() if sent else None,
    }


async def test_upgrading_numbers_the_events_already_in_the_outbox(database_url: str) -> None:
    database = open_database(database_url)
    try:
        await database.write(_upgrade_to("0001"))
        old = [_old_row("alice", True), _old_row("bob", False), _old_row("alice", True)]
        old.append(_old_row("alice", False))
        await database.write(lambda conn: conn.execute(outbox.insert(), old))

        await database.migrate()

        epoch = await database.read(positions.read_epoch)
        assert epoch is not None

        def rows(conn: sa.Connection) -> list[tuple[str, int, dict[str, Any]]]:
            query = sa.select(outbox.c.user_id, outbox.c.seq, outbox.c.body).order_by(outbox.c.id)
            return [(user, seq, orjson.loads(body)) for user, seq, body in conn.execute(query)]

        numbered = await database.read(rows)
        assert [(user, seq) for user, seq, _ in numbered] == [
            ("alice", 1),
            ("bob", 1),
            ("alice", 2),
            ("alice", 3),
        ]
        # Pending events leave numbered like every later one; sent bodies stay as they were.
        before = [orjson.loads(row["body"])["meta"] for row in old]
        after = [body["meta"] for _, _, body in numbered]
        assert after[0] == before[0] and after[2] == before[2]
        assert after[1] == {**before[1], "seq": 1, "epoch": epoch}
        assert after[3] == {**before[3], "seq": 3, "epoch": epoch}

        def add_one(conn: sa.Connection) -> int:
            outbox_module.lock_user(conn, "alice")
            return outbox_module.add(conn, Event("alice", EventName.READ_ALL, {}), epoch)

        assert await database.write(add_one) == 4  # numbering goes on after the old rows
        page = await database.read(lambda conn: outbox_module.history(conn, "alice", 0, 10, epoch))
        assert [(m["meta"]["seq"], m["meta"]["epoch"]) for m in page.messages] == [
            (1, epoch),
            (2, epoch),
            (3, epoch),
            (4, epoch),
        ]
    finally:
        await database.dispose()
