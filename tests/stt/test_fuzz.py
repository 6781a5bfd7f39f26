"""Property-based fuzzing of what clients send (hypothesis, thousands of cases): no
message, however malformed, escapes as an exception; every reply is a documented
message, every error a catalogued one with every field, every close a documented code."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st

from stt.errors import ERRORS
from stt.messages import SERVER_MESSAGE_TYPES, parse_server_message
from stt.persistence import history
from stt.protocol import CLIENT_MESSAGE_TYPES
from stt.services import process_session_services
from stt.session import SttSession

pytestmark = pytest.mark.django_db(transaction=True)

ERROR_FIELDS = {"code", "message", "category", "severity", "recoverable", "retry_after"}
CLOSE_CODES = {1000, 1008, 1011, 1012, 1013}
CONFIG_KEYS = ["language", "enable_timestamps", "enable_vad", "enable_partial_transcription", "buffer_duration",
               "partial_chunk_duration", "final_chunk_duration", "fasttalk_mode", "user_id", "conversation_id",
               "session_id", "barge_in_enabled", "send_legacy_transcription", "profile", "prompt", "unknown_key"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**63, max_value=2**63), st.floats(allow_nan=False),
    st.text(max_size=40), st.sampled_from(["en", "de", "auto", "xx", "", "responding", "listening", "NaN"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                      max_leaves=12)
configs = st.dictionaries(st.sampled_from(CONFIG_KEYS), values, max_size=6)
messages = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(list(CLIENT_MESSAGE_TYPES))},
                          optional={"session_config": configs, "config": configs,
                                    "data": st.one_of(values, st.dictionaries(
                                        st.sampled_from(["conversation_state", "expected_response_type",
                                                         "language_context", "reason", "x"]), values, max_size=3)),
                                    "extra": values}),
    st.dictionaries(st.text(max_size=10), values, max_size=4),
    values,
)
texts = st.one_of(messages.map(lambda m: json.dumps(m, allow_nan=True)), st.text(max_size=200),
                  st.just("{"), st.just('{"type": NaN}'), st.just("[" * 200 + "]" * 200))


class Recorder:
    def __init__(self) -> None:
        self.sent: list[dict] = []
        self.closes: list[int] = []

    async def send(self, message: dict) -> None:
        json.dumps(message, allow_nan=False)  # the wire format is strict JSON
        self.sent.append(message)

    async def close(self, code: int, reason: str) -> None:
        self.closes.append(code)


def check_replies(recorder: Recorder) -> None:
    for message in recorder.sent:
        assert message["type"] in SERVER_MESSAGE_TYPES, message["type"]
        parse_server_message(json.dumps(message), strict=True)  # exactly the documented shape
        assert message["metadata"]["session_id"] and message["metadata"]["timestamp"].endswith("Z")
        if message["type"] == "error":
            error = message["error"]
            assert ERROR_FIELDS <= set(error) and error["code"] in ERRORS, error
    assert set(recorder.closes) <= CLOSE_CODES, recorder.closes


_examples = {"count": 0}


async def settle_history() -> None:
    """Every 100 examples, wait for the sessions' history writes, so none pile up for
    the tests that come after (they would see their own writes time out)."""
    _examples["count"] += 1
    if _examples["count"] % 100 == 0:
        assert await history.drain(timeout=60)


@pytest.fixture
def many_errors_allowed(settings):
    settings.MAX_SESSION_ERRORS = 100000
    settings.AUDIO_BUDGET_PER_SESSION = 0  # replies are under test here, not the pacing of audio


FUZZ = hypothesis_settings(max_examples=1500, deadline=None, derandomize=True,
                           suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@FUZZ
@given(first=texts, second=texts)
async def test_any_control_messages_get_documented_replies(engine, many_errors_allowed, first, second):
    recorder = Recorder()
    session = SttSession(recorder.send, recorder.close, process_session_services(engine), client="fuzz")
    assert await session.open()
    await session.on_text(first)
    await session.on_text(second)
    await session.end("session_end", ended_reason="test")
    check_replies(recorder)
    await settle_history()


frame_bytes = st.one_of(
    st.binary(max_size=70000),
    st.lists(st.floats(width=32), max_size=4096).map(lambda xs: struct.pack(f"<{len(xs)}f", *xs)),
    st.integers(min_value=0, max_value=17000).map(
        lambda n: (np.random.default_rng(n).standard_normal(n) * 0.3).astype("<f4").tobytes()),
)


@FUZZ
@given(frames=st.lists(frame_bytes, min_size=1, max_size=6), between=texts)
async def test_any_audio_frames_get_documented_replies(engine, many_errors_allowed, frames, between):
    recorder = Recorder()
    session = SttSession(recorder.send, recorder.close, process_session_services(engine), client="fuzz")
    assert await session.open()
    await session.on_text(json.dumps({"type": "start_session", "session_config": {"language": "en"}}))
    for index, frame in enumerate(frames):
        await session.on_audio(frame)
        if index == 1:
            await session.on_text(between)
    await session.end("session_end", ended_reason="test")
    check_replies(recorder)
    assert recorder.sent[-1]["type"] == "session_ended" or recorder.closes
    await settle_history()
