"""A transcription request's form fields, checked: what OpenAI's API takes, as this
server honours it (docs/protocol.md, *OpenAI-compatible HTTP API*)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from pydantic import TypeAdapter, ValidationError

from stt.languages import normalize_language
from stt.messages import Prompt
from stt.openai_api.catalog import ModelCatalog
from stt.openai_api.errors import ApiError, bad_request

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("segment", "word")
_PROMPT = TypeAdapter(Prompt)
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "")


@dataclass(frozen=True)
class TranscriptionRequest:
    model: str
    language: str | None  # None: the model's own (detection on multilingual models)
    prompt: str
    response_format: str
    granularities: frozenset[str]
    temperature: float
    stream: bool

    @property
    def word_timestamps(self) -> bool:
        """Word times are decoded when the answer shows them, or cuts segments from them."""
        return self.response_format in ("srt", "vtt") or (
            self.response_format == "verbose_json" and bool(self.granularities))

    def as_config(self) -> dict[str, Any]:
        """The request as the history keeps it (SessionRecord.config)."""
        return {"model": self.model, "language": self.language, "prompt": self.prompt,
                "response_format": self.response_format, "timestamp_granularities": sorted(self.granularities),
                "temperature": self.temperature, "stream": self.stream}


def parse_transcription_request(fields: Mapping[str, Any], catalog: ModelCatalog,
                                supports_language: Callable[[str | None], bool]) -> TranscriptionRequest:
    """The form's fields (a QueryDict: `getlist` for repeated ones) as a request, or
    ApiError (400) naming the first bad field. The file is checked by the caller."""
    model = _single(fields, "model")
    if not model:
        raise bad_request("you must provide a model parameter", "model", "missing_required_parameter")
    refused = catalog.refusal(model)
    if refused is not None:
        code, message = refused
        raise bad_request(message, "model", code)
    response_format = _single(fields, "response_format") or "json"
    if response_format not in RESPONSE_FORMATS:
        raise bad_request(f"response_format must be one of {', '.join(RESPONSE_FORMATS)}; got {response_format!r}",
                          "response_format")
    return TranscriptionRequest(
        model=model,
        language=_language(_single(fields, "language"), supports_language),
        prompt=_prompt(_single(fields, "prompt")),
        response_format=response_format,
        granularities=_granularities(fields, response_format),
        temperature=_temperature(_single(fields, "temperature")),
        stream=_flag(_single(fields, "stream"), "stream"),
    )


def _single(fields: Mapping[str, Any], name: str) -> str:
    value = fields.get(name)
    return value if isinstance(value, str) else ""


def _language(value: str, supports_language: Callable[[str | None], bool]) -> str | None:
    try:
        language = normalize_language(value or None)
    except ValueError as exc:
        raise bad_request(str(exc), "language", "unsupported_language") from None
    if not supports_language(language):
        raise bad_request(f"the model cannot transcribe {value!r} (it is English-only)", "language",
                          "unsupported_language")
    return language


def _prompt(value: str) -> str:
    """The prompt as the WebSocket's session_config.prompt takes it: the same bound
    (MAX_PROMPT_CHARS: every chunk's decoder prompt is built from it, and it is stored
    with the request), the same cleaning and the same refusal."""
    try:
        return _PROMPT.validate_python(value)
    except ValidationError as exc:
        problem = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise bad_request(f"prompt: {problem}", "prompt", "invalid_config") from None


def _granularities(fields: Mapping[str, Any], response_format: str) -> frozenset[str]:
    getlist = getattr(fields, "getlist", None)
    values: list[str] = []
    for name in ("timestamp_granularities[]", "timestamp_granularities"):
        values += getlist(name) if getlist else ([fields[name]] if name in fields else [])
    unknown = [v for v in values if v not in GRANULARITIES]
    if unknown:
        raise bad_request(f"timestamp_granularities[] takes word and segment; got {unknown[0]!r}",
                          "timestamp_granularities")
    if values and response_format != "verbose_json":
        raise bad_request("timestamp_granularities[] needs response_format verbose_json",
                          "timestamp_granularities")
    if response_format == "verbose_json" and not values:
        return frozenset({"segment"})  # OpenAI's default
    return frozenset(values)


def _temperature(value: str) -> float:
    if not value:
        return 0.0
    try:
        temperature = float(value)
    except ValueError:
        raise bad_request(f"temperature must be a number from 0 to 1; got {value!r}", "temperature") from None
    if not math.isfinite(temperature) or not 0.0 <= temperature <= 1.0:
        raise bad_request(f"temperature must be a number from 0 to 1; got {value!r}", "temperature")
    return temperature


def _flag(value: str, name: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise bad_request(f"{name} must be true or false; got {value!r}", name)


def require_file(files: Mapping[str, Any]) -> Any:
    """The uploaded `file`, or ApiError (400)."""
    upload = files.get("file")
    if upload is None:
        raise bad_request("you must provide a file: multipart/form-data with the audio as `file`", "file",
                          "missing_required_parameter")
    if not upload.size:
        raise bad_request("the file is empty", "file", "invalid_audio")
    return upload


__all__ = ["ApiError", "GRANULARITIES", "RESPONSE_FORMATS", "TranscriptionRequest", "parse_transcription_request",
           "require_file"]
