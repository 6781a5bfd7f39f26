"""Language codes the service understands: Whisper's, written as ISO 639-1 or BCP-47."""

from __future__ import annotations

from faster_whisper.tokenizer import _LANGUAGE_CODES

WHISPER_LANGUAGES: frozenset[str] = frozenset(_LANGUAGE_CODES)
# Spellings that mean "detect the language".
AUTO_LANGUAGE = frozenset({"", "auto"})


def normalize_language(value: str | None) -> str | None:
    """'en', 'EN', 'en-US' and 'en_GB' all become 'en'; None/'auto' mean detection.

    Raises ValueError for a code Whisper does not know.
    """
    if value is None:
        return None
    code = value.strip().lower()
    if code in AUTO_LANGUAGE:
        return None
    primary = code.replace("_", "-").split("-", 1)[0]
    if primary not in WHISPER_LANGUAGES:
        raise ValueError(f"unknown language code {value!r}; use an ISO 639-1 code Whisper supports, e.g. 'en'")
    return primary
