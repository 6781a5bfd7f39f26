"""Digit strings written one way, digit by digit ("9 0 2 1 0"), whatever the decode.

Whisper writes a spoken digit string either way: "1 0 0 0 1 9 0 2 1 0" from a whole
recording, "10001" or "90210." from the same phrases decoded alone, as a stream decodes
each utterance. A run of digits is read digit by digit (a code, a phone or account
number, a zip code), so every text the engine gives writes it that way; quantities stay
as the model wrote them.

The rule. A run of ASCII digits is spaced out when both hold:
  - it stands as a word of its own: after the start of the text, a space or an opening
    bracket or double quote, and before the end or a space, through closing punctuation
    at most (. , ! ? ; : ) ] } " ” ' ’). Whatever joins it to other digits, letters or
    symbols keeps it as written: "3.5", "10,001", "12:30", "90210-1234", "$20000",
    "50%", "-12345", "#12345", "5th", "'07" (an abbreviated year);
  - it has 5 digits or more, or 2 to 4 digits starting with 0 ("07", "0118"). Up to 4
    digits not starting with 0 may be a quantity or a year ("15", "911", "2026") and stay;
    Whisper writes longer quantities with separators ("100,000"), and a leading 0 marks a
    code, never a quantity (so "0800" becomes "0 8 0 0" too).
Only ASCII digits count: other scripts' digits, and texts of languages written without
spaces (a run right after a letter), are left alone.
"""

from __future__ import annotations

import re
from typing import Sequence

# A run of digits standing as a word: nothing but the start, a space or an opening
# bracket or double quote before it; closing punctuation and then the end or a space after.
_STANDALONE_RUN = re.compile(r"(?<![^\s(\[{\"“])[0-9]+(?=[.,!?;:)\]}\"”'’]*(?:\s|$))")


def is_digit_string(run: str) -> bool:
    """Whether a standalone run of digits is a digit string (spaced out), not a quantity."""
    return len(run) >= 5 or (2 <= len(run) <= 4 and run.startswith("0"))


def space_digits(text: str) -> str:
    """The text with its digit strings written digit by digit: "Call 90210." -> "Call 9 0 2 1 0."."""
    return _STANDALONE_RUN.sub(lambda m: " ".join(m.group()) if is_digit_string(m.group()) else m.group(), text)


def space_digits_in_parts(parts: Sequence[str]) -> list[str]:
    """space_digits() of the parts' concatenation, cut back into the parts: each part
    (a word, a piece of a hypothesis) is judged in the context of its neighbours, so
    " 20000" before "%" stays as it is, as it does in the whole text."""
    joined = "".join(parts)
    spaced_at: set[int] = set()  # positions a space goes before: each digit of a digit string but its first
    for match in _STANDALONE_RUN.finditer(joined):
        if is_digit_string(match.group()):
            spaced_at.update(range(match.start() + 1, match.end()))
    if not spaced_at:
        return list(parts)
    result: list[str] = []
    offset = 0
    for part in parts:
        result.append("".join(" " + char if offset + i in spaced_at else char for i, char in enumerate(part)))
        offset += len(part)
    return result


def split_evenly(text: str, start: float, end: float) -> list[tuple[str, float, float]]:
    """A timed word cut at its spaces, the time shared evenly: ("9 0 2 1 0.", 0, 1) ->
    [("9", 0, 0.2), ("0", 0.2, 0.4), ...,  ("0.", 0.8, 1)]. A word without spaces is
    returned whole (stripped)."""
    words = text.split()
    if len(words) <= 1:
        return [(text.strip(), start, end)]
    step = (end - start) / len(words)
    return [(word, start + i * step, end if i == len(words) - 1 else start + (i + 1) * step)
            for i, word in enumerate(words)]
