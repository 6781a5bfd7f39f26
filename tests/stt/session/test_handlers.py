"""Control messages of a session (stt/session/handlers.py): endpointing, from
session_config or the runtime profile, through start_session and configure to the
stream (the real model and VAD; profiles in PostgreSQL)."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async

from stt.models import RuntimeProfile
from tests.stt.session.support import open_session, send

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_runtime_store")]


def started_data(transport) -> dict:
    return transport.of("session_started")[0]["data"]


class TestEndpointing:
    async def test_a_session_that_sets_none_runs_with_its_profiles(self, engine, settings):
        settings.ENDPOINTING_EAGERNESS = "low"
        plain, transport = await open_session(engine)
        assert plain.stream.params.eagerness == "low"
        assert started_data(transport)["config"]["endpointing"] == "low", "the effective config shows it"
        await sync_to_async(RuntimeProfile.objects.create)(name="desk", endpointing_eagerness="high")
        desk, transport = await open_session(engine, profile="desk")
        assert desk.stream.params.eagerness == "high"
        assert started_data(transport)["runtime"]["endpointing_eagerness"] == "high"
        for session in (plain, desk):
            await session.end("session_end", ended_reason="test")

    async def test_the_sessions_own_choice_wins_over_the_profile(self, engine):
        await sync_to_async(RuntimeProfile.objects.create)(name="desk", is_default=True,
                                                           endpointing_eagerness="high")
        session, transport = await open_session(engine, endpointing="off")
        assert session.stream.params.eagerness == "off"
        data = started_data(transport)
        assert (data["config"]["endpointing"], data["runtime"]["endpointing_eagerness"]) == ("off", "high")
        await session.end("session_end", ended_reason="test")

    async def test_an_unknown_level_starts_nothing(self, engine):
        session, transport = await open_session(engine, endpointing="eager")
        error = transport.errors()[0]
        assert (error["code"], error["field"], error["recoverable"]) == ("invalid_config", "endpointing", True)
        assert not session.started
        await send(session, {"type": "start_session", "session_config": {"endpointing": "high"}})
        assert session.stream.params.eagerness == "high"
        await session.end("session_end", ended_reason="test")

    async def test_configure_changes_it_mid_session_and_null_returns_to_the_profiles(self, engine, settings):
        settings.ENDPOINTING_EAGERNESS = "medium"
        session, transport = await open_session(engine)
        await send(session, {"type": "configure", "config": {"endpointing": "high"}})
        configured = transport.of("session_configured")[-1]["data"]
        assert configured["changed"] == ["endpointing"] and configured["config"]["endpointing"] == "high"
        assert session.stream.params.eagerness == "high"

        await send(session, {"type": "configure", "config": {"endpointing": "fast", "buffer_duration": 1.0}})
        assert transport.errors()[-1]["field"] == "endpointing"
        assert session.stream.params.eagerness == "high" and session.config.buffer_duration != 1.0, \
            "nothing half-applied"

        await send(session, {"type": "configure", "config": {"endpointing": None}})
        assert transport.of("session_configured")[-1]["data"]["config"]["endpointing"] is None
        assert session.stream.params.eagerness == "medium"
        await session.end("session_end", ended_reason="test")

    async def test_a_profile_saved_meanwhile_reaches_new_sessions_not_running_ones(self, engine):
        profile = await sync_to_async(RuntimeProfile.objects.create)(name="desk", endpointing_eagerness="low")
        running, _ = await open_session(engine, profile="desk")
        profile.endpointing_eagerness = "high"
        await sync_to_async(profile.save)()  # announced: the store re-reads at once
        fresh, _ = await open_session(engine, profile="desk")
        assert fresh.stream.params.eagerness == "high"
        await asyncio.sleep(1.5)  # a watchdog beat or more: it follows the vocabulary only
        assert running.stream.params.eagerness == running.runtime.endpointing_eagerness == "low"
        for session in (running, fresh):
            await session.end("session_end", ended_reason="test")
