"""The client events of an OpenAI realtime transcription session, parsed and validated.

Both generations of OpenAI's names are taken: the beta `transcription_session.update`
(flat session: `input_audio_format`, `input_audio_transcription`, `turn_detection`, ...)
and the GA `session.update` with a session of `type: "transcription"` (nested under
`audio.input`); the input audio buffer events are the same in both. Validation is
strict, as on /ws/transcribe: unknown fields are refused, types are not coerced, and a
bad event gets one error naming the first bad field (`param`) and changes nothing.
"""

from __future__ import annotations

import json
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stt.errors import SttError

_STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class TranscriptionOptions(BaseModel):
    """`input_audio_transcription` (beta) or `audio.input.transcription` (GA)."""

    model_config = _STRICT
    model: str | None = Field(default=None, max_length=128)
    language: str | None = Field(default=None, max_length=35)
    # Loose on purpose: the session's own bound (2000) refuses a longer prompt when the
    # update is applied, as invalid_config naming this field, the code /ws/transcribe gives.
    prompt: str | None = Field(default=None, max_length=8192)
    # GA only (gpt-realtime-whisper, gpt-transcribe): accepted, not applied.
    delay: Literal["minimal", "low", "medium", "high", "xhigh"] | None = None
    keywords: list[str] | None = None
    languages: list[str] | None = None


class TurnDetection(BaseModel):
    """Server VAD settings; `null` in its place means manual commits only."""

    model_config = _STRICT
    type: Literal["server_vad", "semantic_vad"] | None = None
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    prefix_padding_ms: int | None = Field(default=None, ge=0, le=1000)
    silence_duration_ms: int | None = Field(default=None, ge=100)
    # About model responses, which a transcription session never creates: accepted, not applied.
    create_response: bool | None = None
    interrupt_response: bool | None = None
    idle_timeout_ms: int | None = None
    eagerness: Literal["low", "medium", "high", "auto"] | None = None


class NoiseReduction(BaseModel):
    model_config = _STRICT
    type: Literal["near_field", "far_field"] | None = None
    strength: float | None = None


class BetaSession(BaseModel):
    """The session of `transcription_session.update`."""

    model_config = _STRICT
    input_audio_format: Literal["pcm16", "g711_ulaw", "g711_alaw"] | None = None
    input_audio_transcription: TranscriptionOptions | None = None
    turn_detection: TurnDetection | None = None
    input_audio_noise_reduction: NoiseReduction | None = None
    include: list[Literal["item.input_audio_transcription.logprobs"]] | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    client_secret: dict[str, Any] | None = None


class AudioFormat(BaseModel):
    model_config = _STRICT
    type: Literal["audio/pcm", "audio/pcmu", "audio/pcma"] | None = None
    rate: int | None = None


class AudioInput(BaseModel):
    model_config = _STRICT
    format: AudioFormat | None = None
    transcription: TranscriptionOptions | None = None
    turn_detection: TurnDetection | None = None
    noise_reduction: NoiseReduction | None = None


class Audio(BaseModel):
    model_config = _STRICT
    input: AudioInput | None = None


class GaSession(BaseModel):
    """The session of `session.update`: this endpoint holds transcription sessions only."""

    model_config = _STRICT
    type: Literal["transcription"]
    audio: Audio | None = None
    include: list[Literal["item.input_audio_transcription.logprobs"]] | None = None


class _Event(BaseModel):
    model_config = _STRICT
    event_id: str | None = Field(default=None, max_length=512)


class TranscriptionSessionUpdate(_Event):
    type: Literal["transcription_session.update"]
    session: BetaSession


class SessionUpdate(_Event):
    type: Literal["session.update"]
    session: GaSession


class AppendAudio(_Event):
    type: Literal["input_audio_buffer.append"]
    audio: str


class CommitAudio(_Event):
    type: Literal["input_audio_buffer.commit"]


class ClearAudio(_Event):
    type: Literal["input_audio_buffer.clear"]


ClientEvent = Union[TranscriptionSessionUpdate, SessionUpdate, AppendAudio, CommitAudio, ClearAudio]
EVENT_MODELS: dict[str, type[BaseModel]] = {
    "transcription_session.update": TranscriptionSessionUpdate,
    "session.update": SessionUpdate,
    "input_audio_buffer.append": AppendAudio,
    "input_audio_buffer.commit": CommitAudio,
    "input_audio_buffer.clear": ClearAudio,
}


class EventError(Exception):
    """A client event that cannot be taken: the error to report, and the event's own
    `event_id` when it had a readable one (OpenAI's error names it)."""

    def __init__(self, error: SttError, event_id: str | None) -> None:
        super().__init__(error.message)
        self.error = error
        self.event_id = event_id


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_client_event(text: str) -> ClientEvent:
    """One text frame as a client event, or EventError."""
    try:
        raw = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise EventError(SttError("invalid_json", f"events must be JSON objects: {exc}"), None) from None
    if not isinstance(raw, dict):
        raise EventError(SttError("invalid_json", "events must be JSON objects"), None)
    event_id = raw.get("event_id") if isinstance(raw.get("event_id"), str) else None
    kind = raw.get("type")
    if not isinstance(kind, str):
        raise EventError(SttError("invalid_message", "an event needs a string `type`", field="type"), event_id)
    model = EVENT_MODELS.get(kind)
    if model is None:
        raise EventError(SttError(
            "unknown_message_type",
            f"unknown or unsupported event type {kind!r} for a transcription session; "
            f"expected one of {', '.join(EVENT_MODELS)}", field="type"), event_id)
    try:
        return model.model_validate(raw)  # type: ignore[return-value]
    except ValidationError as exc:
        raise EventError(_invalid(kind, exc), event_id) from None


def _invalid(kind: str, exc: ValidationError) -> SttError:
    def where(error: Any) -> str:
        return ".".join(str(part) for part in error["loc"]) or "event"

    problems = "; ".join(f"{where(e)}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors())
    return SttError("invalid_message", f"invalid {kind} event ({problems}); nothing was applied",
                    field=where(exc.errors()[0]))
