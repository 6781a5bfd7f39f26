"""docs/protocol.schema.json, the machine-readable protocol, generated from the models
of stt/messages.py:

    python -m stt.schema > docs/protocol.schema.json

The tests check that the committed file equals what this module generates, and
validate real server messages against it."""

from __future__ import annotations

import json
from typing import Any

from pydantic import TypeAdapter

from stt.messages import PROTOCOL_VERSION, SessionConfig, _client_messages, _server_messages


def json_schema() -> dict[str, Any]:
    """The protocol as one JSON Schema document (draft 2020-12): `$defs` holds every
    model; `ClientMessage` and `ServerMessage` are the two directions."""
    _, definitions = TypeAdapter.json_schemas(
        [("ClientMessage", "validation", _client_messages), ("ServerMessage", "validation", _server_messages),
         ("SessionConfig", "validation", TypeAdapter(SessionConfig))],
        ref_template="#/$defs/{model}",
    )
    defs = dict(definitions.get("$defs", {}))
    defs["ClientMessage"] = _union_schema(_client_messages.json_schema(ref_template="#/$defs/{model}"))
    defs["ServerMessage"] = _union_schema(_server_messages.json_schema(ref_template="#/$defs/{model}"))
    _type_required(defs)
    # Both carry a SessionConfig (kept a plain dict in the models: the server validates it
    # with the runtime profile's defaults, after the message itself).
    defs["StartSession"]["properties"]["session_config"] = {"$ref": "#/$defs/SessionConfig", "default": {}}
    defs["Configure"]["properties"]["config"] = {"$ref": "#/$defs/SessionConfig"}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://fasttalk.local/schemas/stt-protocol-1.0.json",
        "title": f"Fasttalk STT WebSocket protocol {PROTOCOL_VERSION}",
        "description": "Generated from stt/messages.py; the prose is docs/protocol.md. Binary frames "
                       "(float32le PCM, 16 kHz mono) are not JSON and not described here.",
        "oneOf": [{"$ref": "#/$defs/ClientMessage"}, {"$ref": "#/$defs/ServerMessage"}],
        "$defs": defs,
    }


def _union_schema(schema: dict[str, Any]) -> dict[str, Any]:
    schema = dict(schema)
    schema.pop("$defs", None)
    return schema


def _type_required(defs: dict[str, Any]) -> None:
    """Client models default their `type` (so Python callers need not repeat it); on the
    wire it is required."""
    for definition in defs.values():
        tag = definition.get("properties", {}).get("type", {})
        if "const" in tag and "type" not in definition.get("required", []):
            definition["required"] = ["type", *definition.get("required", [])]


if __name__ == "__main__":  # python -m stt.schema > docs/protocol.schema.json
    print(json.dumps(json_schema(), indent=2, sort_keys=True))
