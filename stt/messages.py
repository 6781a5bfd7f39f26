"""Every message of the WebSocket protocol as a pydantic model, defined once.

The server validates what clients send with the client-message models (stt/protocol.py
adds what needs Django: defaults from settings, the language list, the silence bound);
the Python client (stt/client) builds those same models and parses what the server sends
into the server-message models; docs/protocol.schema.json is generated from this module
(by stt/schema.py) and the tests check real server
messages against it. Nothing here imports Django or the model, so a client installs
only pydantic.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal, Union, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
)

PROTOCOL_VERSION = "1.0"
SAMPLE_RATE = 16000
# WebSocket subprotocols: the one the server answers with, and the form a browser uses
# to carry a token (it cannot set an Authorization header).
SUBPROTOCOL = "fasttalk"
AUTH_SUBPROTOCOL_PREFIX = "fasttalk.auth."


def token_subprotocols(token: str) -> list[str]:
    """The subprotocols a client offers to authenticate with a token from POST /auth/token."""
    return [SUBPROTOCOL, f"{AUTH_SUBPROTOCOL_PREFIX}{token}"]

# Client messages: strict, so nothing half-checked reaches a session.
_STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)
# Server messages: exactly the documented shape (the schema says additionalProperties:
# false, so the tests catch any field the server adds without documenting it).
_SERVER = ConfigDict(extra="forbid")

_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$")

# Keyterms (session_config.keyterms, a runtime profile's vocabulary): at most this many,
# each at most this many characters.
MAX_KEYTERMS = 100
MAX_KEYTERM_CHARS = 64


def _has_control_characters(value: str) -> bool:
    return any(ord(ch) < 32 or ord(ch) == 127 for ch in value)


def clean_keyterm(value: str) -> str:
    """A keyterm as the server keeps it: whitespace runs collapsed, ends trimmed; a
    ValueError for one that is empty or holds control characters."""
    if _has_control_characters(value):
        raise ValueError("must not contain control characters (one term per item)")
    cleaned = " ".join(value.split())
    if not cleaned:
        raise ValueError("must not be empty")
    return cleaned


Keyterm = Annotated[str, StringConstraints(max_length=MAX_KEYTERM_CHARS), AfterValidator(clean_keyterm)]

# Semantic endpointing (session_config.endpointing, a runtime profile's, ENDPOINTING_EAGERNESS):
# "off" ends an utterance after a fixed silence; the others sooner after a finished sentence.
Eagerness = Literal["off", "low", "medium", "high"]
EAGERNESS_LEVELS: tuple[str, ...] = get_args(Eagerness)


# --- Client → server -------------------------------------------------------------------


class SessionConfig(BaseModel):
    """What a client may set in start_session.session_config or configure.config.

    Durations left unset take the server's defaults (its settings or runtime profile);
    a client sends only the keys it set (`wire()`)."""

    model_config = _STRICT

    language: str | None = Field(default=None, description="ISO 639-1/BCP-47 code; null or 'auto' detects")
    enable_timestamps: bool = True
    enable_vad: bool = True
    enable_partial_transcription: bool = True
    buffer_duration: float | None = Field(default=None, ge=0.5, le=30.0)
    partial_chunk_duration: float | None = Field(default=None, ge=0.05, le=10.0)
    final_chunk_duration: float | None = Field(default=None, ge=0.1)
    endpointing: Eagerness | None = Field(default=None, description="Semantic endpointing; null: the runtime "
                                          "profile's (ENDPOINTING_EAGERNESS)")
    fasttalk_mode: bool = False
    user_id: str | None = Field(default=None, max_length=256)
    conversation_id: str | None = Field(default=None, max_length=256)
    session_id: str | None = None
    barge_in_enabled: bool | None = None
    send_legacy_transcription: bool = True
    profile: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    keyterms: list[Keyterm] = Field(
        default_factory=list, max_length=MAX_KEYTERMS,
        description=f"Words or phrases to recognise (names of people, products, places): at most "
                    f"{MAX_KEYTERMS}, each 1-{MAX_KEYTERM_CHARS} characters; they bias partials and finals")

    @field_validator("user_id", "conversation_id")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is not None and _has_control_characters(value):
            raise ValueError("must not contain control characters")
        return value

    @field_validator("session_id")
    @classmethod
    def _session_id_shape(cls, value: str | None) -> str | None:
        if value is not None and not _ID_PATTERN.match(value):
            raise ValueError(
                "must be 1-128 characters of letters, digits and ._:@/- starting with a letter or digit"
            )
        return value

    def wire(self) -> dict[str, Any]:
        """The keys this config sets explicitly, as sent on the wire."""
        return self.model_dump(exclude_unset=True)


class StartSession(BaseModel):
    model_config = _STRICT
    type: Literal["start_session"] = "start_session"
    # Validated as a SessionConfig by the session, which knows the runtime profile's defaults.
    session_config: dict[str, Any] = Field(default_factory=dict)


class EndSession(BaseModel):
    model_config = _STRICT
    type: Literal["end_session"] = "end_session"


class FlushBuffer(BaseModel):
    model_config = _STRICT
    type: Literal["flush_buffer"] = "flush_buffer"


class Configure(BaseModel):
    model_config = _STRICT
    type: Literal["configure"] = "configure"
    config: dict[str, Any]


class ContextData(BaseModel):
    model_config = _STRICT
    conversation_state: Literal["listening", "processing", "responding"] | None = None
    expected_response_type: Literal["question", "command", "casual"] | None = None
    language_context: str | None = Field(default=None, max_length=35)


class ContextUpdate(BaseModel):
    model_config = _STRICT
    type: Literal["context_update"] = "context_update"
    data: ContextData


class InterruptData(BaseModel):
    model_config = _STRICT
    reason: str | None = Field(default=None, max_length=256)


class Interrupt(BaseModel):
    model_config = _STRICT
    type: Literal["interrupt"] = "interrupt"
    data: InterruptData = Field(default_factory=InterruptData)


ClientMessage = Annotated[
    Union[StartSession, EndSession, FlushBuffer, Configure, ContextUpdate, Interrupt],
    Field(discriminator="type"),
]
CLIENT_MESSAGE_TYPES = ("start_session", "end_session", "flush_buffer", "configure", "context_update", "interrupt")


# --- Server → client -------------------------------------------------------------------


class Metadata(BaseModel):
    """The envelope every server message carries."""

    model_config = _SERVER
    session_id: str
    timestamp: str = Field(description="ISO-8601 UTC with milliseconds, e.g. 2024-01-15T10:30:00.123Z")
    conversation_id: str | None = None
    user_id: str | None = None


class WordTimestamp(BaseModel):
    model_config = _SERVER
    word: str
    start_ms: int = Field(description="relative to the utterance's start_ms")
    end_ms: int
    confidence: float


class ModelInfo(BaseModel):
    model_config = _SERVER
    name: str
    device: str
    compute_type: str
    multilingual: bool


class AudioFormat(BaseModel):
    model_config = _SERVER
    encoding: Literal["float32le"]
    sample_rate: int
    channels: int
    max_frame_samples: int


class EffectiveConfig(BaseModel):
    """A session's whole config with the server's defaults filled in."""

    model_config = _SERVER
    language: str | None
    enable_timestamps: bool
    enable_vad: bool
    enable_partial_transcription: bool
    buffer_duration: float
    partial_chunk_duration: float
    final_chunk_duration: float
    endpointing: Eagerness | None
    fasttalk_mode: bool
    user_id: str | None
    conversation_id: str | None
    session_id: str | None
    barge_in_enabled: bool
    send_legacy_transcription: bool
    profile: str | None
    keyterms: list[str]


class SessionStartedData(BaseModel):
    model_config = _SERVER
    config: EffectiveConfig
    model: ModelInfo
    audio: AudioFormat
    runtime: dict[str, Any] = Field(description="the tunables the session runs with and their profile")
    protocol_version: str


class SessionStarted(BaseModel):
    model_config = _SERVER
    type: Literal["session_started"]
    session_id: str
    timestamp: str
    data: SessionStartedData
    metadata: Metadata


class VoiceActivityData(BaseModel):
    model_config = _SERVER
    confidence: float
    duration_ms: int
    energy_level: float
    is_speech: bool
    utterance_id: str
    audio_offset_ms: int
    barge_in: bool
    conversation_state: Literal["listening", "processing", "responding"] | None


class VoiceActivityDetected(BaseModel):
    model_config = _SERVER
    type: Literal["voice_activity_detected"]
    data: VoiceActivityData
    metadata: Metadata


class PartialMetadata(BaseModel):
    model_config = _SERVER
    duration: float
    reason: Literal["speech_detected", "audio_received"]


class PartialData(BaseModel):
    model_config = _SERVER
    text: str
    stable_text: str
    unstable_text: str
    is_partial: Literal[True]
    utterance_id: str
    sequence: int
    processing_time_ms: int
    audio_duration_ms: int
    confidence: float
    start_ms: int
    metadata: PartialMetadata


class TranscriptionPartial(BaseModel):
    model_config = _SERVER
    type: Literal["transcription_partial"]
    data: PartialData
    metadata: Metadata


FinalReasonName = Literal["silence_detected", "flush_requested", "session_end", "client_disconnected",
                          "max_duration", "buffer_full", "server_shutdown"]


class FinalMetadata(BaseModel):
    model_config = _SERVER
    duration: float
    chunks_count: int
    reason: FinalReasonName
    partial_count: int


class LegacyTranscriptionData(BaseModel):
    """The body of the legacy `transcription` message; a final's body holds the same and more."""

    model_config = _SERVER
    text: str
    utterance_id: str
    processing_time_ms: int
    audio_duration_ms: int
    timestamps: list[WordTimestamp] | None
    metadata: FinalMetadata


