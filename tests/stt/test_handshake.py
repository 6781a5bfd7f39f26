"""The handshake middleware: Origin and credentials are decided before any consumer
exists; an admitted connection's scope carries its principal and subprotocol; a refused
one is closed before it is accepted (HTTP 403 under Daphne) and logged as auth_refused;
and the key lookup does not wait for Django's thread-sensitive thread."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.urls import path

from stt import auth
from stt.auth import Principal
from stt.consumers import TranscribeConsumer
from stt.handshake import HandshakeMiddleware, RecentAdmissions
from stt.models import ApiKey

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def auth_required(settings):
    settings.AUTH_REQUIRED = True
    settings.ALLOWED_ORIGINS = ["https://app.example.com"]


def new_key() -> str:
    raw, prefix, digest = auth.generate_key()
    ApiKey.objects.create(name="backend", prefix=prefix, key_hash=digest)
    return raw


class RecordingApp:
    """The application behind the middleware: accepts, and keeps the scope it got."""

    def __init__(self) -> None:
        self.scopes: list[dict] = []

    async def __call__(self, scope, receive, send) -> None:
        self.scopes.append(scope)
        await receive()
        await send({"type": "websocket.accept", "subprotocol": scope["subprotocol"]})
        while (await receive())["type"] != "websocket.disconnect":
            pass


async def connect(application, headers=(), subprotocols=None):
    communicator = WebsocketCommunicator(application, "/ws/transcribe", headers=list(headers),
                                         subprotocols=subprotocols)
    connected, detail = await communicator.connect(timeout=10)
    await communicator.disconnect()
    return connected, detail


async def test_an_admitted_connection_carries_its_principal_and_subprotocol():
    raw = await database_sync_to_async(new_key)()
    inner = RecordingApp()
    connected, subprotocol = await connect(
        HandshakeMiddleware(inner), [(b"authorization", f"Bearer {raw}".encode())],
        subprotocols=["fasttalk"])
    assert connected and subprotocol == "fasttalk"
    principal = inner.scopes[0]["principal"]
    assert isinstance(principal, Principal) and principal.name == "backend" and principal.key_id is not None


async def test_a_refused_handshake_never_reaches_the_application_and_is_logged(caplog):
    inner = RecordingApp()
    with caplog.at_level(logging.WARNING, logger="stt.handshake"):
        connected, _ = await connect(HandshakeMiddleware(inner), [(b"authorization", b"Bearer ftk_wrong")])
        connected_foreign, _ = await connect(HandshakeMiddleware(inner), [(b"origin", b"https://evil.example")])
    assert not connected and not connected_foreign and inner.scopes == []
    refusals = [r for r in caplog.records if getattr(r, "event", None) == "auth_refused"]
    assert [r.reason for r in refusals] == ["invalid, expired or revoked credential",
                                            "origin 'https://evil.example' is not in ALLOWED_ORIGINS"]
    assert "ftk_wrong" not in caplog.text, "the credential is never logged"


async def test_a_failing_key_store_refuses_rather_than_admits():
    def unreachable(scope):
        raise ConnectionError("database away")

    inner = RecordingApp()
    connected, _ = await connect(HandshakeMiddleware(inner, authorize=unreachable))
    assert not connected and inner.scopes == []


async def test_http_passes_through_untouched():
    seen = []

    async def app(scope, receive, send):
        seen.append(scope)

    await HandshakeMiddleware(app)({"type": "http", "path": "/"}, None, None)
    assert seen == [{"type": "http", "path": "/"}]


async def test_the_consumer_without_the_middleware_admits_nobody():
    connected, _ = await connect(URLRouter([path("ws/transcribe", TranscribeConsumer.as_asgi())]))
    assert not connected


async def test_a_key_lookup_does_not_wait_for_the_thread_sensitive_thread():
    """Issue 14 #7: Django's one thread-sensitive thread (what sync_to_async and
    database_sync_to_async use by default outside a request) may be busy for seconds;
    the key lookup and its last-used write must not queue behind it."""
    raw = await database_sync_to_async(new_key)()
    busy = asyncio.ensure_future(sync_to_async(time.sleep, thread_sensitive=True)(3))
    await asyncio.sleep(0.1)  # the thread is taken
    inner = RecordingApp()
    started = time.monotonic()
    connected, _ = await connect(HandshakeMiddleware(inner), [(b"authorization", f"Bearer {raw}".encode())])
    elapsed = time.monotonic() - started
    await busy
    assert connected and inner.scopes[0]["principal"].name == "backend"
    assert elapsed < 1.5, f"the handshake took {elapsed:.2f} s behind a busy sync thread"


class TestRecentAdmissions:
    def scope(self, credential="ftk_abc", origin=b"https://app.example.com"):
        return {"type": "websocket", "subprotocols": [],
                "headers": [(b"authorization", f"Bearer {credential}".encode()), (b"origin", origin)]}

    def test_an_admission_is_remembered_until_it_is_too_old(self):
        now = [100.0]
        admissions = RecentAdmissions(10, clock=lambda: now[0])
        admitted = auth.Decision(Principal(1, "backend", 5, 50))
        admissions.remember(self.scope(), admitted)
        assert admissions.get(self.scope()) is admitted
        assert admissions.get(self.scope(origin=b"https://other.example")) is None, "another origin: look again"
        assert admissions.get(self.scope(credential="ftk_other")) is None
        now[0] += 10.5
        assert admissions.get(self.scope()) is None

    def test_refusals_and_handshakes_without_a_credential_are_never_remembered(self):
        admissions = RecentAdmissions(10)
        admissions.remember(self.scope(), auth.Decision(None, "invalid"))
        assert admissions.get(self.scope()) is None
        anonymous = {"type": "websocket", "headers": []}
        admissions.remember(anonymous, auth.Decision(Principal.anonymous()))
        assert admissions.get(anonymous) is None

    async def test_a_reconnecting_backend_is_looked_up_once_within_the_cache_time(self):
        raw = await database_sync_to_async(new_key)()
        lookups = []

        def counting(scope):
            lookups.append(1)
            return auth.authorize_handshake(scope)

        middleware = HandshakeMiddleware(RecordingApp(), authorize=counting, admissions=RecentAdmissions(10))
        for _ in range(3):
            connected, _ = await connect(middleware, [(b"authorization", f"Bearer {raw}".encode())])
            assert connected
        assert len(lookups) == 1
