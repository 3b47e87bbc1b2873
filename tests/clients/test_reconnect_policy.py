"""The Python client's reconnect policy and recovery positions, without sockets.

Jitter bounds, cap, reset, close codes; what `PositionTracker` holds, drops and releases.
"""

from __future__ import annotations

import random

import pytest

from realtime_shared.auth import issue_token
from realtime_shared.client import Backoff, Position, PositionTracker, ReconnectPolicy, token_expiry
from realtime_shared.envelope import Envelope

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


def numbered(seq: int, epoch: str = "e1") -> Envelope:
    return Envelope("notifications", "n", {}, {"seq": seq, "epoch": epoch})


def seqs(envelopes: list[Envelope]) -> list[object]:
    return [e.meta.get("seq", e.event) for e in envelopes]


def test_held_frames_are_released_in_seq_order_per_epoch_as_the_epochs_came() -> None:
    positions = PositionTracker()
    positions.receive(numbered(1))
    assert positions.start(["notifications"], "reconnect").recover == {
        "notifications": Position("e1", 1)
    }
    for envelope in (numbered(3), numbered(2), numbered(2, "e2"), numbered(1, "e2"), numbered(4)):
        assert positions.receive(envelope).deliver == []
    step = positions.answer({"notifications": True})
    # e1's 2, 3, 4 in order; then e2 restarts the numbering: a refetch, and 2 after 1.
    assert seqs(step.deliver) == [2, 3, 4, 1, "resync", 2, "recovered"]
    assert positions.positions == {"notifications": Position("e2", 2)}


def test_a_resync_during_a_recovery_recovers_again_once_it_is_answered() -> None:
    positions = PositionTracker()
    positions.receive(numbered(1))
    positions.start(["notifications"], "reconnect")
    assert positions.start(["notifications"], "event").recover == {}  # one at a time
    positions.receive(numbered(2))
    step = positions.answer({"notifications": True})
    assert seqs(step.deliver) == [2, "recovered"]
    assert step.recover == {"notifications": Position("e1", 2)}


def test_a_recovery_holding_more_than_its_buffer_fails_instead_of_growing() -> None:
    positions = PositionTracker(buffer_limit=2)
    positions.receive(numbered(1))
    positions.start(["notifications"], "reconnect")
    for seq in (2, 3, 4):
        positions.receive(numbered(seq))
    step = positions.answer({"notifications": True})
    assert [(e.event, e.data.get("recovered")) for e in step.deliver] == [
        ("recovered", False),
        ("resync", None),
    ]
    assert seqs(positions.receive(numbered(9)).deliver) == [9]  # starts afresh, no gap


def test_broadcasts_and_malformed_positions_pass_through_untouched() -> None:
    positions = PositionTracker()
    positions.receive(numbered(1))
    positions.start(["notifications"], "reconnect")
    odd = [
        Envelope("notifications", "broadcast"),
        Envelope("notifications", "odd", {}, {"seq": True, "epoch": "e1"}),
        Envelope("notifications", "odd", {}, {"seq": 2, "epoch": "x" * 65}),
    ]
    for envelope in odd:
        assert positions.receive(envelope).deliver == [envelope]
