"""Client events of a realtime transcription session: both generations of OpenAI's names
are taken, everything else is refused with the first bad field named."""

from __future__ import annotations

import json

import pytest

from stt.realtime.events import (
    AppendAudio,
    ClearAudio,
    CommitAudio,
    EventError,
    SessionUpdate,
    TranscriptionSessionUpdate,
    parse_client_event,
)


def parse(event: dict):
    return parse_client_event(json.dumps(event))


def refusal(text: str) -> EventError:
    with pytest.raises(EventError) as refused:
        parse_client_event(text)
    return refused.value


class TestTheEventsTaken:
    def test_the_beta_update_with_its_flat_session(self):
        event = parse({"type": "transcription_session.update", "event_id": "e1", "session": {
            "input_audio_format": "pcm16",
            "input_audio_transcription": {"model": "gpt-4o-transcribe", "language": "en", "prompt": ""},
            "turn_detection": {"type": "server_vad", "threshold": 0.6, "prefix_padding_ms": 300,
                               "silence_duration_ms": 700},
            "input_audio_noise_reduction": {"type": "near_field"}, "include": ["item.input_audio_transcription.logprobs"],
        }})
        assert isinstance(event, TranscriptionSessionUpdate) and event.event_id == "e1"
        assert event.session.turn_detection.silence_duration_ms == 700

    def test_the_ga_update_with_a_transcription_session(self):
        event = parse({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "transcription": {"model": "gpt-realtime-whisper", "language": "en", "delay": "low"},
            "turn_detection": None}}}})
        assert isinstance(event, SessionUpdate) and event.event_id is None
        assert "turn_detection" in event.session.audio.input.model_fields_set, "an explicit null is kept apart"
        assert event.session.audio.input.turn_detection is None

    def test_the_audio_buffer_events(self):
        assert isinstance(parse({"type": "input_audio_buffer.append", "audio": "AAA="}), AppendAudio)
        assert isinstance(parse({"type": "input_audio_buffer.commit", "event_id": "c"}), CommitAudio)
        assert isinstance(parse({"type": "input_audio_buffer.clear"}), ClearAudio)


class TestBadEvents:
    def test_text_that_is_not_a_json_object(self):
        for text in ("{not json", "[1, 2]", '"session.update"', '{"type": "input_audio_buffer.commit", "x": NaN}'):
            bad = refusal(text)
            assert bad.error.code == "invalid_json" and bad.event_id is None

    def test_an_event_without_a_type_or_of_an_unknown_type_keeps_its_event_id(self):
        bad = refusal(json.dumps({"event_id": "e7"}))
        assert (bad.error.code, bad.error.field, bad.event_id) == ("invalid_message", "type", "e7")
        bad = refusal(json.dumps({"type": "response.create", "event_id": "e8"}))
        assert (bad.error.code, bad.error.field, bad.event_id) == ("unknown_message_type", "type", "e8")
        assert "input_audio_buffer.append" in bad.error.message, "the message lists what is taken"

    def test_the_first_bad_field_is_named(self):
        cases = [
            ({"type": "input_audio_buffer.append"}, "audio"),
            ({"type": "input_audio_buffer.append", "audio": 12}, "audio"),
            ({"type": "input_audio_buffer.commit", "extra": 1}, "extra"),
            ({"type": "transcription_session.update", "session": {"turn_detection": {"threshold": 1.5}}},
             "session.turn_detection.threshold"),
            ({"type": "transcription_session.update", "session": {"turn_detection": {"silence_duration_ms": "500"}}},
             "session.turn_detection.silence_duration_ms"),
            ({"type": "transcription_session.update", "session": {"voice": "alloy"}}, "session.voice"),
            ({"type": "session.update", "session": {"type": "realtime"}}, "session.type"),
            ({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
                "turn_detection": {"prefix_padding_ms": 5000}}}}}, "session.audio.input.turn_detection.prefix_padding_ms"),
        ]
        for event, field in cases:
            bad = refusal(json.dumps(event))
            assert (bad.error.code, bad.error.field) == ("invalid_message", field), event
            assert "nothing was applied" in bad.error.message
