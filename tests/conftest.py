"""Shared fixtures: real speech, the real model, and the services of this machine.

bin/test sets DATABASE_URL (PostgreSQL) and REDIS_URL (Redis) before pytest starts,
so the whole suite runs on the real database and channel layer. Tests that are about
those services refuse to run on the embedded fallbacks rather than pass vacuously.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from django.conf import settings
from faster_whisper.audio import decode_audio

from stt.engine import SpeechEngine, get_engine, replace_engine
from stt.persistence import history
from stt.runtime_config import store as runtime_store

AUDIO_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "audio"
JFK_PATH = AUDIO_DIR / "jfk.flac"
JFK_TEXT = (
    "And so my fellow Americans, ask not what your country can do for you, "
    "ask what you can do for your country."
)
SAMPLE_RATE = 16000


def load_audio(path: Path | str) -> np.ndarray:
    """Any audio file as 16 kHz mono float32."""
    return decode_audio(str(path), sampling_rate=SAMPLE_RATE)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32)


def frames(audio: np.ndarray, size: int = 1024) -> list[bytes]:
    """The audio as binary WebSocket frames of float32 little-endian samples."""
    return [audio[i:i + size].astype("<f4").tobytes() for i in range(0, len(audio), size)]


@pytest.fixture(scope="session")
def jfk_audio() -> np.ndarray:
    if not JFK_PATH.is_file():
        pytest.fail(f"test speech missing: {JFK_PATH} (the shared/ folder beside the checkout)")
    return load_audio(JFK_PATH)


@pytest.fixture(scope="session")
def speak():
    """speak(text) -> 16 kHz float32 speech synthesized by espeak-ng."""
    binary = shutil.which("espeak-ng")
    if binary is None:
        pytest.fail("espeak-ng is not installed (bin/test installs it with apt-get)")
    cache: dict[str, np.ndarray] = {}

    def synthesize(text: str) -> np.ndarray:
        if text not in cache:
            with tempfile.TemporaryDirectory() as folder:
                wav = Path(folder) / "speech.wav"
                subprocess.run([binary, "-s", "150", "-w", str(wav), text], check=True)
                cache[text] = load_audio(wav)
        return cache[text]

    return synthesize


@pytest.fixture(scope="session")
def engine() -> SpeechEngine:
    """The process's real engine with the bundled model, loaded once for the whole run."""
    engine = get_engine()
    engine.start_loading().result(timeout=120)
    return engine


@pytest.fixture
def broken_engine():
    """The process engine swapped for one whose model directory does not exist."""
    broken = SpeechEngine(model="/nonexistent/whisper-model")
    previous = replace_engine(broken)
    yield broken
    replace_engine(previous)


@pytest.fixture
def redis_channel_layer():
    """The Redis channel layer of this machine; fails if the suite runs without it."""
    if not settings.REDIS_URL:
        pytest.fail("REDIS_URL is not set: channel-layer tests run against real Redis (use bin/test)")
    from channels.layers import get_channel_layer
    from channels_redis.core import RedisChannelLayer

    layer = get_channel_layer()
    assert isinstance(layer, RedisChannelLayer)
    return layer


@pytest.fixture(autouse=True)
async def background_work_settled():
    """Each test ends with its sessions' background work done: departed clients'
    finals and history writes land, and the runtime-config listener of the test's
    event loop stops (the loop closes with the test)."""
    yield
    from stt.session.state import unfinished_work

    pending = unfinished_work()
    if pending:
        await asyncio.wait(pending, timeout=30)
    await history.drain(timeout=15)
    await runtime_store.stop_listener()


@pytest.fixture
def fresh_runtime_store():
    """The process's runtime-config store reads the profiles again, before and after the
    test (a test that changes profiles must not see, or leave, cached values)."""
    runtime_store.invalidate()
    yield runtime_store
    runtime_store.invalidate()


@pytest.fixture(autouse=True, scope="session")
def history_connection_closed(django_db_setup):
    """The history thread's database connection must not outlive the test database
    (requesting django_db_setup makes this run down before the database is dropped)."""
    yield
    history.close_connection()
    # Async tests reach the ORM through asgiref's shared sync thread: close its connection too.
    from asgiref.sync import SyncToAsync
    from django.db import connections

    SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=10)


@pytest.fixture(autouse=True)
def media_in_tmp(settings, tmp_path):
    """Utterance audio written by a test goes to its own folder."""
    settings.MEDIA_ROOT = str(tmp_path / "media")


@pytest.fixture(autouse=True)
def refinement_off(settings):
    """Finals are not queued for re-transcription unless a test turns it on
    (tests/stt/test_tasks.py and tests/test_celery_worker.py do, with a worker)."""
    settings.REFINE_FINALS = False


@pytest.fixture(autouse=True)
def capacity_admission_off(settings):
    """Sessions are admitted by the connection limit alone unless a test is about
    capacity (tests/stt/session/test_capacity.py, tests/test_capacity_process.py): the
    suite's own load on the shared engine would otherwise turn later tests' sessions away."""
    settings.CAPACITY_ADMISSION = False


@pytest.fixture(autouse=True)
def open_mode(settings):
    """Tests connect without credentials unless they are about authentication
    (tests/stt/test_auth.py turns AUTH_REQUIRED back on)."""
    settings.AUTH_REQUIRED = False


@pytest.fixture
def eager_celery():
    """Celery tasks run in the calling process, as in the embedded mode (no worker)."""
    from fasttalk.celery import app as celery_app

    previous = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = previous


@pytest.fixture(scope="session")
def stt_server(tmp_path_factory):
    """One real server process (Daphne, PostgreSQL scratch database, AUTH_REQUIRED) for the
    client tests, with two API keys: `keys["backend"]` (20 sessions) and `keys["single"]`
    (one concurrent session)."""
    from tests.servers import ScratchDatabase, Server, base_env

    database = ScratchDatabase(os.environ["DATABASE_URL"])
    env = {**base_env(), "DATABASE_URL": database.url(), "AUTH_REQUIRED": "1"}
    server = Server(env, tmp_path_factory.mktemp("live-server"))
    keys = {"backend": server.create_api_key("backend", max_concurrent_sessions=20),
            "single": server.create_api_key("single", max_concurrent_sessions=1)}
    yield SimpleNamespace(server=server, ws=server.ws, base=server.base, keys=keys, database=database)
    server.stop()
    database.drop()
