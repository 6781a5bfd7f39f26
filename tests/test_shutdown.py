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
from tests.servers import EMBEDDED_DATABASE, ScratchDatabase, Server, base_env, embedded_env

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
        assert server.process.wait(20) == 0, "a drained server exits 0"
        assert time.monotonic() - signalled < 20, "the process exits within the grace period"
        stored = {row[0] for row in database.query("SELECT utterance_id::text FROM stt_utterance")}
        assert {f["utterance_id"] for f in finals} <= stored, "every final sent is in the history"
        reasons = database.query("SELECT close_reason FROM stt_sessionrecord")
        assert reasons == [("server_shutdown",)]
    finally:
        if server.process.poll() is None:
            server.stop()
        database.drop()


async def test_sigterm_while_a_refinement_runs_in_process_exits_0_and_leaves_it_queued(tmp_path, jfk_audio):
    """Issue 14 #10: SIGTERM right after a session, with the in-process refinement of its
    final under way, aborted the process ("terminate called without an active exception",
    exit 134) and left the refinement marked running. Now: exit 0, and the refinement is
    either done or queued again, never running."""
    import sqlite3

    server = Server(embedded_env(tmp_path, REFINE_FINALS="1", SHUTDOWN_GRACE_SECONDS="1"), tmp_path)
    try:
        async with websockets.connect(server.ws) as ws:
            await ws.send(json.dumps({"type": "start_session"}))
            for frame in frames(jfk_audio, 4096):
                await ws.send(frame)
            await ws.send(json.dumps({"type": "end_session"}))
            messages = [json.loads(raw) async for raw in ws]
        assert [m for m in messages if m["type"] == "transcription_final"]
        deadline = time.monotonic() + 30  # until the refinement has started
        with sqlite3.connect(tmp_path / EMBEDDED_DATABASE) as database:
            while time.monotonic() < deadline and not database.execute(
                    "SELECT 1 FROM stt_refinement WHERE status = 'running'").fetchall():
                await asyncio.sleep(0.05)
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(30)
        log = server.log.read_text()
        assert "terminate called" not in log and "Traceback" not in log, log[-2000:]
        assert code == 0
        print([line for line in log.splitlines() if "shutdown_done" in line])
        with sqlite3.connect(tmp_path / EMBEDDED_DATABASE) as database:
            states = [row[0] for row in database.execute("SELECT status FROM stt_refinement").fetchall()]
        assert states and "running" not in states, states
    finally:
        if server.process.poll() is None:
            server.stop()


def test_a_port_in_use_gives_one_clear_line_and_exit_code_1(tmp_path):
    """Issue 14 #10: a busy port aborted the process like a crash."""
    import socket
    import subprocess
    import sys

    from tests.servers import ROOT

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        env = embedded_env(tmp_path, REFINE_FINALS="1")
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env,
                       check=True)
        result = subprocess.run([sys.executable, "manage.py", "serve", "--host", "127.0.0.1", "--port", str(port),
                                 "--monitoring-port", "0"], cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "terminate called" not in output and "Traceback" not in output, output
    errors = [line for line in output.splitlines() if "in use" in line]
    assert len(errors) == 1 and str(port) in errors[0], output