class FinalData(LegacyTranscriptionData):
    is_partial: Literal[False]
    confidence: float
    language: str | None
    start_ms: int
    end_ms: int


class TranscriptionFinal(BaseModel):
    model_config = _SERVER
    type: Literal["transcription_final"]
    data: FinalData
    metadata: Metadata


class Transcription(BaseModel):
    """The legacy message sent after each non-empty final (send_legacy_transcription)."""

    model_config = _SERVER
    type: Literal["transcription"]
    data: LegacyTranscriptionData
    metadata: Metadata


class SessionConfiguredData(BaseModel):
    model_config = _SERVER
    config: EffectiveConfig
    changed: list[str]


class SessionConfigured(BaseModel):
    model_config = _SERVER
    type: Literal["session_configured"]
    data: SessionConfiguredData
    metadata: Metadata


class BufferFlushedData(BaseModel):
    model_config = _SERVER
    utterance_id: str | None
    final_sent: bool


class BufferFlushed(BaseModel):
    model_config = _SERVER
    type: Literal["buffer_flushed"]
    data: BufferFlushedData
    metadata: Metadata


class InterruptAcknowledgedData(BaseModel):
    model_config = _SERVER
    interrupted_at: str
    buffer_cleared: bool
    processing_stopped: bool
    discarded_utterance_id: str | None
    reason: str | None


