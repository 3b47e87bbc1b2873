"""AMQP URLs: both services ask RabbitMQ for a short heartbeat unless the URL says otherwise."""

import pytest

from realtime_shared.amqp import DEFAULT_HEARTBEAT, with_heartbeat

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "amqp://guest:guest@localhost:5672/",
            f"amqp://guest:guest@localhost:5672/?heartbeat={DEFAULT_HEARTBEAT}",
        ),
        ("amqp://h/vhost?name=x", f"amqp://h/vhost?name=x&heartbeat={DEFAULT_HEARTBEAT}"),
        ("amqp://h/?heartbeat=30", "amqp://h/?heartbeat=30"),
        ("amqps://u:p%40ss@h:5671/%2F?heartbeat=0", "amqps://u:p%40ss@h:5671/%2F?heartbeat=0"),
    ],
)
def test_the_heartbeat_is_added_only_when_the_url_does_not_choose(url: str, expected: str) -> None:
    assert with_heartbeat(url) == expected
