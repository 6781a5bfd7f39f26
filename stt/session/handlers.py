"""What each client control message does (and the same actions from the server side)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import datetime, timezone

from django.conf import settings

from stt import protocol
from stt.engine import EngineInfo
from stt.errors import SttError
from stt.languages import normalize_language
from stt.persistence import SessionFacts, session_write
from stt.protocol import envelope, utc_timestamp
from stt.session.keyterms import SessionKeyterms
from stt.session.state import CloseCode, spawn
from stt.streaming import FinalReason, FinalResult, StreamingTranscriber

logger = logging.getLogger("stt.session")


def final_is_sent(result: FinalResult) -> bool:
    """A final goes out (and into the history) when it has text or the client already
    heard of the utterance; a silent VAD-off segment nobody saw needs no empty final."""
    return result.transcript is not None and (bool(result.transcript.text) or result.announced)


def check_language(info: EngineInfo | None, language: str | None, field: str) -> None:
    if info is not None and not info.supports_language(language):
        raise SttError(
            "unsupported_language",
            f"the loaded model {info.model!r} transcribes English only; {language!r} is not available",
            field=field,
        )


class ControlHandlers(SessionKeyterms):
    """`_on_<type>` for each client message type; SttSession.on_text dispatches."""

    def _require_started(self) -> None:
        if self.stream is None:
            raise SttError("session_not_started", "send start_session first")

    async def on_server_control(self, action: str) -> None:
        """Control from the server side (channel layer), e.g. an operator ending a session."""
        handlers = {"end_session": self._on_end_session, "flush_buffer": self._on_flush_buffer,
                    "interrupt": self._on_interrupt}
        if action in handlers and self.started and not self._ending:
            await handlers[action](None)

    async def _on_start_session(self, message: protocol.StartSession) -> None:
        if self.started:
            raise SttError("session_already_started",
                           "this connection already has a session; use configure to change its settings")
        raw = message.session_config
        profile = raw.get("profile")
        if profile is not None and not isinstance(profile, str):
            raise SttError("invalid_config", "profile must be a string", field="profile")
        runtime = await self.services.runtime.values(profile)
        config = protocol.validate_config(raw, defaults=runtime.session_defaults(),
                                          max_silence=runtime.max_silence_duration)
        try:
            info = await self.engine.ready(timeout=settings.STT_TRANSCRIPTION_TIMEOUT)
        except SttError as error:
            await self.fail(error, CloseCode.INTERNAL_ERROR)
            return
        if self._ending:  # ended while the model loaded (its client gone): no stream to leave open
            return
        check_language(info, config.language, "language")
        self._check_keyterms(config, config.language or self.context.language_context)
        self.config, self.raw_config, self.runtime = config, raw, runtime
        if config.session_id:
            self._session_id = config.session_id
        self.stream = StreamingTranscriber(self._stream_params(), self.engine, self,
                                           executor=self.services.segmenter_executor)
        self.started_at = self._clock()
        self.record = SessionFacts(
            connection_id=self.connection_id, session_id=self._session_id, user_id=config.user_id,
            conversation_id=config.conversation_id, client_address=self.client, profile=runtime.profile,
            config=raw, effective_config=config.model_dump(), model=info.model,
            started_at=datetime.now(timezone.utc), server_id=self.services.server_id, source=self.source,
        )
        self.services.history.write_later(session_write(self.record))
        self.services.metrics.session_started()
        logger.info("session %s started", self._session_id,
                    extra={"event": "session_start", **self._log_ids(), "client": self.client,
                           "profile": runtime.profile, "language": config.language})
        await self._send(protocol.session_started_message(
            self._metadata(), self._session_id, config, info, runtime.as_dict(), settings.MAX_AUDIO_FRAME_SAMPLES))

    async def _on_configure(self, message: protocol.Configure) -> None:
        self._require_started()
        assert self.config is not None and self.stream is not None
        updated = self.config.merged(message.config, max_silence=self.runtime.max_silence_duration)
        check_language(self.engine.info, updated.language, "language")
        self._check_keyterms(updated, updated.language or self.context.language_context)
        changed = sorted(k for k, v in updated.model_dump().items() if v != getattr(self.config, k))
        self.config = updated
        self.stream.reconfigure(self._stream_params())
        await self._send(envelope("session_configured", self._metadata(),
                                  data={"config": updated.model_dump(), "changed": changed}))

    def tune_voice_activity(self, threshold: float | None = None, speech_pad_ms: int | None = None) -> None:
        """This session's VAD threshold and speech padding, otherwise the runtime
        profile's (VAD_THRESHOLD, VAD_SPEECH_PAD_MS); from the next frame on. For
        adapters whose protocol sets them per session (stt/realtime); the caller has
        checked the values."""
        self._require_started()
        assert self.stream is not None
        changes: dict[str, float | int] = {}
        if threshold is not None:
            changes["vad_threshold"] = threshold
        if speech_pad_ms is not None:
            changes["vad_speech_pad_ms"] = speech_pad_ms
        self.runtime = replace(self.runtime, **changes)
        self.stream.reconfigure(self._stream_params())

    async def _on_context_update(self, message: protocol.ContextUpdate) -> None:
        self._require_started()
        data = message.data
        language = self.context.language_context
        if data.language_context is not None:
            try:
                language = normalize_language(data.language_context)
            except ValueError as exc:
                raise SttError("unsupported_language", str(exc), field="data.language_context") from None
            check_language(self.engine.info, language, "data.language_context")
        if data.conversation_state is not None:
            self.context.conversation_state = data.conversation_state
        if data.expected_response_type is not None:
            self.context.expected_response_type = data.expected_response_type
        self.context.language_context = language
        assert self.stream is not None
        self.stream.reconfigure(self._stream_params())

    async def _on_interrupt(self, message: protocol.Interrupt | None) -> None:
        self._require_started()
        assert self.stream is not None
        outcome = self.stream.interrupt()
        self._utterance_dropped(outcome.discarded_utterance_id)
        await self._send(envelope("interrupt_acknowledged", self._metadata(), data={
            "interrupted_at": utc_timestamp(),
            "buffer_cleared": outcome.buffer_cleared,
            "processing_stopped": outcome.processing_stopped,
            "discarded_utterance_id": outcome.discarded_utterance_id,
            "reason": message.data.reason if message is not None else "server",
        }))

    async def _on_flush_buffer(self, message: protocol.FlushBuffer | None) -> None:
        self._require_started()
        assert self.stream is not None
        delivered = self.stream.finalize_now(FinalReason.FLUSH)
        # Audio keeps flowing while the final is computed; the ack follows the final.
        spawn(self._acknowledge_flush(delivered))

    async def _acknowledge_flush(self, delivered: asyncio.Future) -> None:
        result: FinalResult | None = await delivered
        await self._send(envelope("buffer_flushed", self._metadata(), data={
            "utterance_id": result.utterance_id if result else None,
            "final_sent": bool(result and final_is_sent(result)),
        }))

    async def _on_end_session(self, message: protocol.EndSession | None) -> None:
        await self.end(FinalReason.SESSION_END, ended_reason="end_session")

    async def fail(self, error: SttError, close_code: int) -> None:
        """A fault the session cannot go on after: report it, then end."""
        self._state = "error"
        await self._send_error(error)
        await self.end(FinalReason.SESSION_END, ended_reason=error.code, close_code=close_code)
