"""One WebSocket connection's protocol session, in plain Python.

SttSession turns parsed client messages and audio frames into actions on a
StreamingTranscriber, and the transcriber's results into server messages. It talks
to the outside world through two callables, `send` and `close`, so it runs the same
under a Channels consumer, in a unit test, or anywhere else.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

from django.conf import settings

from monitoring.registry import registry
from stt import protocol
from stt.audio import decode_frame, samples_to_ms
from stt.engine import EngineInfo, SpeechEngine, get_engine
from stt.errors import SttError
from stt.languages import normalize_language
from monitoring import metrics
from stt.auth import Principal, rate_limiter
from stt.persistence import (FinalFacts, SessionFacts, error_write, failed_final_write, final_write, history,
                             session_write)
from stt.protocol import SessionConfig, envelope, utc_timestamp
from stt.runtime_config import RuntimeValues, store as runtime_store
from stt.streaming import (
    FinalReason,
    FinalResult,
    PartialResult,
    SpeechStart,
    StreamingTranscriber,
    StreamParams,
)

logger = logging.getLogger(__name__)

SendFn = Callable[[dict[str, Any]], Awaitable[None]]
CloseFn = Callable[[int, str], Awaitable[None]]


# How often a session checks its idle and duration limits.
WATCH_INTERVAL_SECONDS = 1.0


class CloseCode:
    NORMAL = 1000
    POLICY_VIOLATION = 1008
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013


@dataclass
class _Context:
    conversation_state: str = "listening"
    expected_response_type: str | None = None
    language_context: str | None = None  # normalized code


# Sessions finishing after their client left; held so their tasks are not collected.
_finishing: set[asyncio.Task] = set()


class SttSession:
    def __init__(
        self,
        send: SendFn,
        close: CloseFn,
        engine: SpeechEngine | None = None,
        client: str | None = None,
        principal: Principal | None = None,
    ) -> None:
        self._send_raw = send
        self._close_raw = close
        self.engine = engine or get_engine()
        self.client = client
        # Who the connection acts for (stt/auth.py); anonymous when the service runs open.
        self.principal = principal or Principal.anonymous()
        self._rate_limited_reported_at = -1e9
        self._last_activity = time.monotonic()
        self._watchdog: asyncio.Task | None = None
        self.connection_id = str(uuid.uuid4())
        self._session_id = self.connection_id
        self.config: SessionConfig | None = None
        self.raw_config: dict[str, Any] = {}
        self.runtime: RuntimeValues = RuntimeValues.from_settings()
        self.record: SessionFacts | None = None  # what the history knows of this session
        self.stream: StreamingTranscriber | None = None
        self.context = _Context()
        self.errors = 0
        self.started_at: float | None = None
        self.ended_reason: str | None = None
        self._state = "connecting"
        self._transport_open = True
        self._ending = False
        self._registered = False
        self.finished: asyncio.Future = asyncio.get_running_loop().create_future()

    # --- identity and state --------------------------------------------------------

    @property
    def session_id(self) -> str:
        return self._session_id

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

    # --- transport -----------------------------------------------------------------

    async def open(self) -> bool:
        """Admit the connection; False (after telling the client why) when the process is full."""
        self.runtime = await runtime_store.values()
        self.engine.set_failure_thresholds(self.runtime.transcription_failure_threshold,
                                           self.runtime.gpu_failure_threshold)
        limit = self.runtime.max_connections
        if registry.draining:
            self._state = "error"
            await self._send_error(SttError("server_shutting_down", "this server process is shutting down"))
            await self._close(CloseCode.SERVICE_RESTART, "server shutting down")
            self._finish()
            return False
        if not registry.try_register(self, limit):
            self._state = "error"
            await self._send_error(SttError("server_overloaded",
                                            f"this server holds its maximum of {limit} connections"))
            await self._close(CloseCode.TRY_AGAIN_LATER, "server at connection limit")
            self._finish()
            return False
        self._registered = True
        self._watchdog = asyncio.ensure_future(self._watch_limits())
        key_id = self.principal.key_id
        if key_id is not None and registry.sessions_of_key(key_id) > self.principal.max_concurrent_sessions:
            self._state = "error"
            await self._send_error(SttError(
                "too_many_sessions",
                f"this API key holds its maximum of {self.principal.max_concurrent_sessions} sessions here"))
            await self._close(CloseCode.TRY_AGAIN_LATER, "API key at its session limit")
            self._finish()
            return False
        self._state = "active"
        return True

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

    async def report(self, error: SttError) -> None:
        """Send an error; a session past its error limit is ended and closed (1008)."""
        await self._send_error(error)
        self.errors += 1
        limit = self.runtime.max_session_errors
        if self.errors > limit and not self._ending:
            await self._send_error(SttError("too_many_errors", f"more than {limit} errors in this session; closing it"))
            # Not awaited: report() may run inside the stream's own processor, which end() waits for.
            self._spawn(self.end(FinalReason.SESSION_END, ended_reason="too_many_errors",
                                 close_code=CloseCode.POLICY_VIOLATION))

    # --- input ---------------------------------------------------------------------

    async def _within_rate(self) -> bool:
        """Whether this message fits the key's rate; a dropped one is reported at most
        once a second (counting as one session error each time)."""
        if rate_limiter.allow(self.principal, self.connection_id):
            return True
        now = time.monotonic()
        if now - self._rate_limited_reported_at >= 1.0:
            self._rate_limited_reported_at = now
            who = "this API key" if self.principal.key_id is not None else "this connection"
            await self.report(SttError("rate_limited", f"more than {self.principal.max_messages_per_second} "
                                                       f"messages per second for {who}; dropped"))
        return False

    async def _watch_limits(self) -> None:
        """Ends a session that went quiet (SESSION_IDLE_TIMEOUT) or ran too long
        (MAX_SESSION_DURATION, with a warning SESSION_END_WARNING before)."""
        warned = False
        while not self._ending:
            await asyncio.sleep(WATCH_INTERVAL_SECONDS)
            now = time.monotonic()
            idle_limit = settings.SESSION_IDLE_TIMEOUT
            if idle_limit and now - self._last_activity > idle_limit:
                await self._send_error(SttError("idle_timeout", f"nothing received for {idle_limit:g} s"))
                await self.end(FinalReason.SESSION_END, ended_reason="idle_timeout")
                return
            longest = settings.MAX_SESSION_DURATION
            if not longest or self.started_at is None:
                continue
            left = longest - (now - self.started_at)
            if left <= 0:
                await self._send_error(SttError("session_time_limit",
                                                f"the session reached its limit of {longest:g} s"))
                await self.end(FinalReason.MAX_DURATION, ended_reason="session_time_limit")
                return
            if not warned and left <= settings.SESSION_END_WARNING:
                warned = True
                await self._send_error(SttError("session_time_limit",
                                                f"the session ends in {left:.0f} s (limit {longest:g} s)",
                                                retry_after=round(left, 1)))

    async def on_text(self, text: str) -> None:
        self._last_activity = time.monotonic()
        if self._ending:
            return
        # end_session is never rate-limited: dropping it would leave a client that sent
        # too fast waiting for the idle timeout instead of its last finals.
        if not _looks_like_end_session(text) and not await self._within_rate():
            return
        try:
            message = protocol.parse_client_message(text)
            handler = getattr(self, f"_on_{message.type}")
            await handler(message)
        except SttError as error:
            await self.report(error)
        except Exception:
            logger.exception("session %s: fault handling a control message", self._session_id,
                             extra={"event": "fault", **self._log_ids()})
            await self.report(SttError("internal_error", "the server failed to handle that message"))

    async def on_audio(self, frame: bytes) -> None:
        self._last_activity = time.monotonic()
        if self._ending or not await self._within_rate():
            return
        try:
            if self.stream is None:
                raise SttError("session_not_started", "send start_session before audio; the frame was dropped")
            samples = decode_frame(frame, settings.MAX_AUDIO_FRAME_SAMPLES)
            await self.stream.push_audio(samples)
        except SttError as error:
            await self.report(error)
        except Exception:
            logger.exception("session %s: fault handling audio", self._session_id,
                             extra={"event": "fault", **self._log_ids()})
            await self.report(SttError("internal_error", "the server failed to process that audio frame"))

    async def on_disconnect(self) -> None:
        """The client is gone: finish its pending speech for the record, in the background."""
        self._transport_open = False
        if self._ending:
            return
        self._spawn(self.end(FinalReason.DISCONNECT, ended_reason="client_disconnected"))

    @staticmethod
    def _spawn(work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        _finishing.add(task)
        task.add_done_callback(_finishing.discard)

    async def on_server_control(self, action: str) -> None:
        """Control from the server side (channel layer), e.g. an operator ending a session."""
        handlers = {"end_session": self._on_end_session, "flush_buffer": self._on_flush_buffer,
                    "interrupt": self._on_interrupt}
        if action in handlers and self.started and not self._ending:
            await handlers[action](None)

    # --- client messages -------------------------------------------------------------

    def _require_started(self) -> None:
        if self.stream is None:
            raise SttError("session_not_started", "send start_session first")

    async def _send_error(self, error: SttError) -> None:
        """Every error a client is sent: counted, logged (one line), and stored."""
        payload = error.to_payload()
        metrics.errors_total.labels(category=payload["category"], code=payload["code"]).inc()
        logger.info("session %s: error %s: %s", self._session_id, error.code, error.message,
                    extra={"event": "error", **self._log_ids(), "code": error.code,
                           "category": payload["category"], "severity": payload["severity"],
                           "utterance_id": error.utterance_id})
        await self._send(envelope("error", self._metadata(), error=payload))
        history.write_later(error_write(payload, self.connection_id, self._session_id))

    async def _on_start_session(self, message: protocol.StartSession) -> None:
        if self.started:
            raise SttError("session_already_started",
                           "this connection already has a session; use configure to change its settings")
        raw = message.session_config
        profile = raw.get("profile")
        if profile is not None and not isinstance(profile, str):
            raise SttError("invalid_config", "profile must be a string", field="profile")
        runtime = await runtime_store.values(profile)
        config = protocol.validate_config(raw, defaults=runtime.session_defaults(),
                                          max_silence=runtime.max_silence_duration)
        try:
            info = await self.engine.ready(timeout=settings.STT_TRANSCRIPTION_TIMEOUT)
        except SttError as error:
            await self.fail(error, CloseCode.INTERNAL_ERROR)
            return
        _check_language(info, config.language, "language")
        self.config = config
        self.raw_config = raw
        self.runtime = runtime
        self._session_id = config.session_id or self.connection_id
        self.stream = StreamingTranscriber(self._stream_params(), self.engine, self)
        self.started_at = time.monotonic()
        self.record = SessionFacts(
            connection_id=self.connection_id, session_id=self._session_id, user_id=config.user_id,
            conversation_id=config.conversation_id, client_address=self.client, profile=runtime.profile,
            config=raw, effective_config=config.model_dump(), model=info.model,
            started_at=datetime.now(timezone.utc),
        )
        history.write_later(session_write(self.record))
        now = utc_timestamp()
        metrics.sessions_total.inc()
        logger.info("session %s started", self._session_id,
                    extra={"event": "session_start", **self._log_ids(), "client": self.client,
                           "profile": runtime.profile, "language": config.language})
        await self._send(envelope(
            "session_started", self._metadata(),
            session_id=self._session_id,
            timestamp=now,
            data={
                "config": config.model_dump(),
                "model": {"name": info.model, "device": info.device, "compute_type": info.compute_type,
                          "multilingual": info.multilingual},
                "audio": {"encoding": "float32le", "sample_rate": protocol.SAMPLE_RATE, "channels": 1,
                          "max_frame_samples": settings.MAX_AUDIO_FRAME_SAMPLES},
                "runtime": runtime.as_dict(),
                "protocol_version": protocol.PROTOCOL_VERSION,
            },
        ))

    async def _on_configure(self, message: protocol.Configure) -> None:
        self._require_started()
        assert self.config is not None and self.stream is not None
        updated = self.config.merged(message.config, max_silence=self.runtime.max_silence_duration)
        _check_language(self.engine.info, updated.language, "language")
        changed = sorted(k for k, v in updated.model_dump().items() if v != getattr(self.config, k))
        self.config = updated
        self.stream.reconfigure(self._stream_params())
        await self._send(envelope("session_configured", self._metadata(),
                                  data={"config": updated.model_dump(), "changed": changed}))

    async def _on_context_update(self, message: protocol.ContextUpdate) -> None:
        self._require_started()
        data = message.data
        language = self.context.language_context
        if data.language_context is not None:
            try:
                language = normalize_language(data.language_context)
            except ValueError as exc:
                raise SttError("unsupported_language", str(exc), field="data.language_context") from None
            _check_language(self.engine.info, language, "data.language_context")
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
        self._spawn(self._acknowledge_flush(delivered))

    async def _acknowledge_flush(self, delivered: asyncio.Future) -> None:
        result: FinalResult | None = await delivered
        await self._send(envelope("buffer_flushed", self._metadata(), data={
            "utterance_id": result.utterance_id if result else None,
            "final_sent": bool(result and _final_is_sent(result)),
        }))

    async def _on_end_session(self, message: protocol.EndSession | None) -> None:
        await self.end(FinalReason.SESSION_END, ended_reason="end_session")

    # --- ending ------------------------------------------------------------------------

    async def end(self, final_reason: str, *, ended_reason: str, close_code: int = CloseCode.NORMAL) -> None:
        """Transcribe pending speech, send session_ended with the summary, close."""
        if self._ending:
            return
        self._ending = True
        self.ended_reason = ended_reason
        if self._state != "error":
            self._state = "disconnecting"
        try:
            if self.stream is not None:
                await self.stream.close(final_reason)
            summary = self.summary()
            if self.started:
                metrics.sessions_ended.labels(reason=ended_reason).inc()
            logger.info("session %s ended (%s)", self._session_id, ended_reason,
                        extra={"event": "session_end", **self._log_ids(), "reason": ended_reason,
                               "summary": summary})
            if self.record is not None:
                self.record.ended_at = datetime.now(timezone.utc)
                self.record.close_reason = ended_reason
                self.record.summary = summary
                self.record.latency = self._latency_summary()
                history.write_later(session_write(self.record))
            await self._send(envelope("session_ended", self._metadata(), data=summary))
            await self._close(close_code, ended_reason)
        finally:
            self._finish()

    async def shutdown(self) -> None:
        """The server process is stopping: finish pending speech into finals (stored,
        then sent), send session_ended, close with 1012 (the client reconnects elsewhere)."""
        await self.end(FinalReason.SERVER_SHUTDOWN, ended_reason="server_shutdown",
                       close_code=CloseCode.SERVICE_RESTART)

    async def fail(self, error: SttError, close_code: int) -> None:
        """A fault the session cannot go on after: report it, then end."""
        self._state = "error"
        await self._send_error(error)
        await self.end(FinalReason.SESSION_END, ended_reason=error.code, close_code=close_code)

    def _finish(self) -> None:
        self._state = "closed"
        if self._watchdog is not None and self._watchdog is not asyncio.current_task():
            self._watchdog.cancel()
        rate_limiter.forget(self.connection_id)
        if self._registered:
            registry.unregister(self)
            self._registered = False
        if not self.finished.done():
            self.finished.set_result(self.summary())

    def summary(self) -> dict[str, Any]:
        stats = self.stream.stats if self.stream else None
        duration = time.monotonic() - self.started_at if self.started_at is not None else 0.0
        return {
            "reason": self.ended_reason,
            "duration_s": round(duration, 3),
            "audio_received_s": round(stats.samples_received / protocol.SAMPLE_RATE, 3) if stats else 0.0,
            "audio_transcribed_s": round(stats.samples_transcribed / protocol.SAMPLE_RATE, 3) if stats else 0.0,
            "utterances": stats.finals + stats.failed_finals if stats else 0,
            "finals": stats.finals if stats else 0,
            "failed_finals": stats.failed_finals if stats else 0,
            "partials": stats.partials if stats else 0,
            "speech_onsets": stats.speech_onsets if stats else 0,
            "audio_frames": stats.frames if stats else 0,
            "errors": self.errors,
        }

    def stats_entry(self) -> dict[str, Any]:
        """This session's entry in /stats processing_stats (names from the design document)."""
        stats = self.stream.stats if self.stream else None
        if stats is None:
            return {"state": self.state, "session_started": False}
        partial = list(stats.partial_latencies)
        final = list(stats.final_latencies)
        received_s = stats.samples_received / protocol.SAMPLE_RATE
        return {
            "state": self.state,
            "total_chunks": stats.frames,
            "partial_transcriptions": stats.partials,
            "final_transcriptions": stats.finals,
            "total_processing_time": round(stats.processing_seconds, 3),
            "average_partial_latency": round(sum(partial) / len(partial), 3) if partial else None,
            "average_final_latency": round(sum(final) / len(final), 3) if final else None,
            "current_utterance_id": self.current_utterance_id,
            "partial_processing_enabled": bool(self.config and self.config.enable_partial_transcription),
            "real_time_factor": round(stats.processing_seconds / received_s, 3) if received_s else None,
            "partial_response_time": round(partial[-1] * 1000) if partial else None,
            "final_response_time": round(final[-1] * 1000) if final else None,
            "audio_received_s": round(received_s, 3),
            "errors": self.errors,
        }

    def _stream_params(self) -> StreamParams:
        assert self.config is not None
        language = self.config.language or self.context.language_context
        return StreamParams.from_config(self.config, language=language, runtime=self.runtime)

    def _latency_summary(self) -> dict[str, Any]:
        stats = self.stream.stats if self.stream else None
        summary: dict[str, Any] = {}
        for name, values in (("partial", stats.partial_latencies if stats else []),
                             ("final", stats.final_latencies if stats else [])):
            ordered = sorted(values)
            if ordered:
                summary[name] = {
                    "count": len(ordered),
                    "avg_ms": round(sum(ordered) / len(ordered) * 1000, 1),
                    "p50_ms": round(ordered[len(ordered) // 2] * 1000, 1),
                    "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1000, 1),
                }
        return summary

    # --- StreamListener: results from the transcriber ---------------------------------

    async def on_speech_start(self, event: SpeechStart) -> None:
        assert self.config is not None
        responding = self.context.conversation_state == "responding"
        await self._send(envelope("voice_activity_detected", self._metadata(), data={
            "confidence": event.confidence,
            "duration_ms": samples_to_ms(event.speech_samples),
            "energy_level": event.energy_level,
            "is_speech": True,
            "utterance_id": event.utterance_id,
            "audio_offset_ms": samples_to_ms(event.offset_samples),
            "barge_in": bool(self.config.barge_in_enabled and responding),
            "conversation_state": self.context.conversation_state,
        }))

    async def on_partial(self, result: PartialResult) -> None:
        transcript = result.transcript
        registry.record_partial(result.processing_seconds)
        vad_on = self.config is not None and self.config.enable_vad
        await self._send(envelope("transcription_partial", self._metadata(), data={
            "text": result.text,
            "stable_text": result.stable_text,
            "unstable_text": result.unstable_text,
            "is_partial": True,
            "utterance_id": result.utterance_id,
            "sequence": result.sequence,
            "processing_time_ms": round(result.processing_seconds * 1000),
            "audio_duration_ms": samples_to_ms(result.audio_samples),
            "confidence": transcript.confidence,
            "start_ms": samples_to_ms(result.start_sample),
            "metadata": {
                "duration": round(result.audio_samples / protocol.SAMPLE_RATE, 3),
                "reason": "speech_detected" if vad_on else "audio_received",
            },
        }))

    async def on_final(self, result: FinalResult) -> None:
        assert self.config is not None
        if result.transcript is None:
            assert result.error is not None
            if self.record is not None:  # kept with its audio (refinement, admin), before the error is sent
                await history.write(failed_final_write(self.record, result, settings.STORE_AUDIO))
            await self.report(result.error)
            return
        inference_ms = (result.decode or {}).get("inference_ms")
        audio_ms = samples_to_ms(result.end_sample - result.start_sample)
        registry.record_final(result.processing_seconds,
                              real_time_factor=inference_ms / audio_ms if inference_ms and audio_ms else None)
        if not _final_is_sent(result):
            return
        transcript = result.transcript
        words = [
            {"word": w.word, "start_ms": round(w.start * 1000), "end_ms": round(w.end * 1000),
             "confidence": round(w.probability, 4)}
            for w in transcript.words
        ]
        # Persist before send: what a client sees is in the history (or its backlog).
        assert self.record is not None
        await history.write(final_write(FinalFacts(
            session=self.record, utterance_id=result.utterance_id, text=transcript.text, words=words,
            confidence=transcript.confidence, language=transcript.language,
            start_ms=samples_to_ms(result.start_sample), end_ms=samples_to_ms(result.end_sample),
            reason=result.reason, partial_count=result.partial_count,
            first_partial_latency_ms=(round(result.first_partial_seconds * 1000)
                                      if result.first_partial_seconds is not None else None),
            final_latency_ms=round(result.processing_seconds * 1000),
            decode=result.decode,
            audio=result.audio if settings.STORE_AUDIO else None,
            created_at=datetime.now(timezone.utc),
        )))
        timestamps = words if self.config.enable_timestamps else None
        audio_samples = result.end_sample - result.start_sample
        metadata = {
            "duration": round(audio_samples / protocol.SAMPLE_RATE, 3),
            "chunks_count": result.frames,
            "reason": result.reason,
            "partial_count": result.partial_count,
        }
        common = {
            "text": transcript.text,
            "utterance_id": result.utterance_id,
            "processing_time_ms": round(result.processing_seconds * 1000),
            "audio_duration_ms": samples_to_ms(audio_samples),
            "timestamps": timestamps,
        }
        await self._send(envelope("transcription_final", self._metadata(), data={
            **common,
            "is_partial": False,
            "confidence": transcript.confidence,
            "language": transcript.language,
            "start_ms": samples_to_ms(result.start_sample),
            "end_ms": samples_to_ms(result.end_sample),
            "metadata": metadata,
        }))
        if self.config.send_legacy_transcription and transcript.text:
            await self._send(envelope("transcription", self._metadata(), data={**common, "metadata": metadata}))


def _looks_like_end_session(text: str) -> bool:
    """A cheap test (no JSON parsing of a flood) for a text frame that may be end_session;
    parse_client_message decides what it really is."""
    return len(text) < 256 and "end_session" in text


def _final_is_sent(result: FinalResult) -> bool:
    """A final goes out (and into the history) when it has text or the client already
    heard of the utterance; a silent VAD-off segment nobody saw needs no empty final."""
    return result.transcript is not None and (bool(result.transcript.text) or result.announced)


def _check_language(info: EngineInfo | None, language: str | None, field: str) -> None:
    if info is not None and not info.supports_language(language):
        raise SttError(
            "unsupported_language",
            f"the loaded model {info.model!r} transcribes English only; {language!r} is not available",
            field=field,
        )

