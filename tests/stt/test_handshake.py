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
from django.utils import timezone

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


class TestAdmissionsLiveNoLongerThanTheirCredential:
    """Issue 23 #9: the admission cache must not outlive a token, nor a key's revocation
    by more than AUTH_CACHE_SECONDS."""

    async def test_an_expired_token_is_refused_though_its_admission_is_recent(self, settings):
        settings.AUTH_TOKEN_TTL_SECONDS = 2
        key = await database_sync_to_async(lambda: ApiKey.objects.get(prefix=new_key()[:12]))()
        token, expires_at = await database_sync_to_async(auth.mint_token)(key)
        middleware = HandshakeMiddleware(RecordingApp(), admissions=RecentAdmissions(60))
        offered = ["fasttalk", f"fasttalk.auth.{token}"]
        assert (await connect(middleware, subprotocols=offered))[0], "a fresh token is admitted"
        await asyncio.sleep(max(0.0, expires_at.timestamp() - time.time()) + 0.1)
        connected, _ = await connect(middleware, subprotocols=offered)
        assert not connected, "the token has expired: the cached admission must not let it in"

    def test_a_token_admission_is_kept_until_the_token_expires_at_the_latest(self):
        monotonic, wall = [100.0], [1_000_000.0]
        admissions = RecentAdmissions(10, clock=lambda: monotonic[0], wall_clock=lambda: wall[0])
        scope = TestRecentAdmissions().scope(credential="a-token")
        admissions.remember(scope, auth.Decision(Principal(1, "backend", 5, 50), expires_at=wall[0] + 3),
                            looked_up_at=monotonic[0])
        monotonic[0] += 2.9
        assert admissions.get(scope) is not None
        monotonic[0] += 0.2
        assert admissions.get(scope) is None, "3 s left on the token: not 10 s of cache"
        admissions.remember(scope, auth.Decision(Principal(1, "backend", 5, 50), expires_at=wall[0] - 1),
                            looked_up_at=monotonic[0])
        assert admissions.get(scope) is None, "an admission of an already expired credential is not kept"

    async def test_a_revoked_key_stops_connecting_within_the_cache_time_of_the_lookup(self):
        """The cache time counts from the lookup's start: a slow lookup (here 5 s on a
        fake clock) that read the key just before it was revoked cannot stretch it."""
        raw = await database_sync_to_async(new_key)()
        now = [0.0]

        def slow_lookup(scope):
            decision = auth.authorize_handshake(scope)
            ApiKey.objects.filter(prefix=raw[:12]).update(revoked_at=timezone.now())  # revoked meanwhile
            now[0] += 5
            return decision

        middleware = HandshakeMiddleware(RecordingApp(), authorize=slow_lookup,
                                         admissions=RecentAdmissions(10, clock=lambda: now[0]))
        headers = [(b"authorization", f"Bearer {raw}".encode())]
        assert (await connect(middleware, headers))[0]
        now[0] = 10.5  # AUTH_CACHE_SECONDS after the lookup began, revoked since
        connected, _ = await connect(HandshakeMiddleware(RecordingApp(), admissions=middleware.admissions),
                                     headers)
        assert not connected


class TestHostNames:
    """Issue 23 #12: DNS rebinding. A page of rebind.attacker.example whose name now
    resolves to 127.0.0.1 is same-origin with its own Host: only DJANGO_ALLOWED_HOSTS
    (by default the loopback names and what bin/serve prints, never "*") tells the two apart."""

    REBOUND = [(b"host", b"rebind.attacker.example:8000"), (b"origin", b"http://rebind.attacker.example:8000")]

    async def test_an_open_server_refuses_a_handshake_for_a_host_it_does_not_serve(self, settings, caplog):
        settings.AUTH_REQUIRED = False
        inner = RecordingApp()
        with caplog.at_level(logging.WARNING, logger="stt.handshake"):
            connected, _ = await connect(HandshakeMiddleware(inner), self.REBOUND)
        assert not connected and inner.scopes == []
        assert "DJANGO_ALLOWED_HOSTS" in caplog.text

    async def test_its_own_names_are_served_same_origin_and_a_backend_without_origin_too(self, settings):
        settings.AUTH_REQUIRED = False
        for host in (b"127.0.0.1:8000", b"localhost:8000", b"[::1]:8000"):
            origin = b"http://" + host
            assert (await connect(HandshakeMiddleware(RecordingApp()), [(b"host", host), (b"origin", origin)]))[0]
        assert (await connect(HandshakeMiddleware(RecordingApp()), [(b"host", b"localhost")]))[0]

    def test_the_default_is_the_loopback_names_and_the_address_bin_serve_prints(self):
        import os
        import subprocess
        import sys

        env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_ALLOWED_HOSTS", "WEBSOCKET_HOST")}
        probe = ("import django; django.setup(); from django.conf import settings; "
                 "print(','.join(settings.ALLOWED_HOSTS))")

        def hosts(**extra: str) -> list[str]:
            result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                                    env={**env, "DJANGO_SETTINGS_MODULE": "fasttalk.settings", **extra})
            return result.stdout.strip().splitlines()[-1].split(",")

        assert hosts() == ["localhost", "127.0.0.1", "[::1]", "0.0.0.0"]
        assert hosts(WEBSOCKET_HOST="10.0.0.5") == ["localhost", "127.0.0.1", "[::1]", "10.0.0.5"]
        assert hosts(DJANGO_ALLOWED_HOSTS="stt.example.com, .example.org") == ["stt.example.com", ".example.org"]

    def test_the_startup_line_says_when_any_host_is_served(self):
        from stt.management.commands.serve import startup_line

        line = startup_line("0.0.0.0", 8000, ["*"])
        assert line.startswith("Fasttalk STT on http://0.0.0.0:8000/") and "DJANGO_ALLOWED_HOSTS=*" in line
        served = startup_line("0.0.0.0", 8000, ["localhost", "127.0.0.1", "[::1]", "0.0.0.0"])
        assert "DJANGO_ALLOWED_HOSTS=*" not in served and "localhost, 127.0.0.1, [::1], 0.0.0.0" in served
