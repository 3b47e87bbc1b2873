"""`ws-edge` as an operator starts it: refusing unsafe or invalid configuration clearly."""

import os
import subprocess
import sys
import tempfile

import pytest

pytestmark = pytest.mark.e2e


def run_edge(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("JWT_", "EDGE_"))}
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "realtime_edge.cli", "--port", "0", *args],
        env=environ,
        cwd=tempfile.gettempdir(),  # no stray .env
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_without_a_jwt_secret_it_refuses_to_start_and_says_why() -> None:
    result = run_edge()
    assert result.returncode == 2
    assert "JWT_SECRET is not set" in result.stderr


def test_a_short_secret_is_refused() -> None:
    result = run_edge(JWT_SECRET="short")
    assert result.returncode == 2
    assert "at least 32 bytes" in result.stderr


def test_a_pong_timeout_not_longer_than_the_ping_interval_is_refused() -> None:
    result = run_edge("--dev", EDGE_PING_INTERVAL="30", EDGE_PONG_TIMEOUT="30")
    assert result.returncode == 2
    assert "EDGE_PONG_TIMEOUT must be longer than EDGE_PING_INTERVAL" in result.stderr


def test_help_lists_the_options() -> None:
    result = run_edge("--help")
    assert result.returncode == 0
    for option in ("--host", "--port", "--dev", "--log-level"):
        assert option in result.stdout
