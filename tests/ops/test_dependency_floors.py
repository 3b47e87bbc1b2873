"""Each service's declared dependency ranges exclude the releases known to break it.

A range is a promise to whoever installs the package without our lock file: every
version it admits must work. These are the releases we found broken, and why.
"""

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]

BROKEN = [
    # (member, package, a broken version, what goes wrong)
    ("services/ws-edge", "uvicorn", "0.43.0", "sends no WebSocket heartbeat pings at all"),
    ("services/ws-edge", "uvicorn", "0.35.0", "sends no WebSocket heartbeat pings at all"),
    ("services/notifications", "tenacity", "9.0.0", "the relay dies at start (no `multiplier`)"),
    ("services/notifications", "tenacity", "9.1.4", "the relay dies at start (no `multiplier`)"),
    ("services/notifications", "faststream", "0.5.48", "fails on import"),
    ("services/notifications", "faststream", "0.7.2", "pins aio-pika < 10"),
    ("services/notifications", "aio-pika", "9.6.2", "channels never recover after a cut link"),
]


def requirements(member: str) -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / member / "pyproject.toml").read_text())["project"]
    parsed = (Requirement(line) for line in project["dependencies"])
    return {req.name: req for req in parsed}


@pytest.mark.parametrize(("member", "package", "version", "why"), BROKEN)
def test_a_known_broken_release_is_not_admitted(
    member: str, package: str, version: str, why: str
) -> None:
    declared = requirements(member)
    assert package in declared, f"{member} must declare {package} itself ({why})"
    assert not declared[package].specifier.contains(version), f"{package} {version}: {why}"
