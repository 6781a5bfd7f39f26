"""Failures forced for real, seen from the monitoring side: the messages clients get,
the transcription breaker's transitions, /health and the Prometheus metrics."""

from __future__ import annotations

import asyncio
import json

import pytest
from django.test import AsyncClient

from monitoring import metrics
from stt.engine import DecodeOptions, SpeechEngine, replace_engine
from stt.services import process_session_services
from stt.session import SttSession
from tests.conftest import frames
from tests.faulty_models import ModelFaults

pytestmark = pytest.mark.django_db(transaction=True)


class RaisingEngine(SpeechEngine):
    """The real engine and model, whose inference raises while `broken` is set."""

    def __init__(self, *args, **kwargs) -> None:
        self.faults = ModelFaults(error="forced inference failure")
        super().__init__(*args, model_factory=self.faults, **kwargs)

    @property
    def broken(self) -> bool:
        return self.faults.error is not None

    @broken.setter
    def broken(self, broken: bool) -> None:
        self.faults.error = "forced inference failure" if broken else None


@pytest.fixture
def raising_engine():
    # Built with 5; the test's settings lower it to 2 and a session applies that.
    engine = RaisingEngine("tiny.en", transcription_failure_threshold=5, transcription_reset_seconds=1.0)
    engine.start_loading().result(timeout=120)
    previous = replace_engine(engine)
    yield engine
    replace_engine(previous)
    engine.close()


def sample(name: str, **labels) -> float:
    value = metrics.render()[0].decode()
    label_text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    key = f"{name}{{{label_text}}}" if labels else name
    for line in value.splitlines():
        if line.startswith(key + " "):
            return float(line.split()[-1])
    return 0.0


async def health() -> tuple[int, dict]:
    response = await AsyncClient().get("/health")
    return response.status_code, response.json()


async def test_a_failing_model_opens_the_breaker_and_health_and_metrics_show_it(raising_engine, settings,
                                                                               jfk_audio):
    settings.STT_FINAL_RETRIES = 0
    settings.TRANSCRIPTION_FAILURE_THRESHOLD = 2  # sessions apply it to the engine when they open
    settings.AUDIO_BUDGET_PER_SESSION = 0  # audio pushed at full speed, its timing assumed below
    failed_before = sample("fasttalk_errors_total", category="processing", code="transcription_failed")
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def close(code: int, reason: str) -> None:
        pass

    session = SttSession(send, close, process_session_services(raising_engine), client="127.0.0.1:1")
    assert await session.open()
    await session.on_text(json.dumps({"type": "start_session", "session_config": {
        "language": "en", "enable_partial_transcription": False}}))
    for _ in range(2):  # two utterances, each ending in a failed final
        for frame in frames(jfk_audio[:40000]):
            await session.on_audio(frame)
        await session.on_text(json.dumps({"type": "flush_buffer"}))
        await asyncio.sleep(0.3)
    errors = [m["error"] for m in sent if m["type"] == "error"]
    assert errors and all(e["category"] == "processing" for e in errors)
    assert "transcription_failed" in [e["code"] for e in errors]
    assert raising_engine.transcription_breaker.state.value == "open"

    # Closed -> open: /health says the service cannot transcribe, and why.
    status, report = await health()
    assert status == 503 and report["status"] == "unhealthy"
    assert report["checks"]["breakers"]["transcription"]["state"] == "open"
    assert sample("fasttalk_breaker_state", breaker="transcription") == 2
    assert sample("fasttalk_errors_total", category="processing", code="transcription_failed") > failed_before

    # While open, work is refused at once with a retry hint.
    await session.on_text(json.dumps({"type": "flush_buffer"}))
    for frame in frames(jfk_audio[:40000]):
        await session.on_audio(frame)
    await session.on_text(json.dumps({"type": "flush_buffer"}))
    await asyncio.sleep(0.3)
    refused = [m["error"] for m in sent if m["type"] == "error" and m["error"]["code"] == "transcription_unavailable"]
    assert refused and 0 < refused[-1]["retry_after"] <= 1.0

    # Open -> half-open after the reset time: one probe allowed.
    await asyncio.sleep(1.1)
    assert raising_engine.transcription_breaker.state.value == "half_open"
    assert sample("fasttalk_breaker_state", breaker="transcription") == 1

    # Half-open -> closed: the model works again and the probe succeeds.
    raising_engine.broken = False
    transcript = await raising_engine.transcribe(jfk_audio[:40000], DecodeOptions.final("en", True))
    assert "fellow americans" in transcript.text.lower()
    assert raising_engine.transcription_breaker.state.value == "closed"
    assert sample("fasttalk_breaker_state", breaker="transcription") == 0
    status, report = await health()
    assert status == 200 and report["status"] == "healthy"
    assert report["checks"]["breakers"]["status"] == "ok" and report["checks"]["model"]["answering"] is True
    await session.end("session_end", ended_reason="test")


async def test_the_broker_is_part_of_health(engine):
    status, report = await health()
    broker = report["checks"]["celery_broker"]
    assert broker["status"] == "ok" and broker["mode"] == "broker"  # this machine's Redis under bin/test


async def test_an_unreachable_broker_degrades_health_without_stopping_service(engine, settings):
    from fasttalk.celery import app

    previous = app.conf.broker_url
    app.conf.broker_url = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    try:
        status, report = await health()
    finally:
        app.conf.broker_url = previous
    assert status == 200 and report["status"] == "degraded"
    assert report["checks"]["celery_broker"]["status"] == "error"


async def test_health_probes_a_model_that_has_not_decoded_lately(raising_engine):
    """An idle model that fails is found by /health's own probe decode, not by a client."""
    from monitoring import health as health_module

    assert raising_engine.transcription_breaker.state.value == "closed"
    status, report = await health()
    assert status == 503 and report["checks"]["model"]["answering"] is False
    assert "forced inference failure" in report["checks"]["model"]["error"]
    raising_engine.broken = False
    health_module._last_probes[raising_engine]["at"] = None  # the next check probes again at once
    status, report = await health()
    assert status == 200 and report["checks"]["model"]["answering"] is True


async def test_concurrent_health_checks_share_one_probe(raising_engine):
    raising_engine.broken = False
    before = raising_engine.stats.batches
    reports = await asyncio.gather(*[health() for _ in range(5)])
    assert all(status == 200 for status, _ in reports)
    assert raising_engine.stats.batches - before == 1, "one probe decode for five checks"


async def test_a_health_probe_never_takes_the_half_open_slot_from_a_client(raising_engine, jfk_audio):
    from monitoring import health as health_module

    breaker = raising_engine.transcription_breaker
    breaker.failure_threshold = 1
    breaker.record_failure()
    await asyncio.sleep(1.1)
    assert breaker.state.value == "half_open"
    raising_engine.broken = False
    health_module._last_probes.pop(raising_engine, None)
    await health()  # probes the model, outside the breaker's admission
    transcript = await raising_engine.transcribe(jfk_audio[:40000], DecodeOptions.partial("en"))
    assert "fellow" in transcript.text.lower() and breaker.state.value == "closed"
