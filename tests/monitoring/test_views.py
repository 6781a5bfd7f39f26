"""/, /health and /stats over Django's async test client, on the suite's real services."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest
from django.test import AsyncClient

from monitoring.logs import JsonFormatter
from monitoring.registry import registry
from stt.engine import DecodeOptions
from stt.persistence import HistoryStats, error_write, history
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
    assert info["endpoints"]["openai_realtime"] == "ws://testserver/v1/realtime?intent=transcription"
    assert {"health", "stats"} <= set(info["endpoints"])
    assert info["endpoints"]["transcriptions"] == "/v1/audio/transcriptions"
    assert info["audio"] == {"encoding": "float32le", "sample_rate": 16000, "channels": 1}


def test_index_answers_only_for_the_host_names_it_serves(engine, client):
    """Issue 23 #12: with DJANGO_ALLOWED_HOSTS=* any Host header was reflected in `/`
    (DNS rebinding). The test client's own name, testserver, is added by Django's test
    set-up to the default list, as for every Django project. (The sync client: the async
    one adds a Host header of its own.)"""
    foreign = client.get("/", HTTP_HOST="rebind.attacker.example")
    assert foreign.status_code == 400 and b"rebind.attacker.example/ws" not in foreign.content
    local = client.get("/", HTTP_HOST="127.0.0.1:8000")
    assert local.json()["endpoints"]["websocket"] == "ws://127.0.0.1:8000/ws/transcribe"


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


@pytest.fixture
def history_figures():
    """The process's history writer counts afresh for the test, and its old figures come
    back after it (a journaled write would degrade /health for the tests after)."""
    saved = history.stats
    history.stats = HistoryStats()
    yield history.stats
    history.stats = saved


A_ROW_POSTGRESQL_REFUSES = {"code": "x" * 100, "category": "connection", "severity": "low", "recoverable": True,
                            "message": "a code longer than its column"}


async def test_health_is_degraded_while_history_writes_go_to_the_journal(
        engine, redis_channel_layer, settings, tmp_path, history_figures):
    """The database answers, but a write it refused is in the journal, not the history."""
    settings.HISTORY_JOURNAL = str(tmp_path / "journal.jsonl")
    assert await history.write(error_write(A_ROW_POSTGRESQL_REFUSES, None, "health")) is False
    response = await AsyncClient().get("/health")
    report = response.json()
    database = report["checks"]["database"]
    assert (database["status"], database["history"], database["history_journaled"]) == ("degraded", "journaling", 1)
    assert (response.status_code, report["status"], report["ready"]) == (200, "degraded", True)


async def test_health_is_degraded_while_history_writes_are_lost(
        engine, redis_channel_layer, settings, tmp_path, history_figures):
    """A write the journal cannot take either (its folder is a file) is lost: /health says so."""
    not_a_folder = tmp_path / "not-a-folder"
    not_a_folder.write_text("")
    settings.HISTORY_JOURNAL = str(not_a_folder / "journal.jsonl")
    assert await history.write(error_write(A_ROW_POSTGRESQL_REFUSES, None, "health")) is False
    report = (await AsyncClient().get("/health")).json()
    database = report["checks"]["database"]
    assert (database["status"], database["history"], database["history_lost"]) == ("degraded", "dropping", 1)
    assert report["status"] == "degraded"


async def test_health_is_healthy_again_once_the_window_has_passed(
        engine, redis_channel_layer, settings, tmp_path, history_figures):
    settings.HISTORY_JOURNAL = str(tmp_path / "journal.jsonl")
    settings.PERSISTENCE_DEGRADED_SECONDS = 0.2
    await history.write(error_write(A_ROW_POSTGRESQL_REFUSES, None, "health"))
    await asyncio.sleep(0.3)
    report = (await AsyncClient().get("/health")).json()
    assert (report["status"], report["checks"]["database"]["history"]) == ("healthy", "ok")


async def test_health_is_503_when_the_model_cannot_load(broken_engine):
    broken_engine.start_loading().exception(timeout=30)
    response = await AsyncClient().get("/health")
    assert response.status_code == 503
    assert response.json()["checks"]["model"]["status"] == "error"


async def test_a_health_503_goes_to_the_access_log_not_to_the_console_as_an_error(broken_engine):
    console = next(h for h in logging.getLogger().handlers if isinstance(h.formatter, JsonFormatter))
    written = io.StringIO()
    previous = console.setStream(written)
    try:
        broken_engine.start_loading().exception(timeout=30)
        assert (await AsyncClient().get("/health")).status_code == 503
        logging.getLogger("django.request").error("Internal Server Error: /stats", extra={"status_code": 500})
    finally:
        console.setStream(previous)
    assert "Service Unavailable" not in written.getvalue()
    assert "Internal Server Error: /stats" in written.getvalue(), "other errors still reach the console"


async def test_health_is_503_when_the_channel_layer_is_unreachable(engine, settings):
    # Nothing listens on port 1: a real connection failure, not a simulated one.
    settings.CHANNEL_LAYERS = {"default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [{"address": "redis://127.0.0.1:1/0", "socket_connect_timeout": 1}]},
    }}
    response = await AsyncClient().get("/health")
    assert response.status_code == 503
    assert response.json()["checks"]["channel_layer"]["status"] == "error"


async def test_ready_is_200_while_the_process_takes_sessions(engine):
    response = await AsyncClient().get("/ready")
    assert response.status_code == 200
    assert response.json() == {"ready": True, "reason": None, "active_connections": registry.active_connections}


async def test_a_draining_process_is_not_ready_and_its_health_is_503(engine, redis_channel_layer):
    """From the moment SIGTERM starts the drain, a load balancer polling /ready (or an
    orchestrator polling /health) sees 503 and sends new sessions elsewhere."""
    registry.draining = True
    try:
        ready = await AsyncClient().get("/ready")
        health = await AsyncClient().get("/health")
    finally:
        registry.draining = False
    assert ready.status_code == 503 and ready.json()["reason"] == "draining"
    assert health.status_code == 503
    report = health.json()
    assert report["status"] == "draining" and report["ready"] is False
    assert report["checks"]["model"]["status"] == "ok", "the parts themselves are fine"
    assert (await AsyncClient().get("/ready")).status_code == 200


async def test_ready_is_503_without_a_model(broken_engine):
    broken_engine.start_loading().exception(timeout=30)
    response = await AsyncClient().get("/ready")
    assert response.status_code == 503 and response.json()["reason"] == "model_unavailable"


def test_readiness_follows_the_model_load():
    """Preloading: not ready until the model is in; without preloading the first session
    loads it, so the process must be ready before; a failed load is not ready."""
    from monitoring.health import readiness
    from stt.engine import SpeechEngine

    lazy = SpeechEngine(model="/nonexistent/whisper-model")
    assert readiness(lazy, draining=False) == {"ready": True, "reason": None}
    lazy.start_loading().exception(timeout=30)
    assert readiness(lazy, draining=False) == {"ready": False, "reason": "model_unavailable"}


def test_a_process_loading_its_model_is_not_ready(tmp_path):
    """A load in progress (held here at its first step: the model factory waits)."""
    import threading

    from monitoring.health import readiness
    from stt.engine import SpeechEngine

    release = threading.Event()

    def slow_factory(*args):
        release.wait(30)
        raise RuntimeError("no model here")

    engine = SpeechEngine(model=str(tmp_path), model_factory=slow_factory)
    loading = engine.start_loading()
    try:
        assert readiness(engine, draining=False) == {"ready": False, "reason": "model_loading"}
    finally:
        release.set()
        loading.exception(timeout=30)


async def test_ready_ignores_a_shared_dependency_that_health_reports(engine, settings):
    """A Redis outage is every process's: /health says 503, /ready keeps the process in
    the balancer's pool (its sessions still transcribe, degraded)."""
    settings.CHANNEL_LAYERS = {"default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [{"address": "redis://127.0.0.1:1/0", "socket_connect_timeout": 1}]},
    }}
    assert (await AsyncClient().get("/health")).status_code == 503
    assert (await AsyncClient().get("/ready")).status_code == 200


