"""What both directions of the protocol share: its version, the audio format, the WebSocket
subprotocols, and the field types a session's config and the server's echo of it both use
(keyterms, prompt, endpointing eagerness). Nothing here imports Django or the model."""

from __future__ import annotations

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


def has_control_characters(value: str) -> bool:
    """Whether a value holds a C0 control character or DEL (a line break included)."""
    return any(ord(ch) < 32 or ord(ch) == 127 for ch in value)


def clean_keyterm(value: str) -> str:
    """A keyterm as the server keeps it: whitespace runs collapsed, ends trimmed; a
    ValueError for one that is empty or holds control characters."""
    if has_control_characters(value):
        raise ValueError("must not contain control characters (one term per item)")
    cleaned = " ".join(value.split())
    if not cleaned:
        raise ValueError("must not be empty")
    return cleaned


Keyterm = Annotated[str, StringConstraints(max_length=MAX_KEYTERM_CHARS), AfterValidator(clean_keyterm)]

# The session's prompt (session_config.prompt): free text read as what was said before the
# audio. The decoder reads at most 223 tokens of prompt (about 900 characters of English),
# of which only the latest words that fit after the keyterms are used; this bound only
# keeps the echo of the config and the history record small.
MAX_PROMPT_CHARS = 2000


def clean_prompt(value: str) -> str:
    """A prompt as the server keeps it: whitespace runs (line breaks too) collapsed to one
    space, ends trimmed ("" for none); a ValueError for one holding other control characters."""
    cleaned = " ".join(value.split())
    if has_control_characters(cleaned):
        raise ValueError("must not contain control characters")
    return cleaned


Prompt = Annotated[str, StringConstraints(max_length=MAX_PROMPT_CHARS), AfterValidator(clean_prompt)]

# Semantic endpointing (session_config.endpointing, a runtime profile's, ENDPOINTING_EAGERNESS):
# "off" ends an utterance after a fixed silence; the others sooner after a finished sentence.
Eagerness = Literal["off", "low", "medium", "high"]
EAGERNESS_LEVELS: tuple[str, ...] = get_args(Eagerness)

