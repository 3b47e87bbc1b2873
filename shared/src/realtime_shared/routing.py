"""Routing keys on the topic exchange: `<stream>.<user>` for one user, `<stream>` for all.

The user id is percent-encoded so that it is always exactly one AMQP word:
every byte outside ``A-Z a-z 0-9 _ - ~`` becomes ``%XX`` (upper-case hex of
its UTF-8 encoding). Dots, ``*`` and ``#`` thus can never change the
topology of a key. Producers and the edge both import these helpers, so the
format exists once.
"""

from __future__ import annotations

from urllib.parse import quote, unquote

from realtime_shared.streams import STREAM_ID_PATTERN

MAX_ROUTING_KEY_BYTES = 255
"""AMQP 0-9-1 short string limit for routing keys."""


class RoutingKeyError(ValueError):
    """A stream id, user id or routing key that the contract does not allow."""


def encode_user(user_id: str) -> str:
    if not user_id:
        raise RoutingKeyError("user id must not be empty")
    # quote() keeps "." as safe; the contract wants it encoded so a key has two words.
    return quote(user_id, safe="", encoding="utf-8", errors="strict").replace(".", "%2E")


def decode_user(word: str) -> str:
    return unquote(word, encoding="utf-8", errors="strict")


def _check_stream(stream: str) -> None:
    if not STREAM_ID_PATTERN.fullmatch(stream):
        raise RoutingKeyError(f"invalid stream id {stream!r}")


def user_key(stream: str, user_id: str) -> str:
    """Routing key for one user of a stream, e.g. ``notifications.alice%2Eb``."""
    _check_stream(stream)
    key = f"{stream}.{encode_user(user_id)}"
    if len(key) > MAX_ROUTING_KEY_BYTES:  # the key is ASCII, so chars == bytes
        raise RoutingKeyError(
            f"routing key for this user id is {len(key)} bytes; AMQP allows {MAX_ROUTING_KEY_BYTES}"
        )
    return key


def stream_key(stream: str) -> str:
    """Routing key for everyone subscribed to a stream."""
    _check_stream(stream)
    return stream


def fits_routing_key(stream: str, user_id: str) -> bool:
    """True when ``user_key(stream, user_id)`` is valid (used to vet `sub` and `user_id`)."""
    try:
        user_key(stream, user_id)
    except (RoutingKeyError, UnicodeEncodeError):
        return False
    return True


def parse_key(key: str) -> tuple[str, str | None]:
    """Inverse of the builders: ``(stream, user_id)`` or ``(stream, None)`` for a stream key."""
    stream, sep, word = key.partition(".")
    _check_stream(stream)
    if not sep:
        return stream, None
    if not word or "." in word:
        raise RoutingKeyError(f"routing key {key!r} must have one or two words")
    return stream, decode_user(word)
