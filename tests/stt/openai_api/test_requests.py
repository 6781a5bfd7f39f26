"""stt/openai_api/requests.py: the transcription form, checked field by field."""

import pytest
from django.http import QueryDict
from hypothesis import given, settings
from hypothesis import strategies as st

from stt.errors import SttError
from stt.openai_api.catalog import ModelCatalog
from stt.openai_api.errors import ApiError
from stt.openai_api.requests import parse_transcription_request, require_file

CATALOG = ModelCatalog.from_settings("tiny.en", ["whisper-1", "gpt-4o-transcribe"], 1_700_000_000)


def english_only(language):
    return language in (None, "en")


def parse(query: str):
    return parse_transcription_request(QueryDict(query), CATALOG, english_only)


def refusal(query: str) -> ApiError:
    with pytest.raises(ApiError) as caught:
        parse(query)
    assert caught.value.status == 400
    return caught.value


class TestAccepted:
    def test_only_the_model_is_needed_and_the_rest_has_openais_defaults(self):
        request = parse("model=whisper-1")
        assert (request.model, request.language, request.prompt, request.response_format, request.temperature,
                request.stream, request.granularities) == ("whisper-1", None, "", "json", 0.0, False, frozenset())
        assert not request.word_timestamps

    def test_every_field(self):
        request = parse("model=tiny.en&language=EN-us&prompt=+Fasttalk+&response_format=verbose_json"
                        "&timestamp_granularities[]=word&timestamp_granularities[]=segment&temperature=0.4&stream=true")
        assert request.language == "en" and request.prompt == "Fasttalk" and request.temperature == 0.4
        assert request.granularities == {"word", "segment"} and request.stream and request.word_timestamps

    def test_verbose_json_gives_segments_unless_told_otherwise(self):
        assert parse("model=whisper-1&response_format=verbose_json").granularities == {"segment"}

    @pytest.mark.parametrize("response_format, words", [("srt", True), ("vtt", True), ("text", False),
                                                        ("json", False)])
    def test_word_times_are_decoded_only_where_the_answer_needs_them(self, response_format, words):
        assert parse(f"model=whisper-1&response_format={response_format}").word_timestamps is words

    def test_the_catalog_lists_the_model_and_its_aliases(self):
        assert CATALOG.ids == ("tiny.en", "whisper-1", "gpt-4o-transcribe")
        assert ModelCatalog.from_settings("/models/whisper-small-ct2", [], 0).model == "whisper-small-ct2"
        assert CATALOG.listing()["data"][1] == {"id": "whisper-1", "object": "model", "created": 1_700_000_000,
                                                "owned_by": "fasttalk"}


class TestModelNames:
    """Issue 26 #1: Pipecat's default STT asks for gpt-transcribe, which was refused."""

    def test_openais_current_names_are_served_by_default(self, settings):
        catalog = ModelCatalog.from_settings("tiny.en", settings.OPENAI_MODEL_ALIASES, 0)
        for name in ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe", "gpt-transcribe",
                     "gpt-realtime-whisper"):
            assert name in catalog.ids and parse_transcription_request(QueryDict(f"model={name}"), catalog,
                                                                       english_only).model == name

    def test_a_dated_snapshot_of_a_known_name_is_that_name(self):
        assert parse("model=gpt-4o-transcribe-2025-12-15").model == "gpt-4o-transcribe-2025-12-15"
        assert CATALOG.knows("whisper-1-2024-01-01") and not CATALOG.knows("whisper-2-2024-01-01")
        assert "gpt-4o-transcribe-2025-12-15" not in CATALOG.ids, "listed by their names only"

    @pytest.mark.parametrize("name", ["gpt-4o-transcribe-diarize", "gpt-4o-transcribe-diarize-2025-10-15"])
    def test_a_diarizing_model_is_refused_for_what_it_is(self, name):
        error = refusal(f"model={name}")
        assert (error.param, error.code) == ("model", "diarization_not_supported")
        assert "does not tell speakers apart" in error.message

    def test_an_operators_aliases_are_what_it_answers_to(self):
        catalog = ModelCatalog.from_settings("tiny.en", ["house-model"], 0)
        assert catalog.refusal("house-model") is None and catalog.refusal("gpt-transcribe")[0] == "model_not_found"


