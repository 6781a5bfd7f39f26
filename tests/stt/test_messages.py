"""docs/protocol.schema.json, the machine-readable protocol: generated from stt/messages.py,
and every kind of message a real server process sends validates against it (checked by
an independent JSON Schema validator, not by the models it came from)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import jsonschema
import pytest
import websockets

from stt.messages import CLIENT_MESSAGE_TYPES, SERVER_MESSAGE_TYPES
from stt.schema import json_schema
from tests.conftest import frames, silence

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "docs" / "protocol.schema.json"


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def validator(schema: dict, direction: str) -> jsonschema.Draft202012Validator:
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator({**schema, "oneOf": [{"$ref": f"#/$defs/{direction}"}]})


def test_the_committed_schema_is_the_one_the_models_generate(schema):
    assert schema == json.loads(json.dumps(json_schema())), \
        "regenerate: python -m stt.schema > docs/protocol.schema.json"


def test_the_schema_names_every_message_of_docs_protocol_md(schema):
    prose = (SCHEMA_PATH.parent / "protocol.md").read_text()
    for kind in (*CLIENT_MESSAGE_TYPES, *SERVER_MESSAGE_TYPES):
        assert f"`{kind}`" in prose, kind
    mapping = schema["$defs"]["ServerMessage"]["discriminator"]["mapping"]
    assert set(mapping) == set(SERVER_MESSAGE_TYPES)


def test_the_client_messages_of_the_documentation_validate_and_bad_ones_do_not(schema):
    check = validator(schema, "ClientMessage")
    good = [
        {"type": "start_session", "session_config": {"language": "en", "enable_vad": True,
                                                     "partial_chunk_duration": 0.25}},
        {"type": "configure", "config": {"final_chunk_duration": 0.8}},
        {"type": "flush_buffer"}, {"type": "end_session"},
        {"type": "interrupt", "data": {"reason": "user_spoke"}},
        {"type": "context_update", "data": {"conversation_state": "responding"}},
    ]
    for message in good:
        check.validate(message)
    bad = [
        {"type": "start_session", "session_config": {"buffer_duration": "2.0"}},  # no coercion
        {"type": "start_session", "session_config": {"unknown_key": 1}},
        {"type": "configure"},  # config is required
        {"type": "context_update", "data": {"conversation_state": "dreaming"}},
        {"session_config": {}},  # no type
        {"type": "hello"},
    ]
    for message in bad:
        assert not check.is_valid(message), message


async def test_every_message_a_real_server_sends_validates_against_the_schema(schema, stt_server, jfk_audio):
    """One scripted session provokes every server message type; each raw frame is checked."""
    check = validator(schema, "ServerMessage")
    received: list[dict] = []
    headers = {"Authorization": f"Bearer {stt_server.keys['backend']}"}

    async def collect(ws, until: str) -> None:
        while True:
            message = json.loads(await asyncio.wait_for(ws.recv(), 60))
            received.append(message)
            if message["type"] == until:
                return

    async with websockets.connect(stt_server.ws, additional_headers=headers) as ws:
        await ws.send(frames(silence(0.1))[0])  # audio first: session_not_started error
        await collect(ws, "error")
        await ws.send("{not json")
        await collect(ws, "error")
        await ws.send(json.dumps({"type": "start_session", "session_config": {
            "language": "en", "user_id": "schema-check", "conversation_id": "conv-1"}}))
        await collect(ws, "session_started")
        await ws.send(json.dumps({"type": "configure", "config": {"buffer_duration": 1.5}}))
        await collect(ws, "session_configured")
        for frame in frames(jfk_audio[: 16000 * 4]):
            await ws.send(frame)
            await asyncio.sleep(0.064)  # real time: partials come while speech goes on
        await ws.send(json.dumps({"type": "flush_buffer"}))
        await collect(ws, "buffer_flushed")
        await ws.send(json.dumps({"type": "context_update", "data": {"conversation_state": "responding"}}))
        for frame in frames(jfk_audio[16000 * 4: 16000 * 6]):
            await ws.send(frame)
            await asyncio.sleep(0.064)  # real time: partials come while speech goes on
        await ws.send(json.dumps({"type": "interrupt", "data": {"reason": "barge-in"}}))
        await collect(ws, "interrupt_acknowledged")
        for frame in frames(jfk_audio[16000 * 6:]):
            await ws.send(frame)
        await ws.send(json.dumps({"type": "end_session"}))
        await collect(ws, "session_ended")

    kinds = {message["type"] for message in received}
    assert kinds == set(SERVER_MESSAGE_TYPES), f"not provoked: {set(SERVER_MESSAGE_TYPES) - kinds}"
    for message in received:
        errors = sorted(check.iter_errors(message), key=str)
        assert not errors, f"{message['type']}: {errors[0].message} at {list(errors[0].absolute_path)}"

    # The check can fail: a field the documentation does not have is caught.
    drifted = json.loads(json.dumps(next(m for m in received if m["type"] == "transcription_final")))
    drifted["data"]["speaker"] = 1
    assert not check.is_valid(drifted)
