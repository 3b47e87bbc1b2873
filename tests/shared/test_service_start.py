"""The shared settings as an operator meets them: `ws-edge` and `notifications-service` started
as processes, with variables and a `.env`."""

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


@pytest.mark.parametrize("variable", ["JWT_SECRET", "JWT_PREVIOUS_SECRETS", "JWT_PUBLIC_KEY"])
def test_dev_mode_refuses_to_start_beside_a_configured_key(tmp_path: Path, variable: str) -> None:
    done = run("ws-edge", tmp_path, "--dev", **{variable: secrets.token_hex(32)})
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        "ws-edge: --dev signs tokens with the public development key, never with a configured "
        f"one: unset {variable}, or start without --dev\n"
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


async def test_without_the_flag_DEV_is_ignored(
    amqp_url: str, exchange: str, tmp_path: Path
) -> None:
    key = secrets.token_hex(32)
    (tmp_path / ".env").write_text("DEV=true\n")
    env = environ(DEV="1", JWT_SECRET=key, AMQP_URL=amqp_url, REALTIME_EXCHANGE=exchange)
    proc, log_path = spawn_edge(tmp_path, env)
    try:
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
