"""An utterance the client has heard of (speech onset, partial) is in the history as
`open` until its final replaces the row, so a process killed in between leaves a trace
(stt/liveness.py marks it interrupted); one the client interrupts leaves none."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from fasttalk.asgi import application
from stt.models import Utterance
from stt.persistence import history
from tests.conftest import frames, silence

pytestmark = pytest.mark.django_db(transaction=True)


def rows_of(session_id: str) -> list[tuple[str, str, str]]:
    return [(str(u.utterance_id), u.status, u.text)
            for u in Utterance.objects.filter(session__session_id=session_id).order_by("start_ms")]


async def started(session_id: str) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application, "/ws/transcribe")
    assert (await communicator.connect(timeout=10))[0]
    await communicator.send_json_to({"type": "start_session", "session_config": {"session_id": session_id}})
    assert (await communicator.receive_json_from(timeout=30))["type"] == "session_started"
    return communicator


async def until(communicator: WebsocketCommunicator, kind: str) -> dict:
    while True:
        message = await communicator.receive_json_from(timeout=30)
        if message["type"] == kind:
            return message


async def test_the_onset_writes_an_open_row_that_the_final_replaces(engine, jfk_audio):
    communicator = await started("open-1")
    speech = jfk_audio[int(0.2 * 16000):int(2.4 * 16000)]  # "And so my fellow Americans"
    for frame in frames(speech, 2048):
        await communicator.send_to(bytes_data=frame)
    onset = await until(communicator, "voice_activity_detected")
    utterance_id = onset["data"]["utterance_id"]
    await history.drain(timeout=10)
    assert await sync_to_async(rows_of)("open-1") == [(utterance_id, "open", "")], "heard of, no final yet"
    for frame in frames(silence(1.0), 2048):
        await communicator.send_to(bytes_data=frame)
    final = await until(communicator, "transcription_final")
    assert final["data"]["utterance_id"] == utterance_id
    assert await sync_to_async(rows_of)("open-1") == [(utterance_id, "final", final["data"]["text"])]
    await communicator.send_json_to({"type": "end_session"})
    await until(communicator, "session_ended")


async def test_an_utterance_the_client_interrupts_leaves_no_row(engine, jfk_audio):
    communicator = await started("open-2")
    for frame in frames(jfk_audio[int(0.2 * 16000):int(1.6 * 16000)], 2048):
        await communicator.send_to(bytes_data=frame)
    onset = await until(communicator, "voice_activity_detected")
    await history.drain(timeout=10)
    assert [status for _, status, _ in await sync_to_async(rows_of)("open-2")] == ["open"]
    await communicator.send_json_to({"type": "interrupt", "data": {"reason": "barge-in"}})
    acknowledged = await until(communicator, "interrupt_acknowledged")
    assert acknowledged["data"]["discarded_utterance_id"] == onset["data"]["utterance_id"]
    await communicator.send_json_to({"type": "end_session"})
    await until(communicator, "session_ended")
    await history.drain(timeout=10)
    assert await sync_to_async(rows_of)("open-2") == []


async def test_a_session_that_ends_normally_leaves_nothing_open(engine, jfk_audio):
    communicator = await started("open-3")
    for frame in frames(np.concatenate([jfk_audio, silence(0.3)]), 4096):
        await communicator.send_to(bytes_data=frame)
    await communicator.send_json_to({"type": "end_session"})
    ended = await until(communicator, "session_ended")
    await history.drain(timeout=10)
    await asyncio.sleep(0.2)
    rows = await sync_to_async(rows_of)("open-3")
    assert len(rows) == ended["data"]["finals"] >= 3
    assert {status for _, status, _ in rows} == {"final"}
