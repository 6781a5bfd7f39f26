"""HTTP endpoints of the streaming app: minting browser tokens, and the browser demo."""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from stt.auth import api_key_of_request, generate_key, mint_token, origin_allowed
from stt.messages import SUBPROTOCOL, token_subprotocols


def _mint(authorization: str) -> JsonResponse:
    # Only an API key mints tokens: a token cannot extend its own life.
    key = api_key_of_request(authorization)
    if key is None:
        return JsonResponse({"error": {"code": "unauthorized", "message": "send an active API key as "
                                       "Authorization: Bearer ftk_..."}}, status=401)
    token, expires_at = mint_token(key)
    return JsonResponse({"token": token, "expires_at": expires_at.isoformat(),
                         "subprotocols": token_subprotocols(token)})


@csrf_exempt  # an API for backends, authenticated by its key, not a browser form
@require_POST
async def issue_token(request: HttpRequest) -> JsonResponse:
    """POST /auth/token with a backend's API key: a short-lived token for a browser."""
    return await sync_to_async(_mint)(request.headers.get("Authorization", ""))


# --- The browser demo (/demo/) ---------------------------------------------------------
#
# A page that streams the microphone to /ws/transcribe. With AUTH_REQUIRED only staff
# may open it, and its script asks POST /demo/token for a short-lived token minted from
# a key of the demo's own ("Demo page"), created on first use and never shown to anyone:
# no API key ever reaches the page. Revoking that key in the admin turns the demo off
# (delete it to have a fresh one made).

DEMO_KEY_NAME = "Demo page"

def _demo_allowed(request: HttpRequest) -> bool:
    return not settings.AUTH_REQUIRED or (request.user.is_active and request.user.is_staff)


def _demo_key() -> Any:
    """The demo's API key (created on first use; its raw key is thrown away), or None
    when an admin revoked it."""
    from stt.models import ApiKey

    key = ApiKey.objects.filter(name=DEMO_KEY_NAME).order_by("-created_at").first()
    if key is None:
        _raw, prefix, digest = generate_key()
        key = ApiKey.objects.create(name=DEMO_KEY_NAME, prefix=prefix, key_hash=digest)
    return key if key.active else None


def _page_origin(request: HttpRequest) -> str:
    return f"{request.scheme}://{request.get_host()}"


def demo(request: HttpRequest) -> HttpResponse:
    """GET /demo/: live transcription of the microphone in the browser."""
    if not _demo_allowed(request):
        return redirect_to_login(request.get_full_path(), reverse("admin:login"))
    origin = _page_origin(request)
    response = render(request, "stt/demo.html", {
        "auth_required": settings.AUTH_REQUIRED,
        "origin": origin,
        "origin_allowed": origin_allowed(origin, request.get_host()),
    })
    ws_origin = ("wss://" if request.is_secure() else "ws://") + request.get_host()
    # Everything the page loads comes from this service; nothing else may run or be fetched.
    response["Content-Security-Policy"] = (
        f"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self' {ws_origin}; "
        "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    response["Permissions-Policy"] = "microphone=(self)"
    response["Cache-Control"] = "no-store"
    return response


@require_POST
def demo_token(request: HttpRequest) -> JsonResponse:
    """POST /demo/token (same origin, CSRF-checked): the subprotocols the demo page offers."""
    if not settings.AUTH_REQUIRED:
        return JsonResponse({"subprotocols": [SUBPROTOCOL], "expires_at": None})
    if not _demo_allowed(request):
        return JsonResponse({"error": {"code": "unauthorized", "message": "sign in as a staff user"}}, status=403)
    key = _demo_key()
    if key is None:
        return JsonResponse({"error": {"code": "demo_disabled", "message": f"the API key {DEMO_KEY_NAME!r} is "
                                       "revoked; delete it in the admin to re-enable the demo"}}, status=403)
    token, expires_at = mint_token(key)
    response = JsonResponse({"subprotocols": token_subprotocols(token),
                             "expires_at": expires_at.isoformat()})
    response["Cache-Control"] = "no-store"
    return response

