"""Logging for every process: plain or JSON lines, and tokens never written anywhere.

Tokens travel in query strings (`?token=`) and headers, and URLs end up in
access logs; so redaction happens in a handler filter *and* in the formatters,
which covers uvicorn's access and WebSocket lines as well as our own.
"""

from __future__ import annotations

import dataclasses
import logging
import logging.config
import re
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from websockets.frames import DATA_OPCODES, Frame

LogFormat = Literal["text", "json"]

REDACTED = "[redacted]"

_PATTERNS = (
    # token=… / access_token=… in query strings and form bodies
    re.compile(r"(?i)((?:access_)?token=)[^&\s\"'#]+"),
    # Authorization: Bearer …
    re.compile(r"(?i)(bearer\s+)[^\s\"',]+"),
    # anything JWT-shaped that slipped through elsewhere (header.payload.signature)
    re.compile(r"()eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"),
)

CONTEXT_FIELDS = ("connection_id", "user_id", "stream", "event_id", "close_code", "reason")
"""Fields passed with `extra=` that the JSON format keeps as keys of their own."""


def redact(text: str) -> str:
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text


def _redact_arg(arg: object) -> object:
    if isinstance(arg, str):
        return redact(arg)
    if isinstance(arg, Frame) and arg.opcode in DATA_OPCODES:
        # websockets logs frames at DEBUG, and str(frame) keeps only the ends of a long text:
        # a token cut in the middle matches no pattern and half its signature stays readable.
        data = redact(bytes(arg.data).decode(errors="replace")).encode()
        return str(dataclasses.replace(arg, data=data))
    return arg


class RedactTokens(logging.Filter):
    """Rewrites a record's message and string arguments before any formatter sees them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_arg(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _redact_arg(v) for k, v in record.args.items()}
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = redact(super().format(record))
        extras = [f"{k}={getattr(record, k)}" for k in CONTEXT_FIELDS if hasattr(record, k)]
        return f"{line} [{' '.join(extras)}]" if extras else line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, context fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for key in CONTEXT_FIELDS:
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(out, default=str).decode()


def log_config(level: str = "INFO", fmt: LogFormat = "text") -> dict[str, Any]:
    """A `logging.config.dictConfig` dict; also what uvicorn's `log_config=` takes."""
    handler = {
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stderr",
        "formatter": fmt,
        "filters": ["redact"],
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": RedactTokens}},
        "formatters": {"text": {"()": TextFormatter}, "json": {"()": JsonFormatter}},
        "handlers": {"default": handler},
        "root": {"handlers": ["default"], "level": level.upper()},
        "loggers": {
            # uvicorn's own loggers propagate to the root handler (redacted there)
            name: {"handlers": [], "level": level.upper(), "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }


uvicorn_log_config = log_config


def configure_logging(level: str = "INFO", fmt: LogFormat = "text") -> None:
    logging.config.dictConfig(log_config(level, fmt))
