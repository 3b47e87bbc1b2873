import argparse

import pytest

from realtime_shared.settings import RealtimeSettings, add_process_arguments, settings_from_args

pytestmark = pytest.mark.unit


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_process_arguments(parser, port=9000)
    return parser.parse_args(list(argv))


def test_the_command_line_goes_on_top_of_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LOG_LEVEL", "WARNING")
    args = parse("--dev", "--log-level", "debug")
    assert (args.host, args.port) == ("0.0.0.0", 9000)
    settings = settings_from_args(RealtimeSettings, args, "svc")
    assert settings.dev
    assert settings.log_level == "DEBUG"


def test_only_the_dev_flag_turns_on_dev_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEV", "true")
    assert not settings_from_args(RealtimeSettings, parse(), "svc").dev


def test_invalid_settings_exit_2_naming_the_variable_and_the_reason_only(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOG_FORMAT", "xml-with-a-secret")
    with pytest.raises(SystemExit) as exited:
        settings_from_args(RealtimeSettings, parse(), "svc")
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err == "svc: invalid settings:\n  LOG_FORMAT: Input should be 'text' or 'json'\n"
