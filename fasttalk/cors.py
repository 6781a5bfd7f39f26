"""CORS for the service's public HTTP endpoints (/, /health, /stats, /auth/token), so a
browser page on an allowed origin (ALLOWED_ORIGINS) can read them; never for the admin."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.utils.deprecation import MiddlewareMixin

CORS_PATHS = frozenset({"/", "/health", "/stats", "/auth/token"})


def _allowed_origin(request: HttpRequest) -> str | None:
    from stt.auth import origin_allowed

    origin = request.headers.get("Origin")
    if not origin or request.path not in CORS_PATHS or not origin_allowed(origin):
        return None
    return origin


def _decorate(response: HttpResponse, origin: str) -> HttpResponse:
    response["Access-Control-Allow-Origin"] = origin
    response["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
    response["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
    response["Access-Control-Max-Age"] = "600"
    response["Vary"] = "Origin"
    return response


class CorsMiddleware(MiddlewareMixin):
    """Answers preflights (OPTIONS) itself and marks responses readable by the origin;
    MiddlewareMixin makes it work in sync and async stacks alike."""

    def process_request(self, request: HttpRequest) -> HttpResponse | None:
        if request.method == "OPTIONS" and _allowed_origin(request):
            return HttpResponse(status=204)  # decorated by process_response
        return None

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        origin = _allowed_origin(request)
        return _decorate(response, origin) if origin else response
