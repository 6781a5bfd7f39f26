"""A session's own limits: idle timeout and maximum duration (with its warning)."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import silence
from tests.stt.session.support import feed, open_session

pytestmark = pytest.mark.django_db(transaction=True)


async def test_a_session_that_sends_nothing_is_ended_after_the_idle_timeout(engine, settings):
    settings.SESSION_IDLE_TIMEOUT = 1.5
    session, transport = await open_session(engine)
    await asyncio.wait_for(session.finished, 10)
    assert [e["code"] for e in transport.errors()] == ["idle_timeout"]
    assert transport.of("session_ended")[0]["data"]["reason"] == "idle_timeout"
    assert transport.closed[0] == 1000


async def test_a_session_that_keeps_streaming_is_not_idle(engine, settings):
    settings.SESSION_IDLE_TIMEOUT = 1.5
    session, transport = await open_session(engine)
    for _ in range(6):
        await feed(session, silence(0.1))
        await asyncio.sleep(0.5)
    assert not transport.errors() and transport.closed is None
    await session.end("session_end", ended_reason="test")


async def test_a_long_session_is_warned_then_ended_at_its_limit(engine, settings, jfk_audio):
    settings.MAX_SESSION_DURATION, settings.SESSION_END_WARNING = 3.0, 1.5
    session, transport = await open_session(engine, final_chunk_duration=2.0)
    await feed(session, jfk_audio[:32000])  # speech still pending when the limit comes
    await asyncio.wait_for(session.finished, 15)
    warnings = [e for e in transport.errors() if e["code"] == "session_time_limit"]
    assert len(warnings) == 2 and warnings[0]["recoverable"] and 0 < warnings[0]["retry_after"] <= 1.5
    assert transport.of("transcription_final"), "the pending speech was finalized first"
    assert transport.of("session_ended")[0]["data"]["reason"] == "session_time_limit"
    assert transport.closed[0] == 1000
