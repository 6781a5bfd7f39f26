"""The WebSocket handshake's checks as ASGI middleware around the router (as Channels'
OriginValidator and AuthMiddlewareStack are): Origin and credentials are decided here,
before any consumer exists, and the consumer only speaks the protocol.

An admitted connection's scope carries `principal` (stt.auth.Principal: whom it acts
for) and `subprotocol` (the one to answer with, or None). A refused one is closed before
it is accepted, which Daphne answers with HTTP 403; the log says why ("auth_refused"),
never with the credential.

The key lookup (and its last-used UPDATE) runs in a worker thread of its own rather
than on Django's single thread-sensitive thread, so handshakes never queue behind one
another or behind other sync work there; and an admission is remembered for
AUTH_CACHE_SECONDS, so a backend that reconnects (or opens many sessions) does not
query the database each time. Revoking a key therefore stops new connections within
AUTH_CACHE_SECONDS; an expired token is refused from its expiry on, whatever the cache.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any, Awaitable, Callable

from stt.auth import Decision, authorize_handshake, credential_from_scope, look_up_off_loop

logger = logging.getLogger(__name__)

Authorize = Callable[[dict], Decision]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


def _authorize_or_refuse(authorize: Authorize, scope: dict) -> Decision:
    try:
        return authorize(scope)
    except Exception as exc:  # the key store is unreachable: refuse rather than let anyone in
        return Decision(None, f"authentication unavailable ({type(exc).__name__})")


class RecentAdmissions:
    """Handshakes admitted with a credential, remembered for `ttl_seconds` from the start
    of their lookup and never past the credential's own expiry (a token's), by everything
    the decision depended on (the credential's digest, Origin, Host, the subprotocols
    offered). Refusals are never remembered. Used on the event loop only.

    Counting from the lookup's start keeps the documented bound: a key revoked at R is
    refused by every process from R + ttl on, however slow the lookup that read it."""

    MAX_ENTRIES = 10000

    def __init__(self, ttl_seconds: float, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.ttl_seconds = ttl_seconds
        self.clock = clock
        self.wall_clock = wall_clock  # what a credential's expiry (Unix time) is measured on
        self._entries: dict[tuple, tuple[float, Decision]] = {}  # key -> (deadline on `clock`, decision)

    @staticmethod
    def _key(scope: dict) -> tuple | None:
        credential = credential_from_scope(scope)
        if credential is None:
            return None
        headers = {name.lower(): value for name, value in scope.get("headers", []) if name.lower() in
                   (b"origin", b"host")}
        return (hashlib.sha256(credential.encode()).digest(), headers.get(b"origin"), headers.get(b"host"),
                tuple(scope.get("subprotocols") or ()))

    def get(self, scope: dict) -> Decision | None:
        key = self._key(scope)
        entry = self._entries.get(key) if key is not None else None
        if entry is None or self.clock() >= entry[0]:
            return None
        return entry[1]

    def remember(self, scope: dict, decision: Decision, looked_up_at: float | None = None) -> None:
        """Remember an admission whose lookup began at `looked_up_at` (on `clock`; now
        if not given)."""
        key = self._key(scope)
        # Only keys are remembered: an anonymous admission (an OpenAI placeholder key on
        # an open service) depends on the path and on AUTH_REQUIRED, not on the credential.
        if key is None or decision.principal is None or decision.principal.key_id is None \
                or self.ttl_seconds <= 0:
            return
        now = self.clock()
        deadline = (now if looked_up_at is None else looked_up_at) + self.ttl_seconds
        if decision.expires_at is not None:
            deadline = min(deadline, now + decision.expires_at - self.wall_clock())
        if deadline <= now:
            return
        if len(self._entries) >= self.MAX_ENTRIES:
            self._entries.clear()  # a crude bound; entries are cheap to make again
        self._entries[key] = (deadline, decision)


def client_address(scope: dict) -> str | None:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else None


class HandshakeMiddleware:
    """Admits a WebSocket connection (scope["principal"], scope["subprotocol"]) or
    refuses its handshake; other scopes pass through untouched."""

    def __init__(self, application: Any, authorize: Authorize = authorize_handshake,
                 admissions: RecentAdmissions | None = None) -> None:
        from django.conf import settings

        self.application = application
        self.authorize = authorize
        self.admissions = admissions or RecentAdmissions(settings.AUTH_CACHE_SECONDS)

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        if scope.get("type") != "websocket":
            await self.application(scope, receive, send)
            return
        decision = await self._decide(scope)
        if decision.principal is None:
            address = client_address(scope)
            logger.warning("WebSocket refused: %s", decision.reason,
                           extra={"event": "auth_refused", "client": address, "reason": decision.reason})
            await receive()  # websocket.connect
            # Closing before accepting refuses the handshake (HTTP 403).
            await send({"type": "websocket.close", "code": 1008})
            return
        admitted = {**scope, "principal": decision.principal, "subprotocol": decision.subprotocol}
        await self.application(admitted, receive, send)

    async def _decide(self, scope: dict) -> Decision:
        if credential_from_scope(scope) is None:
            # Nothing to look up (open mode, or a refusal): decided here, without a
            # thread hop, which a burst of connections would otherwise queue for.
            return _authorize_or_refuse(self.authorize, scope)
        decision = self.admissions.get(scope)
        if decision is None:
            looked_up_at = self.admissions.clock()
            # On the key-lookup threads: never behind uploads' work, nor Django's one
            # thread-sensitive thread (admin pages wait there).
            decision = await look_up_off_loop(_authorize_or_refuse, self.authorize, scope)
            self.admissions.remember(scope, decision, looked_up_at)
        return decision
