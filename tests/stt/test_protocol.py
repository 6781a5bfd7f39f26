"""Client messages: what is accepted, and how each kind of bad input is named."""

import json

import pytest
from django.test import override_settings

from stt import protocol
from stt.errors import SttError
from stt.messages import MAX_PROMPT_CHARS, EffectiveConfig


def parse(message) -> object:
    return protocol.parse_client_message(json.dumps(message) if not isinstance(message, str) else message)


def rejection(message) -> SttError:
    with pytest.raises(SttError) as caught:
        parse(message)
    return caught.value


class TestParsing:
    def test_every_client_message_type_parses(self):
        assert parse({"type": "start_session", "session_config": {"language": "en"}}).type == "start_session"
        assert parse({"type": "start_session"}).session_config == {}
        assert parse({"type": "end_session"}).type == "end_session"
        assert parse({"type": "flush_buffer"}).type == "flush_buffer"
        assert parse({"type": "configure", "config": {"buffer_duration": 1.5}}).config == {"buffer_duration": 1.5}
        update = parse({"type": "context_update", "data": {"conversation_state": "responding",
                                                           "expected_response_type": "question",
                                                           "language_context": "en-US"}})
        assert update.data.conversation_state == "responding"
        assert parse({"type": "interrupt"}).data.reason is None
        assert parse({"type": "interrupt", "data": {"reason": "barge-in"}}).data.reason == "barge-in"

    @pytest.mark.parametrize("text", ["not json", "[1, 2]", '"start_session"', "{", '{"type": NaN}'])
    def test_text_that_is_not_a_json_object_is_invalid_json(self, text):
        assert rejection(text).code == "invalid_json"

    @pytest.mark.parametrize("message", [{}, {"type": 3}, {"type": None}])
    def test_a_message_without_a_string_type_is_invalid(self, message):
        error = rejection(message)
        assert (error.code, error.field) == ("invalid_message", "type")

    def test_an_unknown_type_is_named(self):
        error = rejection({"type": "start_sesion"})
        assert error.code == "unknown_message_type"
        assert "start_sesion" in error.message

    def test_unknown_keys_and_wrong_shapes_name_the_field(self):
        assert rejection({"type": "end_session", "now": True}).field == "now"
        assert rejection({"type": "configure"}).field == "config"
        assert rejection({"type": "configure", "config": [1]}).field == "config"
        assert rejection({"type": "context_update", "data": {"conversation_state": "sleeping"}}).field == \
            "data.conversation_state"

    @override_settings(MAX_CONTROL_MESSAGE_BYTES=100)
    def test_oversized_control_messages_are_refused_before_parsing(self):
        assert rejection({"type": "end_session", "pad": "x" * 200}).code == "message_too_large"

    def test_errors_carry_every_field_of_the_protocol_shape(self):
        payload = rejection({"type": "nope"}).to_payload()
        assert set(payload) >= {"code", "message", "category", "severity", "recoverable", "retry_after"}
        assert payload["category"] == "connection"
        assert payload["recoverable"] is True


