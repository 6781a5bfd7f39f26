"""Who may open a session: API keys and the short-lived tokens minted from them.

- An API key (`ftk_…`) is created in the admin, shown once, and stored as a sha256
  hash (the key is 256 random bits, so a fast hash is enough). A backend sends it as
  `Authorization: Bearer ftk_…`.
- A browser cannot set headers on a WebSocket: the backend mints a token for it
  (POST /auth/token with its key), valid AUTH_TOKEN_TTL_SECONDS, and the browser offers
  the subprotocols `fasttalk` and `fasttalk.auth.<token>`; the server answers with
  `fasttalk`. Tokens are HMAC-signed with SECRET_KEY and die with their key. OpenAI's
  browser form is taken too (subprotocols `realtime` and
  `openai-insecure-api-key.<key or token>`; answered with `realtime`), for
  /v1/realtime clients.
- AUTH_REQUIRED=false runs the service open (development); Host and Origin are checked
  in any case: Host one of DJANGO_ALLOWED_HOSTS (as Django checks every HTTP request's),
  Origin the service's own origin, or one in ALLOWED_ORIGINS.
- With AUTH_REQUIRED, /stats (the live session list) is for API keys and staff users.

Credentials are never logged.
"""

from __future__ import annotations

import functools
import hashlib
import json
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, TypeVar
from urllib.parse import urlsplit

from django.conf import settings
from django.core import signing
from django.db import close_old_connections
from django.http.request import split_domain_port, validate_host

from stt.messages import AUTH_SUBPROTOCOL_PREFIX, SUBPROTOCOL

KEY_PREFIX = "ftk_"
_TOKEN_SALT = "fasttalk.auth.token"


@dataclass(frozen=True)
class Principal:
    """Who a connection acts for: an API key (possibly through a token), or nobody
    in open mode."""

    key_id: int | None
    name: str
    max_concurrent_sessions: int
    max_messages_per_second: int

    @classmethod
    def anonymous(cls) -> "Principal":
        return cls(None, "anonymous", settings.AUTH_MAX_SESSIONS_PER_KEY, settings.AUTH_MAX_MESSAGES_PER_SECOND)


@dataclass(frozen=True)
class Decision:
    principal: Principal | None
    reason: str = ""  # why not, for the log (never the credential)
    subprotocol: str | None = None
    # When the credential stops opening connections (Unix time): a token's expiry; None
    # for an API key, valid until revoked. Bounds how long an admission may be remembered.
    expires_at: float | None = None


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def generate_key() -> tuple[str, str, str]:
    """A new key: (the key itself, its display prefix, its hash)."""
    raw = KEY_PREFIX + secrets.token_urlsafe(32)
    return raw, raw[:12], hash_key(raw)


def _signer() -> signing.TimestampSigner:
    # "." separates the parts: every character of a token is valid in a subprotocol name.
    return signing.TimestampSigner(salt=_TOKEN_SALT, sep=".")


def _token_expiry(token: str) -> float:
    """When a well-formed token expires (Unix time): its signing time, which the signer
    keeps in whole seconds, plus AUTH_TOKEN_TTL_SECONDS; what `key_for` judges it by."""
    issued = signing.b62_decode(token.rsplit(".", 2)[-2])
    return float(issued + settings.AUTH_TOKEN_TTL_SECONDS)


def mint_token(key: Any) -> tuple[str, datetime]:
    """A token for a browser, acting for `key` until it expires."""
    payload = signing.b64_encode(json.dumps({"k": key.pk}).encode()).decode()
    token = _signer().sign(payload)
    return token, datetime.fromtimestamp(_token_expiry(token), timezone.utc)


def _principal(key: Any) -> Principal:
    return Principal(
        key.pk, key.name,
        key.max_concurrent_sessions or settings.AUTH_MAX_SESSIONS_PER_KEY,
        key.max_messages_per_second or settings.AUTH_MAX_MESSAGES_PER_SECOND,
    )


def key_for(credential: str) -> Any:
    """The active ApiKey a credential (key or token) stands for, or None."""
    return key_and_expiry(credential)[0]


