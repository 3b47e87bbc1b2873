"""Which messages are sent and which are refused, and why (no I/O)."""

from typing import Any

import pytest

from realtime_chat.domain import MAX_TEXT_CHARS, DirectMessage, Rejected, parse_send

pytestmark = pytest.mark.unit


def test_a_message_is_from_the_sender_whatever_its_data_says() -> None:
    message = parse_send("alice", {"to": "bob", "text": "hi", "from": "mallory"})
    assert message == DirectMessage("alice", "bob", "hi")
    assert message.users == ["alice", "bob"]


def test_a_note_to_self_goes_to_one_user() -> None:
    assert parse_send("alice", {"to": "alice", "text": "milk"}).users == ["alice"]


def test_text_of_the_longest_length_is_sent_as_is() -> None:
    text = " é" * (MAX_TEXT_CHARS // 2)
    assert parse_send("alice", {"to": "bob", "text": text}).text == text


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({"text": "hi"}, "'to' must name"),
        ({"to": "", "text": "hi"}, "'to' must name"),
        ({"to": ["bob"], "text": "hi"}, "'to' must name"),
        ({"to": "b" * 300, "text": "hi"}, "'to' is not a valid user id"),
        ({"to": "bob"}, "'text' must be a non-empty string"),
        ({"to": "bob", "text": ""}, "'text' must be a non-empty string"),
        ({"to": "bob", "text": " \n\t"}, "'text' must be a non-empty string"),
        ({"to": "bob", "text": 7}, "'text' must be a non-empty string"),
        ({"to": "bob", "text": "x" * (MAX_TEXT_CHARS + 1)}, "longer than 2000 characters"),
    ],
)
def test_an_invalid_message_is_rejected_with_a_reason(data: dict[str, Any], reason: str) -> None:
    with pytest.raises(Rejected, match=reason):
        parse_send("alice", data)
