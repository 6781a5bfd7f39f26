"""The service as deployed: a real Daphne process and a `websockets` client, streaming
at real-time pace like a microphone."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
import websockets

from stt.evaluation import word_error_rate
from tests.conftest import JFK_TEXT, frames, silence
from tests.servers import EMBEDDED_DATABASE, ROOT, ScratchDatabase, Server, base_env, embedded_env, get_json

FRAME = 1024  # 64 ms


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Daphne as deployed: PostgreSQL (a database of its own) and Redis, under bin/test."""
    database = ScratchDatabase(os.environ["DATABASE_URL"])
    running = Server({**base_env(), "DATABASE_URL": database.url()}, tmp_path_factory.mktemp("server"))
    running.database = database
    yield running
    running.stop()
    database.drop()


@pytest.fixture(scope="module")
def embedded_server(tmp_path_factory):
    """Daphne on the embedded defaults: no DATABASE_URL, no REDIS_URL."""
    folder = tmp_path_factory.mktemp("embedded")
    # A private SQLite file and media folder: the defaults live in the project directory.
    # REFINE_FINALS as by default: re-transcribed in-process, no worker.
    running = Server(embedded_env(folder, REFINE_FINALS="1"), folder)
    running.sqlite_path = folder / EMBEDDED_DATABASE
    running.media_root = folder / "media"
    yield running
    running.stop()


async def stream_in_real_time(url: str, audio: np.ndarray, config: dict) -> list[tuple[float, dict]]:
    """Send audio paced like a microphone; return (seconds since the first frame, message)."""
    received: list[tuple[float, dict]] = []
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "start_session", "session_config": config}))
        assert json.loads(await ws.recv())["type"] == "session_started"
        started = time.perf_counter()

        async def reader():
            async for raw in ws:
                received.append((time.perf_counter() - started, json.loads(raw)))

        reading = asyncio.create_task(reader())
        for index, frame in enumerate(frames(audio, FRAME)):
            await ws.send(frame)
            # Sleep to the frame's due time, so drift does not accumulate.
            await asyncio.sleep(max(0.0, started + (index + 1) * FRAME / 16000 - time.perf_counter()))
        await ws.send(json.dumps({"type": "end_session"}))
        await asyncio.wait_for(reading, 60)
        assert ws.close_code == 1000
    return received


@pytest.mark.realtime
async def test_real_time_stream_gets_partials_during_speech_and_the_right_finals(server, jfk_audio):
    audio = np.concatenate([jfk_audio, silence(1.0)])
    received = await stream_in_real_time(server.ws, audio, {"enable_timestamps": True})
    kinds = [m["type"] for _, m in received]
    finals = [m for _, m in received if m["type"] == "transcription_final"]
    assert word_error_rate(JFK_TEXT, " ".join(f["data"]["text"] for f in finals)) == 0.0
    speech_end = len(jfk_audio) / 16000
    partial_times = [t for t, m in received if m["type"] == "transcription_partial"]
    assert len(partial_times) >= 5 and partial_times[0] < 3.0, "partials come while the user is speaking"
    # Each utterance but the last is final before the audio stops: finals follow speech, not the session.
    assert sum(1 for t, m in received if m["type"] == "transcription_final" and t < speech_end) >= len(finals) - 1
    assert kinds[-1] == "session_ended"
    # The server's history holds every final the client got, as the client got it.
    stored = dict(server.database.query("SELECT utterance_id::text, text FROM stt_utterance"))
    assert {f["data"]["utterance_id"]: f["data"]["text"] for f in finals}.items() <= stored.items()


async def test_health_stats_and_index_of_the_running_server(server):
    status, health = get_json(f"{server.base}/health")
    assert status == 200 and health["status"] == "healthy"
    assert health["checks"]["database"]["vendor"] == "postgresql"
    assert health["checks"]["channel_layer"]["backend"] == "ResilientRedisChannelLayer"
    status, info = get_json(f"{server.base}/")
    assert status == 200 and info["endpoints"]["websocket"].endswith("/ws/transcribe")
    status, stats = get_json(f"{server.base}/stats")
    assert status == 200 and {"active_connections", "total_connections", "connections_by_state",
                              "processing_stats", "performance_metrics"} <= set(stats)


def test_the_admin_and_demo_static_files_are_served_by_the_process(server):
    import urllib.request

    for path, kind in (("/static/admin/css/base.css", "text/css"), ("/static/stt/demo/worklet.js", "text/javascript")):
        with urllib.request.urlopen(f"{server.base}{path}", timeout=10) as response:
            assert response.status == 200 and response.headers["Content-Type"].startswith(kind), path


