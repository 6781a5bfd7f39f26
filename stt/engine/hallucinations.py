"""Hallucinations: text Whisper writes for what is not speech.

On a fragment of audio with little speech in it (a breath, the tail of a word cut off by
an utterance boundary), Whisper may write "Thank you for watching!". Read as what came
before, a conversation's previous words make this likelier. Such a result is dropped
(an empty decode) when the decoder itself was unsure of it; a confident "Thank you." is
speech and stays.
"""

from __future__ import annotations

from stt.evaluation import normalize_text

# Below this mean word probability a stock phrase is taken for a hallucination.
MAX_CONFIDENCE = 0.5
# Audio shorter than this (seconds) needs at least this confidence to count as speech.
SHORT_AUDIO_SECONDS = 1.0
MIN_CONFIDENCE_ON_SHORT_AUDIO = 0.3

# Whole texts, and beginnings of texts, that Whisper writes for non-speech.
_STOCK_TEXTS = frozenset({
    "thank you for watching", "thanks for watching", "thank you for listening", "thanks for listening",
    "please subscribe", "subscribe to my channel", "like and subscribe", "see you in the next video",
    "see you next time", "thank you", "you",
})
_STOCK_BEGINNINGS = (
    "thank you for watching", "thanks for watching", "please subscribe", "don't forget to subscribe",
    "subtitles by", "subtitles made by", "transcribed by",
)


def is_stock_phrase(text: str) -> bool:
    """The whole text is one of Whisper's stock phrases (any case and punctuation)."""
    words = " ".join(normalize_text(text))
    return words in _STOCK_TEXTS or any(words.startswith(beginning + " ") for beginning in _STOCK_BEGINNINGS)


def is_hallucination(text: str, confidence: float, audio_seconds: float) -> bool:
    """A stock phrase the decoder was unsure of, or any text it was very unsure of on
    under a second of audio (a breath or a cut-off word between utterances; a first
    guess at a word just begun, which the next partial would only take back)."""
    if confidence < MAX_CONFIDENCE and is_stock_phrase(text):
        return True
    return audio_seconds < SHORT_AUDIO_SECONDS and confidence < MIN_CONFIDENCE_ON_SHORT_AUDIO
