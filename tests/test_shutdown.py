"""SIGTERM to a real server process: it finishes the session in progress (the pending
speech becomes a final, stored and sent), closes with 1012, and exits in time."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import numpy as np
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


def post_upload(base: str, path, fields: dict[str, str]):
    """A multipart upload; returns the open response (or the HTTPError, which is one)."""
    import urllib.error
    import urllib.request
    import uuid

    boundary = uuid.uuid4().hex
    body = b"".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n".encode()
                    for name, value in fields.items())
    body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{path.name}\"\r\n"
             "Content-Type: application/octet-stream\r\n\r\n").encode()
    body += path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"{base}/v1/audio/transcriptions", data=body,
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        return urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as error:
        return error


async def test_sigterm_drains_uploads_finishing_one_ending_the_other_and_refusing_new_ones(tmp_path, jfk_audio):
    """Issue 23 #5: at SIGTERM a plain upload got an empty reply, a streamed one neither
    its end nor an error, an upload during the drain was dropped, the process was gone
    1 s after the signal, and the file rows stayed open without a server id. Now: the
    upload that can finish within the grace period is answered, the one that cannot
    ends with an `error` event, a new one gets 503 with Retry-After, both rows close."""
    import soundfile

    from tests.conftest import AUDIO_DIR, JFK_PATH, JFK_TEXT, load_audio
    from stt.evaluation import word_error_rate

    talk = tmp_path / "talk.flac"  # eight minutes: far more than the grace period transcribes
    soundfile.write(talk, np.tile(load_audio(AUDIO_DIR / "long_gates_ted.wav"), 4), 16000, format="FLAC")
    database = ScratchDatabase(os.environ["DATABASE_URL"])
    server = Server({**base_env(), "DATABASE_URL": database.url(), "SHUTDOWN_GRACE_SECONDS": "10"}, tmp_path)
    try:
        streamed = await asyncio.to_thread(post_upload, server.base, talk, {"model": "whisper-1", "stream": "true"})
        assert streamed.status == 200 and streamed.readline().startswith(b"data: ")  # its first delta
        plain = asyncio.ensure_future(asyncio.to_thread(post_upload, server.base, JFK_PATH, {"model": "whisper-1"}))
        while len(database.query("SELECT 1 FROM stt_sessionrecord WHERE source = 'file'")) < 2:
            await asyncio.sleep(0.05)  # both are being transcribed
        server.process.send_signal(signal.SIGTERM)
        late = await asyncio.to_thread(post_upload, server.base, JFK_PATH, {"model": "whisper-1"})
        assert late.status == 503 and int(late.headers["Retry-After"]) >= 1
        assert json.loads(late.read())["error"]["code"] == "server_shutting_down"
        answered = await plain
        assert answered.status == 200 and word_error_rate(JFK_TEXT, json.loads(answered.read())["text"]) <= 0.1
        events = [json.loads(line[6:]) for line in (await asyncio.to_thread(streamed.read)).splitlines()
                  if line.startswith(b"data: ")]
        assert events and "error" in events[-1] and events[-1]["error"]["code"] == "server_shutting_down", events[-3:]
        assert await asyncio.to_thread(server.process.wait, 20) == 0
        rows = database.query("SELECT close_reason, ended_at IS NOT NULL, server_id IS NOT NULL "
                              "FROM stt_sessionrecord WHERE source = 'file' ORDER BY started_at")
        assert rows == [("server_shutdown", True, True), ("completed", True, True)]
    finally:
        if server.process.poll() is None:
            server.stop()
        database.drop()