async def test_messages_over_daphnes_size_limit_close_with_1009(server):
    async with websockets.connect(server.ws, max_size=None) as ws:
        await ws.send(b"\x00" * (2 * 1024 * 1024))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd.code == 1009


async def test_invalid_utf8_in_a_text_frame_closes_with_1007(server):
    async with websockets.connect(server.ws) as ws:
        # Below the client library's checks: a text frame whose bytes are not UTF-8.
        ws.protocol.send_text(b"\xff\xfe{}")
        ws.send_data()
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd.code == 1007


async def test_the_embedded_defaults_serve_a_session(embedded_server, speak):
    status, health = get_json(f"{embedded_server.base}/health")
    assert status == 200
    assert health["checks"]["database"]["vendor"] == "sqlite"
    assert health["checks"]["channel_layer"]["backend"] == "InMemoryChannelLayer"
    audio = np.concatenate([silence(0.3), speak("Hello world, the service is running."), silence(0.8)])
    async with websockets.connect(embedded_server.ws) as ws:
        await ws.send(json.dumps({"type": "start_session"}))
        for frame in frames(audio, 4096):
            await ws.send(frame)
        await ws.send(json.dumps({"type": "end_session"}))
        messages = [json.loads(raw) async for raw in ws]
    finals = [m["data"] for m in messages if m["type"] == "transcription_final"]
    assert "hello world" in " ".join(f["text"] for f in finals).lower()
    assert messages[-1]["type"] == "session_ended"
    # The embedded default keeps the history too: SQLite and a media folder.
    with sqlite3.connect(embedded_server.sqlite_path) as database:
        stored = dict(database.execute("SELECT utterance_id, audio FROM stt_utterance").fetchall())
    for final in finals:
        audio = stored[final["utterance_id"].replace("-", "")]
        assert (embedded_server.media_root / audio).is_file()
    # ...and re-transcribes each final with the base model, in-process (no broker, no worker).
    deadline = time.monotonic() + 60
    refined: list[tuple[str, str]] = []
    while len(refined) < len(finals) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        with sqlite3.connect(embedded_server.sqlite_path) as database:
            refined = database.execute("SELECT status, text FROM stt_refinement WHERE status = 'done'").fetchall()
    assert len(refined) == len(finals), "every final was re-transcribed"
    assert "hello world" in " ".join(text for _, text in refined).lower()


