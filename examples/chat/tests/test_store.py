"""The store on SQLite and PostgreSQL: each user's messages numbered 1, 2, 3..., kept as
published, stored once per client message however often RabbitMQ delivers it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from realtime_chat.domain import DirectMessage
from realtime_chat.store import ChatStore, Delivery

pytestmark = pytest.mark.integration

SENT_AT = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[ChatStore]:
    chat = ChatStore(database_url)
    await chat.open()
    yield chat
    await chat.dispose()


async def send(store: ChatStore, message_id: str, sender: str, to: str) -> list[Delivery]:
    return await store.send(message_id, DirectMessage(sender, to, f"{message_id}!"), SENT_AT)


def numbered(deliveries: list[Delivery]) -> dict[str, int]:
    return {d.user_id: d.envelope.meta["seq"] for d in deliveries}


async def test_each_users_messages_are_numbered_from_one(store: ChatStore) -> None:
    assert numbered(await send(store, "m1", "alice", "bob")) == {"alice": 1, "bob": 1}
    assert numbered(await send(store, "m2", "bob", "alice")) == {"alice": 2, "bob": 2}
    assert numbered(await send(store, "m3", "alice", "carol")) == {"alice": 3, "carol": 1}


async def test_a_message_is_one_event_for_both_users(store: ChatStore) -> None:
    to_alice, to_bob = await send(store, "m1", "alice", "bob")
    assert (
        to_alice.envelope.data
        == to_bob.envelope.data
        == {
            "id": "m1",
            "from": "alice",
            "to": "bob",
            "text": "m1!",
            "sent_at": SENT_AT.isoformat(),
        }
    )
    assert (to_alice.envelope.stream, to_alice.envelope.event) == ("chat", "message.created")
    assert to_alice.envelope.meta["event_id"] == to_bob.envelope.meta["event_id"] == "m1"
    assert to_alice.envelope.meta["epoch"] == await store.epoch()


async def test_a_note_to_self_is_numbered_once(store: ChatStore) -> None:
    assert numbered(await send(store, "m1", "alice", "alice")) == {"alice": 1}
    assert numbered(await send(store, "m2", "alice", "bob")) == {"alice": 2, "bob": 1}


async def test_a_message_delivered_again_is_not_stored_or_numbered_twice(
    store: ChatStore,
) -> None:
    first = await send(store, "m1", "alice", "bob")
    assert await send(store, "m1", "alice", "bob") == first
    assert numbered(await send(store, "m2", "alice", "bob")) == {"alice": 2, "bob": 2}
    assert len((await store.page("bob", 0, 10)).messages) == 2


async def test_history_is_what_was_published_after_a_seq(store: ChatStore) -> None:
    published = [d for n in range(5) for d in await send(store, f"m{n}", "alice", "bob")]
    to_bob = [d.envelope.to_dict() for d in published if d.user_id == "bob"]
    page = await store.page("bob", 2, 10)
    assert (page.messages, page.last_seq) == (to_bob[2:], 5)
    page = await store.page("bob", 0, 2)
    assert (page.messages, page.last_seq) == (to_bob[:2], 5)
    assert (await store.page("dave", 0, 10)).last_seq == 0


async def test_the_epoch_outlives_a_restart(database_url: str, store: ChatStore) -> None:
    again = ChatStore(database_url)
    try:
        assert await again.open() == await store.epoch()
    finally:
        await again.dispose()


async def test_concurrent_senders_to_one_user_get_consecutive_numbers(store: ChatStore) -> None:
    senders = [f"user-{n}" for n in range(20)]
    results = await asyncio.gather(
        *(send(store, f"m-{sender}", sender, "bob") for sender in senders)
    )
    to_bob = sorted(numbered(deliveries)["bob"] for deliveries in results)
    assert to_bob == list(range(1, 21))
    assert [m["meta"]["seq"] for m in (await store.page("bob", 0, 100)).messages] == to_bob
