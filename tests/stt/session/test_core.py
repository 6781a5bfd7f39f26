"""The protocol session in plain Python: no Channels, the real model and VAD."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from stt.auth import Principal
from stt.errors import SttError
from stt.evaluation import word_error_rate
from stt.messages import Configure, StartSession
from stt.runtime_config import RuntimeValues
from stt.session import SttSession
from tests.conftest import JFK_TEXT, frames, silence
from tests.stt.session.support import SettingsRuntime, Transport, feed, open_session, send, session_services

# Sessions write their history (PostgreSQL under bin/test) from the history thread.
pytestmark = pytest.mark.django_db(transaction=True)


class TestStartingASession:
    async def test_session_started_echoes_the_config_and_the_model(self, engine):
        session, transport = await open_session(engine, session_id="call-42", user_id="u1",
                                                conversation_id="c1", language="en-US")
        started = transport.of("session_started")[0]
        assert started["session_id"] == "call-42" and started["timestamp"].endswith("Z")
        assert started["metadata"] == {"session_id": "call-42", "conversation_id": "c1", "user_id": "u1",
                                       "timestamp": started["metadata"]["timestamp"]}
        assert started["data"]["config"]["language"] == "en"
        assert started["data"]["model"]["name"] == "tiny.en"
        assert started["data"]["audio"] == {"encoding": "float32le", "sample_rate": 16000, "channels": 1,
                                            "max_frame_samples": 16384}
        assert session.state == "active"
        await session.end("session_end", ended_reason="test")

    async def test_without_a_session_id_the_server_assigns_one(self, engine):
        session, transport = await open_session(engine)
        assert transport.of("session_started")[0]["session_id"] == session.connection_id
        await session.end("session_end", ended_reason="test")

    async def test_audio_and_messages_before_start_session_are_refused(self, engine):
        session, transport = await open_session(engine, start=False)
        await session.on_audio(np.zeros(512, "<f4").tobytes())
        await send(session, {"type": "flush_buffer"})
        await send(session, {"type": "configure", "config": {"buffer_duration": 1.0}})
        assert [e["code"] for e in transport.errors()] == ["session_not_started"] * 3
        assert all(e["recoverable"] for e in transport.errors())
        assert transport.closed is None, "the connection stays usable"
        await send(session, {"type": "start_session"})
        assert transport.of("session_started")
        await session.end("session_end", ended_reason="test")

    async def test_a_bad_config_starts_nothing_and_a_good_one_then_works(self, engine):
        session, transport = await open_session(engine, buffer_duration="long")
        error = transport.errors()[0]
        assert (error["code"], error["field"], error["category"]) == ("invalid_config", "buffer_duration", "connection")
        assert not session.started
        await send(session, {"type": "start_session", "session_config": {"buffer_duration": 1.0}})
        assert transport.of("session_started")[0]["data"]["config"]["buffer_duration"] == 1.0
        await session.end("session_end", ended_reason="test")

    async def test_a_language_the_model_cannot_transcribe_is_refused(self, engine):
        session, transport = await open_session(engine, language="de")
        error = transport.errors()[0]
        assert (error["code"], error["field"]) == ("unsupported_language", "language")
        assert "English only" in error["message"]

    async def test_start_session_twice_is_an_error(self, engine):
        session, transport = await open_session(engine)
        await send(session, {"type": "start_session"})
        assert transport.errors()[-1]["code"] == "session_already_started"
        await session.end("session_end", ended_reason="test")

    async def test_a_model_that_cannot_load_ends_the_session_with_1011(self, broken_engine):
        session, transport = await open_session(broken_engine)
        error = transport.errors()[0]
        assert (error["code"], error["recoverable"], error["category"]) == ("model_unavailable", False, "processing")
        assert transport.types()[-1] == "session_ended"
        assert transport.closed[0] == 1011

    async def test_connections_beyond_the_limit_are_refused_with_1013(self, engine, settings):
        services = session_services(engine)
        first, _ = await open_session(engine, services=services)
        settings.WEBSOCKET_MAX_CONNECTIONS = services.registry.active_connections
        transport = Transport()
        session = SttSession(transport.send, transport.close, services)
        assert await session.open() is False
        assert transport.errors()[0]["code"] == "server_overloaded"
        assert transport.errors()[0]["retry_after"] > 0
        assert transport.closed[0] == 1013
        assert session.connection_id not in {s.connection_id for s in services.registry.sessions()}
        await first.end("session_end", ended_reason="test")


    async def test_over_a_keys_limit_the_newer_connection_is_refused_whoever_reads_first(self, engine):
        """Admission awaits the runtime values; the connection that arrived first keeps its
        place even when the later one's read returns first."""
        first_may_read = asyncio.Event()
        services = session_services(engine, runtime=SlowFirstRuntime(first_may_read))
        principal = Principal(7, "backend", max_concurrent_sessions=1, max_messages_per_second=100)
        (first, first_seen), (second, second_seen) = [
            (SttSession(t.send, t.close, services, principal=principal), t) for t in (Transport(), Transport())]
        first_open = asyncio.ensure_future(first.open())
        await asyncio.sleep(0)  # the first is in line, reading
        assert await second.open() is False
        assert second_seen.errors()[0]["code"] == "too_many_sessions" and second_seen.closed[0] == 1013
        first_may_read.set()
        assert await first_open is True and not first_seen.errors()
        await first.end("session_end", ended_reason="test")

    async def test_a_client_gone_while_its_admission_is_decided_is_never_registered(self, engine):
        """Issue 23 #3: the loss is now seen at once (stt.daphne_protocol), so it can come
        while open() awaits; the session it ended must not be registered after all."""
        may_read = asyncio.Event()
        services = session_services(engine, runtime=SlowFirstRuntime(may_read))
        session = SttSession(Transport().send, Transport().close, services)
        opening = asyncio.ensure_future(session.open())
        await asyncio.sleep(0)
        await session.on_disconnect()
        await asyncio.wait_for(session.finished, 5)
        may_read.set()
        assert await opening is False
        assert not services.registry.sessions() and session.state == "closed"


