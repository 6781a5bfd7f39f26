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
from daphne.ws_protocol import WebSocketFactory, WebSocketProtocol
from django.conf import settings
from django.core.management.base import BaseCommand

from monitoring import metrics
from monitoring.logs import AccessLog


logger = logging.getLogger(__name__)


# Close codes a server may send (RFC 6455 and IANA): autobahn lets applications send
# only 1000 and 3000-4999, which would turn our 1008/1011/1012/1013 into a dropped
# connection (1006) with no code at all.
SERVER_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})


def _buffered_bytes(transport: Any) -> int:
    """Bytes written to a Twisted TCP transport that the peer has not taken yet."""
    try:
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    except AttributeError:  # another kind of transport: no figure
        return 0


class ClosingWebSocketProtocol(WebSocketProtocol):
    # How often a paused connection checks whether its session caught up.
    RESUME_CHECK_SECONDS = 0.02
    _reading_paused = False
    _dropped_slow_reader = False

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        super().onMessage(payload, isBinary)
        # Daphne queues every message for the application without bound: a client that
        # sends faster than its session processes (a file pushed at full speed) would
        # grow this process's memory with its backlog. Past WEBSOCKET_MAX_INBOUND_QUEUE
        # messages, stop reading the socket until the session has taken half of them:
        # TCP then slows the sender to the server's pace, and nothing is dropped.
        limit = settings.WEBSOCKET_MAX_INBOUND_QUEUE
        queue = getattr(self, "application_queue", None)
        if limit and queue is not None and queue.qsize() >= limit and not self._reading_paused:
            self._reading_paused = True
            self.transport.pauseProducing()
            self._resume_when_drained()

    def _resume_when_drained(self) -> None:
        from twisted.internet import reactor  # here: importing it early would install the wrong reactor

        if self.application_queue.qsize() > settings.WEBSOCKET_MAX_INBOUND_QUEUE // 2 \
                and self.transport.connected:
            reactor.callLater(self.RESUME_CHECK_SECONDS, self._resume_when_drained)
            return
        self._reading_paused = False
        if self.transport.connected:
            self.transport.resumeProducing()

    def serverSend(self, content: Any, binary: bool = False) -> None:
        # A client that stops reading would make this buffer grow without end: past
        # WEBSOCKET_MAX_OUTBOUND_BYTES the connection is dropped (its session finishes
        # for the record as after any disconnect).
        limit = settings.WEBSOCKET_MAX_OUTBOUND_BYTES
        unsent = _buffered_bytes(self.transport) if limit else 0
        if unsent > limit:
            if not self._dropped_slow_reader:
                self._dropped_slow_reader = True
                logger.warning("dropping a client that stopped reading (%d bytes unsent)", unsent,
                               extra={"event": "slow_reader_dropped", "client": str(self.client_addr)})
                self.dropConnection(abort=True)
            return
        super().serverSend(content, binary)

    def handle_reply(self, message: dict[str, Any]) -> None:
        # Daphne drops the close reason the application gives; clients should see it.
        if message.get("type") == "websocket.close" and self.state != self.STATE_CONNECTING:
            self.serverClose(code=message.get("code"), reason=message.get("reason") or "")
            return
        super().handle_reply(message)

    def serverClose(self, code: int | None = None, reason: str = "") -> None:
        code = 1000 if code is None else code
        # A close frame's reason is at most 123 bytes of UTF-8.
        reason_bytes = reason.encode("utf-8")[:123].decode("utf-8", "ignore").encode("utf-8") or None
        if code in SERVER_CLOSE_CODES:
            self.sendCloseFrame(code=code, reasonUtf8=reason_bytes, isReply=False)
        else:
            self.sendClose(code=code, reason=reason_bytes.decode("utf-8") if reason_bytes else None)


class ClosingWebSocketFactory(WebSocketFactory):
    """Daphne's factory, but a protocol violation (an oversized message, invalid UTF-8)
    is answered with a close frame carrying its code (1009, 1007) instead of a silent
    TCP drop, so clients can tell what went wrong."""

    protocol = ClosingWebSocketProtocol

    def setProtocolOptions(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("failByDrop", False)
        super().setProtocolOptions(*args, **kwargs)


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
        daphne.server.WebSocketFactory = ClosingWebSocketFactory
        daphne.server.Server.listen_error = tolerate_monitoring_port_taken(daphne.server.Server.listen_error)
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
