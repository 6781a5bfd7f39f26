"""/ws/transcribe through Channels' WebsocketCommunicator: the real ASGI application,
the real model, and the channel layer of the running suite (Redis under bin/test)."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from channels.testing import WebsocketCommunicator

from fasttalk.asgi import application
from stt.control import send_control
from stt.evaluation import word_error_rate
from tests.conftest import JFK_TEXT, frames, silence

pytestmark = pytest.mark.django_db(transaction=True)


async def connect() -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application, "/ws/transcribe")
    connected, _ = await communicator.connect(timeout=10)
    assert connected
    return communicator


async def start(communicator: WebsocketCommunicator, **config) -> dict:
    await communicator.send_json_to({"type": "start_session", "session_config": config})
    started = await communicator.receive_json_from(timeout=30)
    assert started["type"] == "session_started", started
    return started


async def stream(communicator: WebsocketCommunicator, audio: np.ndarray) -> None:
    for frame in frames(audio):
        await communicator.send_to(bytes_data=frame)


async def receive_until_closed(communicator: WebsocketCommunicator, timeout: float = 60) -> tuple[list[dict], int]:
    """Every message until the server closes the socket, and the close code."""
    messages: list[dict] = []
    while True:
        output = await communicator.receive_output(timeout=timeout)
        if output["type"] == "websocket.close":
            return messages, output.get("code", 1000)
        messages.append(json.loads(output["text"]))


def of(messages: list[dict], kind: str) -> list[dict]:
    return [m for m in messages if m["type"] == kind]


async def test_jfk_streams_to_its_known_sentence(engine, jfk_audio):
    communicator = await connect()
    await start(communicator, enable_timestamps=True)
    await stream(communicator, np.concatenate([jfk_audio, silence(1)]))
    await communicator.send_json_to({"type": "end_session"})
    messages, code = await receive_until_closed(communicator)
    finals = of(messages, "transcription_final")
    assert word_error_rate(JFK_TEXT, " ".join(f["data"]["text"] for f in finals)) == 0.0
    assert code == 1000
    assert messages[-1]["type"] == "session_ended"
    assert of(messages, "voice_activity_detected") and of(messages, "transcription")
    for message in messages:
        assert message["metadata"]["session_id"] and message["metadata"]["timestamp"].endswith("Z")


async def test_bad_input_gets_errors_and_the_session_goes_on(engine, jfk_audio):
    communicator = await connect()
    await communicator.send_to(text_data="{not json")
    assert (await communicator.receive_json_from())["error"]["code"] == "invalid_json"
    await start(communicator, final_chunk_duration=2.0)
    await communicator.send_to(bytes_data=b"\x01\x02\x03")
    error = await communicator.receive_json_from()
    assert error["error"]["category"] == "audio_format" and error["error"]["recoverable"] is True
    await communicator.send_json_to({"type": "configure", "config": {"partial_chunk_duration": "soon"}})
    error = await communicator.receive_json_from()
    assert (error["error"]["code"], error["error"]["field"]) == ("invalid_config", "partial_chunk_duration")
    await stream(communicator, jfk_audio[: int(2.5 * 16000)])
    await communicator.send_json_to({"type": "end_session"})
    messages, code = await receive_until_closed(communicator)
    assert "fellow americans" in of(messages, "transcription_final")[0]["data"]["text"].lower()
    assert code == 1000


async def test_an_operator_can_end_a_session_by_id_over_the_channel_layer(engine, jfk_audio, redis_channel_layer):
    communicator = await connect()
    await start(communicator, session_id="operator-test-1", final_chunk_duration=2.0)
    await stream(communicator, jfk_audio[: int(2.5 * 16000)])
    await asyncio.sleep(0.2)
    # As another process would: through Redis, knowing only the server's id of the session.
    [server_id] = await stats_entries("operator-test-1")
    await send_control("end_session", connection_id=server_id)
    messages, code = await receive_until_closed(communicator)
    assert code == 1000
    assert "fellow americans" in of(messages, "transcription_final")[0]["data"]["text"].lower()
    assert messages[-1]["data"]["reason"] == "end_session"


async def test_a_broadcast_reaches_every_session(engine, redis_channel_layer):
    first, second = await connect(), await connect()
    await start(first)
    await start(second)
    await send_control("interrupt")
    for communicator in (first, second):
        ack = await communicator.receive_json_from(timeout=10)
        assert ack["type"] == "interrupt_acknowledged"
        await communicator.disconnect()


async def test_connections_beyond_the_limit_are_closed_with_1013(engine, settings):
    settings.WEBSOCKET_MAX_CONNECTIONS = 1
    first = await connect()
    second = await connect()
    error = await second.receive_json_from()
    assert error["error"]["code"] == "server_overloaded"
    assert (await second.receive_output())["code"] == 1013
    await first.disconnect()


async def stats_entries(label: str) -> dict[str, dict]:
    """The /stats entries of the sessions a client named `label`, by their server id."""
    from django.test import AsyncClient

    stats = (await AsyncClient().get("/stats")).json()["processing_stats"]
    return {key: entry for key, entry in stats.items() if entry.get("session_id") == label}


async def test_stats_keeps_sessions_apart_when_clients_pick_the_same_id(engine):
    """/stats is keyed by the server's id; the client's id is a label (issue 14 #8)."""
    first, second = await connect(), await connect()
    await start(first, session_id="same-id")
    await start(second, session_id="same-id")
    entries = await stats_entries("same-id")
    assert len(entries) == 2
    assert all(entry["connection_id"] == key for key, entry in entries.items())
    for communicator in (first, second):
        await communicator.disconnect()


async def test_control_reaches_only_the_session_it_names_even_when_ids_look_alike(engine, redis_channel_layer):
    """Client ids that sanitise alike ("twin/1", "twin_1") no longer share a group (#8)."""
    first, second = await connect(), await connect()
    await start(first, session_id="twin/1")
    await start(second, session_id="twin_1")
    [server_id] = await stats_entries("twin/1")
    await send_control("end_session", connection_id=server_id)
    messages, code = await receive_until_closed(first)
    assert code == 1000 and messages[-1]["type"] == "session_ended"
    assert await second.receive_nothing(timeout=0.5), "the other session was not touched"
    await second.disconnect()


async def test_messages_do_not_wait_for_djangos_thread_sensitive_thread():
    """Channels closes old database connections on Django's one thread-sensitive thread
    before each message; a slow admin page or export holds that thread, and every audio
    frame of every stream would wait behind it. The consumer skips that hop."""
    import time

    from asgiref.sync import sync_to_async

    communicator = await connect()
    try:
        await start(communicator)
        busy = asyncio.ensure_future(sync_to_async(time.sleep)(3.0))  # what a slow admin page does
        await asyncio.sleep(0.1)
        sent_at = time.monotonic()
        await communicator.send_to(text_data="{not json")
        reply = await communicator.receive_json_from(timeout=10)
        waited = time.monotonic() - sent_at
        await busy
    finally:
        await communicator.disconnect()
    assert reply["type"] == "error"
    assert waited < 1.0, f"the reply waited {waited:.2f} s for the thread-sensitive thread"


async def live_with_label(label: str) -> list:
    from monitoring.registry import registry

    return [session for session in registry.sessions() if session.session_id == label]


async def close_reason_of(label: str) -> str:
    from asgiref.sync import sync_to_async

    from stt.models import SessionRecord
    from stt.persistence import history

    assert await history.drain()
    return await sync_to_async(lambda: SessionRecord.objects.get(session_id=label).close_reason)()


async def waiting_on_its_budget(communicator: WebsocketCommunicator, label: str, settings) -> None:
    """A started session whose frame waits about 100 s for its audio budget."""
    settings.AUDIO_BUDGET_PER_SESSION = 0.01
    await start(communicator, session_id=label)
    await communicator.send_to(bytes_data=frames(silence(1.0), 16000)[0])
    await asyncio.sleep(0.2)
    assert await live_with_label(label)


async def until_gone(label: str, within: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while await live_with_label(label):
        assert loop.time() < deadline, f"session {label} still registered {within:g} s on"
        await asyncio.sleep(0.05)


async def test_a_consumer_killed_while_its_session_waits_ends_the_session(engine, settings):
    """Issue 23 #3: Daphne cancels an application still running application_close_timeout
    after its client left; the session never heard of it and stayed registered."""
    communicator = await connect()
    await waiting_on_its_budget(communicator, "killed-1", settings)
    communicator.future.cancel()  # what Daphne's application checker does
    await until_gone("killed-1")
    assert await close_reason_of("killed-1") == "client_disconnected"


async def test_a_connection_lost_under_daphne_ends_the_waiting_session_before_its_queue_is_read(engine, settings):
    """Daphne signals the lost connection in the scope (stt.daphne_protocol.CLIENT_GONE):
    the session ends although the websocket.disconnect message is still queued behind
    the frame that waits for its budget."""
    from stt.daphne_protocol import CLIENT_GONE

    communicator = WebsocketCommunicator(application, "/ws/transcribe")
    gone = communicator.scope[CLIENT_GONE] = asyncio.Event()
    assert (await communicator.connect(timeout=10))[0]
    await waiting_on_its_budget(communicator, "lost-1", settings)
    gone.set()  # what ClosingWebSocketProtocol.onClose does
    await until_gone("lost-1")
    assert await close_reason_of("lost-1") == "client_disconnected"
    await communicator.disconnect()
