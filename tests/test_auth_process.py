"""Authentication through a real Daphne process: refused handshakes are HTTP 403
before any WebSocket exists; keys and browser tokens open sessions."""

from __future__ import annotations

import json
import os
import urllib.request

import pytest
import websockets

from tests.servers import ScratchDatabase, Server, base_env

pytestmark = pytest.mark.realtime

@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    database = ScratchDatabase(os.environ["DATABASE_URL"])
    env = {**base_env(), "DATABASE_URL": database.url(), "AUTH_REQUIRED": "1",
           "ALLOWED_ORIGINS": "https://app.example.com"}
    server = Server(env, tmp_path_factory.mktemp("auth"))
    yield server, server.create_api_key("e2e")
    server.stop()
    database.drop()


async def started(ws) -> dict:
    await ws.send(json.dumps({"type": "start_session"}))
    return json.loads(await ws.recv())


async def test_no_credential_is_refused_with_403_before_the_websocket_opens(secured):
    server, _ = secured
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(server.ws):
            pass
    assert refused.value.response.status_code == 403


async def test_a_backend_key_in_the_authorization_header_opens_a_session(secured):
    server, key = secured
    async with websockets.connect(server.ws, additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        assert (await started(ws))["type"] == "session_started"
    assert key not in server.log.read_text(), "the key is never logged"


async def test_a_browser_token_minted_by_the_backend_opens_a_session(secured):
    server, key = secured
    request = urllib.request.Request(f"{server.base}/auth/token", method="POST",
                                     headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        minted = json.loads(response.read())
    async with websockets.connect(server.ws, subprotocols=minted["subprotocols"],
                                  origin="https://app.example.com") as ws:
        assert ws.subprotocol == "fasttalk"
        assert (await started(ws))["type"] == "session_started"
    with pytest.raises(websockets.InvalidStatus):
        async with websockets.connect(server.ws, subprotocols=minted["subprotocols"],
                                      origin="https://evil.example.com"):
            pass
    assert minted["token"] not in server.log.read_text()
