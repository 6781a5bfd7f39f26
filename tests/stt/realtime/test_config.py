"""A realtime session's settings in OpenAI's terms, and what an update does to them."""

from __future__ import annotations

import pytest

from stt.errors import SttError
from stt.openai_api.catalog import ModelCatalog
from stt.realtime.config import RealtimeConfig, ServerVad, UpdateParams, updated_config
from stt.realtime.events import BetaSession, GaSession

CURRENT = RealtimeConfig(model="tiny.en", language=None, turn_detection=True,
                         vad=ServerVad(threshold=0.5, prefix_padding_ms=200, silence_duration_ms=500))


def beta(**session) -> RealtimeConfig:
    return updated_config(CURRENT, BetaSession.model_validate(session), max_silence_ms=2000)


def ga(**audio_input) -> RealtimeConfig:
    return updated_config(CURRENT, GaSession.model_validate({"type": "transcription", "audio": {"input": audio_input}}),
                          max_silence_ms=2000)


def refused(update) -> SttError:
    with pytest.raises(SttError) as error:
        update()
    return error.value


class TestUpdates:
    def test_fields_left_out_keep_their_value(self):
        assert beta() == CURRENT
        assert beta(turn_detection={"silence_duration_ms": 800}).vad == ServerVad(0.5, 200, 800)
        assert ga(transcription={"language": "en"}) == RealtimeConfig("tiny.en", "en", True, CURRENT.vad)

    def test_null_turn_detection_means_manual_commits_and_keeps_the_vad_values_for_later(self):
        manual = beta(turn_detection=None)
        assert not manual.turn_detection and manual.vad == CURRENT.vad
        assert manual.fasttalk_config() == {"language": None, "enable_vad": False, "final_chunk_duration": 0.5,
                                            "endpointing": "off", "prompt": ""}
        again = updated_config(manual, BetaSession.model_validate({"turn_detection": {"type": "server_vad"}}), 2000)
        assert again.turn_detection and again.vad == CURRENT.vad

    def test_the_server_vad_values_map_onto_the_session(self):
        config = ga(turn_detection={"type": "server_vad", "threshold": 0.7, "prefix_padding_ms": 300,
                                    "silence_duration_ms": 1200})
        assert config.vad == ServerVad(0.7, 300, 1200)
        assert config.fasttalk_config()["final_chunk_duration"] == 1.2

    def test_what_is_not_served_here_is_refused_with_its_param(self):
        cases = [
            (lambda: beta(input_audio_format="g711_ulaw"), "session.input_audio_format"),
            (lambda: ga(format={"type": "audio/pcmu"}), "session.audio.input.format.type"),
            (lambda: ga(format={"type": "audio/pcm", "rate": 16000}), "session.audio.input.format.rate"),
            (lambda: beta(turn_detection={"silence_duration_ms": 2500}), "session.turn_detection.silence_duration_ms"),
            (lambda: beta(input_audio_transcription=None), "session.input_audio_transcription"),
            (lambda: ga(transcription=None), "session.audio.input.transcription"),
        ]
        for update, param in cases:
            error = refused(update)
            assert (error.code, error.field) == ("invalid_config", param)


class TestModelNames:
    """The names the file API answers to (stt/openai_api/catalog.py), the same way."""

    MODELS = ModelCatalog.from_settings("tiny.en", ["whisper-1", "gpt-transcribe", "gpt-realtime-whisper"], 0)

    def update(self, model: str) -> RealtimeConfig:
        session = GaSession.model_validate({"type": "transcription", "audio": {"input": {"transcription": {
            "model": model}}}})
        return updated_config(CURRENT, session, max_silence_ms=2000, models=self.MODELS)

    @pytest.mark.parametrize("model", ["gpt-transcribe", "gpt-realtime-whisper", "whisper-1-2025-01-01", "tiny.en"])
    def test_a_name_the_server_answers_to_is_accepted_and_served_by_its_model(self, model):
        assert self.update(model).model == "tiny.en"

    @pytest.mark.parametrize("model, words", [("gpt-4o-transcribe-diarize", "does not tell speakers apart"),
                                              ("whisper-7", "does not exist")])
    def test_another_is_refused_naming_the_field_and_why(self, model, words):
        error = refused(lambda: self.update(model))
        assert (error.code, error.field) == ("invalid_config", "session.audio.input.transcription.model")
        assert words in error.message


