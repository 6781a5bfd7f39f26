"""/, /health and /stats over Django's async test client, on the suite's real services."""

from __future__ import annotations

import json

import pytest
from django.test import AsyncClient

from monitoring.registry import registry
from stt.engine import DecodeOptions
from stt.services import process_session_services
from stt.session import SttSession
from tests.stt.engine.helpers import unique

pytestmark = pytest.mark.django_db(transaction=True)


async def test_index_lists_the_service_and_its_endpoints(engine):
    response = await AsyncClient().get("/")
    info = response.json()
    assert response.status_code == 200
    assert info["service"] == "Fasttalk STT"
    assert info["endpoints"]["websocket"] == "ws://testserver/ws/transcribe"
    assert {"health", "stats"} <= set(info["endpoints"])
    assert info["audio"] == {"encoding": "float32le", "sample_rate": 16000, "channels": 1}


async def test_index_renders_a_page_for_browsers(engine):
    response = await AsyncClient().get("/", headers={"Accept": "text/html"})
    assert response.status_code == 200
    assert b"/ws/transcribe" in response.content and b"<html" in response.content


async def test_health_is_200_with_every_part_checked(engine, redis_channel_layer):
    response = await AsyncClient().get("/health")
    report = response.json()
    assert response.status_code == 200 and report["status"] == "healthy"
    assert report["checks"]["model"]["status"] == "ok"
    assert report["checks"]["database"] == {**report["checks"]["database"], "status": "ok", "vendor": "postgresql"}
    assert report["checks"]["channel_layer"]["backend"] == "ResilientRedisChannelLayer"


async def test_health_is_503_when_the_model_cannot_load(broken_engine):
    broken_engine.start_loading().exception(timeout=30)
    response = await AsyncClient().get("/health")
    assert response.status_code == 503
    assert response.json()["checks"]["model"]["status"] == "error"


async def test_health_is_503_when_the_channel_layer_is_unreachable(engine, settings):
    # Nothing listens on port 1: a real connection failure, not a simulated one.
    settings.CHANNEL_LAYERS = {"default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [{"address": "redis://127.0.0.1:1/0", "socket_connect_timeout": 1}]},
    }}
    response = await AsyncClient().get("/health")
    assert response.status_code == 503
    assert response.json()["checks"]["channel_layer"]["status"] == "error"


async def test_stats_has_every_field_of_the_design_document(engine):
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def close(code: int, reason: str) -> None:
        pass

    session = SttSession(send, close, process_session_services(engine))
    await session.open()
    await session.on_text(json.dumps({"type": "start_session", "session_config": {"session_id": "stats-1"}}))
    try:
        stats = (await AsyncClient().get("/stats")).json()
    finally:
        await session.end("session_end", ended_reason="test")
    assert stats["active_connections"] >= 1 and stats["total_connections"] >= 1
    assert set(stats["connections_by_state"]) >= {"active", "processing", "buffering"}
    # Keyed by the server's id; the client's session_id is the entry's label.
    entry = stats["processing_stats"][session.connection_id]
    assert entry["session_id"] == "stats-1" and entry["connection_id"] == session.connection_id
    assert set(entry) >= {
        "total_chunks", "partial_transcriptions", "final_transcriptions", "total_processing_time",
        "average_partial_latency", "average_final_latency", "current_utterance_id",
        "partial_processing_enabled", "real_time_factor", "partial_response_time", "final_response_time",
    }
    assert set(stats["performance_metrics"]) == {
        "avg_partial_latency_ms", "avg_final_latency_ms", "p95_partial_latency_ms", "p95_final_latency_ms",
        "total_utterances_processed", "active_utterances",
    }
    assert session.connection_id not in registry.snapshot()["processing_stats"], "ended sessions leave the live list"


async def live_session(engine, session_id: str) -> SttSession:
    async def send(message: dict) -> None:
        pass

    async def close(code: int, reason: str) -> None:
        pass

    session = SttSession(send, close, process_session_services(engine), client="10.1.2.3:4567")
    await session.open()
    await session.on_text(json.dumps({"type": "start_session", "session_config": {"session_id": session_id}}))
    return session


