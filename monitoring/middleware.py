"""Requests that arrive on the monitoring port (MONITORING_PORT) see only the
monitoring endpoints (/health, /metrics): the port can be exposed to a scraper or an
orchestrator without exposing the service or its admin."""

from __future__ import annotations

from typing import Any, Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest


def _on_monitoring_port(request: HttpRequest) -> bool:
    port = settings.MONITORING_PORT
    return bool(port) and str(request.META.get("SERVER_PORT")) == str(port)


class MonitoringPortMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if _on_monitoring_port(request):
            request.urlconf = "monitoring.port_urls"
        return self.get_response(request)
