"""monitoring/alive.py, the containers' health check: a process is alive while /health
answers with a model that works or loads, whether or not it takes new sessions; full
and draining processes (503) are alive, a process whose model failed is not. The
reports judged are those of the real /health view."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.test import AsyncClient

from monitoring.alive import alive, main
from monitoring.registry import registry
from stt.engine import DecodeOptions
from tests.monitoring.test_views import live_session
from tests.servers import free_port
from tests.stt.engine.helpers import unique

pytestmark = pytest.mark.django_db(transaction=True)


@contextmanager
def answering(status: int, body: bytes, content_type: str = "application/json") -> Iterator[str]:
    """An HTTP listener that answers every GET with `status` and `body`; yields its URL."""

    class Answer(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/health"
    finally:
        server.shutdown()
        server.server_close()


async def test_a_healthy_process_is_alive(engine):
    response = await AsyncClient().get("/health")
    assert response.status_code == 200 and alive(response.json())


async def test_a_draining_process_answers_503_and_is_alive(engine):
    registry.draining = True
    try:
        response = await AsyncClient().get("/health")
    finally:
        registry.draining = False
    assert response.status_code == 503 and alive(response.json())


async def test_a_full_process_answers_503_and_is_alive_over_http_too(engine, jfk_audio, settings):
    # As in test_views: any real final is slower than this bound, so the process is full.
    settings.CAPACITY_ADMISSION, settings.CAPACITY_FINAL_P95_BOUND, settings.CAPACITY_MIN_FINALS = True, 1e-4, 1
    session = await live_session(engine, "alive-full")
    try:
        await engine.transcribe(unique(jfk_audio[:32000]), DecodeOptions.final("en", True))
        response = await AsyncClient().get("/health")
    finally:
        await session.end("session_end", ended_reason="test")
    assert response.status_code == 503 and response.json()["not_ready"] == ["at_capacity"]
    assert alive(response.json())
    # The check as the container runs it, reading the report of a 503.
    with answering(503, response.content) as url:
        assert await asyncio.to_thread(main, [url]) == 0


async def test_a_process_whose_model_failed_to_load_is_not_alive(broken_engine):
    broken_engine.start_loading().exception(timeout=30)
    response = await AsyncClient().get("/health")
    assert response.status_code == 503 and not alive(response.json())
    with answering(503, response.content) as url:
        assert await asyncio.to_thread(main, [url]) == 1


async def test_an_unreachable_channel_layer_is_not_the_process_failing(engine, settings):
    # Redis is shared by every process: restarting this one would not bring it back.
    settings.CHANNEL_LAYERS = {"default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [{"address": "redis://127.0.0.1:1/0", "socket_connect_timeout": 1}]},
    }}
    response = await AsyncClient().get("/health")
    assert response.status_code == 503 and response.json()["status"] == "unhealthy"
    assert alive(response.json())


def test_nothing_answering_is_not_alive():
    assert main([f"http://127.0.0.1:{free_port()}/health"]) == 1


def test_an_answer_that_is_no_health_report_is_not_alive():
    with answering(200, b"<html>a proxy's page</html>", "text/html") as url:
        assert main([url]) == 1
    with answering(200, b'{"status": "ok"}') as url:
        assert main([url]) == 1
