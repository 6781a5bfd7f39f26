"""Pure measures behind bench/turn_latency.py: where speech ends in the audio, how a
streamed transcript's words were revised, and where its finals fall in the reference's
sentences. Word lists are normalized words (stt.evaluation.normalize_text)."""

from __future__ import annotations

import re

import numpy as np

from stt.evaluation import normalize_text

LEVEL_FRAME_MS = 10
LOUD_WITHIN_DB = 15.0  # as bench/stream_latency.py's energy_onset_ms
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def frame_levels(audio: np.ndarray, sample_rate: int = 16000) -> np.ndarray:
    """RMS level of each whole 10 ms frame."""
    frame = sample_rate * LEVEL_FRAME_MS // 1000
    return np.sqrt(np.mean(audio[: audio.size // frame * frame].reshape(-1, frame) ** 2, axis=1))


def energy_offset_ms(audio: np.ndarray, start_ms: float, end_ms: float, sample_rate: int = 16000) -> float | None:
    """Where the last speech within [start_ms, end_ms) of `audio` ends: the end of the
    last 10 ms frame whose level is within 15 dB of the recording's loud frames (its
    95th percentile), or None when no such frame lies there. Measured on the audio
    alone, so it does not depend on the VAD or the model under test."""
    levels = frame_levels(audio, sample_rate)
    threshold = np.percentile(levels, 95) * 10 ** (-LOUD_WITHIN_DB / 20)
    first = max(0, int(start_ms // LEVEL_FRAME_MS))
    last = min(levels.size, int(np.ceil(end_ms / LEVEL_FRAME_MS)))
    loud = np.nonzero(levels[first:last] >= threshold)[0]
    if loud.size == 0:
        return None
    return float((first + loud[-1] + 1) * LEVEL_FRAME_MS)


def stable_words_changed(stable_texts: list[list[str]], final: list[str]) -> int:
    """Words a partial committed (its stable_text) that some later partial's stable_text
    or the final does not hold, the same word at the same position. A word committed
    by several partials and then changed counts once: one (position, word) pair."""
    changed: set[tuple[int, str]] = set()
    for index, stable in enumerate(stable_texts):
        later = stable_texts[index + 1:] + [final]
        for position, word in enumerate(stable):
            if any(position >= len(other) or other[position] != word for other in later):
                changed.add((position, word))
    return len(changed)


def revised_words(partial_texts: list[list[str]], final: list[str]) -> int:
    """Distinct (position, word) pairs shown in any partial's text that are not the
    final's word at that position: every word a reader saw that was later taken back."""
    shown = {(position, word) for words in partial_texts for position, word in enumerate(words)}
    return sum(1 for position, word in shown if position >= len(final) or final[position] != word)


def alignment_path(reference: list[str], hypothesis: list[str]) -> list[tuple[int, int]]:
    """A minimal word edit-distance alignment, as the (reference words, hypothesis words)
    consumed after each step, from (0, 0) to (len(reference), len(hypothesis)). Ties
    prefer a match or substitution, then a deletion, then an insertion."""
    rows, cols = len(reference), len(hypothesis)
    cost = [[i + j if i == 0 or j == 0 else 0 for j in range(cols + 1)] for i in range(rows + 1)]
    for i in range(1, rows + 1):
        for j in range(1, cols + 1):
            cost[i][j] = min(cost[i - 1][j - 1] + (reference[i - 1] != hypothesis[j - 1]),
                             cost[i - 1][j] + 1, cost[i][j - 1] + 1)
    path = [(rows, cols)]
    i, j = rows, cols
    while i or j:
        if i and j and cost[i][j] == cost[i - 1][j - 1] + (reference[i - 1] != hypothesis[j - 1]):
            i, j = i - 1, j - 1
        elif i and cost[i][j] == cost[i - 1][j] + 1:
            i -= 1
        else:
            j -= 1
        path.append((i, j))
    return path[::-1]


def spell_digits(words: list[str]) -> list[str]:
    """Numerals the model wrote as one token ("90210", "01803") spelled digit by digit, so
    a spoken digit string keeps its length in words when aligned to a reference that
    spells it ("nine oh two one oh"); normalize_text spells only whole small numbers."""
    spelled: list[str] = []
    for word in words:
        if word.isascii() and word.isdigit():
            spelled.extend(DIGITS[int(digit)] for digit in word)
        else:
            spelled.append(word)
    return spelled


def sentence_ends(reference: str) -> list[int]:
    """Normalized word counts at which the reference's sentences end: after each
    . ? or ! and at its end."""
    ends, count = [], 0
    for sentence in re.split(r"[.?!]", reference):
        words = len(normalize_text(sentence))
        if words:
            count += words
            ends.append(count)
    return ends


def final_end_positions(reference: list[str], finals: list[list[str]]) -> list[set[int]]:
    """For each non-empty final, the reference word counts its end may stand at: every
    reference position the alignment of the concatenated finals to the reference passes
    while exactly the words up to that final's end are consumed (several when words
    next to the boundary were dropped or added)."""
    path = alignment_path(reference, [word for final in finals for word in final])
    boundaries, consumed = [], 0
    for final in finals:
        if final:
            consumed += len(final)
            boundaries.append(consumed)
    return [{i for i, j in path if j == boundary} for boundary in boundaries]


def sentences_cut(reference: list[str], ends: list[int], finals: list[list[str]]) -> int:
    """Finals that end inside a reference sentence: none of the positions their end maps
    to is a sentence end or the clip's start (a final of invented words before any
    speech cuts nothing)."""
    boundaries = {0, *ends}
    return sum(1 for positions in final_end_positions(reference, finals) if not positions & boundaries)
