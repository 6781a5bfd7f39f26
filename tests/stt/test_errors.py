"""The error catalogue and docs/protocol.md describe the same errors."""

import re
from pathlib import Path

import pytest

from stt.errors import ERRORS, Category, SttError

PROTOCOL_DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def documented_errors() -> dict[str, tuple[str, str, bool]]:
    rows = re.findall(r"^\| `([a-z_]+)` \| ([a-z_]+) \| ([a-z]+) \| (yes|no) \|", PROTOCOL_DOC.read_text(), re.M)
    return {code: (category, severity, recoverable == "yes") for code, category, severity, recoverable in rows}


def test_every_code_is_documented_with_the_same_category_severity_and_recoverability():
    in_code = {c: (s.category.value, s.severity.value, s.recoverable) for c, s in ERRORS.items()}
    assert documented_errors() == in_code


def test_categories_are_the_design_documents_six():
    assert {c.value for c in Category} == {"connection", "audio_format", "processing", "gpu", "resource", "timeout"}


def test_an_unknown_code_is_a_programming_error():
    with pytest.raises(KeyError):
        SttError("no_such_code", "x")


def test_the_payload_has_the_documented_shape():
    payload = SttError("invalid_config", "bad", field="language").to_payload()
    assert payload == {"code": "invalid_config", "message": "bad", "category": "connection", "severity": "low",
                       "recoverable": True, "retry_after": None, "field": "language"}
