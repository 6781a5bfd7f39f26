"""The session's state and its ties to the outside: identity, connection state, the
transport (send and close), errors, and the figures it reports."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from monitoring.stats import latency_summary, session_summary, stats_entry
from stt import protocol
from stt.audio import samples_to_ms
from stt.auth import Principal
from stt.engine import ComposedPrompt
from stt.errors import SttError
from stt.persistence import SessionFacts, error_write, utterance_discarded_write, utterance_opened_write
from stt.protocol import SessionConfig
from stt.runtime_config import RuntimeValues
from stt.session.services import SessionServices
from stt.streaming import FinalReason, SpeechEnd, StreamingTranscriber, StreamParams

logger = logging.getLogger("stt.session")

SendFn = Callable[[dict[str, Any]], Awaitable[None]]
CloseFn = Callable[[int, str], Awaitable[None]]
# Told when the segmenter ends an utterance by itself (stt.streaming.SpeechEnd); the
# protocol of /ws/transcribe has no message for it, an adapter may (stt/realtime).
SpeechEndFn = Callable[[SpeechEnd], Awaitable[None]]


class CloseCode:
    NORMAL = 1000
    POLICY_VIOLATION = 1008
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013


@dataclass
class Context:
    conversation_state: str = "listening"
    expected_response_type: str | None = None
    language_context: str | None = None  # normalized code


# Work finishing after its client left; held so the tasks are not collected.
_finishing: set[asyncio.Task] = set()


def spawn(work: Awaitable[None]) -> None:
    task = asyncio.ensure_future(work)
    _finishing.add(task)
    task.add_done_callback(_finishing.discard)


def unfinished_work() -> list[asyncio.Task]:
    """Sessions' background work still running (finishing after their clients left)."""
    return [task for task in _finishing if not task.done()]