class SlowFirstRuntime(SettingsRuntime):
    """The settings' runtime values, whose first read waits for `release`."""

    def __init__(self, release: asyncio.Event) -> None:
        self.release, self.reads = release, 0

    async def values(self, profile: str | None = None) -> RuntimeValues:
        self.reads += 1
        if self.reads == 1:
            await self.release.wait()
        return await super().values(profile)


class TestTranscripts:
    async def test_real_speech_yields_partials_finals_and_legacy_messages(self, engine, jfk_audio):
        session, transport = await open_session(engine, enable_timestamps=True)
        for frame in frames(np.concatenate([jfk_audio, silence(1)])):
            await session.on_audio(frame)
            # Twice real time: partials need the user to speak at about a human pace (12x, as
            # this once was, left a pause's final decodes no room for them).
            await asyncio.sleep(len(frame) / 4 / 16000 / 2)
        await send(session, {"type": "end_session"})
        finals = transport.of("transcription_final")
        assert word_error_rate(JFK_TEXT, " ".join(f["data"]["text"] for f in finals)) == 0.0
        assert transport.of("transcription_partial"), "partials while the user speaks"
        assert len(transport.of("voice_activity_detected")) == len(finals), "every announced utterance has a final"
        # A breath after the last word may be announced and then decode to nothing: its final is
        # empty (confidence 0, no words) and has no legacy message.
        spoken = [f for f in finals if f["data"]["text"]]
        assert all(f["data"]["confidence"] == 0 and not f["data"]["timestamps"] for f in finals if f not in spoken)
        assert len(spoken) >= 3
        assert len(transport.of("transcription")) == len(spoken), "a legacy message beside each final with text"
        for final in spoken:
            data = final["data"]
            assert data["is_partial"] is False and data["utterance_id"]
            assert data["metadata"]["reason"] == "silence_detected"
            assert data["metadata"]["chunks_count"] > 0
            assert data["audio_duration_ms"] == data["end_ms"] - data["start_ms"]
            assert data["processing_time_ms"] >= 0 and 0 < data["confidence"] <= 1
            words = data["timestamps"]
            assert words and all(0 <= w["start_ms"] <= w["end_ms"] <= data["audio_duration_ms"] + 50 for w in words)
        for partial in transport.of("transcription_partial"):
            data = partial["data"]
            assert data["is_partial"] is True
            assert data["text"] == " ".join(t for t in (data["stable_text"], data["unstable_text"]) if t)
            assert set(partial["data"]["metadata"]) == {"duration", "reason"}
        ended = transport.of("session_ended")[0]["data"]
        assert ended["finals"] == len(finals) and ended["reason"] == "end_session"
        assert ended["audio_received_s"] == pytest.approx(12.0, abs=0.1)
        assert 5 < ended["audio_transcribed_s"] <= 12
        assert transport.types()[-1] == "session_ended" and transport.closed[0] == 1000

    async def test_word_timestamps_can_be_turned_off_and_legacy_messages_too(self, engine, jfk_audio):
        session, transport = await open_session(engine, enable_timestamps=False,
                                                send_legacy_transcription=False,
                                                enable_partial_transcription=False)
        await feed(session, jfk_audio[:3 * 16000])
        await send(session, {"type": "end_session"})
        assert transport.of("transcription_final")[0]["data"]["timestamps"] is None
        assert transport.of("transcription") == []
        assert transport.of("transcription_partial") == []

    async def test_flush_sends_the_final_then_buffer_flushed(self, engine, jfk_audio):
        session, transport = await open_session(engine, final_chunk_duration=2.0)
        await feed(session, jfk_audio[:2 * 16000])
        await send(session, {"type": "flush_buffer"})
        while not transport.of("buffer_flushed"):
            await asyncio.sleep(0.02)
        final = transport.of("transcription_final")[0]
        flushed = transport.of("buffer_flushed")[0]
        assert final["data"]["metadata"]["reason"] == "flush_requested"
        assert flushed["data"] == {"utterance_id": final["data"]["utterance_id"], "final_sent": True}
        assert transport.sent.index(final) < transport.sent.index(flushed)
        await send(session, {"type": "flush_buffer"})
        while len(transport.of("buffer_flushed")) < 2:
            await asyncio.sleep(0.02)
        assert transport.of("buffer_flushed")[1]["data"] == {"utterance_id": None, "final_sent": False}
        await session.end("session_end", ended_reason="test")

    async def test_a_client_that_leaves_mid_utterance_still_gets_it_transcribed(self, engine, jfk_audio):
        session, transport = await open_session(engine, final_chunk_duration=2.0)
        await feed(session, jfk_audio[:2 * 16000])
        sent_before = len(transport.sent)
        await session.on_disconnect()
        summary = await asyncio.wait_for(session.finished, 30)
        assert summary["finals"] == 1 and summary["reason"] == "client_disconnected"
        assert summary["audio_transcribed_s"] > 1.5
        assert len(transport.sent) == sent_before, "nothing is sent to a departed client"

    async def test_a_final_that_keeps_failing_is_reported_with_its_utterance(self, engine, jfk_audio, settings):
        session, transport = await open_session(engine, final_chunk_duration=2.0,
                                                enable_partial_transcription=False)
        # Audio of its own (other gain): a cached result of an earlier test would not fail.
        await feed(session, jfk_audio[:2 * 16000] * np.float32(0.97))
        settings.STT_TRANSCRIPTION_TIMEOUT = 0.0001
        settings.STT_RETRY_BASE_DELAY = 0.01
        await send(session, {"type": "end_session"})
        error = transport.errors()[-1]
        assert error["code"] == "transcription_timeout" and error["utterance_id"]
        ended = transport.of("session_ended")[0]["data"]
        assert (ended["finals"], ended["failed_finals"]) == (0, 1)
        engine.transcription_breaker.record_success()  # leave the shared engine closed for other tests


