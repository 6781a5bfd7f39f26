"""A final that fails after all its retries: the client gets its error, and the
utterance is kept with a failed status and its audio, so the refinement model can
transcribe it later and an analyst can listen to it in the admin."""

from __future__ import annotations

import asyncio
import io
import time

import numpy as np
import pytest
import soundfile
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.urls import reverse

from fasttalk.asgi import application
from stt.evaluation import word_error_rate
from stt.models import Refinement, Utterance
from tests.conftest import frames

pytestmark = pytest.mark.django_db(transaction=True)


async def failing_final(engine, audio: np.ndarray, settings) -> dict:
    """Stream `audio` and end the session while every decode times out; the error sent."""
    communicator = WebsocketCommunicator(application, "/ws/transcribe")
    assert (await communicator.connect(timeout=10))[0]
    await communicator.send_json_to({"type": "start_session", "session_config": {
        "session_id": "fails", "language": "en", "final_chunk_duration": 2.0,
        "enable_partial_transcription": False}})
    assert (await communicator.receive_json_from(timeout=30))["type"] == "session_started"
    for frame in frames(audio, 4096):
        await communicator.send_to(bytes_data=frame)
    settings.STT_TRANSCRIPTION_TIMEOUT = 0.0001
    settings.STT_RETRY_BASE_DELAY = 0.01
    await communicator.send_json_to({"type": "end_session"})
    errors = []
    while True:
        output = await communicator.receive_output(timeout=60)
        if output["type"] == "websocket.close":
            break
        message = __import__("json").loads(output["text"])
        if message["type"] == "error":
            errors.append(message["error"])
    engine.transcription_breaker.record_success()  # leave the shared engine closed for other tests
    assert [e["code"] for e in errors] == ["transcription_timeout"], "the client still gets its error"
    return errors[0]


def failed_row(utterance_id: str) -> Utterance | None:
    return Utterance.objects.filter(utterance_id=utterance_id).first()


async def test_a_failed_final_is_stored_with_its_audio_and_refined_later(engine, jfk_audio, settings,
                                                                       eager_celery):
    settings.REFINE_FINALS = True
    audio = jfk_audio[:int(3.5 * 16000)] * np.float32(0.93)  # "And so my fellow Americans"
    error = await failing_final(engine, audio, settings)
    row = await sync_to_async(failed_row)(error["utterance_id"])
    assert row is not None, "the failed utterance is in the history"
    assert (row.status, row.text) == ("failed", "")
    assert "transcription_timeout" in row.error
    stored, rate = await sync_to_async(lambda: soundfile.read(io.BytesIO(row.audio.read())))()
    assert rate == 16000 and abs(stored.size / 16 - row.audio_duration_ms) <= 1

    def refined() -> Refinement | None:
        return Refinement.objects.filter(utterance=row, status="done").first()

    deadline = time.monotonic() + 120
    refinement = None
    while refinement is None and time.monotonic() < deadline:
        refinement = await sync_to_async(refined)()
        await asyncio.sleep(0.2)
    assert refinement is not None, "the refinement model transcribed it"
    assert word_error_rate("and so my fellow americans", refinement.text) <= 0.2, refinement.text


async def test_an_analyst_finds_and_plays_a_failed_utterance_in_the_admin(engine, jfk_audio, settings, admin_client):
    error = await failing_final(engine, jfk_audio[:int(3.5 * 16000)] * np.float32(0.91), settings)
    row = await sync_to_async(failed_row)(error["utterance_id"])
    listing = await sync_to_async(admin_client.get)(reverse("admin:stt_utterance_changelist") + "?status=failed")
    assert str(row.pk) in listing.content.decode()
    page = (await sync_to_async(admin_client.get)(reverse("admin:stt_utterance_change", args=[row.pk]))).content.decode()
    assert "<audio controls" in page and "transcription_timeout" in page
    played = await sync_to_async(admin_client.get)(reverse("admin:stt_utterance_audio", args=[row.pk]))
    assert played.status_code == 200 and played["Content-Type"] == "audio/flac"
