"""The Python client's reconnect policy, without sockets: jitter bounds, cap, reset, codes."""

from __future__ import annotations

import random

import pytest

from realtime_shared.auth import issue_token
from realtime_shared.client import Backoff, ReconnectPolicy, token_expiry

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("attempt", range(12))
def test_full_jitter_stays_within_zero_and_the_capped_exponential(attempt: int) -> None:
    backoff = Backoff()
    ceiling = min(30.0, 0.5 * 2**attempt)
    rng = random.Random(attempt)
    delays = [backoff.delay(attempt, rng.random) for _ in range(500)]
    assert all(0 <= d < ceiling for d in delays)
    assert max(delays) > 0.9 * ceiling and min(delays) < 0.1 * ceiling  # spread, not fixed


def test_first_retry_is_well_under_a_second_and_the_cap_is_thirty_seconds() -> None:
    policy = ReconnectPolicy(rand=lambda: 0.999999)
    delays = [policy.next_delay() for _ in range(10)]
    assert delays[0] < 0.5
    assert delays == sorted(delays)
    assert 29 < delays[-1] < 30


def test_a_stable_connection_resets_the_backoff_and_a_flapping_one_does_not() -> None:
    clock = Clock()
    policy = ReconnectPolicy(Backoff(stable_after=10), clock=clock, rand=lambda: 0.999)
    for _ in range(5):
        policy.next_delay()
    policy.connected()
    clock.now += 2  # dropped again quickly: keep backing off
    assert policy.next_delay() > 8
    policy.connected()
    clock.now += 10
    assert policy.next_delay() < 0.5


@pytest.mark.parametrize(
    ("code", "retry"),
    [(1000, False), (1008, False), (1009, False), (1001, True), (1006, True), (1011, True),
     (1013, True), (4001, True)],
)  # fmt: skip
def test_terminal_close_codes_are_not_retried(code: int, retry: bool) -> None:
    assert ReconnectPolicy.retries_after(code) is retry


def test_token_expiry_reads_exp_without_the_key() -> None:
    token = issue_token("alice", "k" * 32, ttl=120)
    exp = token_expiry(token)
    assert exp is not None and exp > 0
    assert token_expiry("not-a-jwt") is None
