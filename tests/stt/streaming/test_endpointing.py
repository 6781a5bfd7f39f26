"""Semantic endpointing: the hypothesis so far decides the silence that ends an utterance."""

from __future__ import annotations

import pytest

from stt.messages import EAGERNESS_LEVELS
from stt.streaming.endpointing import (
    TIMINGS,
    Completeness,
    completeness,
    judgement_silence,
    required_silence,
)
from tests.conftest import SAMPLE_RATE

END_SILENCE = SAMPLE_RATE // 2  # the default final_chunk_duration, 0.5 s


class TestCompleteness:
    @pytest.mark.parametrize("text", [
        "Turn the lights off.", "What's the weather like tomorrow?", "Stop!", "Yes.", "Yes it is.",
        "Where are you from?", "Play some music in the living room.", "Thank you.",
    ])
    def test_a_finished_sentence_or_question_is_complete(self, text):
        assert completeness(text) is Completeness.COMPLETE

    @pytest.mark.parametrize("text", [
        "I would like to book a table for", "I would like to book a table for.",  # Whisper's period on a cut-off
        "ask not what your country can do for you,", "Call my mother and", "Set it to the.",
        "Well, I think that...", "So the plan is:", "Send it to my", "Um.", "because",
    ])
    def test_a_plainly_unfinished_one_is_incomplete(self, text):
        assert completeness(text) is Completeness.INCOMPLETE

    @pytest.mark.parametrize("text", ["", "   ", "Hello", "1 0 0 0 1", "turn on the lights", "9 0 2 1 0.",
                                      "Call 555."])
    def test_without_final_punctuation_it_is_uncertain(self, text):
        assert completeness(text) is Completeness.UNCERTAIN


class TestRequiredSilence:
    def test_off_keeps_the_end_silence_whatever_was_said(self):
        for verdict in Completeness:
            assert required_silence(verdict, "off", END_SILENCE) == END_SILENCE
        assert judgement_silence("off") is None

    def test_a_complete_sentence_ends_sooner_the_higher_the_eagerness(self):
        low, medium, high = (required_silence(Completeness.COMPLETE, e, END_SILENCE) for e in ("low", "medium", "high"))
        assert high < medium < low < END_SILENCE
        assert medium == round(TIMINGS["medium"].complete_seconds * SAMPLE_RATE)

    def test_a_complete_sentence_never_waits_longer_than_the_end_silence(self):
        short = SAMPLE_RATE // 10
        assert required_silence(Completeness.COMPLETE, "low", short) == short

    def test_an_incomplete_one_waits_longer_the_lower_the_eagerness(self):
        waits = [required_silence(Completeness.INCOMPLETE, e, END_SILENCE) for e in ("high", "medium", "low")]
        assert END_SILENCE < waits[0] < waits[1] < waits[2]
        assert waits[1] == int(2.5 * END_SILENCE)

    def test_an_uncertain_one_keeps_the_end_silence(self):
        for eagerness in EAGERNESS_LEVELS:
            assert required_silence(Completeness.UNCERTAIN, eagerness, END_SILENCE) == END_SILENCE

    def test_the_judgement_comes_before_the_shortest_complete_silence(self):
        for eagerness in ("low", "medium", "high"):
            assert judgement_silence(eagerness) < required_silence(Completeness.COMPLETE, eagerness, END_SILENCE)
