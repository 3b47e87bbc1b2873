"""Where settings come from: the environment, `.env`, `<VAR>_FILE`; dev mode from code only."""

from pathlib import Path

import pytest
from pydantic_settings import SettingsError

from realtime_shared.settings import RealtimeSettings

pytestmark = pytest.mark.unit

SECRET = "0f3c9a8e5d1b7c2a4e6f8091b3d5c7e9a1f2e4d6c8b0a2f4e6d8c0b2a4f6e8d0"


class WithDatabase(RealtimeSettings):
    """A service's own secret-bearing setting, like the notifications service's DATABASE_URL."""

    database_url: str = "sqlite+aiosqlite:///./notifications.db"


@pytest.fixture(autouse=True)
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory (so `.env` is the test's) and none of the caller's variables."""
    for name in ("DEV", "JWT_SECRET", "JWT_PREVIOUS_SECRETS", "JWT_PUBLIC_KEY", "AMQP_URL"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(f"{name}_FILE", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_DEV_in_the_environment_or_dotenv_does_not_turn_on_dev_mode(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEV", "1")
    (workdir / ".env").write_text("DEV=true\nDEV_FILE=/dev/null\n")
    settings = RealtimeSettings(jwt_secret=SECRET)
    assert not settings.dev
    assert settings.effective_jwt_secret() == SECRET
    assert RealtimeSettings(dev=True).dev  # what `--dev`, tests and scripts/dev.py do


def test_dev_mode_never_signs_with_a_configured_secret() -> None:
    settings = RealtimeSettings(dev=True, jwt_secret=SECRET)
    assert settings.effective_jwt_secret() != SECRET
    assert settings.configured_keys() == ["JWT_SECRET"]


def test_a_variable_can_come_from_a_file_without_one_trailing_newline(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (workdir / "jwt").write_text(SECRET + "\n")
    (workdir / "previous").write_text("a,b\n\n")  # only one newline is what editors add
    monkeypatch.setenv("JWT_SECRET_FILE", str(workdir / "jwt"))
    monkeypatch.setenv("JWT_PREVIOUS_SECRETS_FILE", str(workdir / "previous"))
    settings = RealtimeSettings()
    assert settings.effective_jwt_secret() == SECRET
    assert settings.jwt_previous_secrets is not None
    assert settings.jwt_previous_secrets.get_secret_value() == "a,b\n"


def test_a_subclass_setting_can_come_from_a_file_named_in_dotenv(workdir: Path) -> None:
    url = "postgresql+asyncpg://realtime:hunter2@db/realtime"
    (workdir / "db-url").write_text(url + "\n")
    (workdir / "amqp-url").write_text("amqp://realtime:bunny@mq/")
    (workdir / ".env").write_text(
        f"DATABASE_URL_FILE={workdir / 'db-url'}\nAMQP_URL_FILE={workdir / 'amqp-url'}\n"
    )
    settings = WithDatabase()
    assert settings.database_url == url
    assert settings.amqp_url == "amqp://realtime:bunny@mq/"


def test_an_empty_variable_gives_way_to_its_file(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (workdir / "jwt").write_text(SECRET)
    monkeypatch.setenv("JWT_SECRET", "")  # as compose passes a variable it was not given
    monkeypatch.setenv("JWT_SECRET_FILE", str(workdir / "jwt"))
    assert RealtimeSettings().effective_jwt_secret() == SECRET
    monkeypatch.setenv("JWT_SECRET_FILE", "")
    assert RealtimeSettings().jwt_secret is None


def test_a_variable_and_its_file_both_set_is_an_error_naming_both(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (workdir / "jwt").write_text("from-the-file")
    monkeypatch.setenv("JWT_SECRET", "from-the-environment")
    monkeypatch.setenv("JWT_SECRET_FILE", str(workdir / "jwt"))
    with pytest.raises(SettingsError) as raised:
        RealtimeSettings()
    message = str(raised.value)
    assert "JWT_SECRET and JWT_SECRET_FILE are both set" in message
    assert "from-the" not in message


@pytest.mark.parametrize("target", ["missing", "a-directory"])
def test_an_unreadable_file_is_an_error_naming_the_variable_and_the_path(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    (workdir / "a-directory").mkdir()
    path = workdir / target
    monkeypatch.setenv("DATABASE_URL_FILE", str(path))
    with pytest.raises(SettingsError, match=f"^DATABASE_URL_FILE: cannot read {path} "):
        WithDatabase()
