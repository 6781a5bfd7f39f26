"""The database goes away under a running server: finals keep coming, and every one
the client saw is in the history once the database is back."""

from __future__ import annotations

import asyncio
import json
import os
import time

import numpy as np
import pytest
import websockets

from tests.conftest import frames, silence
from tests.servers import ScratchDatabase, Server, TcpProxy, base_env, get_json

pytestmark = pytest.mark.realtime


@pytest.fixture(scope="module")
def server_behind_proxy(tmp_path_factory):
    database = ScratchDatabase(os.environ["DATABASE_URL"])
    proxy = TcpProxy(target_port=database.port, target_host=database.host)
    env = {
        **base_env(),
        "DATABASE_URL": database.url(port=proxy.port),
        "DATABASE_CONNECT_TIMEOUT": "1",
        "PERSISTENCE_RETRY_SECONDS": "0.5",
    }
    server = Server(env, tmp_path_factory.mktemp("outage"))
    yield server, proxy, database
    server.stop()
    proxy.close()
    database.drop()


async def say(ws, audio: np.ndarray) -> dict:
    """Stream an utterance and the silence after it; return its final."""
    for frame in frames(np.concatenate([silence(0.3), audio, silence(1.0)]), 2048):
        await ws.send(frame)
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if message["type"] == "transcription_final":
            return message["data"]


def stored_text(database: ScratchDatabase, utterance_id: str) -> str | None:
    rows = database.query("SELECT text FROM stt_utterance WHERE utterance_id = %s", utterance_id)
    return rows[0][0] if rows else None


async def test_finals_made_while_the_database_is_down_reach_the_history(server_behind_proxy, speak):
    server, proxy, database = server_behind_proxy
    async with websockets.connect(server.ws) as ws:
        await ws.send(json.dumps({"type": "start_session", "session_config": {"session_id": "outage-1"}}))
        assert json.loads(await ws.recv())["type"] == "session_started"

        before = await say(ws, speak("Turn on the kitchen lights."))
        assert stored_text(database, before["utterance_id"]) == before["text"]

        proxy.cut()  # the database vanishes: open connections drop, new ones are refused
        during = [await say(ws, speak("What is the weather tomorrow?")),
                  await say(ws, speak("Play some music in the living room."))]
        assert "weather" in during[0]["text"].lower(), "finals keep coming"
        assert all(stored_text(database, d["utterance_id"]) is None for d in during)
        status, health = get_json(f"{server.base}/health")
        assert status == 200 and health["status"] == "degraded"
        assert health["checks"]["database"]["status"] == "error"
        assert health["checks"]["database"]["history_backlog"] >= 2
        assert health["checks"]["database"]["history"] == "ok", "waiting in the backlog: nothing journaled yet"

        proxy.restore()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if all(stored_text(database, d["utterance_id"]) == d["text"] for d in during):
                break
            await asyncio.sleep(0.25)
        assert all(stored_text(database, d["utterance_id"]) == d["text"] for d in during), \
            "replayed once the database answered"
        await ws.send(json.dumps({"type": "end_session"}))
        async for _ in ws:
            pass

    await asyncio.sleep(1.0)
    rows = database.query("SELECT finals, close_reason FROM stt_sessionrecord WHERE session_id = 'outage-1'")
    assert rows == [(3, "end_session")]
    status, health = get_json(f"{server.base}/health")
    assert health["checks"]["database"]["history_backlog"] == 0
    assert (health["checks"]["database"]["status"], health["checks"]["database"]["history"]) == ("ok", "ok"), \
        "everything replayed, nothing journaled or lost: not degraded"
