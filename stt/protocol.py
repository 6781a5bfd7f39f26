"""The WebSocket wire protocol: client messages in, server messages out.

Client messages are parsed and validated here (pydantic, strict: no type coercion,
no unknown keys), so that nothing reaches a session half-checked. The message models
themselves live in stt/messages.py (shared with the client library); this module adds
what needs the server: defaults from settings, the model's languages, error mapping.
Server messages are built here too, so every one carries the same `metadata` envelope.
docs/protocol.md is the prose form; docs/protocol.schema.json the machine-readable one.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from django.conf import settings
from pydantic import BaseModel, Field, ValidationError, ValidationInfo, field_validator, model_validator

from stt import messages
from stt.audio import samples_to_ms as ms
from stt.errors import SttError
from stt.languages import normalize_language

PROTOCOL_VERSION = messages.PROTOCOL_VERSION
SAMPLE_RATE = messages.SAMPLE_RATE

# Keys that name who and what a session is; `configure` cannot change them.
IMMUTABLE_CONFIG_KEYS = frozenset({"session_id", "user_id", "conversation_id", "profile"})


def utc_timestamp(moment: datetime | None = None) -> str:
    """ISO-8601 UTC with milliseconds and a Z suffix, e.g. 2024-01-15T10:30:00.123Z."""
    moment = moment or datetime.now(timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _setting(name: str) -> Any:
    return lambda: getattr(settings, name)


class SessionConfig(messages.SessionConfig):
    """A session's effective config: the wire model with the server's defaults filled in
    (settings; a runtime profile's come in through validate_config's `defaults`) and the
    checks that need the server (language list, MAX_SILENCE_DURATION)."""

    buffer_duration: float = Field(default_factory=_setting("BUFFER_DURATION"), ge=0.5, le=30.0)
    partial_chunk_duration: float = Field(default_factory=_setting("PARTIAL_CHUNK_DURATION"), ge=0.05, le=10.0)
    final_chunk_duration: float = Field(default_factory=_setting("FINAL_CHUNK_DURATION"), ge=0.1)

    @field_validator("language")
    @classmethod
    def _known_language(cls, value: str | None) -> str | None:
        return normalize_language(value)

    @model_validator(mode="after")
    def _silence_within_server_bound(self, info: ValidationInfo) -> "SessionConfig":
        bound = (info.context or {}).get("max_silence", settings.MAX_SILENCE_DURATION)
        if self.final_chunk_duration > bound:
            raise ValueError(
                f"final_chunk_duration must be at most MAX_SILENCE_DURATION ({bound} s)"
            )
        if self.barge_in_enabled is None:
            self.barge_in_enabled = self.fasttalk_mode
        return self

    def merged(self, changes: dict[str, Any], max_silence: float | None = None) -> "SessionConfig":
        """A new config with `changes` applied, validated as a whole (or SttError)."""
        for key in sorted(IMMUTABLE_CONFIG_KEYS & changes.keys()):
            if changes[key] != getattr(self, key):
                raise SttError("invalid_config", f"{key} cannot be changed after start_session", field=key)
        candidate = self.model_dump()
        candidate.update(changes)
        return validate_config(candidate, max_silence=max_silence)


def validate_config(raw: Any, defaults: dict[str, Any] | None = None,
                    max_silence: float | None = None) -> SessionConfig:
    """Validate a session config; `defaults` fill keys the client left out (a runtime
    profile's), `max_silence` bounds final_chunk_duration (default MAX_SILENCE_DURATION)."""
    if not isinstance(raw, dict):
        raise SttError("invalid_config", "the config must be a JSON object", field="session_config")
    data = {**(defaults or {}), **raw}
    context = {"max_silence": max_silence if max_silence is not None else settings.MAX_SILENCE_DURATION}
    try:
        return SessionConfig.model_validate(data, context=context)
    except ValidationError as exc:
        raise _config_error(exc) from None


def _config_error(exc: ValidationError) -> SttError:
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "session_config"
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'session_config'}: {_clean(err['msg'])}"
        for err in exc.errors()
    )
    code = "unsupported_language" if field == "language" else "invalid_config"
    return SttError(code, f"invalid session config ({problems}); nothing was applied", field=field)


def _clean(message: str) -> str:
    return message.removeprefix("Value error, ")


# --- Client messages -------------------------------------------------------------------
# Defined once in stt/messages.py (the client library uses the same models).

StartSession = messages.StartSession
EndSession = messages.EndSession
FlushBuffer = messages.FlushBuffer
Configure = messages.Configure
ContextUpdate = messages.ContextUpdate
Interrupt = messages.Interrupt
ClientMessage = messages.ClientMessage
CLIENT_MESSAGE_TYPES = messages.CLIENT_MESSAGE_TYPES


