"""Handshake rules: where the token comes from, how streams are read, and the check order."""

import pytest

from realtime_edge.errors import OriginForbidden, StreamForbidden, StreamNotFound, TooManyStreams
from realtime_edge.handshake import Handshake, extract_token, requested_streams
from realtime_edge.origin import OriginPolicy
from realtime_shared.auth import TokenExpired, TokenMissing, TokenVerifier, issue_token

pytestmark = pytest.mark.unit

SECRET = "k" * 32


@pytest.mark.parametrize(
    ("query", "headers", "token"),
    [
        ([("token", "q")], {"authorization": "Bearer h"}, "q"),
        ([("access_token", "a"), ("token", "q")], {}, "q"),
        ([("access_token", "a")], {"authorization": "Bearer h"}, "a"),
        ([], {"authorization": "Bearer h"}, "h"),
        ([], {"authorization": "bearer   h "}, "h"),
        ([("token", "")], {"authorization": "Bearer h"}, "h"),
        ([], {"authorization": "Basic dXNlcjpwYXNz"}, None),
        ([], {"authorization": "Bearer "}, None),
        ([], {}, None),
    ],
)
def test_token_sources_in_order(
    query: list[tuple[str, str]], headers: dict[str, str], token: str | None
) -> None:
    assert extract_token(query, headers) == token


@pytest.mark.parametrize(
    ("path", "query", "streams"),
    [
        (None, [], ["notifications"]),
        ("chat", [], ["chat"]),
        (
            "Chat",
            [("stream", " SSH "), ("streams", "rdp, chat,,notifications")],
            ["chat", "ssh", "rdp", "notifications"],
        ),
        (None, [("stream", "chat"), ("stream", "chat")], ["chat"]),
        (None, [("streams", " , ")], ["notifications"]),
    ],
)
def test_streams_from_path_and_params(
    path: str | None, query: list[tuple[str, str]], streams: list[str]
) -> None:
    assert requested_streams(path, query) == streams


def handshake(max_streams: int = 8) -> Handshake:
    return Handshake(
        OriginPolicy(["https://app.example.com"]),
        TokenVerifier(algorithms=["HS256"], secret=SECRET),
        max_streams,
    )


def admit(query: list[tuple[str, str]], path: str | None = None, **headers: str) -> object:
    headers.setdefault("host", "edge.example.com")
    return handshake().admit(path_stream=path, query=query, headers=headers)


def test_admitted_with_claims_and_streams() -> None:
    token = issue_token("alice", SECRET)
    admission = handshake().admit(
        path_stream="chat", query=[("token", token)], headers={"host": "h"}
    )
    assert admission.claims.sub == "alice"
    assert admission.streams == ["chat"]


def test_origin_is_checked_before_the_token() -> None:
    with pytest.raises(OriginForbidden):
        admit([], origin="https://evil.example")


def test_token_is_checked_before_streams() -> None:
    with pytest.raises(TokenMissing):
        admit([("stream", "nope")])
    expired = issue_token("alice", SECRET, ttl=-10)
    with pytest.raises(TokenExpired):
        admit([("token", expired), ("stream", "nope")])


def test_unknown_stream_is_reported_before_a_forbidden_one() -> None:
    token = issue_token("alice", SECRET, streams=["notifications"])
    with pytest.raises(StreamForbidden):
        admit([("token", token), ("stream", "chat")])
    with pytest.raises(StreamNotFound):
        admit([("token", token), ("streams", "chat,nope")])
    with pytest.raises(StreamNotFound):
        admit([("token", token)], path="system")


def test_too_many_streams_is_refused() -> None:
    token = issue_token("alice", SECRET)
    with pytest.raises(TooManyStreams):
        handshake(max_streams=2).admit(
            path_stream=None, query=[("token", token), ("streams", "chat,ssh,rdp")], headers={}
        )
