"""Requests that arrive on the monitoring port (MONITORING_PORT) see only the
monitoring endpoints (/health, /metrics): the port can be exposed to a scraper or an
orchestrator without exposing the service or its admin."""

from __future__ import annotations

from typing import Any, Callable

from django.conf import settings
from django.http import HttpRequest
from django.utils.deprecation import MiddlewareMixin


def is_monitoring_port(port: Any) -> bool:
    """Whether a listening port (of an HTTP request or a WebSocket scope) is MONITORING_PORT."""
    monitoring = settings.MONITORING_PORT
    return bool(monitoring) and str(port) == str(monitoring)


class MonitoringPortMiddleware(MiddlewareMixin):
    def process_request(self, request: HttpRequest) -> None:
        if is_monitoring_port(request.META.get("SERVER_PORT")):
            request.urlconf = settings.MONITORING_PORT_URLCONF


class RefuseOnMonitoringPort:
    """ASGI wrapper for the WebSocket route: a connection that arrives on the
    monitoring port is refused before it is accepted (HTTP 403 to the handshake)."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        server = scope.get("server") or (None, None)
        if is_monitoring_port(server[1]):
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008})
            return
        await self.application(scope, receive, send)
