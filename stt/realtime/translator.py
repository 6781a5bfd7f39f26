"""What a session says, as OpenAI realtime server events.

The session (stt/session) speaks the /ws/transcribe protocol; EventTranslator takes its
messages (and the speech ends, which that protocol has no message for) and sends the
events an OpenAI transcription client expects:

| session | OpenAI event |
| --- | --- |
| `voice_activity_detected` | `input_audio_buffer.speech_started` |
| speech end (silence, or a length cut) | `input_audio_buffer.speech_stopped` (VAD on), `input_audio_buffer.committed` |
| `transcription_partial` | `conversation.item.input_audio_transcription.delta`: the newly committed (stable) words |
| `transcription_final` | the rest of the text as a last delta, when it extends the deltas; `...transcription.completed` |
| `buffer_flushed` without a final | `...transcription.completed` with an empty transcript |
| `interrupt_acknowledged` | `input_audio_buffer.cleared` |
| `error` about an utterance | `conversation.item.input_audio_transcription.failed` |
| other `error` | `error` |

An utterance is a conversation item: its id is `item_` and the utterance id's hex, so
the history (which keeps utterance ids) finds it. Deltas only ever append: each one is
words that no later partial of the utterance will revise.
"""

from __future__ import annotations

import logging
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterator

from stt.audio import samples_to_ms
from stt.streaming import FinalReason, SpeechEnd

logger = logging.getLogger(__name__)

EmitFn = Callable[[dict[str, Any]], Awaitable[None]]

# Error categories of stt/errors.py that mean the client's request was wrong.
_CLIENT_CATEGORIES = {"connection", "audio_format"}
_CLIENT_CODES = {"rate_limited", "too_many_errors", "too_many_sessions", "idle_timeout", "session_time_limit"}


def item_id(utterance_id: str) -> str:
    return "item_" + utterance_id.replace("-", "")


def event_id() -> str:
    return "event_" + uuid.uuid4().hex[:24]


def error_type(code: str, category: str) -> str:
    """OpenAI's error `type` for an error of the catalogue (stt/errors.py)."""
    if category in _CLIENT_CATEGORIES or code in _CLIENT_CODES:
        return "invalid_request_error"
    return "server_error"


@dataclass
class _Item:
    item_id: str
    sent: str = ""  # the text of the deltas so far
    committed: bool = False


