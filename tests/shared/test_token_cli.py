import secrets
from pathlib import Path

import pytest

from realtime_shared.auth import TokenInvalid, TokenVerifier
from realtime_shared.settings import DEV_JWT_SECRET
from realtime_shared.token_cli import main

pytestmark = pytest.mark.unit


def test_prints_a_dev_token_with_claims(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["alice", "--permissions", "notification.manage,realtime.admin", "--dev"]) == 0
    token = capsys.readouterr().out.strip()
    claims = TokenVerifier(algorithms=["HS256"], secret=DEV_JWT_SECRET).verify(token)
    assert claims.sub == "alice"
    assert claims.permissions == {"notification.manage", "realtime.admin"}


def test_refuses_without_a_key(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.delenv("JWT_SECRET", raising=False)
    monkeypatch.chdir(tmp_path)  # type: ignore[arg-type]
    assert main(["alice"]) == 2
    assert "JWT_SECRET" in capsys.readouterr().err


def test_with_dev_a_configured_secret_never_signs(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    configured = secrets.token_hex(32)
    monkeypatch.setenv("JWT_SECRET", configured)
    assert main(["alice", "--dev"]) == 0
    token = capsys.readouterr().out.strip()
    assert TokenVerifier(algorithms=["HS256"], secret=DEV_JWT_SECRET).verify(token).sub == "alice"
    with pytest.raises(TokenInvalid):
        TokenVerifier(algorithms=["HS256"], secret=configured).verify(token)


@pytest.mark.parametrize("weak", [DEV_JWT_SECRET, "k" * 32])
def test_refuses_to_sign_with_a_key_the_services_refuse(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, weak: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JWT_SECRET", weak)
    assert main(["alice"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("realtime-token: JWT_SECRET is ")