class TestControl:
    async def test_configure_applies_atomically_and_reports_what_changed(self, engine):
        session, transport = await open_session(engine)
        await send(session, {"type": "configure", "config": {"buffer_duration": 1.5, "enable_timestamps": False}})
        configured = transport.of("session_configured")[0]["data"]
        assert configured["changed"] == ["buffer_duration", "enable_timestamps"]
        assert configured["config"]["buffer_duration"] == 1.5
        await send(session, {"type": "configure", "config": {"buffer_duration": 3.0, "language": "xx"}})
        assert transport.errors()[-1]["field"] == "language"
        assert session.config.buffer_duration == 1.5, "nothing half-applied"
        await send(session, {"type": "configure", "config": {"session_id": "other"}})
        assert transport.errors()[-1]["field"] == "session_id"
        await session.end("session_end", ended_reason="test")

    async def test_speech_while_the_assistant_responds_is_flagged_as_barge_in(self, engine, jfk_audio):
        session, transport = await open_session(engine, fasttalk_mode=True, conversation_id="conv-7")
        await send(session, {"type": "context_update", "data": {"conversation_state": "responding"}})
        await feed(session, jfk_audio[:16000])
        vad = transport.of("voice_activity_detected")[0]
        assert vad["data"]["barge_in"] is True and vad["data"]["is_speech"] is True
        assert vad["metadata"]["conversation_id"] == "conv-7"
        assert set(vad["data"]) >= {"confidence", "duration_ms", "energy_level", "is_speech"}
        await session.end("session_end", ended_reason="test")

    async def test_without_barge_in_the_flag_stays_false(self, engine, jfk_audio):
        session, transport = await open_session(engine, barge_in_enabled=False)
        await send(session, {"type": "context_update", "data": {"conversation_state": "responding"}})
        await feed(session, jfk_audio[:16000])
        assert transport.of("voice_activity_detected")[0]["data"]["barge_in"] is False
        await session.end("session_end", ended_reason="test")

    async def test_interrupt_drops_the_open_utterance_and_acknowledges(self, engine, jfk_audio):
        session, transport = await open_session(engine)
        await feed(session, jfk_audio[:16000])
        open_id = session.current_utterance_id
        await send(session, {"type": "interrupt", "data": {"reason": "barge-in"}})
        ack = transport.of("interrupt_acknowledged")[0]["data"]
        assert ack["buffer_cleared"] is True and ack["processing_stopped"] is True
        assert ack["discarded_utterance_id"] == open_id and ack["interrupted_at"].endswith("Z")
        await send(session, {"type": "end_session"})
        assert all(f["data"]["utterance_id"] != open_id for f in transport.of("transcription_final"))

    async def test_an_english_only_model_refuses_another_language_context(self, engine):
        session, transport = await open_session(engine)
        await send(session, {"type": "context_update", "data": {"language_context": "fr-FR"}})
        assert transport.errors()[-1]["field"] == "data.language_context"
        await send(session, {"type": "context_update", "data": {"language_context": "en-GB"}})
        assert len(transport.errors()) == 1
        await session.end("session_end", ended_reason="test")

    async def test_too_many_errors_close_the_session_with_1008(self, engine, settings):
        settings.MAX_SESSION_ERRORS = 3
        session, transport = await open_session(engine)
        for _ in range(4):
            await session.on_audio(b"\x00\x01\x02")
        await asyncio.wait_for(session.finished, 10)
        codes = [e["code"] for e in transport.errors()]
        assert codes == ["invalid_audio_frame"] * 4 + ["too_many_errors"]
        assert transport.types()[-1] == "session_ended"
        assert transport.closed[0] == 1008

    async def test_a_bad_frame_is_dropped_and_the_session_goes_on(self, engine, jfk_audio):
        session, transport = await open_session(engine, final_chunk_duration=2.0)
        await feed(session, jfk_audio[:16000])
        await session.on_audio(np.array([np.nan] * 512, "<f4").tobytes())
        await feed(session, jfk_audio[16000:int(2.5 * 16000)])
        await send(session, {"type": "end_session"})
        assert transport.errors()[0]["code"] == "audio_not_finite"
        assert "fellow americans" in transport.of("transcription_final")[0]["data"]["text"].lower()


