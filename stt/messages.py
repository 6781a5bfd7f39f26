"""Every message of the WebSocket protocol as a pydantic model, defined once.

The server validates what clients send with the client-message models (stt/protocol.py
adds what needs Django: defaults from settings, the language list, the silence bound);
the Python client (stt/client) builds those same models and parses what the server sends
into the server-message models; docs/protocol.schema.json is generated from these models
(by stt/schema.py) and the tests check real server messages against it. Nothing here
imports Django or the model, so a client installs only pydantic.

This module is the protocol's one import surface; the models are defined by direction in
stt/wire/ (common.py, client_messages.py, server_messages.py) and parsed here.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from stt.wire.client_messages import (CLIENT_MESSAGE_TYPES, ClientMessage, Configure, ContextData, ContextUpdate,
                                      EndSession, FlushBuffer, Interrupt, InterruptData, SessionConfig,
                                      StartSession)
from stt.wire.common import (AUTH_SUBPROTOCOL_PREFIX, EAGERNESS_LEVELS, MAX_KEYTERM_CHARS, MAX_KEYTERMS,
                             MAX_PROMPT_CHARS, PROTOCOL_VERSION, SAMPLE_RATE, SUBPROTOCOL, Eagerness, Keyterm,
                             Prompt, clean_keyterm, clean_prompt, token_subprotocols)
from stt.wire.server_messages import (SERVER_MESSAGE_TYPES, AudioFormat, BufferFlushed, BufferFlushedData,
                                      EffectiveConfig, Error, ErrorBody, FinalData, FinalMetadata,
                                      FinalReasonName, InterruptAcknowledged, InterruptAcknowledgedData,
                                      LegacyTranscriptionData, Metadata, ModelInfo, PartialData,
                                      PartialMetadata, ServerMessage, SessionConfigured, SessionConfiguredData,
                                      SessionEnded, SessionEndedData, SessionStarted, SessionStartedData,
                                      Transcription, TranscriptionFinal, TranscriptionPartial, VoiceActivityData,
                                      VoiceActivityDetected, WordTimestamp)

__all__ = [
    "AUTH_SUBPROTOCOL_PREFIX", "CLIENT_MESSAGE_TYPES", "EAGERNESS_LEVELS", "MAX_KEYTERMS", "MAX_KEYTERM_CHARS",
    "MAX_PROMPT_CHARS", "PROTOCOL_VERSION", "SAMPLE_RATE", "SERVER_MESSAGE_TYPES", "SUBPROTOCOL", "AudioFormat",
    "BufferFlushed", "BufferFlushedData", "ClientMessage", "Configure", "ContextData", "ContextUpdate", "Eagerness",
    "EffectiveConfig", "EndSession", "Error", "ErrorBody", "FinalData", "FinalMetadata", "FinalReasonName",
    "FlushBuffer", "Interrupt", "InterruptAcknowledged", "InterruptAcknowledgedData", "InterruptData", "Keyterm",
    "LegacyTranscriptionData", "Metadata", "ModelInfo", "PartialData", "PartialMetadata", "Prompt", "ServerMessage",
    "SessionConfig", "SessionConfigured", "SessionConfiguredData", "SessionEnded", "SessionEndedData",
    "SessionStarted", "SessionStartedData", "StartSession", "Transcription", "TranscriptionFinal",
    "TranscriptionPartial", "UnknownServerMessage", "VoiceActivityData", "VoiceActivityDetected", "WordTimestamp",
    "clean_keyterm", "clean_prompt", "parse_server_message", "token_subprotocols",
]

# The two directions as unions; stt/schema.py generates the documented schema from them.
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
