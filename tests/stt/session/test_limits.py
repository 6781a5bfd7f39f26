"""A session's own limits: idle timeout and maximum duration (with its warning), the
message rate and the audio budget."""

from __future__ import annotations

import asyncio
import time

import pytest

from stt.auth import Principal
from stt.session import SttSession
from stt.session.budget import BURST_SECONDS, AudioBudget
from tests.conftest import frames, silence
from tests.stt.session.support import (HistoryRecorder, ManualClock, MetricsRecorder, SettingsRuntime, Transport,
                                       feed, open_session, send, session_services)

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


async def test_a_session_held_over_its_rate_for_long_keeps_going_and_counts_no_error(engine, settings):
    """Issue 14 #6: each drop was a session error, so a key over its rate lost every
    session (1008) after MAX_SESSION_ERRORS seconds."""
    clock, metrics = ManualClock(), MetricsRecorder()
    services = session_services(engine, clock=clock, metrics=metrics, history=HistoryRecorder(),
                                runtime=SettingsRuntime())
    transport = Transport()
    session = SttSession(transport.send, transport.close, services,
                         principal=Principal(7, "fast", 20, max_messages_per_second=2))
    assert await session.open()
    await send(session, {"type": "start_session"})
    for _ in range(3 * settings.MAX_SESSION_ERRORS):  # a simulated half minute over the rate
        for frame in frames(silence(0.2), 512):
            await session.on_audio(frame)
        clock.advance(1.1)
    assert transport.closed is None and session.errors == 0
    reports = [e["code"] for e in transport.errors()]
    assert set(reports) == {"rate_limited"} and len(reports) == 3 * settings.MAX_SESSION_ERRORS
    assert metrics.errors.count(("resource", "rate_limited")) == len(reports), "still counted as errors sent"
    await send(session, {"type": "end_session"})
    assert transport.of("session_ended")[0]["data"]["errors"] == 0 and transport.closed[0] == 1000


async def test_audio_over_the_budget_is_delayed_never_dropped(engine):
    """Issue 14 #2: a session over its key's audio budget waits before taking more."""
    rate = 8.0
    services = session_services(engine, audio_budget=AudioBudget(lambda: rate), history=HistoryRecorder())
    session, transport = await open_session(engine, services=services)
    audio_seconds = rate * BURST_SECONDS + 4.0
    started = time.monotonic()
    await feed(session, silence(audio_seconds))
    elapsed = time.monotonic() - started
    assert elapsed >= 4.0 / rate * 0.95, "held to the budget beyond its burst"
    await send(session, {"type": "end_session"})
    summary = transport.of("session_ended")[0]["data"]
    assert summary["audio_received_s"] == pytest.approx(audio_seconds, abs=0.1) and summary["errors"] == 0
    assert not transport.errors()


async def budget_bound_session(engine) -> tuple[SttSession, Transport, asyncio.Task]:
    """A session whose next frame waits 48 s for its budget (0.01 s of audio per second,
    0.02 s of burst, a clock that does not move), with that frame waiting."""
    services = session_services(engine, audio_budget=AudioBudget(lambda: 0.01), clock=ManualClock(),
                                history=HistoryRecorder(), runtime=SettingsRuntime())
    session, transport = await open_session(engine, services=services)
    waiting = asyncio.ensure_future(session.on_audio(frames(silence(0.5), 8000)[0]))
    await asyncio.sleep(0.05)
    assert not waiting.done(), "the frame waits for its budget"
    return session, transport, waiting


async def test_a_client_gone_while_its_frame_waits_for_the_budget_ends_its_session_at_once(engine):
    """Issue 23 #3: the wait ran its course first, the disconnect queued behind it, and
    Daphne killed the application before the session could end."""
    session, transport, waiting = await budget_bound_session(engine)
    await session.on_disconnect()
    await asyncio.wait_for(waiting, 2)
    summary = await asyncio.wait_for(session.finished, 5)
    assert summary["reason"] == "client_disconnected" and session.record.close_reason == "client_disconnected"
    assert not session.services.registry.sessions(), "off the registry: /stats and /ready are clear"
    assert session.audio_received_ms == 0, "the frame it waited with was not taken"


async def test_a_session_ended_by_the_server_stops_waiting_for_the_budget_and_gives_the_charge_back(engine):
    session, transport, waiting = await budget_bound_session(engine)
    budget = session.services.audio_budget
    budget.join(session.budget_owner)  # another session on the same budget, which stays
    await session.end("session_end", ended_reason="test")
    await asyncio.wait_for(waiting, 2)
    assert session.audio_received_ms == 0
    assert budget.wait_for(session.budget_owner, 0.01, session.services.clock()) == 0.0, "the frame not taken is not paid"


async def test_a_session_held_back_by_its_budget_yields_to_the_others_and_is_not_counted_for_admission(engine):
    """Issue 24 #4: a client flooding audio locked the next real-time client out (its
    work counted as the load admission protects). Over its budget, its decodes rank
    below the others' and the capacity gate leaves it out."""
    from stt.session.capacity import CapacityGate, CapacityPolicy

    clock = ManualClock()
    gate = CapacityGate(lambda: engine.scheduler.load.figures(), CapacityPolicy, clock=clock)
    services = session_services(engine, audio_budget=AudioBudget(lambda: 0.5), clock=clock, capacity=gate,
                                history=HistoryRecorder(), runtime=SettingsRuntime())
    session, transport = await open_session(engine, services=services)
    assert gate.verdict().sessions == 1
    await feed(session, silence(0.5))  # within its burst of 1 s
    assert not engine.scheduler.is_over_budget(session.stream.stream_key)
    waiting = asyncio.ensure_future(feed(session, silence(1.0)))  # past it: waits 1 s of the budget's clock
    await asyncio.sleep(0.05)
    assert engine.scheduler.is_over_budget(session.stream.stream_key)
    assert (gate.verdict().sessions, gate.verdict().over_budget) == (0, 1)
    clock.advance(5.0)  # its wait and the grace after it are over
    assert (gate.verdict().sessions, gate.verdict().over_budget) == (1, 0)
    await session.end("session_end", ended_reason="test")
    await asyncio.wait_for(waiting, 2)
