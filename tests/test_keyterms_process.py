"""Keyterms end to end: a real server process, real WebSockets at real-time pace, the
real model; a vocabulary typed into the admin of the running server reaches a session
that is already streaming."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import websockets
from faster_whisper.audio import decode_audio

from tests.servers import ROOT, AdminBrowser, ScratchDatabase, Server, base_env

pytestmark = pytest.mark.realtime

SENTENCE = "Please send the invoice to Siobhan Nakamura today."
PASSWORD = "s3cret-pass-phrase"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    database = ScratchDatabase(os.environ["DATABASE_URL"])
    server = Server({**base_env(), "DATABASE_URL": database.url()}, tmp_path_factory.mktemp("keyterms"))
    server.manage("createsuperuser", "--noinput", "--username", "admin", "--email", "admin@example.com",
                  env={"DJANGO_SUPERUSER_PASSWORD": PASSWORD})
    yield server
    server.stop()
    database.drop()


@pytest.fixture(scope="module")
def sentence_wav(tmp_path_factory) -> Path:
    wav = tmp_path_factory.mktemp("speech") / "invoice.wav"
    subprocess.run([shutil.which("espeak-ng") or "espeak-ng", "-s", "150", "-w", str(wav), SENTENCE], check=True)
    return wav


class LiveSession:
    """One WebSocket session that streams at real-time pace and collects finals."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.finals: list[str] = []
        self.partials: list[str] = []
        self.started: dict = {}
        self._reader: asyncio.Task | None = None

    async def start(self, **config) -> None:
        await self.ws.send(json.dumps({"type": "start_session", "session_config": config}))
        self.started = json.loads(await self.ws.recv())
        assert self.started["type"] == "session_started", self.started
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.ws:
            message = json.loads(raw)
            if message["type"] == "transcription_final":
                self.finals.append(message["data"]["text"])
            elif message["type"] == "transcription_partial":
                self.partials.append(message["data"]["text"])

    async def say(self, audio: np.ndarray) -> str:
        """Stream the audio and 1 s of silence at real-time pace; the utterance's final."""
        count = len(self.finals)
        audio = np.concatenate([audio, np.zeros(16000, np.float32)])
        started = time.perf_counter()
        for index in range(0, audio.size, 512):
            await self.ws.send(audio[index:index + 512].astype("<f4").tobytes())
            await asyncio.sleep(max(0.0, started + (index + 512) / 16000 - time.perf_counter()))
        deadline = time.perf_counter() + 30
        while len(self.finals) == count and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        return self.finals[-1] if len(self.finals) > count else ""

    async def end(self) -> None:
        await self.ws.send(json.dumps({"type": "end_session"}))
        assert self._reader is not None
        await asyncio.wait_for(self._reader, 30)


async def test_the_final_spells_the_name_only_with_keyterms(server, sentence_wav):
    audio = decode_audio(str(sentence_wav), sampling_rate=16000)
    results = {}
    for keyterms in ([], ["Siobhan Nakamura", "Zyphora"]):
        async with websockets.connect(server.ws) as ws:
            session = LiveSession(ws)
            await session.start(keyterms=keyterms)
            assert session.started["data"]["config"]["keyterms"] == keyterms
            results[bool(keyterms)] = await session.say(audio * np.float32(1 - 0.001 * len(keyterms)))
            await session.end()
    assert results[False] and "Siobhan" not in results[False]
    assert "Siobhan Nakamura" in results[True]


async def test_bad_keyterms_get_the_protocols_error_and_the_session_goes_on(server):
    async with websockets.connect(server.ws) as ws:
        await ws.send(json.dumps({"type": "start_session", "session_config": {"keyterms": ["ok", 7]}}))
        error = json.loads(await ws.recv())
        assert error["type"] == "error"
        assert (error["error"]["code"], error["error"]["field"], error["error"]["recoverable"]) == \
            ("invalid_config", "keyterms.1", True)
        await ws.send(json.dumps({"type": "start_session", "session_config": {"keyterms": ["ok"]}}))
        assert json.loads(await ws.recv())["type"] == "session_started"


async def test_a_vocabulary_saved_in_the_admin_reaches_a_session_already_streaming(server, sentence_wav):
    audio = decode_audio(str(sentence_wav), sampling_rate=16000)
    browser = AdminBrowser(server.base, "admin", PASSWORD)
    fields = {"name": "invoices", "description": "", "default_language": "", "vocabulary": ""}
    form = browser.get("/admin/stt/runtimeprofile/add/")
    assert browser.post("/admin/stt/runtimeprofile/add/", fields, form)[0] == 200
    async with websockets.connect(server.ws) as ws:
        session = LiveSession(ws)
        await session.start(profile="invoices")
        before = await session.say(audio * np.float32(0.99))

        page = browser.get("/admin/stt/runtimeprofile/")
        change = re.search(r"/admin/stt/runtimeprofile/\d+/change/", page).group(0)
        form = browser.get(change)
        browser.post(change, {**fields, "vocabulary": "Siobhan Nakamura\r\nZyphora"}, form)
        await asyncio.sleep(2.0)  # RUNTIME_CONFIG_REFRESH_SECONDS and a watchdog beat
        after = await session.say(audio * np.float32(0.98))
        await session.end()
    assert before and "Siobhan" not in before
    assert "Siobhan Nakamura" in after


def test_the_command_line_client_takes_keyterms(server, sentence_wav):
    done = subprocess.run([sys.executable, "-m", "stt.client", "stream", str(sentence_wav), "--url", server.ws,
                           "--pace", "2", "--keyterm", "Siobhan Nakamura", "--keyterm", "Zyphora"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Siobhan Nakamura" in done.stdout
    refused = subprocess.run([sys.executable, "-m", "stt.client", "stream", str(sentence_wav), "--url", server.ws,
                              "--keyterm", "x" * 65], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "keyterms.0" in refused.stderr
