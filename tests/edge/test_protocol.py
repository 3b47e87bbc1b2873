"""The protocol core without sockets: every control frame, every bad input, every reply."""

import orjson
import pytest

from realtime_edge.protocol import (
    Ping,
    ProtocolError,
    Publish,
    RateLimits,
    Refresh,
    Session,
    Subscribe,
    Unsubscribe,
    parse_command,
)
from realtime_shared.auth import Claims, TokenExpired

pytestmark = pytest.mark.unit


def claims(
    sub: str = "alice", streams: list[str] | None = None, exp: int = 2_000_000_000
) -> Claims:
    return Claims(sub=sub, exp=exp, streams=None if streams is None else frozenset(streams))


def frame(text: str) -> dict[str, object]:
    out = orjson.loads(text)
    assert isinstance(out, dict)
    return out


@pytest.mark.parametrize(
    ("text", "command"),
    [
        ('{"action":"subscribe","streams":["chat"," SSH ","chat"]}', Subscribe(["chat", "ssh"])),
        ('{"action":"unsubscribe","streams":[]}', Unsubscribe([])),
        ('{"action":"ping"}', Ping()),
        ('{"action":"refresh","token":"abc"}', Refresh("abc")),
    ],
)
def test_control_frames_parse(text: str, command: object) -> None:
    assert parse_command(text) == command


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("not json", "INVALID_JSON"),
        ("", "INVALID_JSON"),
        ("[1,2]", "INVALID_FRAME"),
        ('"ping"', "INVALID_FRAME"),
        ('{"streams":["chat"]}', "INVALID_FRAME"),
        ('{"action":5}', "INVALID_FRAME"),
        ('{"action":"dance"}', "UNKNOWN_ACTION"),
        ('{"action":"subscribe"}', "INVALID_FRAME"),
        ('{"action":"subscribe","streams":"chat"}', "INVALID_FRAME"),
        ('{"action":"subscribe","streams":[1]}', "INVALID_FRAME"),
        ('{"action":"unsubscribe","streams":null}', "INVALID_FRAME"),
        ('{"action":"refresh"}', "INVALID_FRAME"),
        ('{"action":"refresh","token":""}', "INVALID_FRAME"),
    ],
)
def test_bad_frames_get_an_error_frame_with_a_code(text: str, code: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_command(text)
    reply = frame(info.value.frame)
    assert reply["stream"] == "system"
    assert reply["event"] == "error"
    assert reply["data"] == {"code": code, "message": info.value.message}


def test_subscribe_reports_every_held_stream_and_each_rejection() -> None:
    session = Session(claims(streams=["notifications", "chat"]), max_streams=8)
    session.commit(session.plan(["notifications"]))
    plan = session.plan(["chat", "nope", "ssh", "system", "notifications"])
    assert plan.add == ["chat"]
    session.commit(plan)
    reply = frame(session.subscribed_frame(plan))
    assert reply == {
        "stream": "system",
        "event": "subscribed",
        "data": {
            "streams": ["notifications", "chat"],
            "rejected": [
                {"stream": "nope", "code": "NOT_FOUND"},
                {"stream": "ssh", "code": "FORBIDDEN"},
                {"stream": "system", "code": "NOT_FOUND"},
            ],
        },
    }


def test_subscribe_without_rejections_omits_the_key() -> None:
    session = Session(claims(), max_streams=8)
    plan = session.plan(["chat"])
    session.commit(plan)
    assert frame(session.subscribed_frame(plan))["data"] == {"streams": ["chat"]}


def test_subscribe_with_recover_subscribes_those_streams_and_reports_recovered() -> None:
    recover = {" Notifications ": {"epoch": "e1", "seq": 7}}
    command = parse_command(
        orjson.dumps({"action": "subscribe", "streams": ["chat"], "recover": recover}).decode()
    )
    assert command == Subscribe(["chat", "notifications"], {"notifications": ("e1", 7)})
    session = Session(claims(), max_streams=8)
    plan = session.plan(command.streams)  # type: ignore[attr-defined]
    session.commit(plan)
    reply = frame(session.subscribed_frame(plan, {"notifications": True}))
    assert reply["data"] == {
        "streams": ["chat", "notifications"],
        "recovered": {"notifications": True},
    }


@pytest.mark.parametrize(
    "recover",
    [
        "[]",
        '{"chat":{"seq":1}}',
        '{"chat":{"epoch":"","seq":1}}',
        '{"chat":{"epoch":"' + "e" * 65 + '","seq":1}}',
        '{"chat":{"epoch":"e","seq":-1}}',
        '{"chat":{"epoch":"e","seq":true}}',
        '{"chat":{"epoch":"e","seq":1.5}}',
        '{"chat":7}',
    ],
)
def test_a_malformed_recover_is_an_invalid_frame(recover: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_command('{"action":"subscribe","streams":[],"recover":' + recover + "}")
    assert info.value.code == "INVALID_FRAME"


def test_the_stream_limit_rejects_the_overflow() -> None:
    session = Session(claims(), max_streams=2)
    session.commit(session.plan(["notifications"]))
    plan = session.plan(["chat", "ssh"])
    assert plan.add == ["chat"]
    assert plan.rejected == [{"stream": "ssh", "code": "TOO_MANY_STREAMS"}]


def test_unsubscribe_drops_only_held_streams_and_lists_the_rest() -> None:
    session = Session(claims(), max_streams=8)
    session.commit(session.plan(["notifications", "chat"]))
    assert session.drop(["chat", "rdp", "system"]) == ["chat"]
    assert frame(session.unsubscribed_frame()) == {
        "stream": "system",
        "event": "unsubscribed",
        "data": {"streams": ["notifications"]},
    }


def test_connected_and_resync_frames() -> None:
    session = Session(claims("bob"), max_streams=8)
    session.commit(session.plan(["notifications"]))
    assert frame(session.connected_frame("c1")) == {
        "stream": "system",
        "event": "connected",
        "data": {"connection_id": "c1", "user_id": "bob", "streams": ["notifications"]},
    }
    assert frame(session.resync_frame())["data"] == {"streams": ["notifications"]}


def test_refresh_for_the_same_user_moves_the_deadline() -> None:
    session = Session(claims(exp=100), max_streams=8)
    reply, dropped = session.refresh("t", lambda _: claims(exp=200))
    assert frame(reply) == {
        "stream": "system",
        "event": "refreshed",
        "data": {"exp": 200, "streams": []},
    }
    assert dropped == []
    assert session.exp == 200


def test_refresh_drops_the_streams_the_new_token_no_longer_allows() -> None:
    session = Session(claims(), max_streams=8)
    session.commit(session.plan(["notifications", "chat"]))
    reply, dropped = session.refresh("t", lambda _: claims(streams=["notifications"]))
    assert dropped == ["chat"]
    assert frame(reply)["data"] == {
        "exp": 2_000_000_000,
        "streams": ["notifications"],
        "dropped": ["chat"],
    }
    assert not session.holds("chat")
    # ...and it cannot come back by a subscribe under the new token.
    plan = session.plan(["chat"])
    assert plan.add == []
    assert plan.rejected == [{"stream": "chat", "code": "FORBIDDEN"}]


def test_refresh_for_another_user_changes_nothing() -> None:
    session = Session(claims(exp=100), max_streams=8)
    with pytest.raises(ProtocolError) as info:
        session.refresh("t", lambda _: claims("mallory", exp=200))
    assert info.value.code == "UNAUTHORIZED"
    assert session.exp == 100
    assert session.user_id == "alice"


def test_refresh_with_an_invalid_token_changes_nothing() -> None:
    def verify(token: str) -> Claims:
        raise TokenExpired("token has expired")

    session = Session(claims(exp=100), max_streams=8)
    with pytest.raises(ProtocolError) as info:
        session.refresh("t", verify)
    assert info.value.code == "UNAUTHORIZED"
    assert session.exp == 100


def test_a_publish_frame_parses_with_its_optional_parts() -> None:
    text = '{"action":"publish","stream":" Chat ","event":"m","id":"c-1","session_id":"t2"}'
    assert parse_command(text) == Publish("chat", "m", {}, "c-1", "t2")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def publishing_session(clock: Clock, streams: list[str], **claim: list[str]) -> Session:
    limits = RateLimits(rate=2.0, burst=3, clock=clock)
    session = Session(
        Claims(sub="alice", exp=2**31, publish=frozenset(claim.get("publish", [])) or None),
        max_streams=8,
        limits=limits,
    )
    session.commit(session.plan(streams))
    return session


def test_the_bucket_allows_a_burst_then_the_rate_and_refusals_take_no_token() -> None:
    clock = Clock()
    session = publishing_session(clock, ["chat"])
    send = Publish("chat", "m", {}, "c")
    for _ in range(3):
        session.admit_publish(send)
    with pytest.raises(ProtocolError) as limited:
        session.admit_publish(send)
    assert (limited.value.code, limited.value.frame_id) == ("RATE_LIMITED", "c")
    with pytest.raises(ProtocolError):  # refused (not held): takes nothing
        session.admit_publish(Publish("ssh", "m", {}, "c"))
    clock.now = 0.5  # one token back at 2 per second
    session.admit_publish(send)
    with pytest.raises(ProtocolError):
        session.admit_publish(send)
    clock.now = 100.0  # never more than the burst
    for _ in range(3):
        session.admit_publish(send)
    with pytest.raises(ProtocolError):
        session.admit_publish(send)


@pytest.mark.parametrize(
    ("stream", "claim", "held"),
    [
        ("notifications", None, ["notifications"]),  # not interactive
        ("chat", None, ["notifications"]),  # not held
        ("chat", ["ssh"], ["chat"]),  # not in the publish claim
    ],
)
def test_publishing_needs_an_interactive_held_stream_the_token_allows(
    stream: str, claim: list[str] | None, held: list[str]
) -> None:
    session = publishing_session(Clock(), held, **({"publish": claim} if claim else {}))
    with pytest.raises(ProtocolError) as refused:
        session.admit_publish(Publish(stream, "m", {}, "c-7"))
    assert (refused.value.code, refused.value.frame_id) == ("FORBIDDEN", "c-7")
