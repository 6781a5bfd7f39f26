"""RealtimeSession: OpenAI's transcription events on the session core, with the real VAD
and model (no Channels: a transport that records what the client is sent)."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async

from stt.evaluation import word_error_rate
from stt.models import SessionRecord
from stt.persistence import history
from stt.realtime import BETA, RealtimeSession
from stt.session.budget import AudioBudget
from tests.conftest import JFK_PATH, JFK_TEXT
from tests.stt.realtime.support import (
    COMPLETED,
    append_events,
    items_completed,
    load_24k,
    open_realtime,
    quiet,
    send,
    stream,
    until,
)
from tests.stt.session.support import (HistoryRecorder, ManualClock, SettingsRuntime, Transport, open_session,
                                       session_services)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def jfk_24k():
    return load_24k(JFK_PATH)


def manual_turns(dialect_event: str = "transcription_session.update") -> dict:
    if dialect_event == "session.update":
        return {"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
            "turn_detection": None}}}}
    return {"type": "transcription_session.update", "session": {"turn_detection": None}}


class TestOpening:
    async def test_the_ga_session_is_created_with_server_vad_and_the_servers_model(self, engine, settings):
        realtime, transport = await open_realtime(engine)
        created = transport.sent[0]
        assert created["type"] == "session.created" and created["event_id"].startswith("event_")
        session = created["session"]
        assert session["type"] == "transcription" and session["id"] == realtime.session_id
        assert session["audio"]["input"]["turn_detection"] == {
            "type": "server_vad", "threshold": settings.VAD_THRESHOLD, "prefix_padding_ms": settings.VAD_SPEECH_PAD_MS,
            "silence_duration_ms": round(settings.FINAL_CHUNK_DURATION * 1000)}
        assert session["audio"]["input"]["transcription"]["model"] == "tiny.en"
        assert realtime.session.session_id == realtime.session_id, "the history knows the session by this id"
        await realtime.on_disconnect()

    async def test_the_beta_session_is_created_under_its_beta_name(self, engine):
        realtime, transport = await open_realtime(engine, dialect=BETA)
        created = transport.sent[0]
        assert created["type"] == "transcription_session.created"
        assert created["session"]["input_audio_format"] == "pcm16"
        assert created["session"]["object"] == "realtime.transcription_session"
        await realtime.on_disconnect()

    async def test_the_history_keeps_it_as_a_realtime_session_beside_a_ws_transcribe_ones_websocket(self, engine):
        realtime, _ = await open_realtime(engine)
        plain, _ = await open_session(engine)
        for session in (realtime.session, plain):
            await session.on_disconnect()
            await session.finished
        assert await history.drain()
        source = sync_to_async(lambda session: SessionRecord.objects.get(connection_id=session.connection_id).source)
        assert await source(realtime.session) == SessionRecord.Source.REALTIME
        assert await source(plain) == SessionRecord.Source.WEBSOCKET


class TestServerVad:
    async def test_each_phrase_is_started_stopped_committed_and_transcribed(self, engine, jfk_24k):
        realtime, transport = await open_realtime(engine)
        await stream(realtime, jfk_24k)
        await stream(realtime, quiet(1.0))
        await until(transport, items_completed)
        events = [e for e in transport.sent if "item_id" in e]
        items = list(dict.fromkeys(e["item_id"] for e in events))
        assert len(items) >= 3, "JFK's phrases, each an item"
        previous = None
        for item in items:
            kinds = [e["type"] for e in events if e["item_id"] == item]
            assert kinds[0] == "input_audio_buffer.speech_started"
            assert kinds.index("input_audio_buffer.speech_stopped") + 1 == kinds.index("input_audio_buffer.committed")
            assert kinds[-1] == COMPLETED
            committed = next(e for e in events if e["item_id"] == item and e["type"] == "input_audio_buffer.committed")
            assert committed["previous_item_id"] == previous
            previous = item
        starts = [e["audio_start_ms"] for e in transport.of("input_audio_buffer.speech_started")]
        stops = [e["audio_end_ms"] for e in transport.of("input_audio_buffer.speech_stopped")]
        assert all(a < b <= c for a, b, c in zip(starts, stops, starts[1:] + [10 ** 9])), "items in order, no overlap"
        transcript = " ".join(e["transcript"] for e in transport.of(COMPLETED))
        assert word_error_rate(JFK_TEXT, transcript) <= 0.1
        await realtime.on_disconnect()

    async def test_vad_settings_of_an_update_reach_the_stream(self, engine):
        realtime, transport = await open_realtime(engine)
        await send(realtime, {"type": "transcription_session.update", "session": {"turn_detection": {
            "type": "server_vad", "threshold": 0.65, "prefix_padding_ms": 300, "silence_duration_ms": 900}}})
        updated = transport.of("transcription_session.updated")[0]["session"]
        assert updated["turn_detection"] == {"type": "server_vad", "threshold": 0.65, "prefix_padding_ms": 300,
                                             "silence_duration_ms": 900}
        params = realtime.session.stream.params
        assert (params.vad_threshold, params.speech_pad, params.end_silence) == (0.65, 4800, 14400)
        await realtime.on_disconnect()


class TestPrompt:
    async def test_an_updates_prompt_is_the_sessions_and_the_session_object_shows_it(self, engine):
        realtime, transport = await open_realtime(engine)
        assert transport.sent[0]["session"]["audio"]["input"]["transcription"]["prompt"] == ""
        await send(realtime, {"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
            "transcription": {"prompt": " Notes of the call\n with Siobhan Nakamura. "}}}}})
        prompt = "Notes of the call with Siobhan Nakamura."
        updated = transport.of("session.updated")[-1]["session"]["audio"]["input"]["transcription"]
        assert updated["prompt"] == prompt, "as the session keeps it: whitespace tidied"
        params = realtime.session.stream.params
        assert realtime.session.config.prompt == params.prompt == params.prompt_context == prompt

        await send(realtime, {"type": "transcription_session.update", "session": {
            "input_audio_transcription": {"prompt": "x" * 2001}}})
        error = transport.of("error")[-1]["error"]
        assert (error["code"], error["param"]) == ("invalid_config", "session.input_audio_transcription.prompt")
        assert realtime.session.stream.params.prompt == prompt, "a refused update changes nothing"

        await send(realtime, {"type": "transcription_session.update", "session": {
            "input_audio_transcription": {"prompt": None}}})
        assert transport.of("transcription_session.updated")[-1]["session"]["input_audio_transcription"][
            "prompt"] == ""
        assert realtime.session.stream.params.prompt == ""
        await realtime.on_disconnect()


class TestSemanticVad:
    async def test_server_vad_ends_turns_on_a_fixed_silence_semantic_vad_by_its_eagerness(self, engine, settings):
        settings.ENDPOINTING_EAGERNESS = "high"  # the runtime profile's (no profile: the setting)
        realtime, transport = await open_realtime(engine)
        assert realtime.session.stream.params.eagerness == "off", "server_vad, the default"

        await send(realtime, {"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
            "turn_detection": {"type": "semantic_vad", "eagerness": "low"}}}}})
        updated = transport.of("session.updated")[-1]["session"]["audio"]["input"]["turn_detection"]
        assert updated == {"type": "semantic_vad", "eagerness": "low"}
        params = realtime.session.stream.params
        assert (params.enable_vad, params.eagerness) == (True, "low")

        await send(realtime, {"type": "transcription_session.update", "session": {"turn_detection": {
            "type": "semantic_vad", "eagerness": "auto"}}})
        assert transport.of("transcription_session.updated")[-1]["session"]["turn_detection"] == {
            "type": "semantic_vad", "eagerness": "auto"}
        assert realtime.session.stream.params.eagerness == "high", "auto: the profile's"

        await send(realtime, {"type": "transcription_session.update", "session": {"turn_detection": {
            "type": "server_vad", "eagerness": "low"}, "input_audio_transcription": {"language": "en"}}})
        error = transport.of("error")[-1]["error"]
        assert (error["code"], error["param"]) == ("invalid_config", "session.turn_detection.eagerness")
        assert realtime.session.config.language is None, "a refused update changes nothing"
        await send(realtime, {"type": "transcription_session.update", "session": {"turn_detection": {
            "type": "server_vad"}}})
        assert realtime.session.stream.params.eagerness == "off"
        await realtime.on_disconnect()


class TestManualTurns:
    async def test_a_commit_finalizes_the_buffer_and_the_item_is_transcribed(self, engine, jfk_24k):
        realtime, transport = await open_realtime(engine)
        await send(realtime, manual_turns("session.update"))
        assert transport.of("session.updated")[0]["session"]["audio"]["input"]["turn_detection"] is None
        await stream(realtime, jfk_24k[: 3 * 24000])
        await send(realtime, {"type": "input_audio_buffer.commit", "event_id": "commit-1"})
        committed = transport.of("input_audio_buffer.committed")
        assert len(committed) == 1 and not transport.of(COMPLETED), "committed at once, transcribed after"
        await until(transport, items_completed)
        completed = transport.of(COMPLETED)[0]
        assert completed["item_id"] == committed[0]["item_id"]
        assert "fellow americans" in completed["transcript"].lower()
        assert completed["usage"] == {"type": "duration", "seconds": pytest.approx(3.0, abs=0.01)}
        assert not transport.of("input_audio_buffer.speech_started"), "no VAD events without turn detection"
        await send(realtime, {"type": "input_audio_buffer.commit", "event_id": "commit-2"})
        error = transport.of("error")[-1]["error"]
        assert (error["code"], error["type"], error["event_id"]) == \
            ("input_audio_buffer_commit_empty", "invalid_request_error", "commit-2")
        await realtime.on_disconnect()

    async def test_a_clear_drops_the_buffered_audio(self, engine, jfk_24k):
        realtime, transport = await open_realtime(engine)
        await stream(realtime, jfk_24k[: 2 * 24000])
        started = transport.of("input_audio_buffer.speech_started")
        assert len(started) == 1
        await send(realtime, {"type": "input_audio_buffer.clear"})
        assert transport.types()[-1] == "input_audio_buffer.cleared"
        await send(realtime, {"type": "input_audio_buffer.commit"})
        assert transport.of("error")[-1]["error"]["code"] == "input_audio_buffer_commit_empty"
        await stream(realtime, quiet(1.0))  # had the speech been kept, this silence would commit it
        assert not transport.of("input_audio_buffer.committed") and not transport.of(COMPLETED), \
            "the cleared speech is never transcribed"
        await realtime.on_disconnect()


class TestBadInput:
    async def test_bad_events_get_error_events_and_the_session_goes_on(self, engine, jfk_24k):
        realtime, transport = await open_realtime(engine)
        await realtime.on_text("{oops")
        await send(realtime, {"type": "response.create", "event_id": "r1"})
        await send(realtime, {"type": "input_audio_buffer.append", "audio": "%%%", "event_id": "a1"})
        await realtime.on_binary(b"\x00\x01")
        await send(realtime, {"type": "transcription_session.update", "event_id": "u1",
                              "session": {"input_audio_transcription": {"language": "de"}}})
        await send(realtime, {"type": "session.update", "event_id": "u2", "session": {"type": "transcription",
                              "audio": {"input": {"turn_detection": {"silence_duration_ms": 5000}}}}})
        errors = [e["error"] for e in transport.of("error")]
        assert [(e["code"], e["param"], e["event_id"]) for e in errors] == [
            ("invalid_json", None, None),
            ("unknown_message_type", "type", "r1"),
            ("invalid_message", "audio", "a1"),
            ("invalid_message", None, None),
            ("unsupported_language", "session.input_audio_transcription.language", "u1"),
            ("invalid_config", "session.audio.input.turn_detection.silence_duration_ms", "u2"),
        ]
        assert all(e["type"] == "invalid_request_error" and e["message"] for e in errors)
        assert not transport.of("transcription_session.updated") and not transport.of("session.updated")
        assert realtime.session.config.language is None, "a refused update changes nothing"
        await stream(realtime, jfk_24k[: 3 * 24000])
        await stream(realtime, quiet(1.0))
        await until(transport, items_completed)
        assert "fellow americans" in transport.of(COMPLETED)[0]["transcript"].lower()
        await realtime.on_disconnect()

    async def test_a_client_past_its_error_limit_is_closed(self, engine, settings):
        settings.MAX_SESSION_ERRORS = 3
        realtime, transport = await open_realtime(engine)
        for _ in range(4):
            await send(realtime, {"type": "input_audio_buffer.commit"})
        await until(transport, lambda t: t.closed is not None, timeout=10)
        assert transport.closed[0] == 1008
        assert transport.of("error")[-1]["error"]["code"] == "too_many_errors"


class TestAClientGone:
    async def test_a_client_gone_behind_a_large_append_over_the_budget_ends_its_session_at_once(self, engine):
        """Issue 23 #3 on /v1/realtime: an append of many seconds waited its whole budget
        before the disconnect could be seen."""
        services = session_services(engine, audio_budget=AudioBudget(lambda: 0.01), clock=ManualClock(),
                                    history=HistoryRecorder(), runtime=SettingsRuntime())
        transport = Transport()
        realtime = RealtimeSession(transport.send, transport.close, services, client="127.0.0.1:5000")
        assert await realtime.open()
        [append] = append_events(quiet(10.0), chunk_seconds=10.0)  # 10 s of audio: a 1000 s wait
        waiting = asyncio.ensure_future(realtime.on_text(append))
        await asyncio.sleep(0.05)
        assert not waiting.done(), "the append waits for its budget"
        await realtime.on_disconnect()
        await asyncio.wait_for(waiting, 2)
        summary = await asyncio.wait_for(realtime.session.finished, 5)
        assert summary["reason"] == "client_disconnected" and not services.registry.sessions()
        assert realtime.session.record.close_reason == "client_disconnected"
