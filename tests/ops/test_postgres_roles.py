"""deploy/postgres/10-roles.sh on a real PostgreSQL: the schema owner that only `migrate`
uses, and the rows-only role the notifications service runs with.

The URL files come from deploy/make-secrets.sh, with the roles renamed per test (roles are
shared by the whole server) and the host and database pointed at a scratch database.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest
from support.broker import delete_exchange
from support.db import create_database, drop_database
from support.ops import (
    BIN,
    apply_postgres_roles,
    clean_env,
    drop_roles,
    free_port,
    make_secrets,
    on_test_server,
    service,
    wait_ready,
    write_secret,
)

from realtime_shared.auth import issue_token

pytestmark = pytest.mark.integration


@dataclass
class Database:
    server_url: str
    name: str
    superuser_url: str
    secrets: Path
    owner: str
    app: str

    def url(self, secret: str) -> str:
        return (self.secrets / secret).read_text()

    def asyncpg_url(self, secret: str) -> str:
        return self.url(secret).replace("postgresql+asyncpg://", "postgresql://", 1)

    def apply_roles(self) -> subprocess.CompletedProcess[str]:
        return apply_postgres_roles(self.server_url, self.name, self.secrets)

    def migrate(self, url: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "notifications-service"), "migrate"],
            env=clean_env(DATABASE_URL=url),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


@pytest.fixture
async def database(postgres_url: str, tmp_path: Path) -> AsyncIterator[Database]:
    name, superuser_url = await create_database(postgres_url, prefix="roles")
    suffix = uuid.uuid4().hex[:10]
    secrets = tmp_path / "secrets"
    written = make_secrets(secrets)
    db = Database(postgres_url, name, superuser_url, secrets, f"owner_{suffix}", f"app_{suffix}")
    for secret, role in (
        ("migrate_database_url", db.owner),
        ("notifications_database_url", db.app),
    ):
        write_secret(secrets, secret, on_test_server(written[secret], role, postgres_url, name))
    try:
        yield db
    finally:
        await drop_database(postgres_url, name)
        await drop_roles(postgres_url, db.owner, db.app)


async def fails_with(url: str, statement: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(statement)
    except asyncpg.PostgresError as exc:
        return str(exc.sqlstate)
    finally:
        await conn.close()
    return "succeeded"


INSUFFICIENT_PRIVILEGE = "42501"


async def test_migrate_owns_the_schema_and_the_service_only_reads_and_writes(
    database: Database,
) -> None:
    owner = database.asyncpg_url("migrate_database_url")
    app = database.asyncpg_url("notifications_database_url")
    assert (roles := database.apply_roles()).returncode == 0, roles.stderr

    migrated = database.migrate(database.url("migrate_database_url"))

    assert migrated.returncode == 0, migrated.stderr
    assert await table_owners(owner) == [database.owner]
    # A table the owner adds in a later migration is the service's to use as well.
    assert await fails_with(owner, "CREATE TABLE later (id bigserial, note text)") == "succeeded"

    assert await fails_with(app, "CREATE TABLE sneaky (id int)") == INSUFFICIENT_PRIVILEGE
    assert await fails_with(app, "ALTER TABLE notifications ADD COLUMN x int") == (
        INSUFFICIENT_PRIVILEGE
    )
    assert await fails_with(app, "DROP TABLE outbox") == INSUFFICIENT_PRIVILEGE
    assert await fails_with(app, "TRUNCATE notifications") == INSUFFICIENT_PRIVILEGE
    assert await fails_with(app, "INSERT INTO later (note) VALUES ('x')") == "succeeded"
    assert await fails_with(app, "DELETE FROM later") == "succeeded"
    # The schema owner's URL is not the service's: migrate alone holds it.
    assert database.url("migrate_database_url") != database.url("notifications_database_url")


async def test_the_real_service_runs_on_the_rows_only_role(
    database: Database, amqp_url: str, tmp_path: Path
) -> None:
    """Start-up (it checks the schema is current), a write with its outbox event, a read."""
    assert (roles := database.apply_roles()).returncode == 0, roles.stderr
    assert database.migrate(database.url("migrate_database_url")).returncode == 0
    secret, exchange, port = uuid.uuid4().hex * 2, f"test-roles-{uuid.uuid4().hex[:8]}", free_port()
    env = clean_env(
        JWT_SECRET=secret,
        AMQP_URL=amqp_url,
        REALTIME_EXCHANGE=exchange,
        DATABASE_URL=database.url("notifications_database_url"),
        LOG_FORMAT="json",
    )
    argv = [str(BIN / "notifications-service"), "--host", "127.0.0.1", "--port", str(port)]
    ops = issue_token("ops", secret, ttl=300, permissions=["notification.manage"])
    alice = issue_token("alice", secret, ttl=300)
    try:
        with service(argv, env, tmp_path, tmp_path / "notifications.log"):
            await asyncio.to_thread(wait_ready, port, tmp_path / "notifications.log")
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
                created = await c.post(
                    "/api/notifications",
                    headers={"Authorization": f"Bearer {ops}"},
                    json={"user_id": "alice", "type": "roles-test", "title": "hi"},
                )
                listed = await c.get(
                    "/api/notifications", headers={"Authorization": f"Bearer {alice}"}
                )
    finally:
        await delete_exchange(amqp_url, exchange)

    assert created.status_code == 201, created.text
    assert [n["title"] for n in listed.json()] == ["hi"]


async def test_a_volume_from_before_the_roles_is_handed_to_the_owner(database: Database) -> None:
    """The stack used to migrate as the superuser; the script gives those tables to the
    owner and the service its rights on them."""
    assert (old := database.migrate(database.superuser_url)).returncode == 0, old.stderr

    assert (roles := database.apply_roles()).returncode == 0, roles.stderr

    assert await table_owners(database.asyncpg_url("migrate_database_url")) == [database.owner]
    app = database.asyncpg_url("notifications_database_url")
    assert await fails_with(app, "DELETE FROM outbox") == "succeeded"
    assert await fails_with(app, "DROP TABLE outbox") == INSUFFICIENT_PRIVILEGE


async def test_running_it_again_applies_a_changed_password(database: Database) -> None:
    # The test server trusts every local login, so compare what PostgreSQL stored.
    assert database.apply_roles().returncode == 0
    before = await stored_password(database)
    url = urlsplit(database.url("notifications_database_url"))
    changed = url._replace(netloc=url.netloc.replace(url.password or "", uuid.uuid4().hex, 1))
    write_secret(database.secrets, "notifications_database_url", urlunsplit(changed))

    rerun = database.apply_roles()

    assert rerun.returncode == 0, rerun.stderr
    assert (after := await stored_password(database)) and after != before


async def table_owners(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'"
        )
    finally:
        await conn.close()
    return [row["tableowner"] for row in rows]


async def stored_password(database: Database) -> str:
    conn = await asyncpg.connect(database.server_url)
    try:
        verifier: str = await conn.fetchval(
            "SELECT rolpassword FROM pg_authid WHERE rolname = $1", database.app
        )
    finally:
        await conn.close()
    return verifier


def test_a_wrong_url_file_is_named_without_its_content(database: Database) -> None:
    write_secret(database.secrets, "notifications_database_url", "not a url with s3cret")

    result = database.apply_roles()

    assert result.returncode != 0
    assert "notifications_database_url is not a postgresql://" in result.stderr
    assert "s3cret" not in result.stderr
