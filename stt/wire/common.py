"""What both directions of the protocol share: its version, the audio format, the WebSocket
subprotocols, and the field types a session's config and the server's echo of it both use
(keyterms, prompt, endpointing eagerness). Nothing here imports Django or the model."""

from __future__ import annotations

import unicodedata
from typing import Annotated, Literal, get_args

from pydantic import AfterValidator, StringConstraints

PROTOCOL_VERSION = "1.0"
SAMPLE_RATE = 16000
# WebSocket subprotocols: the one the server answers with, and the form a browser uses
# to carry a token (it cannot set an Authorization header).
SUBPROTOCOL = "fasttalk"
AUTH_SUBPROTOCOL_PREFIX = "fasttalk.auth."


def token_subprotocols(token: str) -> list[str]:
    """The subprotocols a client offers to authenticate with a token from POST /auth/token."""
    return [SUBPROTOCOL, f"{AUTH_SUBPROTOCOL_PREFIX}{token}"]


# Keyterms (session_config.keyterms, a runtime profile's vocabulary): at most this many,
# each at most this many characters.
MAX_KEYTERMS = 100
MAX_KEYTERM_CHARS = 64


# Characters refused in text a client sends (keyterms, prompt, user_id, conversation_id):
# Unicode Cc (C0, DEL, C1 controls), Cf (format: bidi embeddings, overrides and isolates,
# zero-width space, word joiner, soft hyphen, BOM, tags), Co (private use), Cs (lone
# surrogates, which JSON's "\\ud800" can carry), Zl and Zp (line and paragraph
# separators). They are invisible or unprintable, so they let a value look like another
# one (in the admin, the history, logs) or reorder what is shown around it, and no
# transcript needs them. Unassigned code points (Cn) pass: newer emoji and scripts are
# unassigned to an older Python.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Co", "Cs", "Zl", "Zp"})
# Zero-width joiner and non-joiner: Persian (می‌خواهم), Indic scripts and emoji sequences
# need them between two visible characters, so text (keyterms, the prompt) keeps them
# there; identifiers never do.
JOINERS = frozenset({"\u200c", "\u200d"})


def has_control_characters(value: str, allow_joiners: bool = False) -> bool:
    """Whether a value holds an invisible or control character (see _REFUSED_CATEGORIES;
    C0 whitespace, a line break included, is one too). With `allow_joiners`, a ZWJ or
    ZWNJ between two visible characters is not."""
    for index, ch in enumerate(value):
        if ch.isprintable() and ch not in JOINERS:
            continue  # the common case, fast: printable excludes every refused category
        if unicodedata.category(ch) not in _REFUSED_CATEGORIES and ch not in JOINERS:
            continue  # a space, or another separator Python deems unprintable (Zs)
        if allow_joiners and ch in JOINERS and _joins(value, index):
            continue
        return True
    return False


def _joins(value: str, index: int) -> bool:
    """Whether the joiner at `index` stands between two visible characters."""
    if index == 0 or index == len(value) - 1:
        return False
    return all(neighbour.isprintable() and not neighbour.isspace() and neighbour not in JOINERS
               for neighbour in (value[index - 1], value[index + 1]))


_REFUSED_MESSAGE = "must not contain invisible or control characters"


def clean_keyterm(value: str) -> str:
    """A keyterm as the server keeps it: whitespace runs collapsed, ends trimmed; a
    ValueError for one that is empty or holds invisible or control characters."""
    if has_control_characters(value, allow_joiners=True):
        raise ValueError(f"{_REFUSED_MESSAGE} (one term per item; a ZWJ or ZWNJ only between letters)")
    cleaned = " ".join(value.split())
    if not cleaned:
        raise ValueError("must not be empty")
    return cleaned


def clean_identifier(value: str | None) -> str | None:
    """user_id, conversation_id: any visible text, no invisible or control character."""
    if value is not None and has_control_characters(value):
        raise ValueError(_REFUSED_MESSAGE)
    return value


Keyterm = Annotated[str, StringConstraints(max_length=MAX_KEYTERM_CHARS), AfterValidator(clean_keyterm)]

# The session's prompt (session_config.prompt): free text read as what was said before the
# audio. The decoder reads at most 223 tokens of prompt (about 900 characters of English),
# of which only the latest words that fit after the keyterms are used; this bound only
# keeps the echo of the config and the history record small.
MAX_PROMPT_CHARS = 2000


def clean_prompt(value: str) -> str:
    """A prompt as the server keeps it: whitespace runs (line breaks too) collapsed to one
    space, ends trimmed ("" for none); a ValueError for one holding other invisible or
    control characters."""
    cleaned = " ".join(value.split())
    if has_control_characters(cleaned, allow_joiners=True):
        raise ValueError(f"{_REFUSED_MESSAGE} (line breaks and tabs are fine; a ZWJ or ZWNJ only between letters)")
    return cleaned


Prompt = Annotated[str, StringConstraints(max_length=MAX_PROMPT_CHARS), AfterValidator(clean_prompt)]

# Semantic endpointing (session_config.endpointing, a runtime profile's, ENDPOINTING_EAGERNESS):
# "off" ends an utterance after a fixed silence; the others sooner after a finished sentence.
Eagerness = Literal["off", "low", "medium", "high"]
EAGERNESS_LEVELS: tuple[str, ...] = get_args(Eagerness)

