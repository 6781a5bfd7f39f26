"""Uploads beside everything else (issue 23, items 2 and 4), through the real views, the
real key lookup (PostgreSQL) and the real model; only the decoder of some tests is one
that hangs (what FFmpeg did on a host that never answers), given to the views as their
services' decoder."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import soundfile
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import AsyncRequestFactory

from stt import auth
from stt.models import ApiKey
from stt.openai_api.catalog import ModelCatalog
from stt.openai_api.services import FileApiServices
from stt.openai_api.transcriber import FileSettings, FileTranscriber
from stt.openai_api.uploads import Uploads
from stt.openai_api.views import OpenAiApi
from stt.persistence import history

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def auth_required(settings):
    settings.AUTH_REQUIRED = True


def new_key(name: str) -> str:
    raw, prefix, digest = auth.generate_key()
    ApiKey.objects.create(name=name, prefix=prefix, key_hash=digest)
    return raw


def wav_bytes(seconds: float) -> bytes:
    buffer = io.BytesIO()
    tone = 0.1 * np.sin(np.arange(int(seconds * 16000)) * 0.05).astype(np.float32)
    soundfile.write(buffer, tone, 16000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def upload_request(key: str, body: bytes | None = None):
    file = SimpleUploadedFile("speech.wav", body or wav_bytes(1.0), "audio/wav")
    return AsyncRequestFactory().post("/v1/audio/transcriptions", {"model": "whisper-1", "file": file},
                                      headers={"Authorization": f"Bearer {key}"})


class Hanging:
    """A decoder that never finishes by itself: it returns once released, and notes the
    stop requests it was given (it ignores them, like a read blocked in the kernel). The
    test hears of it on its loop, not through a pool thread (the pools are under test)."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self._loop = asyncio.get_running_loop()
        self._entered: asyncio.Queue[None] = asyncio.Queue()
        self.asked_to_stop = asyncio.Event()

    def __call__(self, source, max_seconds, should_stop=None):  # noqa: ANN001
        self._loop.call_soon_threadsafe(self._entered.put_nowait, None)
        while not self.released.wait(0.02):
            if should_stop is not None and should_stop():
                self._loop.call_soon_threadsafe(self.asked_to_stop.set)
        return np.zeros(16000, np.float32)

    async def wait_entered(self, count: int) -> None:
        for _ in range(count):
            await asyncio.wait_for(self._entered.get(), 30)


def api_with(engine, decoder) -> OpenAiApi:
    transcriber = FileTranscriber(engine, history, lambda: FileSettings(12.0, False, 0, 0.1))
    catalog = ModelCatalog.from_settings("tiny.en", ["whisper-1"], 0)
    uploads = Uploads()  # the process's, but of this test alone (its pool sized by the test's settings)
    return OpenAiApi(lambda: FileApiServices(transcriber, catalog, uploads, decoder))


@pytest.fixture
async def two_core_default_pool():
    """The event loop's default pool as Python sizes it on the 2-core production host (6)."""
    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(6)
    loop.set_default_executor(pool)
    yield pool
    pool.shutdown(wait=False)


async def test_six_hanging_uploads_leave_a_key_authenticated_request_answering_within_a_second(
        engine, settings, two_core_default_pool):
    settings.FILE_MAX_UPLOADS, settings.FILE_MAX_UPLOADS_PER_KEY = 6, 6
    key = await asyncio.to_thread(new_key, "backend")
    decoder = Hanging()
    api = api_with(engine, decoder)
    uploads = [asyncio.ensure_future(api.transcriptions(upload_request(key))) for _ in range(6)]
    try:
        await decoder.wait_entered(6)
        started = time.monotonic()
        request = AsyncRequestFactory().get("/v1/models", headers={"Authorization": f"Bearer {key}"})
        response = await asyncio.wait_for(api.models(request), 10)
        took = time.monotonic() - started
        assert response.status_code == 200
        assert took < 1.0, f"/v1/models took {took:.2f} s beside six hanging uploads"
    finally:
        decoder.released.set()
        await asyncio.wait(uploads, timeout=30)


async def test_a_keys_third_upload_and_the_processs_fifth_are_refused_429_with_retry_after(
        engine, settings):
    settings.FILE_MAX_UPLOADS, settings.FILE_MAX_UPLOADS_PER_KEY = 4, 2
    first, second, third = [await asyncio.to_thread(new_key, name) for name in ("one", "two", "three")]
    decoder = Hanging()
    api = api_with(engine, decoder)
    held = [asyncio.ensure_future(api.transcriptions(upload_request(key))) for key in (first, first, second)]
    try:
        await decoder.wait_entered(3)
        refused = await asyncio.wait_for(api.transcriptions(upload_request(first)), 5)
        assert refused.status_code == 429 and int(refused["Retry-After"]) >= 1
        body = json.loads(refused.content)["error"]
        assert set(body) == {"message", "type", "param", "code"} and body["code"] == "rate_limit_exceeded"
        held.append(asyncio.ensure_future(api.transcriptions(upload_request(second))))  # the process's fourth
        await decoder.wait_entered(1)
        full = await asyncio.wait_for(api.transcriptions(upload_request(third)), 5)
        assert full.status_code == 429 and "Retry-After" in full
    finally:
        decoder.released.set()
        await asyncio.wait(held, timeout=30)


async def test_a_client_that_goes_away_stops_its_decode(engine, settings):
    decoder = Hanging()
    api = api_with(engine, decoder)
    key = await asyncio.to_thread(new_key, "backend")
    upload = asyncio.ensure_future(api.transcriptions(upload_request(key)))
    await decoder.wait_entered(1)
    upload.cancel()  # what Django's handler does when the client disconnects
    try:
        await asyncio.wait_for(decoder.asked_to_stop.wait(), 10)  # the decode was told to stop
    finally:
        decoder.released.set()


async def test_a_decode_past_its_time_limit_is_refused_and_its_hung_thread_keeps_its_slot(engine, settings):
    settings.FILE_DECODE_TIMEOUT, settings.FILE_MAX_UPLOADS, settings.FILE_MAX_UPLOADS_PER_KEY = 0.3, 1, 1
    decoder = Hanging()
    api = api_with(engine, decoder)
    key = await asyncio.to_thread(new_key, "backend")
    try:
        response = await asyncio.wait_for(api.transcriptions(upload_request(key)), 10)
        error = json.loads(response.content)["error"]
        assert response.status_code == 400 and error["code"] == "decode_timeout" and error["param"] == "file"
        assert decoder.asked_to_stop.is_set() or await asyncio.wait_for(decoder.asked_to_stop.wait(), 5) is True
        # The decode thread still hangs: its slot is not given to the next upload.
        refused = await asyncio.wait_for(api.transcriptions(upload_request(key)), 5)
        assert refused.status_code == 429
    finally:
        decoder.released.set()
