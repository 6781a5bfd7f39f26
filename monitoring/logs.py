"""Structured logs: one JSON object per line, for log aggregation.

Fields: time, level, logger, message, and whatever the call passed in `extra`
(session_id, utterance_id, connection_id, event, code, category, ...). Values under
secret-looking keys are replaced, and audio is never passed to a logger.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Any

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
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = _redact(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


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
            self.logger.info("%s %s %s", details.get("method"), details.get("path"), details.get("status"),
                             extra={"event": "http_request", "method": details.get("method"),
                                    "path": details.get("path"), "status": details.get("status"),
                                    "duration_ms": round(float(details.get("time_taken") or 0) * 1000, 1),
                                    "client": client})
        elif protocol == "websocket" and action in ("connected", "disconnected", "rejected"):
            self.logger.info("websocket %s %s", action, details.get("path"),
                             extra={"event": f"websocket_{action}", "path": details.get("path"), "client": client})
