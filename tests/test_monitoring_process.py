"""Monitoring of real server processes: the monitoring port, Prometheus metrics summed
over several processes, JSON logs, and /health while Redis is stopped and started."""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import websockets

from tests.conftest import frames, silence
from tests.servers import RedisServer, ScratchDatabase, Server, base_env, free_port, get_json, metric_samples

pytestmark = pytest.mark.realtime


def scrape(base: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        return metric_samples(response.read().decode())


async def one_session(url: str, audio: np.ndarray) -> list[dict]:
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"type": "start_session", "session_config": {"language": "en"}}))
        await ws.send(b"\x01\x02\x03")  # a bad frame: one error
        for frame in frames(audio, 4096):
            await ws.send(frame)
        await ws.send(json.dumps({"type": "end_session"}))
        return [json.loads(m) async for m in ws]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """Two server processes on one host, sharing a Prometheus directory and a
    monitoring port: the first binds it, the second leaves it to the first."""
    database = ScratchDatabase(os.environ["DATABASE_URL"])
    folder = tmp_path_factory.mktemp("monitoring")
    metrics_dir = folder / "prometheus"
    metrics_dir.mkdir()
    port = free_port()
    env = {**base_env(), "DATABASE_URL": database.url(), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    first = Server(env, folder, monitoring_port=port)
    second = Server(env, folder, monitoring_port=port)
    yield first, second
    first.stop()
    second.stop()
    database.drop()


async def test_metrics_of_every_process_are_summed_on_the_monitoring_port(two_processes, jfk_audio):
    first, second = two_processes
    assert "taken; not serving it here" in second.log.read_text()
    audio = np.concatenate([jfk_audio[:40000], silence(1.0)])
    results = await asyncio.gather(one_session(first.ws, audio), one_session(second.ws, audio))
    finals = sum(1 for messages in results for m in messages if m["type"] == "transcription_final")
    samples = scrape(first.monitoring)
    assert samples["fasttalk_sessions_total"] == 2.0 and samples["fasttalk_connections_total"] == 2.0
    assert samples["fasttalk_utterances_total"] == finals
    assert samples['fasttalk_errors_total{category="audio_format",code="invalid_audio_frame"}'] == 2.0
    assert samples["fasttalk_final_latency_seconds_count"] == finals
    assert samples["fasttalk_connections_active"] == 0.0
    assert samples['fasttalk_breaker_state{breaker="transcription"}'] == 0.0
    assert "fasttalk_engine_queue_depth" in samples and "fasttalk_real_time_factor_count" in samples


async def test_the_monitoring_port_serves_health_and_metrics_only(two_processes):
    first, _ = two_processes
    status, report = get_json(f"{first.monitoring}/health")
    assert status == 200 and report["status"] in ("healthy", "degraded")
    for path in ("/stats", "/", "/admin/"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{first.monitoring}{path}", timeout=10)
        assert refused.value.code == 404
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"{first.base}/metrics", timeout=10)
    # No transcription sessions on the monitoring port either.
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(f"ws://127.0.0.1:{first.monitoring_port}/ws/transcribe"):
            pass
    assert refused.value.response.status_code == 403


async def test_logs_are_json_lines_with_session_events(two_processes, jfk_audio):
    first, _ = two_processes
    await one_session(first.ws, np.concatenate([jfk_audio[:20000], silence(0.8)]))
    entries = []
    for line in first.log.read_text().splitlines():
        if line.startswith("{"):
            entries.append(json.loads(line))
    events = {e.get("event") for e in entries}
    assert {"session_start", "session_end", "error", "http_request"} <= events
    starts = [e for e in entries if e.get("event") == "session_start"]
    assert all(e["session_id"] and e["connection_id"] for e in starts)
    errors = [e for e in entries if e.get("event") == "error"]
    assert errors[-1]["code"] == "invalid_audio_frame" and errors[-1]["category"] == "audio_format"
    assert "fellow" not in first.log.read_text().lower(), "no transcript in the logs"


@pytest.fixture
def server_on_private_redis(tmp_path):
    redis = RedisServer(tmp_path)
    database = ScratchDatabase(os.environ["DATABASE_URL"])
    env = {**base_env(), "DATABASE_URL": database.url(), "REDIS_URL": redis.url}
    env.pop("CELERY_BROKER_URL", None)
    server = Server(env, tmp_path)
    server.database = database
    yield server, redis
    server.stop()
    redis.stop()
    database.drop()


def server_database(server: Server) -> ScratchDatabase:
    return server.database


def health_of(server: Server) -> tuple[int, dict]:
    return get_json(f"{server.base}/health")


async def test_redis_stopped_makes_health_503_and_its_return_heals_it(server_on_private_redis):
    server, redis = server_on_private_redis
    status, report = health_of(server)
    assert status == 200 and report["checks"]["channel_layer"]["status"] == "ok"

    redis.stop()
    status, report = health_of(server)
    assert status == 503 and report["status"] == "unhealthy"
    assert report["checks"]["channel_layer"]["status"] == "error"
    assert report["checks"]["celery_broker"]["status"] == "error"
    monitoring_status, _ = get_json(f"{server.monitoring}/health")
    assert monitoring_status == 503
    assert "fasttalk_sessions_total" in scrape(server.monitoring), "metrics are served through the outage"

    redis.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status, report = health_of(server)
        if status == 200:
            break
        time.sleep(0.5)
    assert status == 200 and report["checks"]["channel_layer"]["status"] == "ok"


async def test_a_stream_goes_on_while_redis_restarts(server_on_private_redis, jfk_audio):
    """Redis (channel layer and broker) stops in the middle of a stream and comes back:
    the session keeps transcribing, ends normally, and nothing it produced is lost."""
    from stt.evaluation import word_error_rate
    from tests.conftest import JFK_TEXT

    server, redis = server_on_private_redis
    audio = np.concatenate([jfk_audio, silence(1.0)])
    chunks = frames(audio, 2048)
    received: list[dict] = []
    async with websockets.connect(server.ws) as ws:
        await ws.send(json.dumps({"type": "start_session", "session_config": {"language": "en"}}))

        async def reader() -> None:
            async for raw in ws:
                received.append(json.loads(raw))

        reading = asyncio.create_task(reader())
        for index, frame in enumerate(chunks):
            if index == len(chunks) // 4:
                redis.stop()
            if index == len(chunks) // 2:
                redis.start()
            await ws.send(frame)
            await asyncio.sleep(2048 / 16000 / 4)  # four times real time
        await ws.send(json.dumps({"type": "end_session"}))
        await asyncio.wait_for(reading, 60)
        assert ws.close_code == 1000
    finals = [m["data"] for m in received if m["type"] == "transcription_final"]
    assert word_error_rate(JFK_TEXT, " ".join(f["text"] for f in finals)) <= 0.1
    assert received[-1]["type"] == "session_ended"
    stored = {row[0] for row in server_database(server).query("SELECT utterance_id::text FROM stt_utterance")}
    assert {f["utterance_id"] for f in finals} <= stored
    async with websockets.connect(server.ws) as ws:  # and the next session is served as usual
        await ws.send(json.dumps({"type": "start_session"}))
        assert json.loads(await ws.recv())["type"] == "session_started"
