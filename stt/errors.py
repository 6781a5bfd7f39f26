"""The error catalogue: every error code the service sends, in one place.

Each code has a fixed category (the design document's six), severity, whether the
session goes on after it, and a default retry hint. docs/protocol.md lists the same
table; tests check that the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any


class Category(str, Enum):
    CONNECTION = "connection"
    AUDIO_FORMAT = "audio_format"
    PROCESSING = "processing"
    GPU = "gpu"
    RESOURCE = "resource"
    TIMEOUT = "timeout"


class Severity(str, Enum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


@dataclass(frozen=True)
class ErrorSpec:
    code: str
    category: Category
    severity: Severity
    recoverable: bool
    retry_after: float | None
    description: str


_SPECS = [
    # Control messages: malformed, out of order, or with invalid values.
    ErrorSpec("invalid_json", Category.CONNECTION, Severity.LOW, True, None,
              "A text frame is not a JSON object."),
    ErrorSpec("invalid_message", Category.CONNECTION, Severity.LOW, True, None,
              "A control message lacks a string `type` or has fields of the wrong shape."),
    ErrorSpec("unknown_message_type", Category.CONNECTION, Severity.LOW, True, None,
              "`type` names no client message of the protocol."),
    ErrorSpec("message_too_large", Category.CONNECTION, Severity.LOW, True, None,
              "A text frame exceeds MAX_CONTROL_MESSAGE_BYTES."),
    ErrorSpec("invalid_config", Category.CONNECTION, Severity.LOW, True, None,
              "A session_config/configure value is invalid; `field` names it. Nothing was applied."),
    ErrorSpec("unsupported_language", Category.CONNECTION, Severity.LOW, True, None,
              "The language is not a Whisper language, or the loaded model cannot transcribe it."),
    ErrorSpec("session_not_started", Category.CONNECTION, Severity.LOW, True, None,
              "Audio or a session message arrived before start_session; it was dropped."),
    ErrorSpec("session_already_started", Category.CONNECTION, Severity.LOW, True, None,
              "start_session was sent twice on one connection; use configure to change settings."),
    ErrorSpec("input_audio_buffer_commit_empty", Category.CONNECTION, Severity.LOW, True, None,
              "/v1/realtime: input_audio_buffer.commit with nothing to commit (no speech, or no audio "
              "without turn detection, since the last commit)."),
    # Audio frames.
    ErrorSpec("invalid_audio_frame", Category.AUDIO_FORMAT, Severity.LOW, True, None,
              "A binary frame is empty or its length is not a multiple of 4 bytes (float32)."),
    ErrorSpec("audio_frame_too_large", Category.AUDIO_FORMAT, Severity.LOW, True, None,
              "A binary frame holds more than MAX_AUDIO_FRAME_SAMPLES samples."),
    ErrorSpec("audio_not_finite", Category.AUDIO_FORMAT, Severity.LOW, True, None,
              "A binary frame holds NaN or infinite samples."),
    ErrorSpec("audio_out_of_range", Category.AUDIO_FORMAT, Severity.LOW, True, None,
              "Samples far outside [-1, 1]: most likely int16 PCM sent where float32 is expected."),
    # Transcription.
    ErrorSpec("transcription_failed", Category.PROCESSING, Severity.MEDIUM, True, 1.0,
              "The model failed on an utterance after its retries; `utterance_id` names it."),
    ErrorSpec("transcription_timeout", Category.TIMEOUT, Severity.MEDIUM, True, 1.0,
              "An inference took longer than STT_TRANSCRIPTION_TIMEOUT."),
    ErrorSpec("transcription_unavailable", Category.PROCESSING, Severity.HIGH, True, None,
              "The transcription circuit breaker is open after repeated failures; retry_after says when it is tried again."),
    ErrorSpec("model_unavailable", Category.PROCESSING, Severity.CRITICAL, False, 5.0,
              "The speech model could not be loaded; the session cannot transcribe and is closed (1011)."),
    ErrorSpec("gpu_error", Category.GPU, Severity.HIGH, True, 1.0,
              "The GPU failed an inference (e.g. out of memory)."),
    # Resources and limits.
    ErrorSpec("server_overloaded", Category.RESOURCE, Severity.HIGH, False, 5.0,
              "This server process holds WEBSOCKET_MAX_CONNECTIONS connections; closed with 1013."),
    ErrorSpec("capacity_exhausted", Category.RESOURCE, Severity.HIGH, False, 5.0,
              "This server process can no longer keep its sessions' finals within bounds (measured: finals "
              "p95 over CAPACITY_FINAL_P95_BOUND, or one more session would load the engine past "
              "CAPACITY_MAX_LOAD); closed with 1013. Connect again after retry_after, or to another process."),
    ErrorSpec("idle_timeout", Category.TIMEOUT, Severity.LOW, False, None,
              "Nothing came from the client for SESSION_IDLE_TIMEOUT; the session is ended (1000)."),
    ErrorSpec("session_time_limit", Category.RESOURCE, Severity.LOW, True, None,
              "The session nears (retry_after: seconds left) or reached MAX_SESSION_DURATION; at the limit "
              "its pending speech is finalized and it is ended (1000). Open a new session to go on."),
    ErrorSpec("server_shutting_down", Category.RESOURCE, Severity.MEDIUM, False, 1.0,
              "The server process is shutting down (SIGTERM); closed with 1012: connect again."),
    ErrorSpec("too_many_sessions", Category.RESOURCE, Severity.HIGH, False, 5.0,
              "The API key holds its maximum of concurrent sessions on this server process; closed with 1013."),
    ErrorSpec("rate_limited", Category.RESOURCE, Severity.LOW, True, 1.0,
              "Messages beyond the rate limit (per API key; per connection without authentication) are "
              "dropped (reported at most once a second); end_session is always taken."),
    ErrorSpec("too_many_errors", Category.RESOURCE, Severity.HIGH, False, None,
              "The session caused more than MAX_SESSION_ERRORS errors; closed with 1008."),
    ErrorSpec("internal_error", Category.PROCESSING, Severity.HIGH, True, None,
              "An unexpected server fault while handling a message; the session goes on."),
]

ERRORS: dict[str, ErrorSpec] = {spec.code: spec for spec in _SPECS}


class SttError(Exception):
    """An error to report to the client in the protocol's error shape."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        field: str | None = None,
        utterance_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        if code not in ERRORS:
            raise KeyError(f"unknown error code {code!r}: add it to stt/errors.py")
        super().__init__(message)
        self.spec = ERRORS[code]
        self.message = message
        self.field = field
        self.utterance_id = utterance_id
        self.retry_after = retry_after if retry_after is not None else self.spec.retry_after

    @property
    def code(self) -> str:
        return self.spec.code

    @property
    def recoverable(self) -> bool:
        return self.spec.recoverable

    def to_payload(self) -> dict[str, Any]:
        """The `error` object of the protocol's error message."""
        payload: dict[str, Any] = {
            "code": self.spec.code,
            "message": self.message,
            "category": self.spec.category.value,
            "severity": self.spec.severity.value,
            "recoverable": self.spec.recoverable,
            "retry_after": self.retry_after,
        }
        if self.field is not None:
            payload["field"] = self.field
        if self.utterance_id is not None:
            payload["utterance_id"] = self.utterance_id
        return payload
