"""The chat backend behind a real edge and RabbitMQ, as two users' browsers see it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aio_pika
import orjson
import pytest
import websockets
from support.edge import EdgeProcess, connected, recv_frame, running_edge

from realtime_chat.app import ChatBackend
from realtime_chat.settings import ChatSettings

pytestmark = pytest.mark.integration

MakeToken = Callable[..., str]
Frame = dict[str, Any]


@pytest.fixture
async def inbound(amqp_url: str, exchange: str) -> AsyncIterator[str]:
    """The test's inbound exchange (the `exchange` fixture deletes it and the history
    queues); the backend's durable queue is deleted here."""
    name = f"{exchange}.inbound"
    yield name
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        await (await connection.channel()).queue_delete(f"{name}.chat-example.chat")


@pytest.fixture
def settings(amqp_url: str, exchange: str, inbound: str, tmp_path: Path) -> ChatSettings:
    return ChatSettings(
        amqp_url=amqp_url,
        realtime_exchange=exchange,
        realtime_inbound_exchange=inbound,
        chat_database_url=f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}",
    )


@pytest.fixture
async def chat(settings: ChatSettings) -> AsyncIterator[ChatBackend]:
    backend = ChatBackend(settings)
    await backend.start()
    yield backend
    await backend.stop()


@pytest.fixture
async def edge(amqp_url: str, exchange: str, inbound: str) -> AsyncIterator[EdgeProcess]:
    async with running_edge(amqp_url, exchange, REALTIME_INBOUND_EXCHANGE=inbound) as process:
        yield process


