"""Server → client: every message the server sends, each exactly its documented shape (the
schema says additionalProperties: false, so the tests catch any field the server adds without
documenting it). stt/protocol.py builds them; the Python client parses frames into them."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from stt.wire.common import Eagerness

_SERVER = ConfigDict(extra="forbid")


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
    prompt: str


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
