"""`notifications-service` says in one line why it cannot use its database, and exits 1."""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

import pytest
from support.notifications import SCRIPT

pytestmark = pytest.mark.integration


def run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *(args or ("--port", "0"))],
        env={**os.environ, "JWT_SECRET": secrets.token_hex(32), **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("command", [(), ("migrate",)], ids=["serve", "migrate"])
def test_a_missing_directory_is_named_with_the_resolved_path(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    # Three slashes: relative to the working directory, a classic first-run mistake.
    done = run(tmp_path, *command, DATABASE_URL="sqlite+aiosqlite:///data/n.db")
    assert done.returncode == 1, done.stderr
    assert f"the file {tmp_path}/data/n.db" in done.stderr
    assert "unable to open database file" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unreachable_server_is_named_without_its_password(tmp_path: Path) -> None:
    url = "postgresql+asyncpg://realtime:hunter2@127.0.0.1:1/realtime"
    done = run(tmp_path, "migrate", DATABASE_URL=url)
    assert done.returncode == 1, done.stderr
    assert "cannot use the database postgresql+asyncpg://realtime:***@127.0.0.1:1" in done.stderr
    assert "hunter2" not in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unknown_database_kind_is_a_clear_error(tmp_path: Path) -> None:
    done = run(tmp_path, "migrate", DATABASE_URL="mongodb://localhost/x")
    assert done.returncode == 1
    assert "cannot use the database mongodb://localhost/x" in done.stderr
    assert "Traceback" not in done.stderr
