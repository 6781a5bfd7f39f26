"""/v1/realtime through the real ASGI application (HandshakeMiddleware, routing, the
consumer), in process, with Channels' WebsocketCommunicator."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from fasttalk.asgi import application
from stt import auth
from stt.models import ApiKey
from stt.realtime.consumer import dialect_of, intent_of

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def auth_required(settings):
    settings.AUTH_REQUIRED = True
    settings.ALLOWED_ORIGINS = ["https://app.example.com"]


def new_key() -> str:
    raw, prefix, digest = auth.generate_key()
    ApiKey.objects.create(name="realtime", prefix=prefix, key_hash=digest)
    return raw


async def connect(path: str, headers=(), subprotocols=None) -> tuple[WebsocketCommunicator, bool, str | None]:
    communicator = WebsocketCommunicator(application, path, headers=list(headers), subprotocols=subprotocols)
    connected, subprotocol = await communicator.connect(timeout=30)
    return communicator, connected, subprotocol


async def test_an_api_key_in_the_authorization_header_opens_a_ga_session():
    key = await database_sync_to_async(new_key)()
    communicator, connected, _ = await connect("/v1/realtime?intent=transcription",
                                               [(b"authorization", f"Bearer {key}".encode())])
    assert connected
    created = await communicator.receive_json_from(timeout=30)
    assert created["type"] == "session.created" and created["session"]["type"] == "transcription"
    await communicator.send_to(bytes_data=b"\x00\x00")
    error = (await communicator.receive_json_from(timeout=10))["error"]
    assert error["code"] == "invalid_message" and "input_audio_buffer.append" in error["message"]
    await communicator.disconnect()


async def test_without_a_credential_the_handshake_is_refused():
    communicator, connected, _ = await connect("/v1/realtime?intent=transcription")
    assert not connected
    await communicator.disconnect()


async def test_a_browser_offers_openais_subprotocols_and_gets_the_beta_session():
    await database_sync_to_async(new_key)()
    token, _ = await database_sync_to_async(lambda: auth.mint_token(ApiKey.objects.get(name="realtime")))()
    communicator, connected, subprotocol = await connect(
        "/v1/realtime?intent=transcription", [(b"origin", b"https://app.example.com")],
        subprotocols=["realtime", f"openai-insecure-api-key.{token}", "openai-beta.realtime-v1"])
    assert connected and subprotocol == "realtime"
    assert (await communicator.receive_json_from(timeout=30))["type"] == "transcription_session.created"
    await communicator.disconnect()


async def test_a_connection_without_the_transcription_intent_is_told_and_closed():
    key = await database_sync_to_async(new_key)()
    communicator, connected, _ = await connect("/v1/realtime?model=gpt-realtime",
                                               [(b"authorization", f"Bearer {key}".encode())])
    assert connected
    error = await communicator.receive_json_from(timeout=10)
    assert error["type"] == "error"
    assert (error["error"]["code"], error["error"]["param"]) == ("invalid_intent", "intent")
    closed = await communicator.receive_output(timeout=10)
    assert closed == {"type": "websocket.close", "code": 1008, "reason": "intent=transcription only"}


def test_the_interface_generation_and_intent_come_from_the_handshake():
    assert dialect_of({"headers": [(b"OpenAI-Beta", b"realtime=v1")]}) == "beta"
    assert dialect_of({"headers": [], "subprotocols": ["realtime", "openai-beta.realtime-v1"]}) == "beta"
    assert dialect_of({"headers": [(b"authorization", b"Bearer x")], "subprotocols": ["realtime"]}) == "ga"
    assert intent_of({"query_string": b"model=whisper-1&intent=transcription"}) == "transcription"
    assert intent_of({"query_string": b""}) is None
