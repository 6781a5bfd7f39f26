"""Logs: one JSON object per line for log aggregation, or readable lines on a terminal.

Fields: time, level, logger, message, and whatever the call passed in `extra`
(session_id, utterance_id, connection_id, event, code, category, ...). Values under
secret-looking keys are replaced, and audio is never passed to a logger.

LOG_FORMAT: `auto` (readable text on a terminal, JSON otherwise), `json`, or `text`.
Expected answers (a /health or /ready 503 while the model loads or the process drains) are not
errors: `ExpectedUnavailableFilter` keeps Django from logging them as such.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

# Attributes every LogRecord has; anything else came from `extra`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
_SECRET_WORDS = ("authorization", "password", "secret", "token", "api_key", "apikey", "cookie")


def _redact(key: str, value: Any) -> Any:
    if any(word in key.lower() for word in _SECRET_WORDS):
        return "[redacted]"
    if isinstance(value, dict):
        return {k: _redact(str(k), v) for k, v in value.items()}
    return value


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_extras(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {key: _redact(key, value) for key, value in vars(record).items()
            if key not in _STANDARD and not key.startswith("_")}


class TextFormatter(logging.Formatter):
    """One readable line: time, level, logger, message, then the extras as key=value
    (ids, event, code); levels in colour on a terminal."""

    COLOURS = {"WARNING": "\033[33m", "ERROR": "\033[31m", "CRITICAL": "\033[1;31m", "DEBUG": "\033[2m"}
    # Extras already said by the message or of no use to a reader.
    QUIET = {"request", "status_code", "client", "method", "path", "status"}

    def __init__(self, colour: bool = False) -> None:
        super().__init__()
        self.colour = colour

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created).strftime("%H:%M:%S.%f")[:-3]
        level = f"{record.levelname:<7}"
        if self.colour and record.levelname in self.COLOURS:
            level = f"{self.COLOURS[record.levelname]}{level}\033[0m"
        details = " ".join(f"{key}={value}" for key, value in _extras(record).items()
                           if key not in self.QUIET and value not in (None, ""))
        line = f"{moment} {level} {record.name}: {record.getMessage()}" + (f"  [{details}]" if details else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def console_formatter(log_format: str = "auto", stream: TextIO | None = None) -> logging.Formatter:
    """The formatter for LOG_FORMAT: `json`, `text` (`plain`), or `auto` (text when the
    log stream is a terminal, JSON otherwise: a pipe or a file is read by machines)."""
    stream = stream if stream is not None else sys.stderr
    terminal = bool(getattr(stream, "isatty", lambda: False)())
    if log_format in ("text", "plain") or (log_format == "auto" and terminal):
        return TextFormatter(colour=terminal)
    return JsonFormatter()


def logging_config(level: str, log_format: str) -> dict[str, Any]:
    """Django's LOGGING for LOG_LEVEL and LOG_FORMAT: one console handler with the
    formatter above, the health endpoints' expected 503s filtered out, and the chatty
    libraries held to warnings."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "console": {"()": "monitoring.logs.console_formatter", "log_format": log_format},
        },
        "filters": {
            "expected_unavailable": {"()": "monitoring.logs.ExpectedUnavailableFilter"},
        },
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "console",
                                 "filters": ["expected_unavailable"]}},
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            "daphne": {"level": "WARNING"},
            "faster_whisper": {"level": "WARNING"},
        },
    }


class ExpectedUnavailableFilter(logging.Filter):
    """Drops Django's "Service Unavailable" error for the health endpoints: a 503 there
    is the answer (loading, draining, full), not a fault; the access log still has it."""

    def __init__(self, paths: tuple[str, ...] = ("/health", "/ready")) -> None:
        super().__init__()
        self.paths = paths

    def filter(self, record: logging.LogRecord) -> bool:
        request = getattr(record, "request", None)
        path = getattr(request, "path", "")
        return not (getattr(record, "status_code", None) == 503 and path in self.paths)


class AccessLog:
    """Daphne's access log, written through logging (so as JSON lines) instead of to
    stdout in the Apache format."""

    def __init__(self, stream: Any = None) -> None:
        self.logger = logging.getLogger("fasttalk.access")

    def __call__(self, protocol: str, action: str, details: dict[str, Any]) -> None:
        client = details.get("client") or ""
        # The path without its query string: a query may carry a token.
        details = {**details, "path": str(details.get("path") or "").split("?", 1)[0]}
        if protocol == "http" and action == "complete":
            # A load balancer polls /ready every half second per process: those lines
            # only at DEBUG while they say "ready" (a refusal is worth a line).
            probe = details["path"] == "/ready" and details.get("status") == 200
            self.logger.log(logging.DEBUG if probe else logging.INFO, "%s %s %s", details.get("method"),
                            details.get("path"), details.get("status"),
                            extra={"event": "http_request", "method": details.get("method"),
                                   "path": details.get("path"), "status": details.get("status"),
                                   "duration_ms": round(float(details.get("time_taken") or 0) * 1000, 1),
                                   "client": client})
        elif protocol == "websocket" and action in ("connected", "disconnected", "rejected"):
            self.logger.info("websocket %s %s", action, details.get("path"),
                             extra={"event": f"websocket_{action}", "path": details.get("path"), "client": client})
