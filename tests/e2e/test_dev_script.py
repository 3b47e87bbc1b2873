"""`make dev`'s script as a newcomer meets it: the printed curl works, Ctrl-C stops everything."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import aio_pika
import orjson
import pytest
from support.notifications import free_port

from realtime_shared.client import RealtimeClient

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parents[2]
READY_BANNER = "Ctrl-C stops everything"


def dev_env(amqp_url: str, exchange: str, edge_port: int, api_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JWT_")}
    env.update(
        # A developer's shell or .env may hold the compose stack's key: dev mode must not
        # refuse to start for it, nor use it.
        JWT_SECRET=secrets.token_hex(32),
        AMQP_URL=amqp_url,
        REALTIME_EXCHANGE=exchange,
        REALTIME_INBOUND_EXCHANGE=f"{exchange}.inbound",
        DEV_EDGE_PORT=str(edge_port),
        DEV_NOTIFICATIONS_PORT=str(api_port),
    )
    return env


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def read_until(stream: asyncio.StreamReader, marker: str, within: float) -> list[str]:
    lines: list[str] = []
    async with asyncio.timeout(within):
        while marker not in (line := (await stream.readline()).decode()):
            if not line:
                raise AssertionError("dev.py ended early:\n" + "".join(lines))
            lines.append(line)
    return lines


def printed_curl(lines: list[str]) -> str:
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("curl "))
    end = next(i for i in range(start, len(lines)) if line_has_body(lines[i]))
    return "".join(lines[start : end + 1])


def line_has_body(line: str) -> bool:
    return line.strip().startswith("-d ")


async def start_dev(
    env: dict[str, str], data_dir: Path, *, merge_stderr: bool = False
) -> asyncio.subprocess.Process:
    """`scripts/dev.py` as `make dev` runs it (from the repository root)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "scripts/dev.py",
        "--data-dir",
        str(data_dir),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT if merge_stderr else asyncio.subprocess.PIPE,
    )


async def test_the_printed_curl_makes_a_notification_arrive_and_ctrl_c_stops_all(
    amqp_url: str, exchange: str, tmp_path: Path, make_token: Any
) -> None:
    edge_port, api_port = free_port(), free_port()
    env = dev_env(amqp_url, exchange, edge_port, api_port)
    proc = await start_dev(env, tmp_path, merge_stderr=True)
    assert proc.stdout is not None
    try:
        lines = await read_until(proc.stdout, READY_BANNER, within=60)
        text = "".join(lines)
        assert f"http://localhost:{edge_port}/" in text

        ws_url = f"ws://127.0.0.1:{edge_port}/ws"
        async with RealtimeClient(
            ws_url, make_token("alice"), streams=["notifications", "chat"]
        ) as alice:
            curl = await asyncio.create_subprocess_exec(
                "bash", "-c", printed_curl(lines), stdout=asyncio.subprocess.PIPE
            )
            out, _ = await curl.communicate()
            assert curl.returncode == 0
            created = orjson.loads(out)
            async with asyncio.timeout(10):
                event = await anext(alice)
            assert event.event == "notification.created"
            assert event.data["notification"]["id"] == created["id"]

            # The example chat backend runs too: a note to self comes back.
            sent = await alice.publish("chat", "message.send", {"to": "alice", "text": "hi"})
            async with asyncio.timeout(10):
                message = await anext(alice)
            assert (message.stream, message.event) == ("chat", "message.created")
            assert message.data["id"] == sent and message.data["text"] == "hi"

        proc.send_signal(signal.SIGINT)  # what Ctrl-C does
        async with asyncio.timeout(30):
            await proc.stdout.read()
            assert await proc.wait() == 0
        assert port_is_free(edge_port) and port_is_free(api_port)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await delete_chat_queue(amqp_url, exchange)


async def delete_chat_queue(amqp_url: str, exchange: str) -> None:
    """The chat backend's queue is durable: the shared broker must not keep one per run."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(f"{exchange}.inbound.chat-example.chat")


async def test_a_taken_port_is_named_with_a_way_out(
    amqp_url: str, exchange: str, tmp_path: Path
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        proc = await start_dev(dev_env(amqp_url, exchange, taken, free_port()), tmp_path)
        async with asyncio.timeout(30):
            _, err = await proc.communicate()
    assert proc.returncode == 1
    assert f"port {taken}" in err.decode() and "already in use" in err.decode()
    assert "DEV_EDGE_PORT" in err.decode()


async def test_a_missing_rabbitmq_is_said_at_once_with_how_to_get_one(tmp_path: Path) -> None:
    env = dev_env("amqp://guest:secret@127.0.0.1:1/", "unused", free_port(), free_port())
    proc = await start_dev(env, tmp_path)
    async with asyncio.timeout(30):
        _, err = await proc.communicate()
    message = err.decode()
    assert proc.returncode == 1
    assert "RabbitMQ does not answer at amqp://guest:***@127.0.0.1:1/" in message
    assert "apt-get install rabbitmq-server" in message and "docker compose" in message