def key_and_expiry(credential: str) -> tuple[Any, float | None]:
    """The active ApiKey a credential stands for (or None), and when the credential
    expires (Unix time; None for a key, which lives until revoked)."""
    from stt.models import ApiKey

    if credential.startswith(KEY_PREFIX):
        return ApiKey.objects.filter(key_hash=hash_key(credential), revoked_at__isnull=True).first(), None
    try:
        payload = _signer().unsign(credential, max_age=settings.AUTH_TOKEN_TTL_SECONDS)
        key_id = json.loads(signing.b64_decode(payload.encode()))["k"]
        expires_at = _token_expiry(credential)
    except (signing.BadSignature, ValueError, KeyError, TypeError):
        return None, None
    return ApiKey.objects.filter(pk=key_id, revoked_at__isnull=True).first(), expires_at


def _headers(scope: dict) -> dict[str, str]:
    return {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope.get("headers", [])}


# How OpenAI's browser clients carry a credential on /v1/realtime (subprotocols
# "realtime", "openai-insecure-api-key.<key>"); the server answers with "realtime".
OPENAI_KEY_SUBPROTOCOL_PREFIX = "openai-insecure-api-key."
OPENAI_SUBPROTOCOL = "realtime"


def credential_from_scope(scope: dict) -> str | None:
    """The credential a WebSocket handshake carries: a Bearer Authorization header, or a
    `fasttalk.auth.<credential>` (or OpenAI's `openai-insecure-api-key.<credential>`)
    subprotocol."""
    authorization = _headers(scope).get("authorization", "")
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip() or None
    for protocol in scope.get("subprotocols") or ():
        for prefix in (AUTH_SUBPROTOCOL_PREFIX, OPENAI_KEY_SUBPROTOCOL_PREFIX):
            if protocol.startswith(prefix):
                return protocol[len(prefix):] or None
    return None


def answered_subprotocol(offered: list[str]) -> str | None:
    """The subprotocol the server answers with: `fasttalk`, or `realtime` (OpenAI's
    clients), when the client offered it."""
    for name in (SUBPROTOCOL, OPENAI_SUBPROTOCOL):
        if name in offered:
            return name
    return None


def origin_allowed(origin: str | None, host: str | None = None) -> bool:
    """Browsers send Origin; other clients usually do not (and are then let through to
    authentication). Allowed: the request's own origin (its Host), and ALLOWED_ORIGINS:
    exact origins, or "*"."""
    if not origin:
        return True
    allowed = settings.ALLOWED_ORIGINS
    if "*" in allowed:
        return True
    parts = urlsplit(origin)
    if host and parts.netloc.lower() == host.strip().lower():
        return True  # same origin
    normalized = f"{parts.scheme}://{parts.netloc}".lower()
    return normalized in {o.rstrip("/").lower() for o in allowed}


def host_served(host: str | None) -> bool:
    """Whether a handshake's Host is one of DJANGO_ALLOWED_HOSTS, as Django requires of
    every HTTP request: the same-origin rule trusts Host, and DNS rebinding hands a
    foreign page this service's address under its own name. No Host header (ASGI test
    clients; HTTP/1.1 clients always send one) is not checked."""
    if host is None:
        return True
    domain, _port = split_domain_port(host.strip())
    return bool(domain) and validate_host(domain, settings.ALLOWED_HOSTS)


def authorize_handshake(scope: dict) -> Decision:
    """Whether a WebSocket handshake may be accepted, and as whom (sync: touches the DB)."""
    headers = _headers(scope)
    if not host_served(headers.get("host")):
        return Decision(None, f"host {headers.get('host')!r} is not in DJANGO_ALLOWED_HOSTS")
    if not origin_allowed(headers.get("origin"), headers.get("host")):
        return Decision(None, f"origin {headers.get('origin')!r} is not in ALLOWED_ORIGINS")
    subprotocol = answered_subprotocol(list(scope.get("subprotocols") or []))
    credential = credential_from_scope(scope)
    if credential is None:
        if settings.AUTH_REQUIRED:
            return Decision(None, "no credential")
        return Decision(Principal.anonymous(), subprotocol=subprotocol)
    key, expires_at = key_and_expiry(credential)
    if key is None:
        if is_openai_placeholder(credential, scope.get("path", "")):
            return Decision(Principal.anonymous(), subprotocol=subprotocol)
        return Decision(None, "invalid, expired or revoked credential")
    note_key_used(key)
    return Decision(_principal(key), subprotocol=subprotocol, expires_at=expires_at)


