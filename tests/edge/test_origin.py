"""Origin rules: no Origin, same host (any port), loopback, or exactly listed; nothing else."""

import pytest

from realtime_edge.origin import OriginPolicy

pytestmark = pytest.mark.unit

POLICY = OriginPolicy(["https://app.example.com", "http://partner.test:8443"])


@pytest.mark.parametrize(
    ("origin", "host"),
    [
        (None, "edge.example.com"),
        ("https://edge.example.com", "edge.example.com:8080"),
        ("http://edge.example.com:3000", "edge.example.com"),
        ("http://localhost:5173", "edge.example.com"),
        ("http://127.0.0.1:8000", "edge.example.com"),
        ("http://127.1.2.3", "edge.example.com"),
        ("http://[::1]:8080", "edge.example.com"),
        ("https://app.example.com", "edge.example.com"),
        ("https://APP.example.com/", "edge.example.com"),
        ("http://partner.test:8443", "edge.example.com"),
        ("http://[::1]", "[::1]:8080"),
    ],
)
def test_allowed(origin: str | None, host: str) -> None:
    assert POLICY.allows(origin, host)


@pytest.mark.parametrize(
    ("origin", "host"),
    [
        ("https://evil.example", "edge.example.com"),
        ("https://edge.example.com.evil.example", "edge.example.com"),
        ("http://partner.test", "edge.example.com"),  # listed with a port: exact match only
        ("https://app.example.com:444", "edge.example.com"),
        ("null", "edge.example.com"),
        ("file://", "edge.example.com"),
        ("https://edge.example.com", None),
        ("http://localhost.evil.example", "edge.example.com"),
        ("not a url", "edge.example.com"),
    ],
)
def test_refused(origin: str, host: str | None) -> None:
    assert not POLICY.allows(origin, host)