class InterruptAcknowledged(BaseModel):
    model_config = _SERVER
    type: Literal["interrupt_acknowledged"]
    data: InterruptAcknowledgedData
    metadata: Metadata


class SessionEndedData(BaseModel):
    model_config = _SERVER
    reason: str | None = Field(description="end_session, too_many_errors, idle_timeout, session_time_limit, "
                                           "server_shutdown, client_disconnected, or the error code that "
                                           "ended it (model_unavailable)")
    duration_s: float
    audio_received_s: float
    audio_transcribed_s: float
    utterances: int
    finals: int
    failed_finals: int
    partials: int
    speech_onsets: int
    audio_frames: int
    errors: int


class SessionEnded(BaseModel):
    model_config = _SERVER
    type: Literal["session_ended"]
    data: SessionEndedData
    metadata: Metadata


class ErrorBody(BaseModel):
    model_config = _SERVER
    code: str = Field(description="one of the codes in docs/protocol.md's error table")
    message: str
    category: Literal["connection", "audio_format", "processing", "gpu", "resource", "timeout"]
    severity: Literal["low", "medium", "high", "critical"]
    recoverable: bool
    retry_after: float | None
    field: str | None = None
    utterance_id: str | None = None


class Error(BaseModel):
    model_config = _SERVER
    type: Literal["error"]
    error: ErrorBody
    metadata: Metadata


ServerMessage = Annotated[
    Union[SessionStarted, VoiceActivityDetected, TranscriptionPartial, TranscriptionFinal, Transcription,
          SessionConfigured, BufferFlushed, InterruptAcknowledged, SessionEnded, Error],
    Field(discriminator="type"),
]
SERVER_MESSAGE_TYPES = ("session_started", "voice_activity_detected", "transcription_partial",
                        "transcription_final", "transcription", "session_configured", "buffer_flushed",
                        "interrupt_acknowledged", "session_ended", "error")

_server_messages: TypeAdapter[Any] = TypeAdapter(ServerMessage)
_client_messages: TypeAdapter[Any] = TypeAdapter(ClientMessage)


class UnknownServerMessage(BaseModel):
    """A server message this client version does not know (or whose shape changed):
    handed over as is rather than failing the stream."""

    model_config = ConfigDict(extra="forbid")
    type: str
    payload: dict[str, Any]


def parse_server_message(text: str | bytes, strict: bool = False) -> Any:
    """One server text frame as its model. With `strict`, a message that does not match
    the schema raises ValidationError; otherwise it comes back as UnknownServerMessage
    (forward compatibility: a newer server may add fields or messages)."""
    raw = json.loads(text)
    try:
        return _server_messages.validate_python(raw)
    except ValidationError:
        if strict or not isinstance(raw, dict):
            raise
        return UnknownServerMessage(type=str(raw.get("type", "")), payload=raw)