class TestSessionConfig:
    def test_defaults_come_from_settings(self, settings):
        settings.BUFFER_DURATION = 3.0
        settings.PARTIAL_CHUNK_DURATION = 0.4
        settings.FINAL_CHUNK_DURATION = 0.7
        config = protocol.validate_config({})
        assert (config.buffer_duration, config.partial_chunk_duration, config.final_chunk_duration) == (3.0, 0.4, 0.7)
        assert config.enable_vad and config.enable_partial_transcription and config.enable_timestamps
        assert config.language is None and config.send_legacy_transcription

    def test_every_key_of_the_design_document_is_accepted(self):
        config = protocol.validate_config({
            "language": "en", "enable_timestamps": False, "enable_vad": True,
            "enable_partial_transcription": True, "buffer_duration": 2.0,
            "partial_chunk_duration": 0.25, "final_chunk_duration": 1.0,
            "fasttalk_mode": True, "user_id": "user-1", "conversation_id": "conv-1",
            "session_id": "session-1", "barge_in_enabled": True,
        })
        assert config.session_id == "session-1" and config.barge_in_enabled is True

    def test_barge_in_follows_fasttalk_mode_unless_set(self):
        assert protocol.validate_config({"fasttalk_mode": True}).barge_in_enabled is True
        assert protocol.validate_config({}).barge_in_enabled is False
        assert protocol.validate_config({"fasttalk_mode": True, "barge_in_enabled": False}).barge_in_enabled is False

    @pytest.mark.parametrize("value, expected", [("en", "en"), ("EN", "en"), ("en-US", "en"), ("pt_BR", "pt"),
                                                 ("auto", None), (None, None)])
    def test_language_codes_are_normalized(self, value, expected):
        assert protocol.validate_config({"language": value}).language == expected

    @pytest.mark.parametrize("config, field", [
        ({"language": "klingon"}, "language"),
        ({"language": 7}, "language"),
        ({"enable_vad": "yes"}, "enable_vad"),
        ({"enable_timestamps": 1}, "enable_timestamps"),
        ({"buffer_duration": "2"}, "buffer_duration"),
        ({"buffer_duration": 0.1}, "buffer_duration"),
        ({"buffer_duration": 1e9}, "buffer_duration"),
        ({"partial_chunk_duration": -1}, "partial_chunk_duration"),
        ({"final_chunk_duration": 0.0}, "final_chunk_duration"),
        ({"session_id": "has spaces"}, "session_id"),
        ({"user_id": "u" * 300}, "user_id"),
        ({"user_id": "a\x00b"}, "user_id"),
        ({"conversation_id": "line\nbreak"}, "conversation_id"),
        ({"enable_vads": True}, "enable_vads"),
    ])
    def test_a_bad_value_is_refused_naming_its_field(self, config, field):
        with pytest.raises(SttError) as caught:
            protocol.validate_config(config)
        assert caught.value.field == field
        assert field in caught.value.message
        assert caught.value.code in {"invalid_config", "unsupported_language"}

    def test_the_end_of_utterance_silence_is_bounded_by_max_silence_duration(self, settings):
        settings.MAX_SILENCE_DURATION = 1.0
        protocol.validate_config({"final_chunk_duration": 1.0})
        with pytest.raises(SttError, match="MAX_SILENCE_DURATION"):
            protocol.validate_config({"final_chunk_duration": 1.5})

    def test_configure_merges_and_validates_the_whole_config(self):
        config = protocol.validate_config({"buffer_duration": 2.0, "user_id": "u1"})
        updated = config.merged({"buffer_duration": 1.5, "enable_timestamps": False})
        assert (updated.buffer_duration, updated.enable_timestamps, updated.user_id) == (1.5, False, "u1")
        assert config.buffer_duration == 2.0, "the original is not modified"

    def test_configure_applies_nothing_when_one_value_is_bad(self):
        config = protocol.validate_config({})
        with pytest.raises(SttError) as caught:
            config.merged({"buffer_duration": 1.5, "partial_chunk_duration": "fast"})
        assert caught.value.field == "partial_chunk_duration"
        assert config.buffer_duration == 2.0

    def test_identity_keys_cannot_be_changed_by_configure(self):
        config = protocol.validate_config({"session_id": "s1", "user_id": "u1"})
        for key in ("session_id", "user_id", "conversation_id"):
            with pytest.raises(SttError) as caught:
                config.merged({key: "other"})
            assert caught.value.field == key
        assert config.merged({"user_id": "u1"}).user_id == "u1", "restating the same value is fine"


class TestKeyterms:
    def test_none_by_default_and_a_list_of_names_is_kept_tidied(self):
        assert protocol.validate_config({}).keyterms == []
        config = protocol.validate_config({"keyterms": ["Siobhan  Nakamura ", "Zyphora", "Reykjavík"]})
        assert config.keyterms == ["Siobhan Nakamura", "Zyphora", "Reykjavík"]

    def test_a_hundred_terms_of_sixty_four_characters_are_accepted(self):
        terms = [f"{index:03d}" + "x" * 61 for index in range(100)]
        assert protocol.validate_config({"keyterms": terms}).keyterms == terms

    @pytest.mark.parametrize("keyterms, field, words", [
        ("Siobhan", "keyterms", "valid list"),
        (None, "keyterms", "valid list"),
        ({"name": "Siobhan"}, "keyterms", "valid list"),
        (["Siobhan", 7], "keyterms.1", "valid string"),
        (["Siobhan", ""], "keyterms.1", "must not be empty"),
        (["   "], "keyterms.0", "must not be empty"),
        (["Siobhan\nNakamura"], "keyterms.0", "control characters"),
        (["x" * 65], "keyterms.0", "at most 64 characters"),
        (["term"] * 101, "keyterms", "at most 100 items"),
    ])
    def test_bad_keyterms_are_refused_naming_the_item(self, keyterms, field, words):
        with pytest.raises(SttError) as caught:
            protocol.validate_config({"keyterms": keyterms})
        error = caught.value.to_payload()
        assert (error["code"], error["field"], error["recoverable"]) == ("invalid_config", field, True)
        assert words in error["message"]

    def test_configure_replaces_the_list_and_a_bad_list_changes_nothing(self):
        config = protocol.validate_config({"keyterms": ["Siobhan Nakamura"]})
        assert config.merged({"keyterms": ["Zyphora"]}).keyterms == ["Zyphora"]
        assert config.merged({"keyterms": []}).keyterms == []
        with pytest.raises(SttError):
            config.merged({"keyterms": ["Zyphora", ""]})
        assert config.keyterms == ["Siobhan Nakamura"]

    def test_context_update_does_not_take_keyterms(self):
        error = rejection({"type": "context_update", "data": {"keyterms": ["Zyphora"]}})
        assert (error.code, error.field) == ("invalid_message", "data.keyterms")


