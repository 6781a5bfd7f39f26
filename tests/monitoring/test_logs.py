"""Structured JSON logs: one object per line, ids from `extra`, secrets redacted."""

from __future__ import annotations

import json
import logging

from monitoring.logs import JsonFormatter


def formatted(message: str, *args, exc_info=None, **extra) -> dict:
    record = logging.LogRecord("stt.session", logging.INFO, __file__, 1, message, args, exc_info)
    for key, value in extra.items():
        setattr(record, key, value)
    line = JsonFormatter().format(record)
    assert "\n" not in line, "one line per entry"
    return json.loads(line)


def test_a_line_carries_the_message_and_the_ids_given_as_extra():
    entry = formatted("session %s started", "s-1", event="session_start", session_id="s-1",
                      connection_id="c-1", utterance_id=None)
    assert entry["message"] == "session s-1 started" and entry["level"] == "INFO"
    assert (entry["event"], entry["session_id"], entry["connection_id"]) == ("session_start", "s-1", "c-1")
    assert entry["time"].endswith("+00:00")


def test_secret_looking_fields_are_redacted_wherever_they_are():
    entry = formatted("connect", authorization="Bearer abc", headers={"Cookie": "id=1", "accept": "json"},
                      api_key="k-123")
    assert entry["authorization"] == entry["api_key"] == "[redacted]"
    assert entry["headers"] == {"Cookie": "[redacted]", "accept": "json"}


def test_an_exception_is_kept_in_the_same_line():
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        entry = formatted("fault", exc_info=sys.exc_info())
    assert "ValueError: boom" in entry["exception"]
