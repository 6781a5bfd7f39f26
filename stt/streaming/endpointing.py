"""Semantic endpointing: how much silence ends an utterance, judged from what was said.

A voice assistant cannot answer before the final, and most of the final's delay used
to be a fixed end-of-utterance silence. Here the silence depends on the hypothesis of
the speech so far (the final decoded ahead of time, once a short pause begins):

- COMPLETE: it ends a sentence or question ("Turn the lights off."). A short silence
  ends the utterance, shorter the higher the eagerness.
- INCOMPLETE: it plainly goes on: a trailing comma or dash, or a last word that
  cannot end an English sentence ("I would like to book a table for"). The utterance
  waits a multiple of the session's final_chunk_duration, so a speaker who pauses
  mid-sentence is not cut in two.
- UNCERTAIN: anything else (no final punctuation, a number at the end: numbers are
  dictated in groups, a language without these rules). The
  session's final_chunk_duration, as without semantic endpointing.

The judgement uses only the decoder's text (its punctuation is learned from prosody
as well as words), so it costs nothing beyond the speculative final, which is the
final itself when the utterance does end there. Eagerness "off" keeps the fixed
final_chunk_duration for every hypothesis.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from stt.audio import seconds_to_samples


class Completeness(enum.Enum):
    COMPLETE = "complete"
    INCOMPLETE = "incomplete"
    UNCERTAIN = "uncertain"


@dataclass(frozen=True)
class EagernessTimings:
    complete_seconds: float  # silence that ends a complete hypothesis
    incomplete_factor: float  # an incomplete one waits final_chunk_duration x this


# Measured against the VAD's end of speech, which already trails the last word by a
# few tens of milliseconds (silero's probabilities decay, plus the hysteresis).
TIMINGS = {
    "high": EagernessTimings(complete_seconds=0.096, incomplete_factor=1.5),
    "medium": EagernessTimings(complete_seconds=0.160, incomplete_factor=2.5),
    "low": EagernessTimings(complete_seconds=0.320, incomplete_factor=4.0),
}

# Silence after which the final is decoded ahead of time for the judgement (two VAD
# windows): short enough that its decode runs while the complete-sentence silence does.
JUDGEMENT_SILENCE_SECONDS = 0.064

# Words after which an English sentence does not end, whatever the punctuation:
# articles, conjunctions, possessives, hesitations (Whisper often ends a cut-off phrase
# with a period anyway: "I'd like the.").
_ALWAYS_DANGLING = frozenset("""
a an the and or but nor because although though unless whereas whether
my your our their whose um uh er erm
""".split())
# Words that do not end a statement, though a question may end with them ("Where are
# you from?"): prepositions that need an object, subject pronouns. Words that often
# end a sentence in speech ("on", "in", "up", "off", "that", "so", "you", "is") are not here.
_DANGLING_IN_STATEMENTS = frozenset("""
of to for with from at by into onto about than as like via per if while
i we they he she
""".split())
_TRAILING_CONTINUATION = re.compile(r"(,|;|:|-|–|—|\.\.\.|…)$")
_QUESTION_OR_EXCLAMATION = re.compile(r"[?!？！]['\"”’)\]]*$")
_STATEMENT_END = re.compile(r"[.。]['\"”’)\]]*$")


def completeness(text: str) -> Completeness:
    """Whether a hypothesis sounds finished (see the module docstring)."""
    stripped = text.strip()
    if not stripped:
        return Completeness.UNCERTAIN
    if _TRAILING_CONTINUATION.search(stripped):
        return Completeness.INCOMPLETE
    last_word = re.sub(r"[^\w']", "", stripped.split()[-1].lower())
    if last_word in _ALWAYS_DANGLING:
        return Completeness.INCOMPLETE
    if _QUESTION_OR_EXCLAMATION.search(stripped):
        return Completeness.COMPLETE
    if last_word.isdigit():
        return Completeness.UNCERTAIN  # numbers are dictated in groups, with pauses between
    if last_word in _DANGLING_IN_STATEMENTS:
        return Completeness.INCOMPLETE
    if _STATEMENT_END.search(stripped):
        return Completeness.COMPLETE
    return Completeness.UNCERTAIN


def required_silence(verdict: Completeness, eagerness: str, end_silence: int) -> int:
    """Samples of silence that end an utterance whose hypothesis got `verdict`, at this
    eagerness; `end_silence` is the session's final_chunk_duration in samples."""
    timings = TIMINGS.get(eagerness)
    if timings is None:  # "off"
        return end_silence
    if verdict is Completeness.COMPLETE:
        return min(end_silence, seconds_to_samples(timings.complete_seconds))
    if verdict is Completeness.INCOMPLETE:
        return int(end_silence * timings.incomplete_factor)
    return end_silence


def judgement_silence(eagerness: str) -> int | None:
    """Silence after which a final is decoded for the judgement; None when off."""
    return seconds_to_samples(JUDGEMENT_SILENCE_SECONDS) if eagerness in TIMINGS else None
