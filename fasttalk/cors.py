"""CORS for the service's public HTTP endpoints (/, /health, /stats, /auth/token), so a
browser page on an allowed origin (ALLOWED_ORIGINS) can read them; never for the admin."""

from __future__ import annotations

from typing import Any, Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse

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


class CorsMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self._acall(request)
        origin = _allowed_origin(request)
        if origin and request.method == "OPTIONS":
            return _decorate(HttpResponse(status=204), origin)
        response = self.get_response(request)
        return _decorate(response, origin) if origin else response

    async def _acall(self, request: HttpRequest) -> Any:
        origin = _allowed_origin(request)
        if origin and request.method == "OPTIONS":
            return _decorate(HttpResponse(status=204), origin)
        response = await self.get_response(request)
        return _decorate(response, origin) if origin else response