class TestPrompt:
    def test_none_by_default_and_free_text_is_kept_with_its_whitespace_tidied(self):
        assert protocol.validate_config({}).prompt == ""
        config = protocol.validate_config({"prompt": "  Call notes:\n Siobhan  Nakamura, order 4471.\t"})
        assert config.prompt == "Call notes: Siobhan Nakamura, order 4471."
        assert protocol.validate_config({"prompt": " \n "}).prompt == "", "only whitespace is no prompt"

    def test_two_thousand_characters_are_accepted(self):
        text = "word " * 399 + "final"
        assert len(text) == MAX_PROMPT_CHARS == 2000
        assert protocol.validate_config({"prompt": text}).prompt == text

    @pytest.mark.parametrize("prompt, words", [
        (None, "valid string"),
        (["Siobhan"], "valid string"),
        (7, "valid string"),
        ("x" * 2001, "at most 2000 characters"),
        ("Siobhan\x00Nakamura", "control characters"),
        ("\x1b[31mred", "control characters"),
    ])
    def test_a_bad_prompt_is_refused_naming_it(self, prompt, words):
        with pytest.raises(SttError) as caught:
            protocol.validate_config({"prompt": prompt})
        error = caught.value.to_payload()
        assert (error["code"], error["field"], error["recoverable"]) == ("invalid_config", "prompt", True)
        assert words in error["message"]

    def test_configure_replaces_it_and_a_bad_one_changes_nothing(self):
        config = protocol.validate_config({"prompt": "About invoices."})
        assert config.merged({"prompt": "About Zyphora headsets."}).prompt == "About Zyphora headsets."
        assert config.merged({"prompt": ""}).prompt == ""
        with pytest.raises(SttError):
            config.merged({"prompt": "x" * 2001})
        assert config.prompt == "About invoices."

    def test_the_effective_config_echoes_it(self):
        config = protocol.validate_config({"prompt": "About invoices."})
        assert config.model_dump()["prompt"] == "About invoices."
        assert EffectiveConfig.model_validate(config.model_dump()).prompt == "About invoices."


class TestEndpointing:
    @pytest.mark.parametrize("value", ["off", "low", "medium", "high", None])
    def test_each_level_or_null_is_accepted(self, value):
        assert protocol.validate_config({"endpointing": value}).endpointing == value

    def test_left_out_it_takes_the_runtime_profiles_value_else_null(self):
        assert protocol.validate_config({}).endpointing is None
        assert protocol.validate_config({}, defaults={"endpointing": "high"}).endpointing == "high"
        assert protocol.validate_config({"endpointing": "off"}, defaults={"endpointing": "high"}).endpointing == "off"

    @pytest.mark.parametrize("value", ["HIGH", "auto", "eager", "", 1, True, ["low"]])
    def test_anything_else_is_refused_naming_the_field(self, value):
        with pytest.raises(SttError) as caught:
            protocol.validate_config({"endpointing": value})
        error = caught.value.to_payload()
        assert (error["code"], error["field"], error["recoverable"]) == ("invalid_config", "endpointing", True)
        assert "endpointing" in error["message"] and "nothing was applied" in error["message"]

    def test_configure_changes_it_and_a_bad_value_changes_nothing(self):
        config = protocol.validate_config({}, defaults={"endpointing": "medium"})
        assert config.merged({"endpointing": "high"}).endpointing == "high"
        assert config.merged({"endpointing": None}).endpointing is None, "back to the profile's"
        with pytest.raises(SttError) as caught:
            config.merged({"endpointing": "fast", "buffer_duration": 1.0})
        assert caught.value.field == "endpointing"
        assert (config.endpointing, config.buffer_duration) == ("medium", 2.0)


def test_timestamps_are_iso8601_utc_with_milliseconds():
    stamp = protocol.utc_timestamp()
    assert stamp.endswith("Z") and "T" in stamp and len(stamp) == len("2024-01-15T10:30:00.000Z")