def test_a_first_run_says_how_to_try_it_and_that_command_works(embedded_server):
    deadline = time.monotonic() + 10
    while "Ready. Try it:" not in embedded_server.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    log = embedded_server.log.read_text()
    assert f"in a browser:   http://127.0.0.1:{embedded_server.port}/demo/" in log
    command = log.split("from a shell:", 1)[1].splitlines()[0].split()
    assert command[:4] == [".venv/bin/python", "-m", "stt.client", "stream"] and command[-1] == "samples/jfk.flac"
    shown = subprocess.run([sys.executable, *command[1:], "--fast"], cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert word_error_rate(JFK_TEXT, shown.stdout) <= 0.15


def health_log(server: Server) -> tuple[list[dict], list[int]]:
    """The server's JSON log lines, and the statuses its access log gave /health."""
    entries = [json.loads(line) for line in server.log.read_text().splitlines() if line.startswith("{")]
    return entries, [e["status"] for e in entries if e.get("event") == "http_request" and e.get("path") == "/health"]


def errors_about_health(entries: list[dict]) -> list[dict]:
    return [e for e in entries if e["level"] == "ERROR" and ("/health" in e["message"] or "/ready" in e["message"])]


def test_startup_503s_of_health_are_answers_not_errors(embedded_server):
    # The fixture polled /health every 0.3 s until it answered 200; while the model
    # loads /health answers 503 (on a fast machine the model may be loaded before the
    # first poll: the test below makes a 503 for sure). Django logs a 503 as an error
    # unless it is told otherwise.
    entries, answers = health_log(embedded_server)
    assert entries, "a log that is not a terminal is JSON"
    assert 200 in answers, "the access log has the fixture's polls"
    assert not errors_about_health(entries)


async def test_a_full_process_answers_503_on_health_and_ready_and_logs_no_error(tmp_path):
    """A 503 of the health endpoints is an answer (loading, draining, full), not a fault:
    made certain here by a process held full by its capacity gate's prior (a session is
    assumed to cost 100 decode seconds a second until one is measured)."""
    server = Server(embedded_env(tmp_path, CAPACITY_ADMISSION="1", CAPACITY_WARMUP_SECONDS="60",
                                 CAPACITY_PRIOR_DEMAND="100"), tmp_path)
    try:
        async with websockets.connect(server.ws) as ws:
            await ws.send(json.dumps({"type": "start_session"}))
            assert json.loads(await ws.recv())["type"] == "session_started"
            health = await asyncio.to_thread(get_json, f"{server.base}/health")
            ready = await asyncio.to_thread(get_json, f"{server.base}/ready")
        assert health[0] == 503 and health[1]["ready"] is False, health
        assert ready[0] == 503, ready
    finally:
        server.stop()
    entries, answers = health_log(server)
    assert 503 in answers, "the access log has the 503"
    assert not errors_about_health(entries)


def test_the_containers_health_check_finds_a_running_process_alive(embedded_server):
    # docker-compose.yml's web health check, as run there, against a real process.
    checked = subprocess.run([sys.executable, "-m", "monitoring.alive", f"{embedded_server.base}/health"],
                             cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr


async def test_application_close_codes_reach_the_client_through_daphne(server):
    """Daphne's WebSocket library lets applications send only 1000 and 3000-4999; the
    service's 1008 (and 1011/1012/1013) must still arrive as sent, not as a dropped
    connection."""
    async with websockets.connect(server.ws) as ws:
        await ws.send(json.dumps({"type": "start_session"}))
        for _ in range(12):  # MAX_SESSION_ERRORS (10) bad frames and then some
            await ws.send(b"\x01\x02\x03")
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd.code == 1008
    assert closed.value.rcvd.reason == "too_many_errors", "the reason travels with the code"


async def test_a_client_that_vanishes_is_dropped_by_the_keepalive(tmp_path_factory):
    """A client that goes silent and stops reading (a vanished laptop, a dead NAT
    mapping) does not answer the server's ping: the server drops it within
    WEBSOCKET_PING_INTERVAL + WEBSOCKET_PING_TIMEOUT and serves on."""
    folder = tmp_path_factory.mktemp("vanished")
    server = Server(embedded_env(folder, WEBSOCKET_PING_INTERVAL="1", WEBSOCKET_PING_TIMEOUT="2"), folder)
    try:
        async with websockets.connect(server.ws, ping_interval=None) as ws:
            await ws.send(json.dumps({"type": "start_session"}))
            await asyncio.sleep(0.3)
            ws.transport.pause_reading()  # gone quiet: reads nothing, answers no ping
            started = time.monotonic()
            while "client_disconnected" not in server.log.read_text() and time.monotonic() - started < 15:
                await asyncio.sleep(0.2)
            dropped_after = time.monotonic() - started
        assert "client_disconnected" in server.log.read_text() and dropped_after < 8
        status, _ = get_json(f"{server.base}/health")
        assert status == 200, "the server goes on"
    finally:
        server.stop()


async def test_a_client_that_never_reads_is_dropped_past_the_outbound_cap(tmp_path_factory):
    """Issue 14 #11: the outbound cap reads Twisted's count of unsent bytes; if that
    figure read 0 under a stalled reader, the cap would be off and this client would be
    buffered for without end. The client's receive window is made tiny before it
    connects (else the kernel's buffers take the replies first) and it asks for replies
    (`configure` is answered with the whole config) without ever reading one."""
    import socket

    folder = tmp_path_factory.mktemp("stalled")
    limit = 256 * 1024
    server = Server(embedded_env(folder, WEBSOCKET_MAX_OUTBOUND_BYTES=str(limit),
                                 AUTH_MAX_MESSAGES_PER_SECOND="1000000"), folder)
    marker = "dropping a client that stopped reading"
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        sock.setblocking(False)
        ws = await websockets.connect(server.ws, sock=sock, ping_interval=None)
        await ws.send(json.dumps({"type": "start_session"}))
        await asyncio.sleep(0.3)
        ws.transport.pause_reading()  # from now on it reads nothing
        request = json.dumps({"type": "configure", "config": {}})
        deadline = time.monotonic() + 60
        try:
            while marker not in server.log.read_text() and time.monotonic() < deadline:
                for _ in range(200):
                    await ws.send(request)
                await asyncio.sleep(0.1)
        except websockets.ConnectionClosed:
            pass
        while marker not in server.log.read_text() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        ws.transport.abort()
        lines = [line for line in server.log.read_text().splitlines() if marker in line]
        assert lines, "the unsent-byte figure never passed the cap: the cap is off"
        unsent = int(lines[-1].split("(")[1].split()[0])
        assert limit < unsent < limit + 65536, unsent
        assert "outbound_cap_inactive" not in server.log.read_text()
        assert get_json(f"{server.base}/health")[0] == 200, "the server goes on"
    finally:
        server.stop()
