"""The shared settings as an operator meets them: `ws-edge` and `notifications-service` started
as processes, with variables, a `.env` and `<VAR>_FILE` files."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import websockets
from support.edge import EdgeProcess, _wait_started, recv_frame
from support.notifications import SCRIPT as NOTIFICATIONS

from realtime_shared.auth import issue_token
from realtime_shared.settings import DEV_JWT_SECRET

pytestmark = pytest.mark.e2e

EDGE = (sys.executable, "-m", "realtime_edge.cli")
SERVICES = {"ws-edge": EDGE, "notifications-service": (str(NOTIFICATIONS),)}


def environ(**env: str) -> dict[str, str]:
    """The caller's environment without any setting a check could pick up by accident."""
    prefixes = ("JWT_", "EDGE_", "DATABASE_", "AMQP_", "LOG_", "DEV")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    return {**clean, "PYTHONUNBUFFERED": "1", **env}


def spawn_edge(cwd: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Path]:
    """`ws-edge` without --dev in `cwd`, its output in a log file there."""
    log_path = cwd / "ws-edge.log"
    with log_path.open("wb") as log:
        argv = [*EDGE, "--host", "127.0.0.1", "--port", "0"]
        return subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=log), log_path


def run(service: str, cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SERVICES[service], *args, "--host", "127.0.0.1", "--port", "0"],
        env=environ(**env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("service", "invalid", "named"),
    [
        (
            "ws-edge",
            {"EDGE_PING_INTERVAL": "70", "EDGE_PONG_TIMEOUT": "60"},
            ["EDGE_PONG_TIMEOUT must be longer than EDGE_PING_INTERVAL"],
        ),
        (
            "ws-edge",
            {"EDGE_SEND_QUEUE": "0", "LOG_FORMAT": "xml"},
            ["LOG_FORMAT: Input should be", "EDGE_SEND_QUEUE: Input should be greater"],
        ),
        (
            "notifications-service",
            {"DATABASE_POOL_SIZE": "0"},
            ["DATABASE_POOL_SIZE: Input should be greater"],
        ),
    ],
    ids=["edge-combination", "edge-fields", "notifications-field"],
)
def test_invalid_settings_are_named_with_their_reason_never_with_values(
    tmp_path: Path, service: str, invalid: dict[str, str], named: list[str]
) -> None:
    secret, password = secrets.token_hex(32), secrets.token_hex(8)
    done = run(
        service,
        tmp_path,
        JWT_SECRET=secret,
        AMQP_URL=f"amqp://realtime:{password}@127.0.0.1:1/",
        DATABASE_URL=f"postgresql://realtime:{password}@127.0.0.1:1/realtime",
        **invalid,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0] == f"{service}: invalid settings:"
    assert len(lines) == 1 + len(named), done.stderr  # one line per invalid setting
    for line, reason in zip(lines[1:], named, strict=True):
        assert reason in line
    assert secret not in done.stderr
    assert password not in done.stderr
    assert "input_value" not in done.stderr


@pytest.mark.parametrize(
    "variable", ["JWT_SECRET", "JWT_PREVIOUS_SECRETS", "JWT_PUBLIC_KEY", "JWT_SECRET_FILE"]
)
def test_dev_mode_refuses_to_start_beside_a_configured_key(tmp_path: Path, variable: str) -> None:
    key = secrets.token_hex(32)
    (tmp_path / "key").write_text(key)
    value = str(tmp_path / "key") if variable.endswith("_FILE") else key
    done = run("ws-edge", tmp_path, "--dev", **{variable: value})
    assert done.returncode == 2, done.stderr
    named = variable.removesuffix("_FILE")
    assert done.stderr == (
        "ws-edge: --dev signs tokens with the public development key, never with a configured "
        f"one: unset {named}, or start without --dev\n"
    )


def test_dev_mode_of_the_notifications_service_refuses_a_configured_key(tmp_path: Path) -> None:
    done = run("notifications-service", tmp_path, "--dev", JWT_SECRET=secrets.token_hex(32))
    assert done.returncode == 2, done.stderr
    assert "--dev signs tokens with the public development key" in done.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"JWT_SECRET": DEV_JWT_SECRET}, "JWT_SECRET is the published development key"),
        (
            {"JWT_SECRET": secrets.token_hex(32), "JWT_PREVIOUS_SECRETS": DEV_JWT_SECRET},
            "a key in JWT_PREVIOUS_SECRETS is the published development key",
        ),
        ({"JWT_SECRET": "k" * 32}, "JWT_SECRET is not random enough"),
    ],
    ids=["dev-key", "dev-key-retired", "repeated"],
)
def test_the_dev_key_and_typed_keys_are_refused(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    for service in SERVICES:
        done = run(service, tmp_path, **env)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(f"{service}: {message}")
        assert len(done.stderr.splitlines()) == 1


def test_an_unreadable_key_file_is_named_with_its_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-secret"
    done = run("notifications-service", tmp_path, JWT_SECRET_FILE=str(missing))
    assert done.returncode == 2, done.stderr
    assert f"JWT_SECRET_FILE: cannot read {missing} (No such file or directory)" in done.stderr


def test_a_key_given_twice_names_both_variables(tmp_path: Path) -> None:
    secret = secrets.token_hex(32)
    (tmp_path / "key").write_text(secret)
    done = run("ws-edge", tmp_path, JWT_SECRET=secret, JWT_SECRET_FILE=str(tmp_path / "key"))
    assert done.returncode == 2, done.stderr
    assert "JWT_SECRET and JWT_SECRET_FILE are both set" in done.stderr
    assert secret not in done.stderr


def test_the_database_url_can_come_from_a_file(tmp_path: Path) -> None:
    database = tmp_path / "from-file.db"
    (tmp_path / "database-url").write_text(f"sqlite+aiosqlite:///{database}\n")
    done = subprocess.run(
        [str(NOTIFICATIONS), "migrate"],
        env=environ(DATABASE_URL_FILE=str(tmp_path / "database-url")),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert database.stat().st_size > 0


async def test_without_the_flag_DEV_is_ignored_and_keys_come_from_files(
    amqp_url: str, exchange: str, tmp_path: Path
) -> None:
    key = secrets.token_hex(32)
    (tmp_path / "jwt-secret").write_text(key + "\n")
    (tmp_path / "amqp-url").write_text(amqp_url + "\n")
    (tmp_path / ".env").write_text("DEV=true\n")
    env = environ(
        DEV="1",
        JWT_SECRET_FILE=str(tmp_path / "jwt-secret"),
        AMQP_URL_FILE=str(tmp_path / "amqp-url"),
        REALTIME_EXCHANGE=exchange,
    )
    proc, log_path = spawn_edge(tmp_path, env)
    try:
        # Ready only once connected to the broker: AMQP_URL came from its file.
        edge = EdgeProcess(proc, await _wait_started(proc, log_path, "/readyz"), log_path, "")
        async with httpx.AsyncClient(base_url=edge.base_url) as http:
            assert (await http.get("/dev/token", params={"user": "mallory"})).status_code == 404
            assert (await http.get("/")).status_code == 404  # nor the dev mode's demo page
        async with websockets.connect(edge.ws_url(token=issue_token("alice", key))) as ws:
            assert (await recv_frame(ws))["event"] == "connected"
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(edge.ws_url(token=issue_token("eve", DEV_JWT_SECRET))):
                pass
        assert refused.value.response.status_code == 401
    finally:
        await EdgeProcess(proc, "", log_path, "").stop()
