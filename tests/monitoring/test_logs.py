"""Logs: JSON lines with ids from `extra` and secrets redacted; readable text on a
terminal; a /health 503 is an answer, not an error."""

from __future__ import annotations

import io
import json
import logging
import re
from types import SimpleNamespace

from monitoring.logs import ExpectedUnavailableFilter, JsonFormatter, TextFormatter, console_formatter


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


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def record(message: str, level: int = logging.INFO, **extra) -> logging.LogRecord:
    entry = logging.LogRecord("stt.session", level, __file__, 1, message, (), None)
    for key, value in extra.items():
        setattr(entry, key, value)
    return entry


class TestConsoleFormat:
    def test_auto_is_readable_text_on_a_terminal_and_json_on_a_pipe(self):
        assert isinstance(console_formatter("auto", Terminal()), TextFormatter)
        assert isinstance(console_formatter("auto", io.StringIO()), JsonFormatter)

    def test_an_explicit_format_wins_over_the_terminal(self):
        assert isinstance(console_formatter("json", Terminal()), JsonFormatter)
        assert isinstance(console_formatter("text", io.StringIO()), TextFormatter)
        assert isinstance(console_formatter("plain", io.StringIO()), TextFormatter)

    def test_a_text_line_has_time_level_logger_message_and_the_ids(self):
        line = TextFormatter().format(record("session started", session_id="s-1", event="session_start",
                                             api_key="k-1", utterance_id=None))
        assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} INFO    stt\.session: session started  \[.*\]", line)
        assert "session_id=s-1" in line and "event=session_start" in line
        assert "api_key=[redacted]" in line and "utterance_id" not in line

    def test_levels_are_coloured_only_on_a_terminal(self):
        warning = record("slow", logging.WARNING)
        assert "\033[33m" in TextFormatter(colour=True).format(warning)
        assert "\033[" not in TextFormatter(colour=False).format(warning)


class TestExpectedUnavailable:
    def request(self, path: str):
        return SimpleNamespace(path=path)

    def test_a_health_503_is_not_logged_as_an_error(self):
        keep = ExpectedUnavailableFilter().filter
        for path in ("/health", "/ready"):  # a draining process says so to the balancer twice a second
            assert not keep(record(f"Service Unavailable: {path}", logging.ERROR, status_code=503,
                                   request=self.request(path)))

    def test_other_failures_still_are(self):
        keep = ExpectedUnavailableFilter().filter
        assert keep(record("Internal Server Error: /health", logging.ERROR, status_code=500,
                           request=self.request("/health")))
        assert keep(record("Service Unavailable: /v1/models", logging.ERROR, status_code=503,
                           request=self.request("/v1/models")))
        assert keep(record("engine failed", logging.ERROR))


def test_ready_probes_are_logged_at_debug_and_a_refusal_at_info(caplog):
    """A load balancer polls /ready twice a second per process; only a "not ready" answer
    is worth an INFO line."""
    from monitoring.logs import AccessLog

    log = AccessLog()
    with caplog.at_level(logging.DEBUG, logger="fasttalk.access"):
        for path, status in (("/ready", 200), ("/ready", 503), ("/health", 200)):
            log("http", "complete", {"path": path, "status": status, "method": "GET", "time_taken": 0.001})
    levels = [(record.path, record.status, record.levelno) for record in caplog.records]
    assert levels == [("/ready", 200, logging.DEBUG), ("/ready", 503, logging.INFO),
                      ("/health", 200, logging.INFO)]
