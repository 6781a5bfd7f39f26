"""The audio budget in a real server process: a client pushing a file at full speed is
held near AUDIO_BUDGET_PER_SESSION (the server stops reading its socket while its
session waits), and every second of its audio is still transcribed (issue 14 #2)."""

from __future__ import annotations

import asyncio
import json
import os
import time

import numpy as np
import pytest
import websockets

from stt.evaluation import word_error_rate
from stt.session.budget import BURST_SECONDS
from tests.conftest import JFK_TEXT, frames, silence
from tests.servers import ScratchDatabase, Server, base_env

# Below real time, so that the budget, not the model's speed on a busy machine, sets the pace.
BUDGET = 0.5


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    database = ScratchDatabase(os.environ["DATABASE_URL"])
    env = {**base_env(), "DATABASE_URL": database.url()}
    env["AUDIO_BUDGET_PER_SESSION"] = str(BUDGET)
    running = Server(env, tmp_path_factory.mktemp("budget-server"))
    yield running
    running.stop()
    database.drop()


async def push_at_full_speed(url: str, audio: np.ndarray) -> tuple[float, list[dict]]:
    """Send every frame as fast as the socket takes it, then end_session; the seconds from
    the first frame to session_ended, and every message received."""
    messages: list[dict] = []
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "start_session", "session_config": {
            "language": "en", "enable_partial_transcription": False}}))
        assert json.loads(await ws.recv())["type"] == "session_started"
        started = time.perf_counter()

        async def sender() -> None:
            for frame in frames(audio, 1024):
                await ws.send(frame)
            await ws.send(json.dumps({"type": "end_session"}))

        sending = asyncio.ensure_future(sender())
        async for raw in ws:
            messages.append(json.loads(raw))
            if messages[-1]["type"] == "session_ended":
                break
        elapsed = time.perf_counter() - started
        await sending
    return elapsed, messages


async def test_a_full_speed_client_is_held_near_its_budget_and_all_its_audio_transcribed(server, jfk_audio):
    audio = np.concatenate([jfk_audio, silence(1.0)])
    audio_seconds = len(audio) / 16000
    elapsed, messages = await asyncio.wait_for(push_at_full_speed(server.ws, audio), 120)
    least = (audio_seconds - BUDGET * BURST_SECONDS) / BUDGET
    # Near its budget: not let through faster; not held much slower either, if short of
    # what charging its audio twice would give (2x): the finals are decoded while it
    # streams and the last one after its last frame, on a machine that may be busy.
    assert least * 0.95 <= elapsed <= least * 1.75, f"{audio_seconds:.1f} s of audio took {elapsed:.1f} s"
    assert not [m for m in messages if m["type"] == "error"], "slowed, never refused"
    summary = messages[-1]["data"]
    assert summary["audio_received_s"] == pytest.approx(audio_seconds, abs=0.07) and summary["errors"] == 0
    text = " ".join(m["data"]["text"] for m in messages if m["type"] == "transcription_final")
    assert word_error_rate(JFK_TEXT, text) <= 0.1, text
