"""History writes as plain data, built on the event loop (cheap: no I/O, no encoding).

A write is a kind and a JSON payload, so it can wait, be retried, or be kept in the
journal; a final also carries its audio until the audio is saved to storage.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

import numpy as np

from stt.audio import samples_to_ms


@dataclass
class Write:
    kind: str  # "session", "final" or "error"
    payload: dict[str, Any]  # JSON-able: what the row(s) will hold
    audio: np.ndarray | None = None  # a final's audio until its file is saved
    # Bytes of memory the backlog counts for this write (0: not held by it).
    counted: int = field(default=0, repr=False)
    # Saving the audio once, whichever thread gets to it first.
    audio_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _payload_bytes: int = field(default=0, repr=False)

    @property
    def description(self) -> str:
        key = self.payload.get("utterance_id") or self.payload.get("event_id") or self.payload.get("connection_id")
        return f"{self.kind} {key}"

    def row_bytes(self) -> int:
        """What holding this write costs without its audio: its payload as JSON."""
        if not self._payload_bytes:
            self._payload_bytes = len(json.dumps(self.payload)) + 512  # and the objects around it
        return self._payload_bytes

    def memory_bytes(self) -> int:
        """What holding this write costs: its payload as JSON, and its audio until saved."""
        audio = self.audio
        return self.row_bytes() + (audio.nbytes if audio is not None else 0)


def _clean(value: Any) -> Any:
    """Strings as PostgreSQL takes them (no NUL), recursively."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {str(k).replace("\x00", ""): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


@dataclass
class SessionFacts:
    connection_id: str
    session_id: str
    user_id: str | None
    conversation_id: str | None
    client_address: str | None
    profile: str
    config: dict[str, Any]
    effective_config: dict[str, Any]
    model: str
    started_at: datetime
    server_id: str | None = None  # the server process holding it (stt/liveness.py)
    ended_at: datetime | None = None
    close_reason: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    latency: dict[str, Any] = field(default_factory=dict)
    source: str = "websocket"  # SessionRecord.Source: websocket, file, realtime

    def row(self) -> dict[str, Any]:
        """The SessionRecord fields, JSON-able."""
        fields: dict[str, Any] = {
            "source": self.source,
            "session_id": self.session_id,
            "user_id": (self.user_id or "")[:256],
            "conversation_id": (self.conversation_id or "")[:256],
            "client_address": (self.client_address or "")[:64],
            "profile": self.profile,
            "config": self.config,
            "effective_config": self.effective_config,
            "model": self.model,
            "started_at": self.started_at.isoformat(),
            "server_id": self.server_id,
        }
        if self.ended_at is not None:
            summary = self.summary
            fields.update(
                ended_at=self.ended_at.isoformat(),
                close_reason=self.close_reason,
                utterances=summary.get("utterances", 0),
                finals=summary.get("finals", 0),
                failed_finals=summary.get("failed_finals", 0),
                partials=summary.get("partials", 0),
                speech_onsets=summary.get("speech_onsets", 0),
                errors=summary.get("errors", 0),
                audio_received_s=summary.get("audio_received_s", 0.0),
                audio_transcribed_s=summary.get("audio_transcribed_s", 0.0),
                latency=self.latency,
            )
        return _clean(fields)


def session_write(facts: SessionFacts) -> Write:
    return Write("session", {"connection_id": facts.connection_id, "row": facts.row()})


@dataclass
class FinalFacts:
    session: SessionFacts
    utterance_id: str
    text: str
    words: list[dict[str, Any]]
    confidence: float | None
    language: str | None
    start_ms: int
    end_ms: int
    reason: str
    partial_count: int
    first_partial_latency_ms: int | None
    final_latency_ms: int
    decode: dict[str, Any]
    audio: np.ndarray | None
    created_at: datetime
    status: str = "final"  # "failed": no transcript, kept for its audio
    error: str = ""


