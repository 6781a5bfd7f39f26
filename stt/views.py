"""HTTP endpoints of the streaming app: minting browser tokens."""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from stt.auth import KEY_PREFIX, key_for, mint_token


def _mint(authorization: str) -> JsonResponse:
    credential = authorization[7:].strip() if authorization.lower().startswith("bearer ") else ""
    # Only an API key mints tokens: a token cannot extend its own life.
    key = key_for(credential) if credential.startswith(KEY_PREFIX) else None
    if key is None:
        return JsonResponse({"error": {"code": "unauthorized", "message": "send an active API key as "
                                       "Authorization: Bearer ftk_..."}}, status=401)
    token, expires_at = mint_token(key)
    return JsonResponse({"token": token, "expires_at": expires_at.isoformat(),
                         "subprotocols": ["fasttalk", f"fasttalk.auth.{token}"]})


@csrf_exempt  # an API for backends, authenticated by its key, not a browser form
@require_POST
async def issue_token(request: HttpRequest) -> JsonResponse:
    """POST /auth/token with a backend's API key: a short-lived token for a browser."""
    return await sync_to_async(_mint)(request.headers.get("Authorization", ""))