async def test_stats_give_the_engines_decodes_and_their_time_by_kind(engine, jfk_audio):
    """What a stream costs, by path (issue 24 #1): bench/cost_profile.py reads these."""
    before = (await AsyncClient().get("/stats")).json()["engine"]
    await engine.transcribe(unique(jfk_audio[:48000]), DecodeOptions.partial("en"))
    await engine.transcribe(unique(jfk_audio[:48000]), DecodeOptions.final("en", True))
    after = (await AsyncClient().get("/stats")).json()["engine"]
    for kind in ("partial", "final"):
        was = before["by_kind"].get(kind, {"inferences": 0, "seconds": 0.0})
        assert after["by_kind"][kind]["inferences"] == was["inferences"] + 1
        assert after["by_kind"][kind]["seconds"] > was["seconds"]
    assert after["batches"] >= before["batches"] + 2
    assert {"cache_hits", "superseded", "redone_the_long_way"} <= set(after)


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


async def live_session(engine, session_id: str, principal=None) -> SttSession:
    async def send(message: dict) -> None:
        pass

    async def close(code: int, reason: str) -> None:
        pass

    session = SttSession(send, close, process_session_services(engine), client="10.1.2.3:4567",
                         principal=principal)
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


class TestStatsPerTenant:
    """Issue 23 (tenants): with AUTH_REQUIRED, an API key's /stats lists the sessions of
    that key only, never another tenant's ids; staff see every session; /health names none."""

    @pytest.fixture(autouse=True)
    def auth_on(self, settings):
        settings.AUTH_REQUIRED = True

    @staticmethod
    async def tenant(name: str):
        from stt import auth
        from stt.models import ApiKey

        raw, prefix, digest = auth.generate_key()
        key = await ApiKey.objects.acreate(name=name, prefix=prefix, key_hash=digest)
        return raw, auth.Principal(key.pk, name, 20, 1000)

    async def test_a_key_sees_its_own_sessions_and_no_id_of_another_tenants(self, engine, jfk_audio):
        from django.contrib.auth.models import User

        from tests.conftest import frames

        raw_a, tenant_a = await self.tenant("tenant-a")
        raw_b, tenant_b = await self.tenant("tenant-b")
        mine = await live_session(engine, "tenant-a-session", principal=tenant_a)
        theirs = await live_session(engine, "tenant-b-session", principal=tenant_b)
        staff_client = AsyncClient()
        await staff_client.aforce_login(await User.objects.acreate(username="ops", is_staff=True))
        try:
            for frame in frames(jfk_audio[:24000]):  # 1.5 s of speech: tenant b has an open utterance
                await theirs.on_audio(frame)
            for _ in range(100):
                if theirs.current_utterance_id:
                    break
                await asyncio.sleep(0.05)
            their_ids = [theirs.connection_id, "tenant-b-session", theirs.current_utterance_id]
            as_a = await AsyncClient().get("/stats", headers={"Authorization": f"Bearer {raw_a}"})
            as_staff = await staff_client.get("/stats")
        finally:
            await mine.end("session_end", ended_reason="test")
            await theirs.end("session_end", ended_reason="test")
        assert their_ids[2], "tenant b's session had an utterance open"
        assert as_a.status_code == 200
        assert list(as_a.json()["processing_stats"]) == [mine.connection_id]
        assert as_a.json()["processing_stats"][mine.connection_id]["session_id"] == "tenant-a-session"
        for their_id in their_ids:
            assert their_id.encode() not in as_a.content, f"{their_id} of another tenant was shown"
        assert {mine.connection_id, theirs.connection_id} <= set(as_staff.json()["processing_stats"])
        assert as_staff.json()["processing_stats"][theirs.connection_id]["current_utterance_id"] == their_ids[2]

    async def test_open_mode_shows_every_session_to_anyone(self, engine, settings):
        settings.AUTH_REQUIRED = False
        session = await live_session(engine, "open-session")
        try:
            stats = (await AsyncClient().get("/stats")).json()
        finally:
            await session.end("session_end", ended_reason="test")
        assert stats["processing_stats"][session.connection_id]["session_id"] == "open-session"


class TestReadyForNewSessions:
    """/health's `ready`: whether this process takes new sessions. A load balancer's
    health check follows the HTTP status, so it is 503 whenever new sessions should go
    elsewhere, even while the process serves the sessions it has."""

    async def test_a_healthy_process_is_ready(self, engine):
        response = await AsyncClient().get("/health")
        report = response.json()
        assert response.status_code == 200 and report["ready"] is True and report["not_ready"] == []
        assert report["capacity"]["full"] is False

    async def test_a_draining_process_says_draining_and_is_not_ready(self, engine):
        registry.draining = True
        try:
            response = await AsyncClient().get("/health")
        finally:
            registry.draining = False
        report = response.json()
        assert response.status_code == 503
        assert (report["status"], report["ready"], report["not_ready"]) == ("draining", False, ["draining"])

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
