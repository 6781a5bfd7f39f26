"""Who may open a session: API keys (hashed, shown once), tokens minted for browsers,
Origin, and the per-key limits."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import AsyncClient
from django.urls import reverse
from django.utils import timezone

from fasttalk.asgi import application
from stt import auth
from stt.models import ApiKey
from tests.conftest import frames, silence

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def auth_required(settings):
    settings.AUTH_REQUIRED = True
    settings.ALLOWED_ORIGINS = ["https://app.example.com"]


def new_key(**limits) -> tuple[ApiKey, str]:
    raw, prefix, digest = auth.generate_key()
    return ApiKey.objects.create(name="backend", prefix=prefix, key_hash=digest, **limits), raw


async def handshake(headers: list[tuple[bytes, bytes]] = (), subprotocols: list[str] | None = None,
                    path: str = "/ws/transcribe"):
    communicator = WebsocketCommunicator(application, path, headers=list(headers),
                                         subprotocols=subprotocols)
    connected, detail = await communicator.connect(timeout=10)
    if not connected:
        await communicator.disconnect()  # the client side hangs up; the consumer ends
    return communicator, connected, detail


def bearer(credential: str) -> tuple[bytes, bytes]:
    return (b"authorization", f"Bearer {credential}".encode())


class TestCredentials:
    def test_a_key_is_stored_as_its_hash_only(self):
        key, raw = new_key()
        assert raw.startswith("ftk_") and len(raw) > 40 and key.prefix == raw[:12]
        assert key.key_hash == auth.hash_key(raw) and raw not in key.key_hash
        assert auth.key_for(raw) == key

    def test_a_revoked_key_opens_nothing(self):
        key, raw = new_key()
        key.revoked_at = timezone.now()
        key.save()
        assert auth.key_for(raw) is None

    def test_a_token_stands_for_its_key_until_it_expires(self, settings):
        key, _ = new_key()
        token, expires_at = auth.mint_token(key)
        assert auth.key_for(token) == key
        assert timedelta(seconds=290) < expires_at - timezone.now() <= timedelta(seconds=300)
        assert all(c.isalnum() or c in "-_." for c in token), "usable as a subprotocol name"
        settings.AUTH_TOKEN_TTL_SECONDS = -1
        assert auth.key_for(token) is None

    def test_a_tampered_token_or_a_dead_key_is_refused(self):
        key, _ = new_key()
        token, _ = auth.mint_token(key)
        assert auth.key_for(token[:-2] + ("AA" if not token.endswith("AA") else "BB")) is None
        key.revoked_at = timezone.now()
        key.save()
        assert auth.key_for(token) is None, "a token dies with its key"

    @pytest.mark.parametrize("origin, allowed", [
        (None, True), ("https://app.example.com", True), ("https://APP.example.com/", True),
        ("https://evil.example.com", False), ("http://app.example.com", False),
    ])
    def test_origins(self, origin, allowed):
        assert auth.origin_allowed(origin) is allowed

    def test_the_services_own_origin_is_allowed_and_by_default_no_other(self, settings):
        settings.ALLOWED_ORIGINS = []
        assert auth.origin_allowed("https://stt.example.com", host="STT.example.com")
        assert auth.origin_allowed("http://127.0.0.1:8000", host="127.0.0.1:8000")
        assert not auth.origin_allowed("https://evil.example", host="stt.example.com")
        assert not auth.origin_allowed("https://evil.example")

    def test_last_used_is_written_at_most_once_a_minute(self):
        key, _ = new_key()
        auth.note_key_used(key)
        first = ApiKey.objects.get(pk=key.pk).last_used_at
        assert first is not None
        auth.note_key_used(ApiKey.objects.get(pk=key.pk))
        assert ApiKey.objects.get(pk=key.pk).last_used_at == first
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=first - timedelta(minutes=2))
        auth.note_key_used(ApiKey.objects.get(pk=key.pk))
        assert ApiKey.objects.get(pk=key.pk).last_used_at > first


class TestHandshake:
    async def test_without_a_credential_the_handshake_is_refused(self):
        _, connected, detail = await handshake()
        assert not connected

    async def test_a_backend_connects_with_its_key_in_the_authorization_header(self):
        key, raw = await database_sync_to_async(new_key)()
        communicator, connected, _ = await handshake([bearer(raw)])
        assert connected
        await communicator.send_to(text_data=json.dumps({"type": "start_session"}))
        started = json.loads(await communicator.receive_from(timeout=10))
        assert started["type"] == "session_started"
        await communicator.disconnect()
        assert (await database_sync_to_async(ApiKey.objects.get)(pk=key.pk)).last_used_at is not None

    async def test_a_browser_connects_with_a_token_offered_as_a_subprotocol(self):
        key, _ = await database_sync_to_async(new_key)()
        token, _ = await database_sync_to_async(auth.mint_token)(key)
        communicator, connected, subprotocol = await handshake(
            [(b"origin", b"https://app.example.com")], subprotocols=["fasttalk", f"fasttalk.auth.{token}"])
        assert connected and subprotocol == "fasttalk", "the server answers with the plain protocol name"
        await communicator.disconnect()

    async def test_a_wrong_key_or_a_foreign_origin_is_refused(self):
        _, raw = await database_sync_to_async(new_key)()
        _, connected, _ = await handshake([bearer("ftk_" + "x" * 43)])
        assert not connected
        _, connected, _ = await handshake([bearer(raw), (b"origin", b"https://evil.example.com")])
        assert not connected

    async def test_open_mode_lets_clients_in_without_a_credential(self, settings):
        settings.AUTH_REQUIRED = False
        communicator, connected, _ = await handshake()
        assert connected
        await communicator.disconnect()


class TestOpenAIClientsOfAnOpenService:
    """OpenAI's clients always send an api_key: on an open service (AUTH_REQUIRED=false)
    a placeholder there is no credential, on /v1/ only; a key of ours is still checked."""

    REALTIME = "/v1/realtime?intent=transcription"

    async def test_a_placeholder_key_opens_a_realtime_session(self, settings):
        settings.AUTH_REQUIRED = False
        communicator, connected, _ = await handshake([bearer("sk-not-needed")], path=self.REALTIME)
        assert connected
        await communicator.disconnect()

    async def test_an_unknown_key_of_ours_is_still_refused(self, settings):
        settings.AUTH_REQUIRED = False
        _, connected, _ = await handshake([bearer("ftk_" + "x" * 43)], path=self.REALTIME)
        assert not connected

    async def test_elsewhere_and_on_a_closed_service_a_placeholder_is_a_wrong_credential(self, settings):
        settings.AUTH_REQUIRED = False
        _, connected, _ = await handshake([bearer("sk-not-needed")])
        assert not connected, "/ws/transcribe: a credential sent must be valid"
        settings.AUTH_REQUIRED = True
        _, connected, _ = await handshake([bearer("sk-not-needed")], path=self.REALTIME)
        assert not connected

    async def test_the_file_api_follows_the_same_rule(self, settings):
        settings.AUTH_REQUIRED = False
        client = AsyncClient()
        assert (await client.get("/v1/models", headers={"Authorization": "Bearer sk-not-needed"})).status_code == 200
        refused = await client.get("/v1/models", headers={"Authorization": "Bearer ftk_" + "x" * 43})
        assert refused.status_code == 401
        settings.AUTH_REQUIRED = True
        assert (await client.get("/v1/models", headers={"Authorization": "Bearer sk-not-needed"})).status_code == 401


async def session_beyond_its_rate():
    """A started session of a key allowed 5 messages a second, sent 20 audio frames at once."""
    _, raw = await database_sync_to_async(new_key)(max_messages_per_second=5)
    communicator, connected, _ = await handshake([bearer(raw)])
    assert connected
    await communicator.send_to(text_data=json.dumps({"type": "start_session"}))
    assert json.loads(await communicator.receive_from(timeout=10))["type"] == "session_started"
    for frame in frames(silence(1.0), 512)[:20]:
        await communicator.send_to(bytes_data=frame)
    return communicator


class TestLimits:
    async def test_a_key_beyond_its_concurrent_sessions_is_closed_with_1013(self):
        _, raw = await database_sync_to_async(new_key)(max_concurrent_sessions=1)
        first, connected, _ = await handshake([bearer(raw)])
        assert connected
        second, connected, _ = await handshake([bearer(raw)])
        assert connected
        error = json.loads(await second.receive_from(timeout=10))
        assert error["error"]["code"] == "too_many_sessions" and error["error"]["category"] == "resource"
        assert (await second.receive_output(timeout=10))["code"] == 1013
        await first.disconnect()

    async def test_messages_beyond_the_rate_are_dropped_and_reported_once_a_second(self, jfk_audio):
        communicator = await session_beyond_its_rate()
        message = json.loads(await communicator.receive_from(timeout=10))
        assert message["type"] == "error" and message["error"]["code"] == "rate_limited"
        assert message["error"]["recoverable"] is True
        assert await communicator.receive_nothing(timeout=0.3), "one report, not one per dropped frame"
        await communicator.disconnect()

    async def test_end_session_is_honoured_even_beyond_the_rate(self, jfk_audio):
        communicator = await session_beyond_its_rate()
        await communicator.send_to(text_data=json.dumps({"type": "end_session"}))
        kinds = []
        while not kinds or kinds[-1] != "session_ended":
            kinds.append(json.loads(await communicator.receive_from(timeout=10))["type"])
        assert kinds == ["error", "session_ended"]
        assert (await communicator.receive_output(timeout=10))["code"] == 1000

    async def test_a_session_held_over_its_rate_is_never_closed_for_it(self, settings):
        """Being limited is no session error (issue 14 #6): a key over its rate for longer
        than MAX_SESSION_ERRORS seconds keeps its sessions."""
        settings.MAX_SESSION_ERRORS = 1
        communicator = await session_beyond_its_rate()
        reports = [json.loads(await communicator.receive_from(timeout=10))]
        await asyncio.sleep(1.1)
        for frame in frames(silence(1.0), 512)[:20]:
            await communicator.send_to(bytes_data=frame)
        reports.append(json.loads(await communicator.receive_from(timeout=10)))
        assert [m["error"]["code"] for m in reports] == ["rate_limited", "rate_limited"]
        assert await communicator.receive_nothing(timeout=0.5), "no too_many_errors, no close"
        await asyncio.sleep(1.1)  # the bucket refills; end_session is honoured with 1000
        await communicator.send_to(text_data=json.dumps({"type": "end_session"}))
        ended = json.loads(await communicator.receive_from(timeout=10))
        assert ended["type"] == "session_ended" and ended["data"]["errors"] == 0
        assert (await communicator.receive_output(timeout=10))["code"] == 1000

    async def test_only_a_real_end_session_passes_beyond_the_rate(self):
        """A message that merely mentions end_session is limited like any other (#6)."""
        communicator = await session_beyond_its_rate()
        await communicator.send_to(text_data=json.dumps({"type": "interrupt", "data": {"reason": "end_session"}}))
        await communicator.send_to(text_data=json.dumps({"type": "end_session"}))
        kinds = []
        while not kinds or kinds[-1] != "session_ended":
            kinds.append(json.loads(await communicator.receive_from(timeout=10))["type"])
        assert kinds == ["error", "session_ended"], "the interrupt was dropped, not acknowledged"


class TestTokenEndpoint:
    def test_a_backend_mints_a_token_with_its_key(self, client):
        key, raw = new_key()
        response = client.post("/auth/token", HTTP_AUTHORIZATION=f"Bearer {raw}")
        assert response.status_code == 200
        body = response.json()
        assert auth.key_for(body["token"]) == key and body["subprotocols"][0] == "fasttalk"

    def test_a_token_cannot_mint_another_and_nothing_else_works_either(self, client):
        key, raw = new_key()
        token, _ = auth.mint_token(key)
        assert client.post("/auth/token", HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 401
        assert client.post("/auth/token").status_code == 401
        assert client.get("/auth/token", HTTP_AUTHORIZATION=f"Bearer {raw}").status_code == 405


class TestAdmin:
    def test_a_new_key_is_shown_once_and_only_its_hash_is_kept(self, admin_client):
        response = admin_client.post(reverse("admin:stt_apikey_add"), {"name": "assistant backend"}, follow=True)
        page = response.content.decode()
        shown = page.split('class="new-api-key">')[1].split("<")[0]
        key = ApiKey.objects.get()
        assert auth.key_for(shown) == key and key.key_hash != shown and shown not in key.prefix
        again = admin_client.get(reverse("admin:stt_apikey_change", args=[key.pk])).content.decode()
        assert shown not in again

    def test_revoking_a_key_refuses_it_from_then_on(self, admin_client):
        key, raw = new_key()
        admin_client.post(reverse("admin:stt_apikey_changelist"),
                          {"action": "revoke_keys", "_selected_action": [key.pk]})
        assert auth.key_for(raw) is None
