"""An OpenAI realtime transcription session on top of SttSession.

RealtimeSession is an adapter: it speaks OpenAI's realtime events to its client and the
/ws/transcribe protocol to the SttSession it holds (the same session, streaming and
engine as /ws/transcribe: limits, history, errors and all). Client events become session
messages; the session's messages become events (stt/realtime/translator.py).

| client event | session |
| --- | --- |
| (connect) | `start_session` with the default config; then `transcription_session.created` or `session.created` |
| `transcription_session.update`, `session.update` | `configure` (language, prompt, turn detection; + the VAD tuning); then `.updated` |
| `input_audio_buffer.append` | audio, resampled from 24 kHz pcm16 |
| `input_audio_buffer.commit` | `flush_buffer`: the open utterance is finalized now |
| `input_audio_buffer.clear` | `interrupt`: the open utterance and the buffered audio are dropped |
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any, Awaitable, Callable

from django.conf import settings

from stt.auth import Principal
from stt.errors import SttError
from stt.messages import Configure, FlushBuffer, Interrupt, InterruptData, StartSession
from stt.realtime.audio import Pcm16Input
from stt.realtime.config import MANUAL_COMMIT_SECONDS, RealtimeConfig, ServerVad, UpdateParams, updated_config
from stt.realtime.events import (
    AppendAudio,
    ClearAudio,
    CommitAudio,
    EventError,
    SessionUpdate,
    TranscriptionSessionUpdate,
    parse_client_event,
)
from stt.openai_api.catalog import ModelCatalog
from stt.realtime.translator import EventTranslator
from stt.session import CloseFn, SendFn, SessionServices, SttSession
from stt.streaming import FinalReason, SpeechEnd

logger = logging.getLogger(__name__)

BETA = "beta"  # transcription_session.* names and the flat session object
GA = "ga"  # session.* names and the session of type "transcription"


class RealtimeSession:
    def __init__(self, send: SendFn, close: CloseFn, services: SessionServices, *, dialect: str = GA,
                 client: str | None = None, principal: Principal | None = None,
                 models: ModelCatalog | None = None) -> None:
        """`models`: the names a client may ask for (None: any name, as a test's session)."""
        self._send_raw = send
        self.models = models
        self._close_raw = close
        self._open = True
        self.dialect = dialect
        self.translator = EventTranslator(self._send)
        self.session = SttSession(self.translator.on_message, self._close, services, client=client,
                                  principal=principal, on_speech_end=self._on_speech_end, source="realtime")
        self.session_id = "sess_" + self.session.connection_id.replace("-", "")
        self.audio = Pcm16Input()
        self.config: RealtimeConfig | None = None
        self._expires_at = 0

    # --- transport -------------------------------------------------------------------

    async def _send(self, event: dict[str, Any]) -> None:
        if self._open:
            await self._send_raw(event)

    async def _close(self, code: int, reason: str) -> None:
        self._open = False
        await self._close_raw(code, reason)

    # --- lifecycle -------------------------------------------------------------------

    async def open(self) -> bool:
        """Admit the connection and start its session with the defaults; False (after an
        error event and the close) when it may not stay."""
        if not await self.session.open():
            return False
        await self.session.on_message(StartSession(session_config={
            "session_id": self.session_id, "enable_timestamps": False, "enable_partial_transcription": True,
            "send_legacy_transcription": False, "buffer_duration": MANUAL_COMMIT_SECONDS,
            "endpointing": "off",  # server_vad, the default turn detection: a fixed end silence
        }))
        session = self.session
        if not session.started or session.config is None:
            return False  # the model is unavailable: the session said so and closed
        info = session.engine.info
        self.config = RealtimeConfig(
            model=info.model if info is not None else settings.STT_MODEL, language=session.config.language,
            turn_detection=True, prompt=session.config.prompt,
            vad=ServerVad(threshold=session.runtime.vad_threshold, prefix_padding_ms=session.runtime.vad_speech_pad_ms,
                          silence_duration_ms=round(session.config.final_chunk_duration * 1000)))
        self.translator.prefix_padding_ms = self.config.vad.prefix_padding_ms
        if settings.MAX_SESSION_DURATION:
            self._expires_at = int(time.time() + settings.MAX_SESSION_DURATION)
        created = "transcription_session.created" if self.dialect == BETA else "session.created"
        await self.translator.emit({"type": created, "session": self._session_object(self.dialect)})
        return True

    async def on_disconnect(self) -> None:
        self.client_gone()

    def client_gone(self) -> None:
        """The client is gone (SttSession.client_gone: nothing awaited, idempotent)."""
        self._open = False
        self.session.client_gone()

    def _session_object(self, dialect: str) -> dict[str, Any]:
        assert self.config is not None
        if dialect == BETA:
            return self.config.beta_session(self.session_id, self._expires_at)
        return self.config.ga_session(self.session_id, self._expires_at)

    # --- client events ---------------------------------------------------------------

    async def on_text(self, text: str) -> None:
        try:
            event = parse_client_event(text)
        except EventError as bad:
            with self.translator.handling(bad.event_id):
                await self.session.reject(bad.error)
            return
        handlers: dict[type, Callable[[Any], Awaitable[None]]] = {
            TranscriptionSessionUpdate: self._on_update, SessionUpdate: self._on_update,
            AppendAudio: self._on_append, CommitAudio: self._on_commit, ClearAudio: self._on_clear,
        }
        params = (UpdateParams.beta() if isinstance(event, TranscriptionSessionUpdate) else UpdateParams.ga())
        with self.translator.handling(event.event_id, params.by_fasttalk_field()):
            await handlers[type(event)](event)

    async def on_binary(self, data: bytes) -> None:
        await self.session.reject(SttError(
            "invalid_message", "binary frames are not part of the realtime protocol: send audio as "
            "input_audio_buffer.append events (base64 pcm16, 24 kHz)"))

    async def _on_update(self, event: TranscriptionSessionUpdate | SessionUpdate) -> None:
        session = self.session
        if self.config is None or session.config is None:
            return
        try:
            config = updated_config(self.config, event.session,
                                    max_silence_ms=round(session.runtime.max_silence_duration * 1000),
                                    models=self.models)
        except SttError as error:
            await session.reject(error)
            return
        if not await session.on_message(Configure(config=config.fasttalk_config())):
            return  # the session reported why; nothing changed
        session.tune_voice_activity(threshold=config.vad.threshold, speech_pad_ms=config.vad.prefix_padding_ms)
        # As the session normalized them (a language's code, the prompt's whitespace).
        self.config = replace(config, language=session.config.language, prompt=session.config.prompt)
        self.translator.prefix_padding_ms = config.vad.prefix_padding_ms
        if isinstance(event, TranscriptionSessionUpdate):
            await self.translator.emit({"type": "transcription_session.updated", "session": self._session_object(BETA)})
        else:
            await self.translator.emit({"type": "session.updated", "session": self._session_object(GA)})

    async def _on_append(self, event: AppendAudio) -> None:
        try:
            samples = self.audio.decode(event.audio)
        except SttError as error:
            await self.session.reject(error)
            return
        await self.session.on_samples(samples)

    async def _on_commit(self, event: CommitAudio) -> None:
        session = self.session
        utterance_id = session.current_utterance_id
        if utterance_id is None:
            await session.reject(SttError(
                "input_audio_buffer_commit_empty",
                "nothing to commit: no speech since the last commit" if self._vad_on else
                "nothing to commit: no audio since the last commit"))
            return
        end_ms = session.audio_received_ms
        if await session.on_message(FlushBuffer()):
            # The final is computed meanwhile; nothing of it is sent before this returns.
            await self.translator.commit(utterance_id, end_ms)

    async def _on_clear(self, event: ClearAudio) -> None:
        self.audio.reset()
        if await self.session.on_message(Interrupt(data=InterruptData(reason="input_audio_buffer.clear"))):
            self.translator.floor_ms = max(self.translator.floor_ms, self.session.audio_received_ms)

    @property
    def _vad_on(self) -> bool:
        return self.config is None or self.config.turn_detection

    async def _on_speech_end(self, event: SpeechEnd) -> None:
        vad = event.reason in (FinalReason.SILENCE, FinalReason.MAX_DURATION)
        await self.translator.on_speech_end(event, vad=vad)