def final_write(facts: FinalFacts) -> Write:
    row = {
        "text": facts.text,
        "words": facts.words,
        "confidence": facts.confidence,
        "language": facts.language or "",
        "start_ms": facts.start_ms,
        "end_ms": facts.end_ms,
        "audio_duration_ms": facts.end_ms - facts.start_ms,
        "reason": facts.reason,
        "partial_count": facts.partial_count,
        "first_partial_latency_ms": facts.first_partial_latency_ms,
        "final_latency_ms": facts.final_latency_ms,
        "model": facts.session.model,
        "decode": facts.decode,
        "audio": "",
        "created_at": facts.created_at.isoformat(),
        "status": facts.status,
        "error": facts.error,
    }
    payload = {
        "utterance_id": facts.utterance_id,
        "connection_id": facts.session.connection_id,
        "session_row": facts.session.row(),
        "row": _clean(row),
    }
    audio = facts.audio if facts.audio is not None and facts.audio.size else None
    return Write("final", payload, audio)


def utterance_opened_write(session: SessionFacts, utterance_id: str, start_ms: int) -> Write:
    """An utterance the client has heard of (its speech onset or first partial), before
    its final: status open until the final's write replaces the row. Only a process
    that dies first leaves it open (stt/liveness.py then marks it interrupted)."""
    now = datetime.now(timezone.utc).isoformat()
    return Write("utterance_open", {
        "utterance_id": utterance_id,
        "connection_id": session.connection_id,
        "session_row": session.row(),
        "row": {"text": "", "start_ms": start_ms, "end_ms": start_ms, "audio_duration_ms": 0,
                "final_latency_ms": 0, "model": session.model, "created_at": now, "status": "open"},
    })


def utterance_discarded_write(utterance_id: str) -> Write:
    """The client interrupted an utterance it had heard of: no final will come, and its
    open row goes (a final that did land stays)."""
    return Write("utterance_discarded", {"utterance_id": utterance_id})


class FailedFinal(Protocol):
    """What a final that failed after its retries tells (stt.streaming.FinalResult)."""

    utterance_id: str
    error: Any  # SttError: code, message
    start_sample: int
    end_sample: int
    reason: str
    partial_count: int
    processing_seconds: float
    audio: np.ndarray
    first_partial_seconds: float | None
    decode: dict


def failed_final_write(session: SessionFacts, result: FailedFinal, store_audio: bool) -> Write:
    """The utterance of a failed final: no text, a failed status, the error and its
    audio, so it can be transcribed later (refinement) and listened to (admin)."""
    error = result.error
    first_partial = result.first_partial_seconds
    language = (session.effective_config or {}).get("language")
    return final_write(FinalFacts(
        session=session, utterance_id=result.utterance_id, text="", words=[], confidence=None,
        language=language if isinstance(language, str) and language != "auto" else None,
        start_ms=samples_to_ms(result.start_sample), end_ms=samples_to_ms(result.end_sample),
        reason=result.reason, partial_count=result.partial_count,
        first_partial_latency_ms=round(first_partial * 1000) if first_partial is not None else None,
        final_latency_ms=round(result.processing_seconds * 1000), decode=result.decode or {},
        audio=result.audio if store_audio else None, created_at=datetime.now(timezone.utc),
        status="failed", error=f"{error.code}: {error.message}" if error is not None else "failed",
    ))


def error_write(payload: dict[str, Any], connection_id: str | None, session_id: str) -> Write:
    return Write("error", _clean({
        "event_id": str(uuid.uuid4()),
        "connection_id": connection_id,
        "row": {
            "session_label": session_id[:128],
            "code": payload["code"],
            "category": payload["category"],
            "severity": payload["severity"],
            "recoverable": payload["recoverable"],
            "message": payload["message"],
            "field": (payload.get("field") or "")[:128],
            "utterance_id": (payload.get("utterance_id") or "")[:64],
            "created_at": datetime.now(timezone.utc).isoformat(),
        },
    }))
