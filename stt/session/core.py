"""One WebSocket connection's protocol session, in plain Python.

SttSession turns parsed client messages and audio frames into actions on a
StreamingTranscriber, and the transcriber's results into server messages. It talks
to the client through two callables, `send` and `close`, and to the rest of the
process through the SessionServices it is given, so it runs the same under a
Channels consumer, in a unit test, or anywhere else.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import numpy as np
from django.conf import settings

from stt import protocol
from stt.audio import decode_frame
from stt.errors import SttError
from stt.persistence import session_write
from stt.protocol import envelope
from stt.session.delivery import ResultDelivery
from stt.session.handlers import ControlHandlers
from stt.session.limits import SessionLimits
from stt.session.state import CloseCode, spawn
from stt.streaming import FinalReason

logger = logging.getLogger("stt.session")


class SttSession(ControlHandlers, ResultDelivery, SessionLimits):
    _registered = False

    async def open(self) -> bool:
        """Admit the connection; False (after telling the client why) when it may not stay."""
        registry = self.services.registry
        registry.arrive(self)  # before the await: admission is in arrival order
        try:
            self.runtime = await self.services.runtime.values()
            if self._ending:  # the client left while that was awaited: nothing to admit
                return False
            self.engine.set_failure_thresholds(self.runtime.transcription_failure_threshold,
                                               self.runtime.gpu_failure_threshold)
            refusal = self._admit()
        finally:
            registry.leave_line(self)
        if refusal is not None:
            error, code, reason = refusal
            self._state = "error"
            await self._send_error(error)
            await self._close(code, reason)
            self._finish()
            return False
        self._state = "active"
        return True

    def _admit(self) -> tuple[SttError, int, str] | None:
        """Register with the process; why not (error, close code, reason) if it may not."""
        registry, limit = self.services.registry, self.runtime.max_connections
        if registry.draining:
            return (SttError("server_shutting_down", "this server process is shutting down"),
                    CloseCode.SERVICE_RESTART, "server shutting down")
        capacity = self.services.capacity
        full = capacity.refusal() if capacity is not None else None
        if full is not None:
            registry.count_rejection()
            return full, CloseCode.TRY_AGAIN_LATER, "server at capacity"
        if not registry.try_register(self, limit):
            return (SttError("server_overloaded", f"this server holds its maximum of {limit} connections"),
                    CloseCode.TRY_AGAIN_LATER, "server at connection limit")
        self._registered = True
        if capacity is not None:
            capacity.joined(self.connection_id)
        self.services.audio_budget.join(self.budget_owner)
        self._start_watchdog()
        key_id, most = self.principal.key_id, self.principal.max_concurrent_sessions
        if key_id is not None and registry.sessions_of_key(key_id, counting_ahead_of=self) > most:
            return (SttError("too_many_sessions", f"this API key holds its maximum of {most} sessions here"),
                    CloseCode.TRY_AGAIN_LATER, "API key at its session limit")
        return None

    # --- input ---------------------------------------------------------------------

    async def on_text(self, text: str) -> None:
        self._last_activity = self._clock()
        if self._ending:
            return
        try:
            message = protocol.parse_client_message(text)
        except SttError as error:
            await self.reject(error)
            return
        await self.on_message(message)

    async def on_message(self, message: protocol.ClientMessage) -> bool:
        """Act on one parsed client message: from on_text, or from an adapter that speaks
        another protocol to its client (stt/realtime). True when it was taken without an
        error (a failure is reported to the client, as for on_text)."""
        self._last_activity = self._clock()
        if self._ending:
            return False
        # end_session is never rate-limited: dropping it would leave a client that sent
        # too fast waiting for the idle timeout instead of its last finals.
        if not isinstance(message, protocol.EndSession) and not await self._within_rate():
            return False
        try:
            await getattr(self, f"_on_{message.type}")(message)
            return True
        except SttError as error:
            await self.report(error)
        except Exception:
            logger.exception("session %s: fault handling a control message", self._session_id,
                             extra={"event": "fault", **self._log_ids()})
            await self.report(SttError("internal_error", "the server failed to handle that message"))
        return False

    async def reject(self, error: SttError) -> None:
        """A client message that could not be parsed: reported (and counted) like any
        client error, unless the message was over the rate limit (then only dropped)."""
        self._last_activity = self._clock()
        if not self._ending and await self._within_rate():
            await self.report(error)

    async def on_audio(self, frame: bytes) -> None:
        """One binary frame of float32 little-endian 16 kHz samples."""
        self._last_activity = self._clock()
        if self._ending or not await self._within_rate():
            return
        await self._take_audio(frame, None)

    async def on_samples(self, samples: np.ndarray) -> None:
        """Audio an adapter has already decoded to 16 kHz float32 in [-1, 1] (one client
        message: rate, audio budget and errors as for a binary frame)."""
        self._last_activity = self._clock()
        if self._ending or not await self._within_rate():
            return
        await self._take_audio(None, samples)

    async def _take_audio(self, frame: bytes | None, samples: np.ndarray | None) -> None:
        try:
            if self.stream is None:
                raise SttError("session_not_started", "send start_session before audio; the frame was dropped")
            if samples is None:
                samples = decode_frame(frame or b"", settings.MAX_AUDIO_FRAME_SAMPLES)
            if not await self._within_audio_budget(len(samples) / protocol.SAMPLE_RATE):
                return  # the session is ending: the audio is dropped
            if self._ending or samples.size == 0:
                return
            await self.stream.push_audio(samples)
        except SttError as error:
            await self.report(error)
        except Exception:
            logger.exception("session %s: fault handling audio", self._session_id,
                             extra={"event": "fault", **self._log_ids()})
            await self.report(SttError("internal_error", "the server failed to process that audio frame"))

    async def on_disconnect(self) -> None:
        """The client is gone: finish its pending speech for the record, in the background."""
        self.client_gone()

    def client_gone(self) -> None:
        """on_disconnect without an await, for a consumer being cancelled or one that learnt
        of the loss before its disconnect message: the session starts ending at once (a
        wait for the audio budget stops), its pending speech is finished in the background,
        and it leaves the registry when that is done. Idempotent."""
        self._transport_open = False
        if self._ending or self._state == "closed":
            return
        spawn(self.end(FinalReason.DISCONNECT, ended_reason="client_disconnected"))

    # --- ending ------------------------------------------------------------------------

    async def end(self, final_reason: str, *, ended_reason: str, close_code: int = CloseCode.NORMAL) -> None:
        """Transcribe pending speech, send session_ended with the summary, close."""
        if self._ending:
            return
        self._ending = True
        self._ending_event.set()
        self.ended_reason = ended_reason
        if self._state != "error":
            self._state = "disconnecting"
        try:
            if self.stream is not None:
                await self.stream.close(final_reason)
            summary = self.summary()
            if self.started:
                self.services.metrics.session_ended(ended_reason)
            logger.info("session %s ended (%s)", self._session_id, ended_reason,
                        extra={"event": "session_end", **self._log_ids(), "reason": ended_reason,
                               "summary": summary})
            if self.record is not None:
                self.record.ended_at = datetime.now(timezone.utc)
                self.record.close_reason = ended_reason
                self.record.summary = summary
                self.record.latency = self.latency_summary()
                self.services.history.write_later(session_write(self.record))
            await self._send(envelope("session_ended", self._metadata(), data=summary))
            await self._close(close_code, ended_reason)
        finally:
            self._finish()

    async def shutdown(self) -> None:
        """The server process is stopping: finish pending speech into finals (stored,
        then sent), send session_ended, close with 1012 (the client reconnects elsewhere)."""
        await self.end(FinalReason.SERVER_SHUTDOWN, ended_reason="server_shutdown",
                       close_code=CloseCode.SERVICE_RESTART)

    def _finish(self) -> None:
        self._state = "closed"
        self._stop_watchdog()
        self.services.rate_limiter.forget(self.connection_id)
        if self._registered:
            self.services.audio_budget.leave(self.budget_owner)
            self.services.registry.unregister(self)
            if self.services.capacity is not None:
                self.services.capacity.left(self.connection_id)
            self._registered = False
        if not self.finished.done():
            self.finished.set_result(self.summary())