def is_openai_placeholder(credential: str, path: str) -> bool:
    """Whether a credential sent to the OpenAI-compatible endpoints (/v1/...) of an open
    service (AUTH_REQUIRED=false) stands for nobody: OpenAI's clients always send an
    api_key, so "none" or "sk-..." there is no credential. One of our keys (ftk_...) is
    still checked, and refused when unknown."""
    return not settings.AUTH_REQUIRED and path.startswith("/v1/") and not credential.startswith(KEY_PREFIX)


# last_used_at is for people (is this key still in use?): a minute's precision is plenty,
# and writing it on every handshake would put a database write into each one.
LAST_USED_PRECISION = timedelta(seconds=60)


def note_key_used(key: Any) -> None:
    """Sets the key's last_used_at, unless it was set within LAST_USED_PRECISION."""
    from django.db.models import Q

    from stt.models import ApiKey

    now = datetime.now(timezone.utc)
    if key.last_used_at is not None and now - key.last_used_at < LAST_USED_PRECISION:
        return
    ApiKey.objects.filter(Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - LAST_USED_PRECISION),
                          pk=key.pk).update(last_used_at=now)


class RateLimiter:
    """Token buckets per principal (per process): `rate` messages per second with a
    burst of one second's worth."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[Any, tuple[float, float]] = {}

    def allow(self, principal: Principal, connection_id: str, now: float | None = None) -> bool:
        """One message of this principal's (a key's, over all its connections; without a
        key, the connection's own)."""
        now = time.monotonic() if now is None else now
        rate = float(principal.max_messages_per_second)
        key = principal.key_id if principal.key_id is not None else connection_id
        with self._lock:
            tokens, last = self._buckets.get(key, (rate, now))
            tokens = min(rate, tokens + (now - last) * rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                return False
            self._buckets[key] = (tokens - 1.0, now)
            return True

    def forget(self, connection_id: str) -> None:
        with self._lock:
            self._buckets.pop(connection_id, None)


rate_limiter = RateLimiter()


def api_key_of_request(authorization: str) -> Any:
    """The active ApiKey an `Authorization: Bearer ftk_…` header names, or None (a
    browser token is not an API key). Sync: touches the DB."""
    credential = authorization[7:].strip() if authorization.lower().startswith("bearer ") else ""
    return key_for(credential) if credential.startswith(KEY_PREFIX) else None


T = TypeVar("T")


def on_checked_connection(function: Callable[..., T], *args: Any) -> T:
    """`function(*args)` in a pool thread (not Django's one thread-sensitive thread, where
    admin pages run): the thread's database connection is checked before use and closed
    once too old (CONN_MAX_AGE), as Django does around a request."""
    close_old_connections()
    try:
        return function(*args)
    finally:
        close_old_connections()


KEY_LOOKUP_THREADS = 4


@functools.cache
def key_lookup_pool() -> ThreadPoolExecutor:
    """Threads for API-key lookups of their own: a lookup never queues behind other
    blocking work of the process (uploads' decoding above all, issue 23)."""
    return ThreadPoolExecutor(KEY_LOOKUP_THREADS, thread_name_prefix="stt-key-lookup")


async def look_up_off_loop(function: Callable[..., T], *args: Any) -> T:
    """`function(*args)` on a checked connection (on_checked_connection), on a key-lookup
    thread: for the asynchronous callers that authenticate a request."""
    from asgiref.sync import sync_to_async

    return await sync_to_async(on_checked_connection, thread_sensitive=False,
                               executor=key_lookup_pool())(function, *args)
