"""Close codes: what each means to a client, and which ones it should reconnect after."""

import pytest

from realtime_edge.closecodes import CloseCode

pytestmark = pytest.mark.unit


def test_codes_are_the_documented_numbers() -> None:
    assert {c.name: int(c) for c in CloseCode} == {
        "NORMAL": 1000,
        "GOING_AWAY": 1001,
        "POLICY_VIOLATION": 1008,
        "MESSAGE_TOO_BIG": 1009,
        "INTERNAL_ERROR": 1011,
        "TRY_AGAIN_LATER": 1013,
        "TOKEN_EXPIRED": 4001,
    }


@pytest.mark.parametrize(
    "code",
    [
        CloseCode.GOING_AWAY,
        CloseCode.INTERNAL_ERROR,
        CloseCode.TRY_AGAIN_LATER,
        CloseCode.TOKEN_EXPIRED,
    ],
)
def test_transient_codes_say_retry(code: CloseCode) -> None:
    assert code.retry


@pytest.mark.parametrize(
    "code", [CloseCode.NORMAL, CloseCode.POLICY_VIOLATION, CloseCode.MESSAGE_TOO_BIG]
)
def test_terminal_codes_say_do_not_retry(code: CloseCode) -> None:
    assert not code.retry


def test_slow_consumer_and_expiry_reasons() -> None:
    assert CloseCode.TRY_AGAIN_LATER.reason == "slow consumer"
    assert CloseCode.TOKEN_EXPIRED.reason == "token expired"
    assert all(len(c.reason.encode()) <= 123 for c in CloseCode)  # RFC 6455 §5.5 limit
