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


def marked_word_errors(reference: str, hypothesis: str) -> dict[str, tuple[int, int]]:
    """Word errors split between the words of `reference` marked in [brackets] (names,
    say) and the others: {"marked": (errors, words), "other": (errors, words)}. Each
    substitution or deletion counts for the class of the reference word; an insertion
    counts as marked when it stands next to a marked word ("Shivon, and I" for
    "Siobhan"), else as other. Texts are normalized as for word_error_rate."""
    ref: list[tuple[str, bool]] = []
    for part in re.split(r"(\[[^\]]*\])", reference):
        marked = part.startswith("[")
        ref.extend((word, marked) for word in normalize_text(part.strip("[]")))
    hyp = normalize_text(hypothesis)
    table = [[i + j if i == 0 or j == 0 else 0 for j in range(len(hyp) + 1)] for i in range(len(ref) + 1)]
    for i in range(1, len(ref) + 1):
        for j in range(1, len(hyp) + 1):
            table[i][j] = min(table[i - 1][j] + 1, table[i][j - 1] + 1,
                              table[i - 1][j - 1] + (ref[i - 1][0] != hyp[j - 1]))
    errors = {True: 0, False: 0}
    i, j = len(ref), len(hyp)
    while i > 0 or j > 0:  # walk the alignment back, charging each edit to a class
        if i > 0 and j > 0 and table[i][j] == table[i - 1][j - 1] + (ref[i - 1][0] != hyp[j - 1]):
            errors[ref[i - 1][1]] += ref[i - 1][0] != hyp[j - 1]
            i, j = i - 1, j - 1
        elif i > 0 and table[i][j] == table[i - 1][j] + 1:
            errors[ref[i - 1][1]] += 1
            i -= 1
        else:
            errors[any(ref[k][1] for k in (i - 1, i) if 0 <= k < len(ref))] += 1
            j -= 1
    counts = {marked: sum(1 for _, m in ref if m == marked) for marked in (True, False)}
    return {"marked": (errors[True], counts[True]), "other": (errors[False], counts[False])}
