"""/v1/realtime through a real server process (Daphne, PostgreSQL, Redis), driven by the
official `openai` package's realtime clients: the GA `client.realtime` and the beta
`client.beta.realtime`, with real speech."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import websockets
from openai import AsyncOpenAI

from stt.evaluation import normalize_text, word_error_rate
from tests.conftest import AUDIO_DIR, JFK_PATH, JFK_TEXT
from tests.stt.realtime.support import COMPLETED, DELTA, RATE, load_24k, quiet

pytestmark = pytest.mark.realtime

TRANSCRIPTION = {"intent": "transcription"}
INAUGURAL = "President Kennedy's inaugural address, January 1961."


@dataclass
class RealtimeServer:
    port: int
    key: str
    log: Path


@pytest.fixture(scope="module")
def server(stt_server) -> RealtimeServer:
    """The suite's live server (tests/conftest.py: AUTH_REQUIRED, PostgreSQL, Redis)."""
    return RealtimeServer(stt_server.server.port, stt_server.keys["backend"], stt_server.server.log)


@pytest.fixture(scope="module")
def jfk_24k():
    return load_24k(JFK_PATH)


def client_for(server: RealtimeServer, key: str | None = None) -> AsyncOpenAI:
    return AsyncOpenAI(api_key=key or server.key, base_url=f"http://127.0.0.1:{server.port}/v1",
                       websocket_base_url=f"ws://127.0.0.1:{server.port}/v1", max_retries=0)


def b64(pcm: np.ndarray) -> str:
    return base64.b64encode(pcm.tobytes()).decode()


async def append_paced(connection, pcm: np.ndarray, chunk_seconds: float = 0.1) -> None:
    """Appends at real-time pace by the client's clock, as a microphone would."""
    step, started = int(chunk_seconds * RATE), time.monotonic()
    for i in range(0, pcm.size, step):
        await connection.input_audio_buffer.append(audio=b64(pcm[i:i + step]))
        await asyncio.sleep(max(0.0, started + (i + step) / RATE - time.monotonic()))


async def events_until(connection, done, timeout: float = 60.0) -> list[dict]:
    events: list[dict] = []
    async with asyncio.timeout(timeout):
        while not done(events):
            # Polled, not awaited for good: `done` may also turn on the sender finishing
            # after the last event has come.
            receiving = asyncio.ensure_future(connection.recv_bytes())
            finished, _ = await asyncio.wait({receiving}, timeout=0.5)
            if not finished:
                receiving.cancel()
                continue
            events.append(json.loads(receiving.result()))
    return events


def of(events: list[dict], kind: str) -> list[dict]:
    return [e for e in events if e["type"] == kind]


async def test_the_ga_client_streams_speech_and_gets_vad_events_deltas_and_transcripts(server, jfk_24k):
    async with client_for(server).realtime.connect(extra_query=TRANSCRIPTION) as connection:
        created = await connection.recv()
        assert created.type == "session.created" and created.session.type == "transcription"
        await connection.session.update(session={"type": "transcription", "audio": {"input": {
            "transcription": {"model": "whisper-1", "language": "en", "prompt": INAUGURAL},
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}}}})
        updated = await connection.recv()
        assert updated.type == "session.updated"
        assert updated.session.audio.input.transcription.language == "en"
        assert updated.session.audio.input.transcription.prompt == INAUGURAL, "the prompt is applied, not ignored"
        sending = asyncio.create_task(append_paced(connection, np.concatenate([jfk_24k, quiet(1.5)])))

        def all_transcribed(events: list[dict]) -> bool:  # every item that started, completed
            started = of(events, "input_audio_buffer.speech_started")
            return sending.done() and len(started) >= 3 and len(of(events, COMPLETED)) == len(started)

        events = await events_until(connection, all_transcribed)
        await sending
    started, stopped = of(events, "input_audio_buffer.speech_started"), of(events, "input_audio_buffer.speech_stopped")
    completed = of(events, COMPLETED)
    assert [e["item_id"] for e in started] == [e["item_id"] for e in stopped] == [e["item_id"] for e in completed]
    assert word_error_rate(JFK_TEXT, " ".join(e["transcript"] for e in completed)) <= 0.1
    deltas = of(events, DELTA)
    for item in completed:
        text = "".join(d["delta"] for d in deltas if d["item_id"] == item["item_id"])
        # Deltas only append: they add up to the transcript, unless the final revised them.
        assert text == item["transcript"] or not item["transcript"].startswith(text), (text, item["transcript"])
    for event in events:
        assert event["event_id"].startswith("event_")


async def test_words_arrive_as_deltas_while_the_user_speaks(server):
    """One long read sentence (7 s, no pause), at real-time pace."""
    speech = load_24k(AUDIO_DIR / "ps_austen_0870.wav")
    reference = (AUDIO_DIR / "ps_austen_0870.txt").read_text()
    async with client_for(server).realtime.connect(extra_query=TRANSCRIPTION) as connection:
        assert (await connection.recv()).type == "session.created"
        sending = asyncio.create_task(append_paced(connection, np.concatenate([quiet(0.3), speech, quiet(1.0)])))
        events = await events_until(connection, lambda e: bool(of(e, COMPLETED)))
        await sending
    kinds = [e["type"] for e in events]
    while_speaking = [e["delta"] for e in events[:kinds.index("input_audio_buffer.speech_stopped")]
                      if e["type"] == DELTA]
    assert while_speaking, ("words arrive before the speech ends", kinds)
    transcript = of(events, COMPLETED)[0]["transcript"]
    assert word_error_rate(reference, transcript) <= 0.2
    early = normalize_text("".join(while_speaking))
    final_start = " ".join(normalize_text(transcript)[:len(early)])
    assert word_error_rate(final_start, " ".join(early)) <= 0.34, "the early words are the sentence's first"


