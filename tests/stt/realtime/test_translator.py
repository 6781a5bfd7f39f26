"""The session's messages as OpenAI realtime events (no model: messages of the shapes the
session sends, see docs/protocol.md)."""

from __future__ import annotations

from stt.errors import SttError
from stt.realtime.translator import EventTranslator, item_id
from stt.streaming import FinalReason, SpeechEnd

U1, U2 = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"


class Client:
    def __init__(self) -> None:
        self.events: list[dict] = []

    async def receive(self, event: dict) -> None:
        self.events.append(event)

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["type"] == kind]


def translator() -> tuple[EventTranslator, Client]:
    client = Client()
    return EventTranslator(client.receive), client


def onset(utterance_id: str, offset_ms: int) -> dict:
    return {"type": "voice_activity_detected", "data": {"utterance_id": utterance_id, "audio_offset_ms": offset_ms}}


def partial(utterance_id: str, stable: str, unstable: str = "") -> dict:
    return {"type": "transcription_partial", "data": {"utterance_id": utterance_id, "stable_text": stable,
                                                      "unstable_text": unstable}}


def final(utterance_id: str, text: str, start_ms: int = 0, end_ms: int = 2000) -> dict:
    return {"type": "transcription_final", "data": {"utterance_id": utterance_id, "text": text, "start_ms": start_ms,
                                                    "end_ms": end_ms, "audio_duration_ms": end_ms - start_ms}}


def samples(ms: int) -> int:
    return ms * 16


class TestAnUtteranceAsAnItem:
    async def test_speech_start_stop_commit_deltas_and_completion(self):
        t, client = translator()
        t.prefix_padding_ms = 300
        await t.on_message(onset(U1, 1000))
        await t.on_message(partial(U1, "", "And so"))
        await t.on_message(partial(U1, "And so", "my"))
        await t.on_message(partial(U1, "And so my", "fellow"))
        await t.on_speech_end(SpeechEnd(U1, samples(700), samples(2400), FinalReason.SILENCE), vad=True)
        await t.on_message(final(U1, "And so my fellow Americans.", 700, 2400))
        assert client.types() == [
            "input_audio_buffer.speech_started",
            "conversation.item.input_audio_transcription.delta",
            "conversation.item.input_audio_transcription.delta",
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
            "conversation.item.input_audio_transcription.delta",
            "conversation.item.input_audio_transcription.completed",
        ]
        item = item_id(U1)
        assert all(e["item_id"] == item for e in client.events)
        assert all(e["event_id"].startswith("event_") for e in client.events)
        assert len({e["event_id"] for e in client.events}) == len(client.events)
        assert client.of("input_audio_buffer.speech_started")[0]["audio_start_ms"] == 700, "onset less the padding"
        assert client.of("input_audio_buffer.speech_stopped")[0]["audio_end_ms"] == 2400
        assert client.of("input_audio_buffer.committed")[0]["previous_item_id"] is None
        deltas = [e["delta"] for e in client.of("conversation.item.input_audio_transcription.delta")]
        assert deltas == ["And so", " my", " fellow Americans."], "stable words only, then the rest"
        completed = client.of("conversation.item.input_audio_transcription.completed")[0]
        assert "".join(deltas) == completed["transcript"] == "And so my fellow Americans."
        assert completed["content_index"] == 0 and completed["usage"] == {"type": "duration", "seconds": 1.7}

    async def test_a_final_that_revises_the_deltas_replaces_them_without_a_delta(self):
        t, client = translator()
        await t.on_message(partial(U1, "Ask not what", "you"))
        await t.on_message(final(U1, "Ask not! What your country can do for you."))
        assert [e["delta"] for e in client.of("conversation.item.input_audio_transcription.delta")] == ["Ask not what"]
        assert client.of("conversation.item.input_audio_transcription.completed")[0]["transcript"] == \
            "Ask not! What your country can do for you."

    async def test_items_are_committed_once_in_order_and_chained(self):
        t, client = translator()
        await t.on_speech_end(SpeechEnd(U1, 0, samples(2000), FinalReason.SILENCE), vad=True)
        await t.commit(U1, 2000)
        await t.on_message(final(U1, "one"))
        await t.on_message(final(U2, "two", 2500, 4000))  # committed by its final (a flush, say)
        committed = client.of("input_audio_buffer.committed")
        assert [(c["item_id"], c["previous_item_id"]) for c in committed] == \
            [(item_id(U1), None), (item_id(U2), item_id(U1))]
        assert [e["type"] for e in client.events if e["item_id"] == item_id(U2)] == [
            "input_audio_buffer.committed", "conversation.item.input_audio_transcription.delta",
            "conversation.item.input_audio_transcription.completed"], "committed before its transcript"

    async def test_a_speech_onset_never_reaches_back_before_the_previous_item(self):
        t, client = translator()
        t.prefix_padding_ms = 300
        await t.on_speech_end(SpeechEnd(U1, 0, samples(2400), FinalReason.SILENCE), vad=True)
        await t.on_message(onset(U2, 2500))
        assert client.of("input_audio_buffer.speech_started")[0]["audio_start_ms"] == 2400

    async def test_a_cut_commits_and_the_speech_goes_on_in_a_new_item(self):
        t, client = translator()
        await t.on_speech_end(SpeechEnd(U1, 0, samples(20000), FinalReason.MAX_DURATION, U2), vad=True)
        assert client.types() == ["input_audio_buffer.speech_stopped", "input_audio_buffer.committed",
                                  "input_audio_buffer.speech_started"]
        started = client.of("input_audio_buffer.speech_started")[0]
        assert (started["item_id"], started["audio_start_ms"]) == (item_id(U2), 20000)

    async def test_without_turn_detection_a_full_buffer_is_committed_without_vad_events(self):
        t, client = translator()
        await t.on_speech_end(SpeechEnd(U1, 0, samples(30000), FinalReason.BUFFER_FULL, U2), vad=False)
        assert client.types() == ["input_audio_buffer.committed"]

    async def test_a_commit_whose_audio_held_no_text_still_completes_its_item(self):
        t, client = translator()
        await t.commit(U1, 1000)
        await t.on_message({"type": "buffer_flushed", "data": {"utterance_id": U1, "final_sent": False}})
        completed = client.of("conversation.item.input_audio_transcription.completed")[0]
        assert (completed["item_id"], completed["transcript"]) == (item_id(U1), "")
        await t.on_message({"type": "buffer_flushed", "data": {"utterance_id": U2, "final_sent": True}})
        assert len(client.of("conversation.item.input_audio_transcription.completed")) == 1


