"""Recovery's pure parts: reading an owner's answer, and a connection's gate."""

import orjson
import pytest

from realtime_edge.recovery import Gate, RecoveryFailed, replay

pytestmark = pytest.mark.unit


def message(seq: int, epoch: str = "e1", **extra: object) -> dict[str, object]:
    return {"event": "x", "data": {"n": seq}, "meta": {"seq": seq, "epoch": epoch}, **extra}


def test_a_complete_answer_becomes_frames_on_the_keys_stream_ending_at_the_last_seq() -> None:
    answer = {"epoch": "e1", "messages": [message(5, stream="other"), message(6)], "complete": True}
    result = replay(answer, "notifications", ("e1", 4), limit=500)
    frames = [orjson.loads(f) for f in result.frames]
    assert [f["stream"] for f in frames] == ["notifications", "notifications"]
    assert [f["meta"]["seq"] for f in frames] == [5, 6]
    assert result.last == ("e1", 6)


def test_nothing_missed_is_a_success_with_no_frames() -> None:
    result = replay({"epoch": "e1", "messages": [], "complete": True}, "chat", ("e1", 9), 500)
    assert result.frames == [] and result.last == ("e1", 9)


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ({"epoch": "e2", "messages": [], "complete": False}, "epoch"),
        ({"epoch": "e1", "messages": [message(7)], "complete": False}, "trimmed"),
        ({"epoch": "e1", "messages": [message(5), message(6)], "complete": False}, "too_many"),
        ({"epoch": "e1", "messages": [message(6)], "complete": True}, "invalid_reply"),
        ({"epoch": "e1", "messages": [message(5), message(5)], "complete": True}, "invalid_reply"),
        ({"epoch": "e1", "messages": "no", "complete": True}, "invalid_reply"),
        ({"epoch": "e1", "messages": [{"meta": {"seq": 5}}], "complete": True}, "invalid_reply"),
    ],
)
def test_an_answer_that_cannot_be_replayed_says_why(answer: dict[str, object], reason: str) -> None:
    with pytest.raises(RecoveryFailed) as failed:
        replay(answer, "notifications", ("e1", 4), limit=2)
    assert failed.value.reason == reason


def test_a_held_stream_keeps_its_live_messages_until_released_then_only_the_new_ones() -> None:
    gate = Gate(limit=10)
    gate.hold("notifications")
    assert gate.take("notifications", ("e1", 6), "six")
    assert gate.take("notifications", ("e1", 7), "seven")
    assert gate.take("notifications", None, "broadcast")
    assert not gate.take("chat", ("e1", 1), "other stream")  # not held: delivered
    # The replay sent up to 6: seven and the broadcast remain, in arrival order.
    assert gate.release("notifications", ("e1", 6)) == ["seven", "broadcast"]
    assert gate.idle  # live is past the replay already: no filter left


def test_after_a_replay_a_late_live_copy_is_dropped_until_live_passes_it() -> None:
    gate = Gate(limit=10)
    gate.hold("notifications")
    assert gate.release("notifications", ("e1", 8)) == []
    assert not gate.idle
    # The owner had 8 committed but not yet published: its live copy comes after.
    assert gate.take("notifications", ("e1", 8), "eight again")
    assert not gate.take("notifications", ("e1", 9), "nine")
    assert gate.idle


def test_a_failed_recovery_releases_everything_held() -> None:
    gate = Gate(limit=10)
    gate.hold("chat")
    gate.take("chat", ("e1", 3), "three")
    assert gate.release("chat", None) == ["three"]
    assert gate.idle


def test_too_many_held_back_is_remembered_as_an_overflow() -> None:
    gate = Gate(limit=2)
    gate.hold("chat")
    for n in range(3):
        assert gate.take("chat", ("e1", n), str(n))
    assert gate.overflowed == {"chat"}
    assert gate.release("chat", None) == ["0", "1"]
    assert gate.overflowed == set()