class TestStatsWithAuthentication:
    """Issue 14 #9: with AUTH_REQUIRED, the live session list is for API keys and staff."""

    @pytest.fixture(autouse=True)
    def auth_on(self, settings):
        settings.AUTH_REQUIRED = True

    async def test_without_credentials_stats_are_refused(self, engine):
        session = await live_session(engine, "secret-session")
        try:
            response = await AsyncClient().get("/stats")
        finally:
            await session.end("session_end", ended_reason="test")
        assert response.status_code == 401 and b"secret-session" not in response.content

    async def test_an_api_key_or_a_staff_login_reads_them_but_a_browser_token_does_not(self, engine):
        from asgiref.sync import sync_to_async
        from django.contrib.auth.models import User

        from stt import auth
        from stt.models import ApiKey

        raw, prefix, digest = auth.generate_key()
        key = await ApiKey.objects.acreate(name="ops", prefix=prefix, key_hash=digest)
        token, _ = await sync_to_async(auth.mint_token)(key)
        staff = await User.objects.acreate(username="ops", is_staff=True)
        viewer = await User.objects.acreate(username="viewer", is_staff=False)
        with_key = await AsyncClient().get("/stats", headers={"Authorization": f"Bearer {raw}"})
        with_token = await AsyncClient().get("/stats", headers={"Authorization": f"Bearer {token}"})
        staff_client, viewer_client = AsyncClient(), AsyncClient()
        await staff_client.aforce_login(staff)
        await viewer_client.aforce_login(viewer)
        assert with_key.status_code == 200 and "active_connections" in with_key.json()
        assert (await staff_client.get("/stats")).status_code == 200
        assert with_token.status_code == 401
        assert (await viewer_client.get("/stats")).status_code == 401

    async def test_health_stays_public_and_names_no_session_or_client(self, engine):
        session = await live_session(engine, "secret-session")
        try:
            response = await AsyncClient().get("/health")
        finally:
            await session.end("session_end", ended_reason="test")
        assert response.status_code in (200, 503)
        assert b"secret-session" not in response.content and b"10.1.2.3" not in response.content


class TestReadyForNewSessions:
    """/health's `ready`: whether this process takes new sessions. A load balancer's
    health check follows the HTTP status, so it is 503 whenever new sessions should go
    elsewhere, even while the process serves the sessions it has."""

    async def test_a_healthy_process_is_ready(self, engine):
        response = await AsyncClient().get("/health")
        report = response.json()
        assert response.status_code == 200 and report["ready"] is True and report["not_ready"] == []
        assert report["capacity"]["full"] is False

    async def test_a_draining_process_is_not_ready_though_it_still_serves(self, engine):
        registry.draining = True
        try:
            response = await AsyncClient().get("/health")
        finally:
            registry.draining = False
        report = response.json()
        assert response.status_code == 503
        assert (report["status"], report["ready"], report["not_ready"]) == ("healthy", False, ["draining"])

    async def test_a_process_at_capacity_is_not_ready_and_says_why(self, engine, jfk_audio, settings):
        # Any real final is slower than this bound: the engine's own measurement trips it.
        settings.CAPACITY_ADMISSION, settings.CAPACITY_FINAL_P95_BOUND, settings.CAPACITY_MIN_FINALS = True, 1e-4, 1
        session = await live_session(engine, "capacity-1")  # a process without sessions is never full
        try:
            await engine.transcribe(unique(jfk_audio[:32000]), DecodeOptions.final("en", True))
            response = await AsyncClient().get("/health")
        finally:
            await session.end("session_end", ended_reason="test")
        report = response.json()
        assert response.status_code == 503
        assert (report["status"], report["ready"], report["not_ready"]) == ("healthy", False, ["at_capacity"])
        assert report["capacity"]["full"] and "finals p95" in report["capacity"]["reasons"][0]
        assert report["capacity"]["retry_after"] == settings.CAPACITY_RETRY_AFTER
        assert report["capacity"]["engine"]["finals"] >= 1
        settings.CAPACITY_ADMISSION = False
        assert (await AsyncClient().get("/health")).status_code == 200, "admission off: ready again"
