import orjson
import pytest

from realtime_shared.envelope import Envelope, EnvelopeError

pytestmark = pytest.mark.unit


def test_empty_data_and_meta_are_omitted() -> None:
    assert orjson.loads(Envelope("system", "pong").to_bytes()) == {
        "stream": "system",
        "event": "pong",
    }


def test_round_trip_keeps_everything() -> None:
    env = Envelope("notifications", "notification.created", {"n": {"ü": 1}}, {"event_id": "e"})
    assert Envelope.from_bytes(env.to_bytes()) == env
    assert Envelope.from_bytes(env.to_text()) == env


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        b'{"event": "x"}',
        b'{"stream": "s"}',
        b'{"stream": 1, "event": "x"}',
        b'{"stream": "s", "event": ""}',
        b'{"stream": "s", "event": "x", "data": []}',
        b'{"stream": "s", "event": "x", "meta": "m"}',
    ],
)
def test_malformed_envelopes_raise_a_clear_error(raw: bytes) -> None:
    with pytest.raises(EnvelopeError):
        Envelope.from_bytes(raw)
