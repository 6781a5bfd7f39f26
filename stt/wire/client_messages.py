"""Client → server: every message a client sends, strict so that nothing half-checked reaches a
session. stt/protocol.py validates session_config and configure.config as a SessionConfig with
the server's defaults (settings, runtime profile) and language list; the Python client builds
these same models."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from stt.wire.common import (MAX_KEYTERM_CHARS, MAX_KEYTERMS, MAX_PROMPT_CHARS, Eagerness, Keyterm, Prompt,
                             clean_identifier)

# Strict: no type coercion, no unknown keys, no infinities.
_STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$")


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
    prompt: Prompt = Field(
        default="",
        description=f"Free text the model reads as what was said before the audio (topic, names, spelling, "
                    f"style): at most {MAX_PROMPT_CHARS} characters, whitespace runs collapsed; its latest words "
                    f"that fit in the decoder prompt, before the keyterms, bias partials and finals")

    @field_validator("user_id", "conversation_id")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        return clean_identifier(value)

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
