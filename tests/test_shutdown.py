"""SIGTERM to a real server process: it finishes the session in progress (the pending
speech becomes a final, stored and sent), closes with 1012, and exits in time."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import pytest
import websockets

from tests.conftest import frames
from tests.servers import ScratchDatabase, Server, base_env

pytestmark = pytest.mark.realtime


async def test_sigterm_finalizes_stores_and_sends_pending_speech_then_closes_1012(tmp_path, jfk_audio):
    database = ScratchDatabase(os.environ["DATABASE_URL"])
    server = Server({**base_env(), "DATABASE_URL": database.url(), "SHUTDOWN_GRACE_SECONDS": "15"}, tmp_path)
    try:
        async with websockets.connect(server.ws) as ws:
            await ws.send(json.dumps({"type": "start_session", "session_config": {"final_chunk_duration": 2.0}}))
            assert json.loads(await ws.recv())["type"] == "session_started"
            for frame in frames(jfk_audio[:int(3.4 * 16000)], 1024):  # mid-utterance: no pause yet
                await ws.send(frame)
            await asyncio.sleep(0.5)
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            messages = []
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    messages.append(json.loads(await asyncio.wait_for(ws.recv(), 20)))
        assert closed.value.rcvd.code == 1012
        finals = [m["data"] for m in messages if m["type"] == "transcription_final"]
        assert finals and "fellow americans" in " ".join(f["text"] for f in finals).lower()
        ended = [m for m in messages if m["type"] == "session_ended"]
        assert ended and ended[0]["data"]["reason"] == "server_shutdown"
        server.process.wait(20)
        assert time.monotonic() - signalled < 20, "the process exits within the grace period"
        stored = {row[0] for row in database.query("SELECT utterance_id::text FROM stt_utterance")}
        assert {f["utterance_id"] for f in finals} <= stored, "every final sent is in the history"
        reasons = database.query("SELECT close_reason FROM stt_sessionrecord")
        assert reasons == [("server_shutdown",)]
    finally:
        if server.process.poll() is None:
            server.stop()
        database.drop()
