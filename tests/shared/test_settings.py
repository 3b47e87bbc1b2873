"""Where settings come from: the environment and `.env`; dev mode from code only."""

from pathlib import Path

import pytest

from realtime_shared.settings import RealtimeSettings

pytestmark = pytest.mark.unit

SECRET = "0f3c9a8e5d1b7c2a4e6f8091b3d5c7e9a1f2e4d6c8b0a2f4e6d8c0b2a4f6e8d0"


@pytest.fixture(autouse=True)
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory (so `.env` is the test's) and none of the caller's variables."""
    for name in ("DEV", "JWT_SECRET", "JWT_PREVIOUS_SECRETS", "JWT_PUBLIC_KEY", "AMQP_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_DEV_in_the_environment_or_dotenv_does_not_turn_on_dev_mode(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEV", "1")
    (workdir / ".env").write_text("DEV=true\n")
    settings = RealtimeSettings(jwt_secret=SECRET)
    assert not settings.dev
    assert settings.effective_jwt_secret() == SECRET
    assert RealtimeSettings(dev=True).dev  # what `--dev`, tests and scripts/dev.py do


def test_dev_mode_never_signs_with_a_configured_secret() -> None:
    settings = RealtimeSettings(dev=True, jwt_secret=SECRET)
    assert settings.effective_jwt_secret() != SECRET
    assert settings.configured_keys() == ["JWT_SECRET"]
