"""The decoder prompt: keyterms and context text composed into DecodeOptions.prompt.

Whisper reads the prompt as the text that came before the audio, so words written
there are spelled that way when the audio sounds like them: "Siobhan Nakamura" in the
prompt turns tiny.en's "Shivon" into the name. Keyterms (a session's, then its runtime
profile's vocabulary) are written as one comma-separated list ending with a period,
after any context text (a session's prompt, session_config.prompt), so they sit nearest
the transcript.

The decoder keeps only the prompt's last MAX_CONTEXT_TOKENS tokens (decoding.py), and
each prompt token is decoder work for every partial and final. A composed prompt is
therefore held to a token budget: keyterms are taken in priority order as long as they
fit (whole terms, never cut), and the context gets the tokens left, its latest words
kept. Nothing here needs the model: tokens are counted by the function passed in
(`token_counter(tokenizer)` for the model's own tokenizer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from stt.engine.decoding import MAX_CONTEXT_TOKENS
# The protocol's limits (a session may send MAX_KEYTERMS, a profile may hold as many;
# merged, the first MAX_KEYTERMS count).
from stt.messages import MAX_KEYTERM_CHARS, MAX_KEYTERMS

__all__ = ["MAX_KEYTERMS", "MAX_KEYTERM_CHARS", "ComposedPrompt", "compose_prompt", "merge_keyterms",
           "token_counter"]

TokenCounter = Callable[[str], int]


@dataclass(frozen=True)
class ComposedPrompt:
    text: str  # what DecodeOptions.prompt carries; "" without keyterms or context
    terms: tuple[str, ...]  # the keyterms written into it, in priority order
    dropped: tuple[str, ...]  # keyterms left out: beyond MAX_KEYTERMS or the token budget
    tokens: int  # its length in tokens, as the decoder reads it
    context: str = ""  # the context words written into it (its start, before the keyterms)


def clean_term(term: str) -> str:
    """A keyterm with its whitespace collapsed (inner runs to one space, ends trimmed)."""
    return " ".join(term.split())


def merge_keyterms(*lists: Iterable[str]) -> list[str]:
    """The keyterms of several lists, in order, each once: whitespace collapsed, empty
    ones skipped, a later spelling of a term already taken (case aside) skipped."""
    merged: list[str] = []
    seen: set[str] = set()
    for terms in lists:
        for term in terms:
            cleaned = clean_term(term)
            key = cleaned.casefold()
            if cleaned and key not in seen:
                seen.add(key)
                merged.append(cleaned)
    return merged


def keyterm_text(terms: Sequence[str]) -> str:
    """How keyterms are written into the prompt: "Siobhan Nakamura, Reykjavik."."""
    return f"{', '.join(terms)}." if terms else ""


def compose_prompt(keyterms: Sequence[str], context: str = "", *, count_tokens: TokenCounter,
                   max_tokens: int = MAX_CONTEXT_TOKENS) -> ComposedPrompt:
    """The decoder prompt for `keyterms` (in priority order, as merge_keyterms gives
    them) and `context` (free text, e.g. what was said before), at most `max_tokens`
    tokens (and never more than the decoder keeps). Keyterms come first in the budget:
    each is taken if the list still fits with it, up to MAX_KEYTERMS; the context then
    keeps its latest words that fit in what is left."""
    budget = max(0, min(max_tokens, MAX_CONTEXT_TOKENS))
    candidates = merge_keyterms(keyterms)
    taken: list[str] = []
    used = 0
    for term in candidates:
        cost = count_tokens(term) + 1  # the term and its comma (the last one's period)
        if len(taken) < MAX_KEYTERMS and used + cost <= budget:
            taken.append(term)
            used += cost
    while taken and count_tokens(keyterm_text(taken)) > budget:  # the estimate fell short
        taken.pop()
    kept = set(taken)
    dropped = [term for term in candidates if term not in kept]
    terms_text = keyterm_text(taken)
    context_text = _latest_words_that_fit(context, terms_text, budget, count_tokens)
    text = " ".join(part for part in (context_text, terms_text) if part)
    return ComposedPrompt(text, tuple(taken), tuple(dropped), count_tokens(text) if text else 0, context_text)


def _latest_words_that_fit(context: str, terms_text: str, budget: int, count_tokens: TokenCounter) -> str:
    """The longest tail of `context` (whole words) that fits in the budget before `terms_text`."""
    words = context.split()

    def fits(start: int) -> bool:
        text = " ".join(part for part in (" ".join(words[start:]), terms_text) if part)
        return count_tokens(text) <= budget

    low, high = 0, len(words)  # binary search: the earliest start that fits
    while low < high:
        middle = (low + high) // 2
        if fits(middle):
            high = middle
        else:
            low = middle + 1
    return " ".join(words[low:])


def token_counter(tokenizer: Any) -> TokenCounter:
    """Counts tokens as decoding.context_tokens does (the text after a leading space)."""
    return lambda text: len(tokenizer.encode(" " + text.strip())) if text.strip() else 0
