"""Text Whisper invents for what is not speech is recognised, and real speech is not."""

from __future__ import annotations

import pytest

from stt.engine.hallucinations import is_hallucination, is_stock_phrase


@pytest.mark.parametrize("text", [
    "Thank you for watching!", "thanks for watching", "Please subscribe.", "Subtitles by the Amara.org community",
    "Thank you.", "you", "THANK YOU FOR WATCHING AND SEE YOU NEXT TIME",
])
def test_whispers_stock_phrases_are_known(text):
    assert is_stock_phrase(text)


@pytest.mark.parametrize("text", [
    "Thank you for the help.", "Ask not!", "Please turn on the lights.", "you know what I mean", "Bye.", "",
])
def test_speech_that_merely_resembles_them_is_not(text):
    assert not is_stock_phrase(text)


def test_a_stock_phrase_counts_as_invented_only_when_the_decoder_was_unsure():
    assert is_hallucination("Thank you for watching!", confidence=0.33, audio_seconds=3.0)
    assert not is_hallucination("Thank you.", confidence=0.9, audio_seconds=0.6), "a confident thank-you is speech"


def test_very_unsure_text_on_under_a_second_of_audio_counts_as_invented():
    assert is_hallucination("Bye", confidence=0.06, audio_seconds=0.36)
    assert not is_hallucination("Bye", confidence=0.06, audio_seconds=2.0), "longer audio: the decoder's call"
    assert not is_hallucination("Yes.", confidence=0.6, audio_seconds=0.5)
