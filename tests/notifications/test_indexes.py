"""The queries a user's page makes most are index range scans, not table scans plus sorts.

With a million rows, a plan that sorts or scans the table is what a user would feel;
checking the plan of the repository's own SQL keeps that true as queries change.
"""

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from realtime_notifications import outbox
from realtime_notifications.db import Database, open_database
from realtime_notifications.domain import Event, EventName
from realtime_notifications.repository import NotificationRepository

pytestmark = pytest.mark.integration


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    database = open_database(database_url)
    await database.migrate()
    yield database
    await database.dispose()


async def _plan_of(database: Database, call: Callable[[Connection], Any]) -> str:
    """The query plan of the last statement `call` runs."""
    seen: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        seen.append((statement, params))

    def plan(conn: Connection) -> str:
        sa.event.listen(database.sync_engine, "before_cursor_execute", capture)
        try:
            call(conn)
        finally:
            sa.event.remove(database.sync_engine, "before_cursor_execute", capture)
        assert seen, "no SQL ran"
        statement, params = seen[-1]
        if database.dialect == "sqlite":
            rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", params)
            return "\n".join(str(row[-1]) for row in rows)
        # Few rows here: forbid the sequential scan so the plan shows what a big table gets.
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        rows = conn.exec_driver_sql(f"EXPLAIN {statement}", params)
        return "\n".join(str(row[0]) for row in rows)

    return await database.write(plan)


@pytest.mark.parametrize("unread_only", [True, False])
async def test_newest_first_list_uses_an_index_and_no_sort(
    database: Database, unread_only: bool
) -> None:
    plan = await _plan_of(
        database,
        lambda conn: NotificationRepository(conn).list(
            "alice", limit=25, offset=0, unread_only=unread_only
        ),
    )
    assert "INDEX" in plan.upper(), plan
    assert "TEMP B-TREE" not in plan.upper(), plan  # SQLite's sort step
    assert not any(line.strip().startswith("Sort") for line in plan.splitlines()), plan


async def test_unread_count_uses_an_index(database: Database) -> None:
    plan = await _plan_of(database, lambda conn: NotificationRepository(conn).unread_count("alice"))
    assert "INDEX" in plan.upper(), plan
    assert "SCAN notifications\n" not in plan + "\n", plan


async def test_a_history_page_uses_the_user_seq_index_and_no_sort(database: Database) -> None:
    def fill(conn: Connection) -> None:
        outbox.lock_user(conn, "alice")
        for _ in range(3):
            outbox.add(conn, Event("alice", EventName.READ_ALL, {"count": 0}), "e1")

    await database.write(fill)
    plan = await _plan_of(database, lambda conn: outbox.history(conn, "alice", 1, 500, "e1"))
    assert "ix_outbox_user_id_seq" in plan, plan
    assert "TEMP B-TREE" not in plan.upper(), plan
    assert not any(line.strip().startswith("Sort") for line in plan.splitlines()), plan
