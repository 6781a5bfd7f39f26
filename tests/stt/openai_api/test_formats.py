"""stt/openai_api/formats.py: a file's transcript as json, text, srt, vtt and verbose_json."""

import json

import pytest

from stt.openai_api.formats import (
    MAX_SEGMENT_CHARS,
    MAX_SEGMENT_SECONDS,
    ChunkText,
    FileTranscript,
    TimedWord,
    render,
    segments,
    timestamp,
)


def words(*spec: tuple[str, float, float]) -> tuple[TimedWord, ...]:
    return tuple(TimedWord(word, start, end, 0.9) for word, start, end in spec)


TWO_CHUNKS = FileTranscript(duration=14.2, language="en", chunks=[
    ChunkText(0.0, 7.5, "Hello there. How are you?",
              words(("Hello", 0.5, 0.9), ("there.", 0.9, 1.4), ("How", 2.0, 2.2), ("are", 2.2, 2.4),
                    ("you?", 2.4, 2.9))),
    ChunkText(7.5, 10.0, "", ()),  # a chunk of silence
    ChunkText(10.0, 14.2, "Fine thanks", words(("Fine", 3600.25, 3600.5), ("thanks", 3600.5, 3601.0))),
])


class TestTimestamps:
    @pytest.mark.parametrize("seconds, srt, vtt", [
        (0.0, "00:00:00,000", "00:00:00.000"),
        (1.2345, "00:00:01,234", "00:00:01.234"),
        (61.0005, "00:01:01,000", "00:01:01.000"),
        (3600.25, "01:00:00,250", "01:00:00.250"),
        (-0.01, "00:00:00,000", "00:00:00.000"),
    ])
    def test_srt_uses_a_comma_and_webvtt_a_dot_before_the_milliseconds(self, seconds, srt, vtt):
        assert timestamp(seconds, ",") == srt and timestamp(seconds, ".") == vtt


class TestSegments:
    def test_a_segment_ends_with_a_sentence_and_at_each_chunk_and_silence_has_none(self):
        found = segments(TWO_CHUNKS)
        assert [s.text for s in found] == ["Hello there.", "How are you?", "Fine thanks"]
        assert (found[0].start, found[0].end) == (0.5, 1.4)

    def test_a_long_pause_ends_a_segment(self):
        transcript = FileTranscript(5.0, "en", chunks=[ChunkText(0, 5, "one two", words(("one", 0, 0.5),
                                                                                      ("two", 1.6, 2.0)))])
        assert [s.text for s in segments(transcript)] == ["one", "two"]

    def test_a_long_sentence_is_split_where_it_pauses_longest_and_each_part_fits(self):
        spoken = [(f"word{i}", i * 0.5, i * 0.5 + 0.4) for i in range(40)]  # 20 s without a full stop
        spoken[13] = ("word13,", 6.5, 6.9)
        transcript = FileTranscript(20.0, "en", chunks=[ChunkText(0, 20, "x", words(*spoken))])
        found = segments(transcript)
        assert any(s.text.endswith("word13,") for s in found), "the comma is the best place to cut"
        assert all(s.end - s.start <= MAX_SEGMENT_SECONDS and len(s.text) <= MAX_SEGMENT_CHARS for s in found)
        assert " ".join(s.text for s in found) == " ".join(w for w, _, _ in spoken)

    def test_without_word_times_a_chunk_is_one_segment(self):
        transcript = FileTranscript(9.0, "en", chunks=[ChunkText(1.0, 9.0, "no word times here")])
        (only,) = segments(transcript)
        assert (only.start, only.end, only.text) == (1.0, 9.0, "no word times here")


class TestRender:
    def test_json_is_the_text_and_the_seconds_used(self):
        body, content_type = render(TWO_CHUNKS, "json", frozenset())
        assert json.loads(body) == {"text": "Hello there. How are you? Fine thanks",
                                    "usage": {"type": "duration", "seconds": 15}}
        assert content_type == "application/json"

    def test_text_is_the_plain_text(self):
        assert render(TWO_CHUNKS, "text", frozenset()) == ("Hello there. How are you? Fine thanks\n",
                                                          "text/plain; charset=utf-8")

    def test_srt_numbers_its_cues_from_one(self):
        body, _ = render(TWO_CHUNKS, "srt", frozenset())
        assert body == ("1\n00:00:00,500 --> 00:00:01,400\nHello there.\n\n"
                        "2\n00:00:02,000 --> 00:00:02,900\nHow are you?\n\n"
                        "3\n01:00:00,250 --> 01:00:01,000\nFine thanks\n")

    def test_vtt_starts_with_its_header(self):
        body, content_type = render(TWO_CHUNKS, "vtt", frozenset())
        assert body.startswith("WEBVTT\n\n00:00:00.500 --> 00:00:01.400\nHello there.\n\n")
        assert content_type.startswith("text/vtt")

    @pytest.mark.parametrize("granularities, keys", [
        (frozenset({"segment"}), {"segments"}),
        (frozenset({"word"}), {"words"}),
        (frozenset({"word", "segment"}), {"segments", "words"}),
    ])
    def test_verbose_json_lists_what_was_asked_for(self, granularities, keys):
        body = json.loads(render(TWO_CHUNKS, "verbose_json", granularities)[0])
        assert {"segments", "words"} & body.keys() == keys
        assert body["task"] == "transcribe" and body["language"] == "en" and body["duration"] == 14.2
        if "words" in keys:
            assert body["words"][0] == {"word": "Hello", "start": 0.5, "end": 0.9} and len(body["words"]) == 7
        if "segments" in keys:
            first = body["segments"][0]
            assert first["id"] == 0 and first["seek"] == 50 and first["text"] == "Hello there."
            assert {"avg_logprob", "compression_ratio", "no_speech_prob", "temperature", "tokens"} <= first.keys()

    def test_the_openai_client_reads_verbose_json_as_its_own_type(self):
        from openai.types.audio import TranscriptionVerbose

        body = json.loads(render(TWO_CHUNKS, "verbose_json", frozenset({"word", "segment"}))[0])
        parsed = TranscriptionVerbose.model_validate(body)
        assert parsed.segments[2].start == 3600.25 and parsed.words[-1].word == "thanks"