def test_every_server_message_carries_session_id_and_timestamp():
    message = protocol.envelope("session_ended", {"session_id": "s1"}, data={"reason": "end_session"})
    assert message["type"] == "session_ended"
    assert message["metadata"]["session_id"] == "s1"
    assert message["metadata"]["timestamp"].endswith("Z")


INVISIBLE = {
    "C1 control (NEL)": "\u0085", "C1 control (CSI)": "\u009b", "right-to-left override": "\u202e",
    "right-to-left isolate": "\u2067", "zero-width space": "\u200b", "byte order mark": "\ufeff",
    "soft hyphen": "\u00ad", "word joiner": "\u2060", "private use": "\ue000", "line separator": "\u2028",
}


class TestInvisibleCharacters:
    """Issue 23 #10: C1 controls, bidi overrides, zero-width and other format characters
    (Unicode Cc, Cf), private-use and lone surrogates (Co, Cs) are refused with
    invalid_config in keyterms, user_id, conversation_id and the prompt; the joiners
    that scripts and emoji need (ZWJ, ZWNJ between two visible characters) are not."""

    INVISIBLE = INVISIBLE

    # A prompt's line breaks (NEL, U+2028 too) are whitespace, collapsed to one space: not refused there.
    @pytest.mark.parametrize("field, name", [
        (field, name) for field in ("user_id", "conversation_id", "keyterms", "prompt") for name in INVISIBLE
        if not (field == "prompt" and INVISIBLE[name].isspace())])
    def test_each_is_refused_naming_the_field(self, field, name):
        text = f"alice{self.INVISIBLE[name]}admin"
        value = [text] if field == "keyterms" else text
        with pytest.raises(SttError) as caught:
            protocol.validate_config({field: value})
        error = caught.value.to_payload()
        assert (error["code"], error["recoverable"]) == ("invalid_config", True)
        assert error["field"] == ("keyterms.0" if field == "keyterms" else field)
        assert "invisible or control characters" in error["message"]

    def test_a_lone_surrogate_from_json_is_refused_too(self):
        raw = json.loads('{"user_id": "alice\\ud800", "keyterms": ["x\\udfff"]}')  # what "\ud800" in JSON gives
        with pytest.raises(SttError) as caught:
            protocol.validate_config(raw)
        assert caught.value.code == "invalid_config"

    def test_the_reversed_text_of_an_override_cannot_pass_for_a_plain_id(self):
        with pytest.raises(SttError) as caught:
            protocol.validate_config({"user_id": "admin\u202enimda"})
        assert caught.value.field == "user_id"

    def test_joiners_inside_words_and_emoji_are_kept_in_keyterms_and_the_prompt(self):
        persian = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"  # "mi-khaham": ZWNJ between letters
        family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
        config = protocol.validate_config({"keyterms": [persian, f"Team {family}"],
                                           "prompt": f"Notes {persian} {family}"})
        assert config.keyterms == [persian, f"Team {family}"]
        assert config.prompt == f"Notes {persian} {family}"
        accents = protocol.validate_config({"user_id": "Zoë-Ångström", "keyterms": ["Reykjavík", "東京"]})
        assert accents.user_id == "Zoë-Ångström"

    @pytest.mark.parametrize("keyterm", ["\u200dZyphora", "Zyphora\u200c", "Zy\u200d\u200dphora", "Zyphora \u200d x"])
    def test_a_joiner_that_joins_nothing_is_refused(self, keyterm):
        with pytest.raises(SttError) as caught:
            protocol.validate_config({"keyterms": [keyterm]})
        assert caught.value.field == "keyterms.0"

    def test_identifiers_take_no_joiner_at_all(self):
        for field in ("user_id", "conversation_id"):
            with pytest.raises(SttError) as caught:
                protocol.validate_config({field: "ali\u200dce"})
            assert caught.value.field == field

    def test_a_prompt_keeps_its_line_breaks_as_spaces(self):
        assert protocol.validate_config({"prompt": "One\r\nTwo\u2028Three\x85Four"}).prompt == "One Two Three Four"


@pytest.mark.django_db(transaction=True)
async def test_a_bidi_override_in_start_session_gets_invalid_config_over_the_websocket():
    from channels.testing import WebsocketCommunicator

    from fasttalk.asgi import application

    communicator = WebsocketCommunicator(application, "/ws/transcribe")
    assert (await communicator.connect(timeout=10))[0]
    await communicator.send_to(text_data=json.dumps(
        {"type": "start_session", "session_config": {"user_id": "user\u202eeliforp", "keyterms": ["Zyphora"]}}))
    error = json.loads(await communicator.receive_from(timeout=10))
    await communicator.disconnect()
    assert error["type"] == "error"
    assert (error["error"]["code"], error["error"]["field"]) == ("invalid_config", "user_id")