class TestAdapters:
    """What a session offers an adapter that speaks another protocol to its client
    (stt/realtime): parsed messages, decoded audio, per-session VAD, speech ends."""

    async def test_parsed_messages_and_decoded_samples_are_taken_like_frames(self, engine, jfk_audio):
        ends = []

        async def on_speech_end(event):
            ends.append((event, len(transport.of("transcription_final"))))

        transport = Transport()
        session = SttSession(transport.send, transport.close, session_services(engine), on_speech_end=on_speech_end)
        assert await session.open()
        assert await session.on_message(StartSession(session_config={"enable_partial_transcription": False}))
        assert not await session.on_message(Configure(config={"final_chunk_duration": "long"}))
        assert transport.errors()[-1]["code"] == "invalid_config"
        await session.on_samples(np.concatenate([jfk_audio, silence(1)]))
        assert session.audio_received_ms == round((jfk_audio.size + 16000) / 16)
        await session.reject(SttError("invalid_json", "not JSON"))
        assert transport.errors()[-1]["code"] == "invalid_json" and session.errors == 2
        await send(session, {"type": "end_session"})
        finals = transport.of("transcription_final")
        assert word_error_rate(JFK_TEXT, " ".join(f["data"]["text"] for f in finals)) == 0.0
        assert [e.utterance_id for e, _ in ends] == [f["data"]["utterance_id"] for f in finals]
        assert all(finals_before <= i for i, (_, finals_before) in enumerate(ends)), \
            "each speech end is told before its final"
        assert all(e.reason == "silence_detected" for e, _ in ends)

    async def test_the_vad_threshold_and_padding_can_be_set_for_one_session(self, engine, settings):
        session, _ = await open_session(engine)
        other, _ = await open_session(engine)
        session.tune_voice_activity(threshold=0.8, speech_pad_ms=300)
        assert (session.stream.params.vad_threshold, session.stream.params.speech_pad) == (0.8, 4800)
        assert (other.stream.params.vad_threshold, other.stream.params.speech_pad) == \
            (settings.VAD_THRESHOLD, settings.VAD_SPEECH_PAD_MS * 16), "other sessions keep the server's"
        await session.end("session_end", ended_reason="test")
        await other.end("session_end", ended_reason="test")