class Tab:
    """One browser tab of a user. Frames are kept in arrival order, so waiting for one
    skips none: the answer to a publish may come before or after its `published`."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.pending: list[Frame] = []

    async def next(self, wanted: Callable[[Frame], bool]) -> Frame:
        for n, frame in enumerate(self.pending):
            if wanted(frame):
                return self.pending.pop(n)
        while True:
            frame = await recv_frame(self.ws)
            if wanted(frame):
                return frame
            self.pending.append(frame)

    async def next_chat(self) -> Frame:
        return await self.next(lambda frame: frame["stream"] == "chat")

    async def send(self, data: Frame, event: str = "message.send") -> str:
        """Publish through the edge; the message id of its `published` reply."""
        frame = {"action": "publish", "stream": "chat", "event": event, "data": data}
        await self.ws.send(orjson.dumps(frame).decode())
        published = await self.next(lambda frame: frame["event"] == "published")
        return str(published["data"]["message_id"])

    async def nothing_more(self) -> None:
        assert [f for f in self.pending if f["stream"] == "chat"] == []
        with pytest.raises(TimeoutError):
            await recv_frame(self.ws, within=0.3)

    async def close(self) -> None:
        await self.ws.close()


async def tab(edge: EdgeProcess, make_token: MakeToken, name: str) -> Tab:
    return Tab(await connected(edge.ws_url("/ws/chat", token=make_token(name))))


async def test_a_direct_message_reaches_both_users_numbered_for_each(
    chat: ChatBackend, edge: EdgeProcess, make_token: MakeToken
) -> None:
    alice, bob = await tab(edge, make_token, "alice"), await tab(edge, make_token, "bob")
    message_id = await alice.send({"to": "bob", "text": "hi bob"})
    to_alice, to_bob = await alice.next_chat(), await bob.next_chat()
    assert to_alice["event"] == to_bob["event"] == "message.created"
    assert to_alice["data"] == to_bob["data"]
    data = to_bob["data"]
    assert (data["id"], data["from"], data["to"], data["text"]) == (
        message_id,
        "alice",
        "bob",
        "hi bob",
    )
    await bob.send({"to": "alice", "text": "hi alice"})
    await alice.send({"to": "bob", "text": "how are you?"})
    alice_seqs = [to_alice["meta"]["seq"]] + [
        (await alice.next_chat())["meta"]["seq"] for _ in "ab"
    ]
    bob_seqs = [to_bob["meta"]["seq"]] + [(await bob.next_chat())["meta"]["seq"] for _ in "ab"]
    assert alice_seqs == bob_seqs == [1, 2, 3]
    await alice.close()
    await bob.close()


@pytest.mark.parametrize(
    ("event", "data", "reason"),
    [
        ("message.send", {"to": "bob", "text": ""}, "'text' must be a non-empty string"),
        ("message.send", {"to": "bob", "text": "x" * 2001}, "longer than 2000 characters"),
        ("message.send", {"text": "to nobody"}, "'to' must name"),
        ("message.edit", {"to": "bob", "text": "hi"}, "unknown event 'message.edit'"),
    ],
)
async def test_an_invalid_message_is_rejected_on_the_sending_connection_only(
    chat: ChatBackend,
    edge: EdgeProcess,
    make_token: MakeToken,
    event: str,
    data: Frame,
    reason: str,
) -> None:
    alice = await tab(edge, make_token, "alice")
    other_tab = await tab(edge, make_token, "alice")
    bob = await tab(edge, make_token, "bob")
    message_id = await alice.send(data, event)
    rejected = await alice.next_chat()
    assert rejected["event"] == "message.rejected"
    assert reason in rejected["data"]["reason"]
    assert rejected["data"]["message_id"] == message_id
    await other_tab.nothing_more()
    await bob.nothing_more()
    # Nothing was stored or numbered: the next message is everyone's first.
    await alice.send({"to": "bob", "text": "hi"})
    assert (await bob.next_chat())["meta"]["seq"] == 1
    for each in (alice, other_tab, bob):
        await each.close()


async def test_a_user_who_was_away_recovers_exactly_what_he_missed(
    chat: ChatBackend, edge: EdgeProcess, make_token: MakeToken
) -> None:
    alice, bob = await tab(edge, make_token, "alice"), await tab(edge, make_token, "bob")
    await alice.send({"to": "bob", "text": "one"})
    seen = await bob.next_chat()
    await bob.close()
    assert (await alice.next_chat())["data"]["text"] == "one"
    for text in ("two", "three"):
        await alice.send({"to": "bob", "text": text})
        # Alice's copy is numbered in the transaction that stores bob's: once she has it,
        # bob's is in his history.
        assert (await alice.next_chat())["data"]["text"] == text

    ws = await connected(edge.ws_url(token=make_token("bob")))  # holds notifications only
    position = {"epoch": seen["meta"]["epoch"], "seq": seen["meta"]["seq"]}
    recover = {"action": "subscribe", "streams": [], "recover": {"chat": position}}
    await ws.send(orjson.dumps(recover).decode())
    replayed = []
    while (frame := await recv_frame(ws))["event"] != "subscribed":
        replayed.append(frame)
    assert [(m["meta"]["seq"], m["data"]["text"]) for m in replayed] == [(2, "two"), (3, "three")]
    assert frame["data"]["recovered"] == {"chat": True}
    await alice.send({"to": "bob", "text": "four"})
    live = await Tab(ws).next_chat()
    assert (live["meta"]["seq"], live["data"]["text"]) == (4, "four")
    await alice.close()
    await ws.close()


def test_help_says_what_it_runs() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "realtime_chat.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "direct messages" in done.stdout and "CHAT_DATABASE_URL" in done.stdout


def spawn(environ: dict[str, str], workdir: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """`chat-example` as `make dev` runs it, its output in `log_path`."""
    with log_path.open("wb") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "realtime_chat.cli"],
            cwd=workdir,
            env=environ,
            stdout=log_file,
            stderr=log_file,
        )


async def test_the_chat_example_command_serves_until_sigterm(
    settings: ChatSettings, edge: EdgeProcess, make_token: MakeToken, tmp_path: Path
) -> None:
    log_path = tmp_path / "chat.log"
    environ = {
        **os.environ,
        "AMQP_URL": settings.amqp_url,
        "REALTIME_EXCHANGE": settings.realtime_exchange,
        "REALTIME_INBOUND_EXCHANGE": settings.realtime_inbound_exchange,
        "CHAT_DATABASE_URL": settings.chat_database_url,
    }
    proc = spawn(environ, tmp_path, log_path)
    try:
        deadline = time.monotonic() + 30
        while "consuming chat" not in log_path.read_text():  # the line to wait for
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            await asyncio.sleep(0.05)
        alice = await tab(edge, make_token, "alice")
        await alice.send({"to": "alice", "text": "note to self"})
        assert (await alice.next_chat())["data"]["text"] == "note to self"
        await alice.close()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