class SessionState:
    """The parts every piece of a session shares; SttSession (core.py) adds the behaviour."""

    def __init__(self, send: SendFn, close: CloseFn, services: SessionServices,
                 client: str | None = None, principal: Principal | None = None,
                 on_speech_end: SpeechEndFn | None = None, source: str = "websocket") -> None:
        self._send_raw = send
        self._close_raw = close
        self._speech_end_hook = on_speech_end
        self.services = services
        self.engine = services.engine
        self._clock = services.clock
        self.client = client
        # Which API the client came through, as the history records it (SessionRecord.Source):
        # "websocket" for /ws/transcribe, "realtime" for an adapter such as stt/realtime.
        self.source = source
        # Who the connection acts for (stt/auth.py); anonymous when the service runs open.
        self.principal = principal or Principal.anonymous()
        # The server's id of this connection: the key of everything (groups, /stats, history).
        self.connection_id = str(uuid.uuid4())
        self._session_id = self.connection_id  # the client's label, once it names one
        self.config: SessionConfig | None = None
        self.raw_config: dict[str, Any] = {}
        self.runtime: RuntimeValues = RuntimeValues.from_settings()
        self.record: SessionFacts | None = None  # what the history knows of this session
        self.stream: StreamingTranscriber | None = None
        self.context = Context()
        self.errors = 0
        self.started_at: float | None = None
        self.ended_reason: str | None = None
        self._last_activity = self._clock()
        self._state = "connecting"
        self._transport_open = True
        self._ending = False
        # Set with _ending: what waits for the client's sake (the audio budget) stops waiting.
        self._ending_event = asyncio.Event()
        self._announced: set[str] = set()  # utterances the client heard of, final pending
        self.finished: asyncio.Future = asyncio.get_running_loop().create_future()

    # --- identity and state --------------------------------------------------------

    @property
    def session_id(self) -> str:
        """The client's session_id (a label: clients may pick the same one), else the connection id."""
        return self._session_id

    @property
    def budget_owner(self) -> Any:
        """Whose rate and audio budget this session draws on: its key's, or its own."""
        return self.principal.key_id if self.principal.key_id is not None else self.connection_id

    @property
    def started(self) -> bool:
        return self.config is not None

    @property
    def state(self) -> str:
        """One of the design document's connection states."""
        if self._state in ("connecting", "disconnecting", "error", "closed"):
            return self._state
        if self.stream is not None and self.stream.processing:
            return "processing"
        if self.stream is not None and self.stream.buffering:
            return "buffering"
        return "active"

    @property
    def current_utterance_id(self) -> str | None:
        return self.stream.current_utterance_id if self.stream else None

    @property
    def audio_received_ms(self) -> int:
        """Audio taken so far: the end of the session's audio timeline."""
        return samples_to_ms(self.stream.stats.samples_received) if self.stream else 0

    def _metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"session_id": self._session_id}
        if self.config is not None:
            if self.config.conversation_id is not None:
                meta["conversation_id"] = self.config.conversation_id
            if self.config.user_id is not None:
                meta["user_id"] = self.config.user_id
        return meta

    def _log_ids(self) -> dict[str, Any]:
        """Who a log line is about (no audio, no secrets)."""
        ids: dict[str, Any] = {"session_id": self._session_id, "connection_id": self.connection_id}
        if self.config is not None:
            ids.update(user_id=self.config.user_id, conversation_id=self.config.conversation_id)
        return ids

    def _stream_params(self) -> StreamParams:
        assert self.config is not None
        language = self.config.language or self.context.language_context
        prompt = self._decoder_prompt(language)
        return StreamParams.from_config(self.config, language=language, runtime=self.runtime,
                                        prompt=prompt.text, prompt_context=prompt.context)

    def _decoder_prompt(self, language: str | None) -> ComposedPrompt:
        raise NotImplementedError  # SessionKeyterms

    async def _follow_vocabulary(self) -> None:
        raise NotImplementedError  # SessionKeyterms

    # --- transport -----------------------------------------------------------------

    async def _send(self, message: dict[str, Any]) -> None:
        if not self._transport_open:
            return
        try:
            await self._send_raw(message)
        except Exception as exc:  # the client went away mid-send
            logger.info("session %s: send failed (%s); treating the client as gone", self._session_id, exc)
            self._transport_open = False

    async def _close(self, code: int, reason: str) -> None:
        if not self._transport_open:
            return
        self._transport_open = False
        try:
            await self._close_raw(code, reason)
        except Exception:
            pass

    async def _send_error(self, error: SttError) -> None:
        """Every error a client is sent: counted, logged (one line), and stored."""
        payload = error.to_payload()
        self.services.metrics.error_sent(payload["category"], payload["code"])
        logger.info("session %s: error %s: %s", self._session_id, error.code, error.message,
                    extra={"event": "error", **self._log_ids(), "code": error.code,
                           "category": payload["category"], "severity": payload["severity"],
                           "utterance_id": error.utterance_id})
        await self._send(protocol.error_message(self._metadata(), payload))
        self.services.history.write_later(error_write(payload, self.connection_id, self._session_id))

    async def report(self, error: SttError) -> None:
        """Send an error the client caused; a session past its error limit is ended and
        closed (1008)."""
        await self._send_error(error)
        self.errors += 1
        limit = self.runtime.max_session_errors
        if self.errors > limit and not self._ending:
            await self._send_error(SttError("too_many_errors", f"more than {limit} errors in this session; closing it"))
            # Not awaited: report() may run inside the stream's own processor, which end() waits for.
            spawn(self.end(FinalReason.SESSION_END, ended_reason="too_many_errors",
                           close_code=CloseCode.POLICY_VIOLATION))

    async def end(self, final_reason: str, *, ended_reason: str, close_code: int = CloseCode.NORMAL) -> None:
        raise NotImplementedError  # SttSession

    # --- utterances the client heard of ----------------------------------------------

    def _utterance_announced(self, utterance_id: str, start_sample: int) -> None:
        """Its onset or first partial went out: the history holds it as open until its
        final replaces the row, so a process killed before then leaves a trace
        (stt/liveness.py marks it interrupted)."""
        if self.record is None or utterance_id in self._announced:
            return
        self._announced.add(utterance_id)
        self.services.history.write_later(
            utterance_opened_write(self.record, utterance_id, samples_to_ms(start_sample)))

    def _utterance_closed(self, utterance_id: str) -> None:
        self._announced.discard(utterance_id)

    def _utterance_dropped(self, utterance_id: str | None) -> None:
        """Interrupted by the client: no final comes; its open row goes."""
        if utterance_id is not None and utterance_id in self._announced:
            self._announced.discard(utterance_id)
            self.services.history.write_later(utterance_discarded_write(utterance_id))

    # --- figures -------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        duration = self._clock() - self.started_at if self.started_at is not None else 0.0
        return session_summary(self.stream.stats if self.stream else None, reason=self.ended_reason,
                               duration_s=duration, errors=self.errors, sample_rate=protocol.SAMPLE_RATE)

    def stats_entry(self) -> dict[str, Any]:
        """This session's entry in /stats processing_stats."""
        return stats_entry(
            self.stream.stats if self.stream else None,
            labels={"connection_id": self.connection_id, "session_id": self._session_id},
            state=self.state, errors=self.errors, current_utterance_id=self.current_utterance_id,
            partials_enabled=bool(self.config and self.config.enable_partial_transcription),
            sample_rate=protocol.SAMPLE_RATE)

    def latency_summary(self) -> dict[str, Any]:
        return latency_summary(self.stream.stats if self.stream else None)