class TestRefused:
    @pytest.mark.parametrize("query, param, code", [
        ("", "model", "missing_required_parameter"),
        ("model=whisper-2", "model", "model_not_found"),
        ("model=whisper-1&response_format=xml", "response_format", "invalid_value"),
        ("model=whisper-1&response_format=diarized_json", "response_format", "invalid_value"),
        ("model=whisper-1&language=klingon", "language", "unsupported_language"),
        ("model=whisper-1&language=fr", "language", "unsupported_language"),
        ("model=whisper-1&temperature=hot", "temperature", "invalid_value"),
        ("model=whisper-1&temperature=1.5", "temperature", "invalid_value"),
        ("model=whisper-1&temperature=nan", "temperature", "invalid_value"),
        ("model=whisper-1&stream=maybe", "stream", "invalid_value"),
        ("model=whisper-1&response_format=verbose_json&timestamp_granularities[]=sentence",
         "timestamp_granularities", "invalid_value"),
        ("model=whisper-1&response_format=json&timestamp_granularities[]=word", "timestamp_granularities",
         "invalid_value"),
    ])
    def test_a_bad_field_is_named_in_openais_error_shape(self, query, param, code):
        error = refusal(query)
        assert (error.param, error.code) == (param, code)
        assert set(error.body()["error"]) == {"message", "type", "param", "code"}
        assert error.body()["error"]["type"] == "invalid_request_error" and error.message

    def test_a_prompt_has_the_websockets_limit_and_error(self):
        from urllib.parse import quote

        from stt.messages import MAX_PROMPT_CHARS
        from stt.protocol import validate_config

        long_prompt = "word " * 400 + "x"
        assert len(long_prompt) == MAX_PROMPT_CHARS + 1
        error = refusal(f"model=whisper-1&prompt={quote(long_prompt)}")
        with pytest.raises(SttError) as on_the_websocket:
            validate_config({"prompt": long_prompt})
        assert (error.param, error.code) == ("prompt", on_the_websocket.value.code) == ("prompt", "invalid_config")
        assert str(MAX_PROMPT_CHARS) in error.message
        assert parse(f"model=whisper-1&prompt={quote(long_prompt[:MAX_PROMPT_CHARS])}").prompt

    def test_a_prompt_is_cleaned_like_the_websockets(self):
        assert parse("model=whisper-1&prompt=%20Fast%0A%0Atalk%09STT%20").prompt == "Fast talk STT"
        assert refusal("model=whisper-1&prompt=a%E2%80%AEb").param == "prompt"  # a bidi override

    def test_no_file_or_an_empty_one_is_refused(self):
        from django.core.files.uploadedfile import SimpleUploadedFile

        for files in ({}, {"file": SimpleUploadedFile("a.wav", b"")}):
            with pytest.raises(ApiError) as caught:
                require_file(files)
            assert caught.value.status == 400 and caught.value.param == "file"


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["model", "language", "prompt", "response_format", "temperature", "stream",
                                        "timestamp_granularities[]", "timestamp_granularities", "include[]"]),
                       st.lists(st.text(max_size=20), min_size=1, max_size=3)))
def test_any_form_is_a_request_or_a_400_never_another_exception(fields):
    query = QueryDict(mutable=True)
    for name, values in fields.items():
        query.setlist(name, values)
    try:
        request = parse_transcription_request(query, CATALOG, english_only)
    except ApiError as error:
        assert error.status == 400 and error.param and error.message
    else:
        assert CATALOG.knows(request.model) and 0 <= request.temperature <= 1