class TestPrompt:
    """The transcription prompt is the session's prompt (session_config.prompt)."""

    def test_beta_and_ga_set_it_and_it_maps_onto_the_session(self):
        for config in (beta(input_audio_transcription={"prompt": "Siobhan Nakamura called."}),
                       ga(transcription={"prompt": "Siobhan Nakamura called."})):
            assert config.prompt == "Siobhan Nakamura called."
            assert config.fasttalk_config()["prompt"] == "Siobhan Nakamura called."
        assert CURRENT.fasttalk_config()["prompt"] == "", "none at first"

    def test_the_session_objects_show_it(self):
        config = beta(input_audio_transcription={"prompt": "About Zyphora."})
        assert config.beta_session("s", 0)["input_audio_transcription"]["prompt"] == "About Zyphora."
        assert config.ga_session("s", 0)["audio"]["input"]["transcription"]["prompt"] == "About Zyphora."

    def test_null_is_no_prompt_and_leaving_it_out_keeps_it(self):
        prompted = ga(transcription={"prompt": "About Zyphora."})
        kept = updated_config(prompted, GaSession.model_validate(
            {"type": "transcription", "audio": {"input": {"transcription": {"language": "en"}}}}), 2000)
        assert (kept.prompt, kept.language) == ("About Zyphora.", "en")
        cleared = updated_config(kept, BetaSession.model_validate({"input_audio_transcription": {"prompt": None}}),
                                 2000)
        assert cleared.prompt == "" and cleared.language == "en"
        assert updated_config(prompted, BetaSession.model_validate({"turn_detection": None}), 2000).prompt \
            == "About Zyphora."

    def test_the_sessions_errors_about_it_name_the_events_field(self):
        assert UpdateParams.beta().by_fasttalk_field()["prompt"] == "session.input_audio_transcription.prompt"
        assert UpdateParams.ga().by_fasttalk_field()["prompt"] == "session.audio.input.transcription.prompt"
        assert UpdateParams.ga().by_fasttalk_field()["language"] == "session.audio.input.transcription.language"


class TestSemanticVad:
    """semantic_vad is VAD with endpointing by its eagerness; server_vad is endpointing off."""

    @pytest.mark.parametrize("eagerness", ["low", "medium", "high"])
    def test_its_eagerness_is_the_sessions_endpointing(self, eagerness):
        config = ga(turn_detection={"type": "semantic_vad", "eagerness": eagerness})
        assert config.fasttalk_config() == {"language": None, "enable_vad": True, "final_chunk_duration": 0.5,
                                            "endpointing": eagerness, "prompt": ""}
        assert config.ga_session("sess_1", 0)["audio"]["input"]["turn_detection"] == {
            "type": "semantic_vad", "eagerness": eagerness}

    def test_auto_the_default_leaves_the_runtime_profiles_eagerness(self):
        config = beta(turn_detection={"type": "semantic_vad"})
        assert config.fasttalk_config()["endpointing"] is None, "null: the profile's"
        assert beta(turn_detection={"type": "semantic_vad", "eagerness": "auto"}) == config
        assert config.beta_session("sess_1", 0)["turn_detection"] == {"type": "semantic_vad", "eagerness": "auto"}

    def test_server_vad_is_a_fixed_end_silence_and_gets_its_values_back(self):
        assert CURRENT.fasttalk_config()["endpointing"] == "off"
        semantic = beta(turn_detection={"type": "semantic_vad", "eagerness": "high"})
        again = updated_config(semantic, BetaSession.model_validate(
            {"turn_detection": {"type": "server_vad", "silence_duration_ms": 700}}), 2000)
        assert again.fasttalk_config() == {"language": None, "enable_vad": True, "final_chunk_duration": 0.7,
                                           "endpointing": "off", "prompt": ""}
        assert again.beta_session("s", 0)["turn_detection"] == ServerVad(0.5, 200, 700).as_dict()

    def test_an_update_without_a_type_keeps_the_current_one(self):
        semantic = beta(turn_detection={"type": "semantic_vad", "eagerness": "high"})
        lower = updated_config(semantic, BetaSession.model_validate({"turn_detection": {"eagerness": "low"}}), 2000)
        assert lower.fasttalk_config()["endpointing"] == "low"
        manual = updated_config(lower, BetaSession.model_validate({"turn_detection": None}), 2000)
        assert manual.fasttalk_config()["enable_vad"] is False
        back = updated_config(manual, BetaSession.model_validate({"turn_detection": {}}), 2000)
        assert back.turn_detection and back.fasttalk_config()["endpointing"] == "low"
        assert beta(turn_detection={}).fasttalk_config()["endpointing"] == "off"

    def test_each_type_refuses_the_others_settings(self):
        cases = [
            (lambda: beta(turn_detection={"type": "semantic_vad", "silence_duration_ms": 800}),
             "session.turn_detection.silence_duration_ms"),
            (lambda: ga(turn_detection={"type": "semantic_vad", "threshold": 0.6}),
             "session.audio.input.turn_detection.threshold"),
            (lambda: beta(turn_detection={"type": "server_vad", "eagerness": "high"}),
             "session.turn_detection.eagerness"),
            (lambda: beta(turn_detection={"eagerness": "high"}), "session.turn_detection.eagerness"),
        ]
        for update, param in cases:
            error = refused(update)
            assert (error.code, error.field) == ("invalid_config", param)


class TestSessionObjects:
    def test_the_beta_session_is_flat(self):
        session = CURRENT.beta_session("sess_1", 0)
        assert session == {
            "id": "sess_1", "object": "realtime.transcription_session", "expires_at": 0,
            "input_audio_format": "pcm16",
            "input_audio_transcription": {"model": "tiny.en", "language": None, "prompt": ""},
            "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 200,
                               "silence_duration_ms": 500},
            "input_audio_noise_reduction": None, "include": None,
        }

    def test_the_ga_session_is_of_type_transcription_with_its_audio_input(self):
        session = beta(turn_detection=None).ga_session("sess_1", 99)
        assert session["type"] == "transcription" and session["expires_at"] == 99
        assert session["audio"]["input"] == {
            "format": {"type": "audio/pcm", "rate": 24000},
            "transcription": {"model": "tiny.en", "language": None, "prompt": ""},
            "noise_reduction": None, "turn_detection": None,
        }
