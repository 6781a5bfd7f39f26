"""`manage.py serve`: run the service under Daphne with the configured host, port and limits."""

from __future__ import annotations

import atexit
import logging
import os
import socket
from typing import Any

import daphne.cli
import daphne.server
from daphne.cli import CommandLineInterface
from django.conf import settings
from django.core.management.base import BaseCommand

from fasttalk import daphne_protocol
from monitoring import metrics
from monitoring.logs import AccessLog


logger = logging.getLogger(__name__)


def tolerate_monitoring_port_taken(listen_error: Any) -> Any:
    """Daphne stops the server when an endpoint cannot listen. For the monitoring
    port that is wrong: another process of the host may have bound it a moment ago
    (the check below and the bind are not one step); this process serves on."""

    def handle(server: Any, failure: Any) -> Any:
        port = getattr(failure.value, "port", None)
        if settings.MONITORING_PORT and port == settings.MONITORING_PORT:
            logger.warning("monitoring port %s is taken; not serving it here", port)
            return None
        return listen_error(server, failure)

    return handle


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


class Command(BaseCommand):
    help = "Serve HTTP and the /ws/transcribe WebSocket with Daphne (WEBSOCKET_HOST, WEBSOCKET_PORT)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--host", default=None, help="bind address (default: WEBSOCKET_HOST)")
        parser.add_argument("--port", type=int, default=None, help="port (default: WEBSOCKET_PORT)")
        parser.add_argument("--monitoring-port", type=int, default=None,
                            help="/health and /metrics listener (default: MONITORING_PORT; 0: none)")

    def handle(self, *args: Any, **options: Any) -> None:
        host = options["host"] or settings.WEBSOCKET_HOST
        port = options["port"] or settings.WEBSOCKET_PORT
        daphne_protocol.install(tolerate_monitoring_port_taken(daphne.server.Server.listen_error))
        daphne.cli.AccessLogGenerator = AccessLog  # access lines through logging, as JSON
        self.stdout.write(f"Fasttalk STT on http://{host}:{port}/  (WebSocket: /ws/transcribe)")
        extra_endpoints = []
        monitoring_port = options["monitoring_port"] if options["monitoring_port"] is not None \
            else settings.MONITORING_PORT
        settings.MONITORING_PORT = monitoring_port  # the middleware routes requests by it
        # Multi-process metrics: this process's live gauges leave the sums when it exits.
        atexit.register(metrics.process_exited, os.getpid())
        if monitoring_port:
            if port_is_free(host, monitoring_port):
                extra_endpoints = ["-e", f"tcp:port={monitoring_port}:interface={host}"]
                self.stdout.write(f"Monitoring on http://{host}:{monitoring_port}/health and /metrics")
            else:
                # Another server process of this host serves it (and, with
                # PROMETHEUS_MULTIPROC_DIR, the metrics of this process too).
                self.stdout.write(f"Monitoring port {monitoring_port} is taken; not serving it here")
        from twisted.internet import reactor

        from stt.shutdown import install_sigterm_handler

        # Installed once the reactor runs, over Twisted's own handlers (which stop at once).
        reactor.callWhenRunning(install_sigterm_handler, lambda: reactor.callFromThread(reactor.stop))
        CommandLineInterface().run([
            *extra_endpoints,
            "--bind", host,
            "--port", str(port),
            "--ping-interval", str(settings.WEBSOCKET_PING_INTERVAL),
            "--ping-timeout", str(settings.WEBSOCKET_PING_TIMEOUT),
            "--websocket-max-message-size", str(settings.WEBSOCKET_MAX_MESSAGE_BYTES),
            "--websocket-max-frame-size", str(settings.WEBSOCKET_MAX_MESSAGE_BYTES),
            # Give sessions time to transcribe a departing client's last words.
            "--application-close-timeout", "30",
            settings.ASGI_APPLICATION.replace(".application", ":application"),
        ])