class _ClientEnvelope(BaseModel):
    message: ClientMessage


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_client_message(text: str) -> StartSession | EndSession | FlushBuffer | Configure | ContextUpdate | Interrupt:
    """Parse one text frame into a client message, or raise SttError."""
    if len(text.encode("utf-8")) > settings.MAX_CONTROL_MESSAGE_BYTES:
        raise SttError(
            "message_too_large",
            f"control messages are limited to {settings.MAX_CONTROL_MESSAGE_BYTES} bytes",
        )
    try:
        raw = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise SttError("invalid_json", f"text frames must be JSON objects: {exc}") from None
    if not isinstance(raw, dict):
        raise SttError("invalid_json", "text frames must be JSON objects")
    kind = raw.get("type")
    if not isinstance(kind, str):
        raise SttError("invalid_message", "a control message needs a string `type`", field="type")
    if kind not in CLIENT_MESSAGE_TYPES:
        raise SttError(
            "unknown_message_type",
            f"unknown message type {kind!r}; expected one of {', '.join(CLIENT_MESSAGE_TYPES)}",
            field="type",
        )
    try:
        return _ClientEnvelope.model_validate({"message": raw}).message
    except ValidationError as exc:
        first = exc.errors()[0]
        # Drop the envelope and the discriminator tag from the location.
        loc = [str(p) for p in first["loc"][2:]]
        field = ".".join(loc) or "type"
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'][2:]) or 'message'}: {_clean(err['msg'])}"
            for err in exc.errors()
        )
        raise SttError("invalid_message", f"invalid {kind} message ({problems})", field=field) from None


# --- Server messages -------------------------------------------------------------------


def envelope(message_type: str, metadata: dict[str, Any], **body: Any) -> dict[str, Any]:
    """A server message: its type, its body keys, and the metadata every message carries."""
    message: dict[str, Any] = {"type": message_type}
    message.update(body)
    message["metadata"] = {**metadata, "timestamp": utc_timestamp()}
    return message


def error_message(metadata: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    return envelope("error", metadata, error=payload)


def speech_start_message(metadata: dict[str, Any], event: Any, *, barge_in: bool,
                         conversation_state: str) -> dict[str, Any]:
    """voice_activity_detected for a stt.streaming.SpeechStart."""
    return envelope("voice_activity_detected", metadata, data={
        "confidence": event.confidence,
        "duration_ms": ms(event.speech_samples),
        "energy_level": event.energy_level,
        "is_speech": True,
        "utterance_id": event.utterance_id,
        "audio_offset_ms": ms(event.offset_samples),
        "barge_in": barge_in,
        "conversation_state": conversation_state,
    })


def partial_message(metadata: dict[str, Any], result: Any, *, vad_on: bool) -> dict[str, Any]:
    """transcription_partial for a stt.streaming.PartialResult."""
    return envelope("transcription_partial", metadata, data={
        "text": result.text,
        "stable_text": result.stable_text,
        "unstable_text": result.unstable_text,
        "is_partial": True,
        "utterance_id": result.utterance_id,
        "sequence": result.sequence,
        "processing_time_ms": round(result.processing_seconds * 1000),
        "audio_duration_ms": ms(result.audio_samples),
        "confidence": result.transcript.confidence,
        "start_ms": ms(result.start_sample),
        "metadata": {
            "duration": round(result.audio_samples / SAMPLE_RATE, 3),
            "reason": "speech_detected" if vad_on else "audio_received",
        },
    })


def word_timings(words: Any) -> list[dict[str, Any]]:
    """A transcript's words as the protocol (and the history) carry them."""
    return [{"word": w.word, "start_ms": round(w.start * 1000), "end_ms": round(w.end * 1000),
             "confidence": round(w.probability, 4)} for w in words]


def final_messages(metadata: dict[str, Any], result: Any, words: list[dict[str, Any]], *,
                   timestamps: bool, legacy: bool) -> list[dict[str, Any]]:
    """transcription_final for a stt.streaming.FinalResult with a transcript, and the
    legacy `transcription` beside it when the session asked for it (and there is text)."""
    transcript = result.transcript
    audio_samples = result.end_sample - result.start_sample
    metadata_block = {"duration": round(audio_samples / SAMPLE_RATE, 3), "chunks_count": result.frames,
                      "reason": result.reason, "partial_count": result.partial_count}
    common = {"text": transcript.text, "utterance_id": result.utterance_id,
              "processing_time_ms": round(result.processing_seconds * 1000),
              "audio_duration_ms": ms(audio_samples), "timestamps": words if timestamps else None}
    messages = [envelope("transcription_final", metadata, data={
        **common, "is_partial": False, "confidence": transcript.confidence, "language": transcript.language,
        "start_ms": ms(result.start_sample), "end_ms": ms(result.end_sample), "metadata": metadata_block,
    })]
    if legacy and transcript.text:
        messages.append(envelope("transcription", metadata, data={**common, "metadata": metadata_block}))
    return messages


def session_started_message(metadata: dict[str, Any], session_id: str, config: SessionConfig, info: Any,
                            runtime: dict[str, Any], max_frame_samples: int) -> dict[str, Any]:
    """session_started: the effective config, the model (a stt.engine.EngineInfo), the audio format."""
    return envelope("session_started", metadata, session_id=session_id, timestamp=utc_timestamp(), data={
        "config": config.model_dump(),
        "model": {"name": info.model, "device": info.device, "compute_type": info.compute_type,
                  "multilingual": info.multilingual},
        "audio": {"encoding": "float32le", "sample_rate": SAMPLE_RATE, "channels": 1,
                  "max_frame_samples": max_frame_samples},
        "runtime": runtime,
        "protocol_version": PROTOCOL_VERSION,
    })
