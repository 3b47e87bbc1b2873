"""The queries a user's page makes most are index range scans, not table scans plus sorts.

With a million rows, a plan that sorts or scans the table is what a user would feel;
checking the plan of the repository's own SQL keeps that true as queries change.
"""

from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from realtime_notifications.db import create_engine, is_sqlite, migrate
from realtime_notifications.repository import NotificationRepository

pytestmark = pytest.mark.integration


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    await migrate(engine)
    yield engine
    await engine.dispose()


async def _captured(conn: AsyncConnection, call: Any) -> tuple[str, Any]:
    seen: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        seen.append((statement, params))

    sync_engine = conn.sync_engine
    sa.event.listen(sync_engine, "before_cursor_execute", capture)
    try:
        await call(NotificationRepository(conn))
    finally:
        sa.event.remove(sync_engine, "before_cursor_execute", capture)
    assert seen, "the repository ran no SQL"
    return seen[-1]


async def _plan(engine: AsyncEngine, conn: AsyncConnection, statement: str, params: Any) -> str:
    if is_sqlite(engine):
        rows = await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", params)
        return "\n".join(str(row[-1]) for row in rows)
    # Few rows here: forbid the sequential scan so the plan shows what a big table gets.
    await conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
    rows = await conn.exec_driver_sql(f"EXPLAIN {statement}", params)
    return "\n".join(str(row[0]) for row in rows)


@pytest.mark.parametrize("unread_only", [True, False])
async def test_newest_first_list_uses_an_index_and_no_sort(
    engine: AsyncEngine, unread_only: bool
) -> None:
    async with engine.begin() as conn:
        statement, params = await _captured(
            conn, lambda repo: repo.list("alice", limit=25, offset=0, unread_only=unread_only)
        )
        plan = await _plan(engine, conn, statement, params)
    assert "INDEX" in plan.upper(), plan
    assert "TEMP B-TREE" not in plan.upper(), plan  # SQLite's sort step
    assert not any(line.strip().startswith("Sort") for line in plan.splitlines()), plan


async def test_unread_count_uses_an_index(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        statement, params = await _captured(conn, lambda repo: repo.unread_count("alice"))
        plan = await _plan(engine, conn, statement, params)
    assert "INDEX" in plan.upper(), plan
    assert "SCAN notifications\n" not in plan + "\n", plan
