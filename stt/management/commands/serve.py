"""`manage.py serve`: run the service under Daphne with the configured host, port and limits."""

from __future__ import annotations

from typing import Any

import daphne.server
from daphne.cli import CommandLineInterface
from daphne.ws_protocol import WebSocketFactory
from django.conf import settings
from django.core.management.base import BaseCommand


class ClosingWebSocketFactory(WebSocketFactory):
    """Daphne's factory, but a protocol violation (an oversized message, invalid UTF-8)
    is answered with a close frame carrying its code (1009, 1007) instead of a silent
    TCP drop, so clients can tell what went wrong."""

    def setProtocolOptions(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("failByDrop", False)
        super().setProtocolOptions(*args, **kwargs)


class Command(BaseCommand):
    help = "Serve HTTP and the /ws/transcribe WebSocket with Daphne (WEBSOCKET_HOST, WEBSOCKET_PORT)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--host", default=None, help="bind address (default: WEBSOCKET_HOST)")
        parser.add_argument("--port", type=int, default=None, help="port (default: WEBSOCKET_PORT)")

    def handle(self, *args: Any, **options: Any) -> None:
        host = options["host"] or settings.WEBSOCKET_HOST
        port = options["port"] or settings.WEBSOCKET_PORT
        daphne.server.WebSocketFactory = ClosingWebSocketFactory
        self.stdout.write(f"Fasttalk STT on http://{host}:{port}/  (WebSocket: /ws/transcribe)")
        CommandLineInterface().run([
            "--bind", host,
            "--port", str(port),
            "--websocket-max-message-size", str(settings.WEBSOCKET_MAX_MESSAGE_BYTES),
            "--websocket-max-frame-size", str(settings.WEBSOCKET_MAX_MESSAGE_BYTES),
            # Give sessions time to transcribe a departing client's last words.
            "--application-close-timeout", "30",
            settings.ASGI_APPLICATION.replace(".application", ":application"),
        ])
