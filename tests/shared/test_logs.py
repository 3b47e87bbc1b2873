import io
import logging
import logging.config

import orjson
import pytest
from websockets.frames import Frame, Opcode

from realtime_shared.auth import issue_token
from realtime_shared.logs import log_config, redact

pytestmark = pytest.mark.unit

TOKEN = issue_token("alice", "k" * 32)


@pytest.mark.parametrize(
    "line",
    [
        f'127.0.0.1:5000 - "GET /ws?token={TOKEN}&stream=chat HTTP/1.1" 101',
        f'127.0.0.1:5000 - "WebSocket /ws/chat?access_token={TOKEN}" [accepted]',
        f"Authorization: Bearer {TOKEN}",
        f"refresh frame carried {TOKEN}",
        "token=opaque-not-a-jwt&x=1",
    ],
)
def test_tokens_never_survive_redaction(line: str) -> None:
    out = redact(line)
    assert TOKEN not in out
    assert "opaque-not-a-jwt" not in out
    assert "[redacted]" in out


def test_redaction_keeps_the_rest_of_the_line() -> None:
    assert redact("GET /ws?stream=chat&token=abc&x=1") == "GET /ws?stream=chat&token=[redacted]&x=1"


def _capture(fmt: str) -> tuple[logging.Logger, io.StringIO]:
    config = log_config("INFO", fmt)  # type: ignore[arg-type]
    stream = io.StringIO()
    config["handlers"]["default"]["stream"] = stream
    logging.config.dictConfig(config)
    return logging.getLogger("uvicorn.access"), stream


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_uvicorn_access_lines_are_redacted_through_args(fmt: str) -> None:
    logger, stream = _capture(fmt)
    try:
        logger.info(
            '%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET", f"/ws?token={TOKEN}", "1.1", 101
        )
        assert TOKEN not in stream.getvalue()
        assert "/ws?token=[redacted]" in stream.getvalue()
    finally:
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_long_websocket_frame_at_debug_keeps_no_end_of_its_token(fmt: str) -> None:
    # websockets logs "< %s" with the Frame, whose str() keeps a long text's two ends only:
    # the token is cut in the middle, and its signature's tail would match no pattern.
    _, stream = _capture(fmt)
    signature_tail = TOKEN.rpartition(".")[2][-16:]
    frame = Frame(Opcode.TEXT, orjson.dumps({"action": "refresh", "token": TOKEN}))
    assert signature_tail in str(frame)
    try:
        logging.getLogger("uvicorn.error").info("< %s", frame)
        assert signature_tail not in stream.getvalue()
        assert "[redacted]" in stream.getvalue()
    finally:
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})


def test_json_lines_carry_context_fields() -> None:
    logger, stream = _capture("json")
    try:
        logging.getLogger("realtime.test").warning(
            "slow consumer", extra={"connection_id": "c1", "user_id": "alice", "stream": "chat"}
        )
        line = orjson.loads(stream.getvalue().strip().splitlines()[-1])
        assert line["message"] == "slow consumer"
        assert (line["connection_id"], line["user_id"], line["stream"]) == ("c1", "alice", "chat")
        assert line["level"] == "warning"
    finally:
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
    assert logger.name == "uvicorn.access"