async def test_the_beta_client_commits_by_hand_clears_and_is_told_what_was_wrong(server, jfk_24k):
    beta = client_for(server).beta.realtime
    async with beta.connect(model="whisper-1", extra_query=TRANSCRIPTION) as connection:
        created = json.loads(await connection.recv_bytes())
        assert created["type"] == "transcription_session.created"
        assert created["session"]["turn_detection"]["type"] == "server_vad"
        await connection.transcription_session.update(session={
            "turn_detection": None, "input_audio_transcription": {"model": "whisper-1", "language": "en"}})
        updated = await connection.recv()
        assert updated.type == "transcription_session.updated" and updated.session.turn_detection is None

        for i in range(0, 3 * RATE, 4800):  # the first phrase, as fast as the server takes it
            await connection.input_audio_buffer.append(audio=b64(jfk_24k[i:i + 4800]))
        await connection.input_audio_buffer.commit(event_id="commit-1")
        events = await events_until(connection, lambda e: bool(of(e, COMPLETED)))
        committed, completed = of(events, "input_audio_buffer.committed")[0], of(events, COMPLETED)[0]
        assert committed["previous_item_id"] is None and completed["item_id"] == committed["item_id"]
        assert "fellow americans" in completed["transcript"].lower()
        assert not of(events, "input_audio_buffer.speech_started"), "no turn detection, no VAD events"

        await connection.input_audio_buffer.append(audio=b64(jfk_24k[3 * RATE:5 * RATE]))
        await connection.input_audio_buffer.clear(event_id="clear-1")
        await connection.input_audio_buffer.commit(event_id="commit-2")
        await connection.send({"type": "response.create", "event_id": "response-1"})
        await connection.input_audio_buffer.append(audio="not base64!", event_id="append-1")
        events = await events_until(connection, lambda e: len(of(e, "error")) == 3)
        assert [e["type"] for e in events] == ["input_audio_buffer.cleared", "error", "error", "error"]
        errors = [e["error"] for e in of(events, "error")]
        assert [(e["code"], e["event_id"], e["param"]) for e in errors] == [
            ("input_audio_buffer_commit_empty", "commit-2", None),
            ("unknown_message_type", "response-1", "type"),
            ("invalid_message", "append-1", "audio"),
        ]
        assert all(e["type"] == "invalid_request_error" for e in errors)

        for i in range(5 * RATE, 8 * RATE, 4800):  # the session goes on
            await connection.input_audio_buffer.append(audio=b64(jfk_24k[i:i + 4800]))
        await connection.input_audio_buffer.commit()
        events = await events_until(connection, lambda e: bool(of(e, COMPLETED)))
        second = of(events, "input_audio_buffer.committed")[0]
        assert second["previous_item_id"] == committed["item_id"]
        assert "what your country" in of(events, COMPLETED)[0]["transcript"].lower()


async def test_the_model_names_of_the_file_api_are_the_realtime_ones(server):
    """Issue 26 #1: realtime took any name, the file API refused gpt-transcribe."""
    async with client_for(server).realtime.connect(model="gpt-realtime-whisper", extra_query=TRANSCRIPTION) as connection:
        assert json.loads(await connection.recv_bytes())["type"] == "session.created"
        await connection.session.update(session={"type": "transcription", "audio": {"input": {
            "transcription": {"model": "gpt-4o-transcribe-diarize"}}}}, event_id="diarize-1")
        refused = json.loads(await connection.recv_bytes())
        assert refused["type"] == "error"
        assert (refused["error"]["event_id"], refused["error"]["param"]) == (
            "diarize-1", "session.audio.input.transcription.model")
        assert "does not tell speakers apart" in refused["error"]["message"]
        await connection.session.update(session={"type": "transcription", "audio": {"input": {
            "transcription": {"model": "gpt-transcribe"}}}})
        updated = json.loads(await connection.recv_bytes())
        assert updated["type"] == "session.updated", "the session goes on, and takes a name it answers to"


async def test_a_key_the_server_does_not_know_is_refused_before_the_websocket_opens(server):
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with client_for(server, key="ftk_not-a-key").realtime.connect(extra_query=TRANSCRIPTION):
            pass
    assert refused.value.response.status_code == 403


async def test_a_browser_sends_its_credential_as_openais_subprotocol(server):
    url = f"ws://127.0.0.1:{server.port}/v1/realtime?intent=transcription"
    protocols = ["realtime", f"openai-insecure-api-key.{server.key}", "openai-beta.realtime-v1"]
    async with websockets.connect(url, subprotocols=protocols) as ws:
        assert ws.subprotocol == "realtime"
        assert json.loads(await ws.recv())["type"] == "transcription_session.created"
    assert server.key not in server.log.read_text(), "the key is never logged"


async def test_only_transcription_sessions_are_served(server):
    url = f"ws://127.0.0.1:{server.port}/v1/realtime?model=gpt-realtime"
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {server.key}"}) as ws:
        error = json.loads(await ws.recv())
        assert error["type"] == "error" and error["error"]["param"] == "intent"
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 1008
