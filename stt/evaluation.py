"""Comparing transcripts: text normalization and word error rate."""

from __future__ import annotations

import difflib
import re

_NUMBER_WORDS = {
    "0": "zero", "1": "one", "2": "two", "3": "three", "4": "four",
    "5": "five", "6": "six", "7": "seven", "8": "eight", "9": "nine", "10": "ten",
}


def normalize_text(text: str) -> list[str]:
    """Lower-case words without punctuation; small numerals spelled out."""
    text = text.lower().replace("’", "'")
    text = re.sub(r"[^\w\s']", " ", text)
    words = [w.strip("'") for w in text.split()]
    return [_NUMBER_WORDS.get(w, w) for w in words if w]


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(edit distance in words, reference length) after normalization."""
    ref, hyp = normalize_text(reference), normalize_text(hypothesis)
    previous = list(range(len(hyp) + 1))
    for i, ref_word in enumerate(ref, start=1):
        current = [i] + [0] * len(hyp)
        for j, hyp_word in enumerate(hyp, start=1):
            current[j] = min(
                previous[j] + 1,  # deletion
                current[j - 1] + 1,  # insertion
                previous[j - 1] + (ref_word != hyp_word),  # substitution
            )
        previous = current
    return previous[-1], len(ref)


def word_error_rate(reference: str, hypothesis: str) -> float:
    errors, length = word_errors(reference, hypothesis)
    return errors / length if length else float(bool(normalize_text(hypothesis)))


def _comparable_words(text: str) -> tuple[list[str], list[str]]:
    """(words as written, their normalized forms), skipping bare punctuation."""
    shown, keys = [], []
    for token in text.split():
        key = " ".join(normalize_text(token))
        if key:
            shown.append(token)
            keys.append(key)
    return shown, keys


def word_diff(live: str, refined: str) -> list[dict[str, object]]:
    """Where two transcripts of the same audio part ways, word by word (case and
    punctuation aside): runs of {"op": equal|replace|delete|insert, "live": [...],
    "refined": [...]}, covering both texts in order."""
    live_words, live_keys = _comparable_words(live)
    refined_words, refined_keys = _comparable_words(refined)
    matcher = difflib.SequenceMatcher(a=live_keys, b=refined_keys, autojunk=False)
    return [
        {"op": op, "live": live_words[i1:i2], "refined": refined_words[j1:j2]}
        for op, i1, i2, j1, j2 in matcher.get_opcodes()
    ]
