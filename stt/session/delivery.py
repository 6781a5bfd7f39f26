"""The transcriber's results to the client: speech onsets, partials, finals (each final
stored in the history before it is sent)."""

from __future__ import annotations

from datetime import datetime, timezone

from django.conf import settings

from stt import protocol
from stt.audio import samples_to_ms
from stt.persistence import FinalFacts, failed_final_write, final_write
from stt.session.handlers import final_is_sent
from stt.session.state import SessionState
from stt.streaming import FinalResult, PartialResult, SpeechEnd, SpeechStart


class ResultDelivery(SessionState):
    """The StreamListener side of a session."""

    async def on_speech_start(self, event: SpeechStart) -> None:
        assert self.config is not None
        responding = self.context.conversation_state == "responding"
        self._utterance_announced(event.utterance_id, event.offset_samples)
        await self._send(protocol.speech_start_message(
            self._metadata(), event, barge_in=bool(self.config.barge_in_enabled and responding),
            conversation_state=self.context.conversation_state))

    async def on_speech_end(self, event: SpeechEnd) -> None:
        if self._speech_end_hook is not None:
            await self._speech_end_hook(event)

    async def on_partial(self, result: PartialResult) -> None:
        self.services.registry.record_partial(result.processing_seconds)
        vad_on = self.config is not None and self.config.enable_vad
        self._utterance_announced(result.utterance_id, result.start_sample)
        await self._send(protocol.partial_message(self._metadata(), result, vad_on=vad_on))

    async def on_final(self, result: FinalResult) -> None:
        assert self.config is not None
        self._utterance_closed(result.utterance_id)
        if result.transcript is None:
            assert result.error is not None
            if self.record is not None:  # kept with its audio (refinement, admin), before the error is sent
                await self.services.history.write(failed_final_write(self.record, result, settings.STORE_AUDIO))
            await self.report(result.error)
            return
        inference_ms = (result.decode or {}).get("inference_ms")
        audio_ms = samples_to_ms(result.end_sample - result.start_sample)
        self.services.registry.record_final(
            result.processing_seconds,
            real_time_factor=inference_ms / audio_ms if inference_ms and audio_ms else None)
        if not final_is_sent(result):
            return
        words = protocol.word_timings(result.transcript.words)
        # Persist before send: what a client sees is in the history (or its backlog).
        await self.services.history.write(final_write(self._final_facts(result, words)))
        for message in protocol.final_messages(self._metadata(), result, words,
                                               timestamps=self.config.enable_timestamps,
                                               legacy=self.config.send_legacy_transcription):
            await self._send(message)

    def _final_facts(self, result: FinalResult, words: list[dict]) -> FinalFacts:
        transcript = result.transcript
        assert self.record is not None and transcript is not None
        return FinalFacts(
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
        )