class TestOtherMessages:
    async def test_an_interrupt_is_the_cleared_buffer(self):
        t, client = translator()
        await t.on_message({"type": "interrupt_acknowledged", "data": {"discarded_utterance_id": U1}})
        assert client.types() == ["input_audio_buffer.cleared"]

    async def test_errors_take_openais_shape_with_the_event_and_param_they_are_about(self):
        t, client = translator()
        payload = SttError("unsupported_language", "no Klingon", field="language").to_payload()
        with t.handling("evt_9", {"language": "session.input_audio_transcription.language"}):
            await t.on_message({"type": "error", "error": payload})
        await t.on_message({"type": "error", "error": SttError("transcription_unavailable", "breaker open").to_payload()})
        first, second = (e["error"] for e in client.of("error"))
        assert first == {"type": "invalid_request_error", "code": "unsupported_language", "message": "no Klingon",
                         "param": "session.input_audio_transcription.language", "event_id": "evt_9"}
        assert (second["type"], second["param"], second["event_id"]) == ("server_error", None, None)

    async def test_a_final_that_failed_is_the_items_failed_transcription(self):
        t, client = translator()
        payload = SttError("transcription_failed", "model fault", utterance_id=U1).to_payload()
        await t.on_message({"type": "error", "error": payload})
        assert client.types() == ["input_audio_buffer.committed",
                                  "conversation.item.input_audio_transcription.failed"]
        failed = client.of("conversation.item.input_audio_transcription.failed")[0]
        assert failed["item_id"] == item_id(U1) and failed["content_index"] == 0
        assert failed["error"]["code"] == "transcription_failed" and failed["error"]["type"] == "server_error"

    async def test_the_session_lifecycle_messages_are_not_forwarded(self):
        t, client = translator()
        for kind in ("session_started", "session_configured", "session_ended", "transcription"):
            await t.on_message({"type": kind, "data": {}})
        assert client.events == []
