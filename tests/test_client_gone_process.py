"""A client that floods audio beyond its budget and then vanishes (TCP reset, no close
frame), on a real server process (issue 23 #3). Its session used to sleep in the audio
budget with the disconnect queued behind its frames; Daphne killed the application
after 30 s, the session never ended, and it held its place in /stats and /ready (for
ever with SESSION_IDLE_TIMEOUT=0), its history saying nothing of the disconnect."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import time

import numpy as np
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from tests.conftest import frames
from tests.servers import ScratchDatabase, Server, base_env, get_json

# Well below real time: a frame of 16384 samples waits 2 s for its budget, a 12 s append 24 s.
BUDGET = 0.5
# A gone client's session must be off the books within this (seconds).
CLEARED_WITHIN = 6.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    database = ScratchDatabase(os.environ["DATABASE_URL"])
    env = {**base_env(), "DATABASE_URL": database.url(), "AUDIO_BUDGET_PER_SESSION": str(BUDGET),
           "SESSION_IDLE_TIMEOUT": "0",  # the idle timeout must not be what ends the session
           # Admission by capacity, every session in its warmup and a session assumed to cost
           # more than the engine has: a live session within its budget would turn /ready
           # 503 (at_capacity); one over it (these floods) is not counted.
           "CAPACITY_ADMISSION": "1", "CAPACITY_WARMUP_SECONDS": "600", "CAPACITY_PRIOR_DEMAND": "100"}
    running = Server(env, tmp_path_factory.mktemp("client-gone-server"))
    running.database = database
    yield running
    running.stop()
    database.drop()


def noise(seconds: float, rate: int = 16000) -> np.ndarray:
    """Quiet noise, not digital silence: every frame is real audio to the session."""
    return (np.random.default_rng(7).standard_normal(int(seconds * rate)) * 0.001).astype(np.float32)


def reset(ws: ClientConnection) -> None:
    """Vanish as a crashed client does: the socket closed with a TCP reset, no close frame."""
    sock = ws.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.transport.abort()


def live_sessions(server: Server) -> dict:
    return get_json(f"{server.base}/stats")[1]["processing_stats"]


async def wait_until_cleared(server: Server, label: str) -> float:
    """Seconds until /stats holds no session and /ready is 200 again; fails past CLEARED_WITHIN."""
    started = time.monotonic()
    while time.monotonic() - started < CLEARED_WITHIN:
        status, ready = await asyncio.to_thread(get_json, f"{server.base}/ready")
        if not await asyncio.to_thread(live_sessions, server) and status == 200 and ready["active_connections"] == 0:
            return time.monotonic() - started
        await asyncio.sleep(0.2)
    status, ready = get_json(f"{server.base}/ready")
    pytest.fail(f"{label}: still {len(live_sessions(server))} session(s) in /stats and /ready {status} {ready} "
                f"{CLEARED_WITHIN:g} s after the client vanished")


async def close_reason(server: Server, session_id: str) -> str:
    """The history's close reason of the session (written in the background: waited for)."""
    for _ in range(50):
        rows = server.database.query("SELECT close_reason FROM stt_sessionrecord WHERE session_id = %s", session_id)
        if rows and rows[0][0]:
            return rows[0][0]
        await asyncio.sleep(0.2)
    return rows[0][0] if rows else "<no row>"


async def assert_held(server: Server) -> None:
    """The flooding session is live: in /stats, and holding a connection of the process.
    (Not capacity: a session waiting on its audio budget is elastic load, which admission
    does not count against the next client, issue 24 #4.)"""
    assert len(live_sessions(server)) == 1
    status, ready = get_json(f"{server.base}/ready")
    assert (status, ready["active_connections"]) == (200, 1), ready


async def test_a_flooding_client_that_vanishes_leaves_no_session_behind(server):
    async with websockets.connect(server.ws, max_size=None) as ws:
        await ws.send(json.dumps({"type": "start_session", "session_config": {"session_id": "flood-ws"}}))
        assert json.loads(await ws.recv())["type"] == "session_started"

        async def flood() -> None:  # blocks once the server stops reading (backpressure)
            for frame in frames(noise(120), 16384):
                await ws.send(frame)

        flooding = asyncio.ensure_future(flood())
        await asyncio.sleep(2.0)  # past the burst: the session waits on its budget, frames queue
        await assert_held(server)
        reset(ws)
        flooding.cancel()
    await wait_until_cleared(server, "/ws/transcribe")
    assert await close_reason(server, "flood-ws") == "client_disconnected"


async def test_a_realtime_client_that_vanishes_behind_large_appends_leaves_no_session_behind(server):
    url = server.ws.replace("/ws/transcribe", "/v1/realtime?intent=transcription")
    pcm = (noise(12.0, 24000) * 32767).astype("<i2")
    append = json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm.tobytes()).decode()})
    async with websockets.connect(url, max_size=None) as ws:
        created = json.loads(await ws.recv())
        assert created["type"] == "session.created"
        for _ in range(3):  # 36 s of audio: over 70 s of budget, past Daphne's 30 s kill
            await ws.send(append)
        await asyncio.sleep(1.5)
        await assert_held(server)
        reset(ws)
    await wait_until_cleared(server, "/v1/realtime")
    assert await close_reason(server, created["session"]["id"]) == "client_disconnected"