class EventTranslator:
    """One session's messages -> OpenAI events, sent through `emit` in order."""

    def __init__(self, emit: EmitFn) -> None:
        self._emit = emit
        self._items: dict[str, _Item] = {}  # by utterance id, until completed
        self._last_committed: str | None = None
        # The earliest audio a new item can hold (ms): the end of the last one, or a clear.
        self.floor_ms = 0
        self.prefix_padding_ms = 0
        # The client event being handled: errors it causes name it and its fields.
        self._client_event_id: str | None = None
        self._params: dict[str, str] = {}

    @contextmanager
    def handling(self, client_event_id: str | None, params: dict[str, str] | None = None) -> Iterator[None]:
        """Errors sent meanwhile are about this client event; `params` maps the session's
        config fields to the event's own (e.g. language -> session.input_audio_transcription.language)."""
        self._client_event_id, self._params = client_event_id, params or {}
        try:
            yield
        finally:
            self._client_event_id, self._params = None, {}

    async def emit(self, event: dict[str, Any]) -> None:
        """Send one event, with its event_id first."""
        await self._emit({"event_id": event_id(), **event})

    def _item(self, utterance_id: str) -> _Item:
        item = self._items.get(utterance_id)
        if item is None:
            item = self._items[utterance_id] = _Item(item_id(utterance_id))
        return item

    # --- from the session ------------------------------------------------------------

    async def on_message(self, message: dict[str, Any]) -> None:
        """A message the session sends (its `send`)."""
        kind, data = message.get("type"), message.get("data") or {}
        if kind == "voice_activity_detected":
            await self._speech_started(data["utterance_id"], data["audio_offset_ms"] - self.prefix_padding_ms)
        elif kind == "transcription_partial":
            await self._partial(data)
        elif kind == "transcription_final":
            await self._final(data)
        elif kind == "buffer_flushed":
            if data.get("utterance_id") and not data.get("final_sent"):
                await self._completed(data["utterance_id"], "", seconds=0.0)
        elif kind == "interrupt_acknowledged":
            if data.get("discarded_utterance_id"):
                self._items.pop(data["discarded_utterance_id"], None)
            await self.emit({"type": "input_audio_buffer.cleared"})
        elif kind == "error":
            await self._error(message["error"])
        # session_started, session_configured, session_ended: the adapter speaks for those.

    async def on_speech_end(self, event: SpeechEnd, vad: bool) -> None:
        """The segmenter ended an utterance by itself: server VAD's end of speech (and
        turn), or a length cut, after which speech goes on in a new item."""
        end_ms = samples_to_ms(event.end_sample)
        item = self._item(event.utterance_id)
        if vad:
            await self.emit({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": end_ms,
                             "item_id": item.item_id})
        await self.commit(event.utterance_id, end_ms)
        if vad and event.next_utterance_id is not None and event.reason == FinalReason.MAX_DURATION:
            await self._speech_started(event.next_utterance_id, end_ms)

    async def commit(self, utterance_id: str, end_ms: int) -> None:
        """input_audio_buffer.committed for an utterance, once."""
        item = self._item(utterance_id)
        self.floor_ms = max(self.floor_ms, end_ms)
        if item.committed:
            return
        item.committed = True
        await self.emit({"type": "input_audio_buffer.committed", "previous_item_id": self._last_committed,
                         "item_id": item.item_id})
        self._last_committed = item.item_id

    # --- events ----------------------------------------------------------------------

    async def _speech_started(self, utterance_id: str, start_ms: int) -> None:
        await self.emit({"type": "input_audio_buffer.speech_started",
                         "audio_start_ms": max(start_ms, self.floor_ms, 0),
                         "item_id": self._item(utterance_id).item_id})

    async def _partial(self, data: dict[str, Any]) -> None:
        item = self._item(data["utterance_id"])
        stable = data["stable_text"]
        if stable.startswith(item.sent) and len(stable) > len(item.sent):
            await self._delta(item, stable[len(item.sent):])

    async def _delta(self, item: _Item, text: str) -> None:
        item.sent += text
        await self.emit({"type": "conversation.item.input_audio_transcription.delta", "item_id": item.item_id,
                         "content_index": 0, "delta": text})

    async def _final(self, data: dict[str, Any]) -> None:
        utterance_id, text = data["utterance_id"], data["text"]
        item = self._item(utterance_id)
        await self.commit(utterance_id, data["end_ms"])
        if text.startswith(item.sent) and len(text) > len(item.sent):
            await self._delta(item, text[len(item.sent):])
        elif not text.startswith(item.sent):
            logger.debug("final of %s revises its deltas; the transcript replaces them", utterance_id)
        await self._completed(utterance_id, text, seconds=data["audio_duration_ms"] / 1000)

    async def _completed(self, utterance_id: str, transcript: str, seconds: float) -> None:
        item = self._item(utterance_id)
        await self.commit(utterance_id, self.floor_ms)
        self._items.pop(utterance_id, None)
        await self.emit({"type": "conversation.item.input_audio_transcription.completed", "item_id": item.item_id,
                         "content_index": 0, "transcript": transcript,
                         "usage": {"type": "duration", "seconds": round(seconds, 3)}})

    async def _error(self, payload: dict[str, Any]) -> None:
        field = payload.get("field")
        detail = {"type": error_type(payload["code"], payload["category"]), "code": payload["code"],
                  "message": payload["message"], "param": self._params.get(field, field) if field else None}
        utterance_id = payload.get("utterance_id")
        if utterance_id:
            item = self._item(utterance_id)
            await self.commit(utterance_id, self.floor_ms)
            self._items.pop(utterance_id, None)
            await self.emit({"type": "conversation.item.input_audio_transcription.failed", "item_id": item.item_id,
                             "content_index": 0, "error": detail})
            return
        await self.emit({"type": "error", "error": {**detail, "event_id": self._client_event_id}})
