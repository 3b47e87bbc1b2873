import pytest
from hypothesis import given
from hypothesis import strategies as st

from realtime_shared.routing import (
    RoutingKeyError,
    fits_routing_key,
    parse_key,
    stream_key,
    user_key,
)

pytestmark = pytest.mark.unit

user_ids = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=40)


@given(user_ids)
def test_any_user_id_round_trips_as_exactly_two_words(user_id: str) -> None:
    key = user_key("notifications", user_id)
    assert key.count(".") == 1
    assert "*" not in key and "#" not in key
    assert key.isascii()
    assert parse_key(key) == ("notifications", user_id)


@pytest.mark.parametrize(
    ("user_id", "expected"),
    [
        ("alice", "notifications.alice"),
        ("a.b", "notifications.a%2Eb"),
        ("#", "notifications.%23"),
        ("*", "notifications.%2A"),
        ("100%", "notifications.100%25"),
        ("ü", "notifications.%C3%BC"),
        ("a b/c", "notifications.a%20b%2Fc"),
        ("A-Z_a~z0", "notifications.A-Z_a~z0"),
    ],
)
def test_hostile_user_ids_are_percent_encoded_in_upper_case(user_id: str, expected: str) -> None:
    assert user_key("notifications", user_id) == expected


def test_empty_user_id_is_refused() -> None:
    with pytest.raises(RoutingKeyError):
        user_key("notifications", "")


def test_key_over_255_bytes_is_refused() -> None:
    assert fits_routing_key("notifications", "x" * (255 - len("notifications.")))
    assert not fits_routing_key("notifications", "x" * (256 - len("notifications.")))
    with pytest.raises(RoutingKeyError, match="255"):
        user_key("notifications", "é" * 100)  # 600 encoded bytes


def test_stream_key_is_one_word_and_parses_back() -> None:
    assert stream_key("chat") == "chat"
    assert parse_key("chat") == ("chat", None)


@pytest.mark.parametrize("stream", ["", "Chat", "a.b", "1x", "x" * 65, "no*"])
def test_invalid_stream_ids_are_refused(stream: str) -> None:
    with pytest.raises(RoutingKeyError):
        user_key(stream, "alice")
    with pytest.raises(RoutingKeyError):
        stream_key(stream)


@pytest.mark.parametrize("key", ["notifications.", "notifications.a.b", ".x", "BAD.x"])
def test_parse_refuses_keys_of_the_wrong_shape(key: str) -> None:
    with pytest.raises(RoutingKeyError):
        parse_key(key)
