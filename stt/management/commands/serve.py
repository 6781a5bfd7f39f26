"""`manage.py serve`: run the service under Daphne with the configured host, port and limits."""

from __future__ import annotations

import atexit
import logging
import os
import socket
import sys
from typing import Any, Callable, NoReturn

import daphne.cli
import daphne.server  # noqa: F401  (first: it installs the asyncio reactor Daphne runs on)
from daphne.cli import CommandLineInterface
from django.conf import settings
from django.core.management.base import BaseCommand

from stt import daphne_protocol
from monitoring import metrics
from monitoring.logs import AccessLog


logger = logging.getLogger(__name__)


def port_in_use_line(host: str, port: int) -> str:
    return f"error: cannot serve on {host}:{port}: the port is already in use"


def listen_error_handler(on_service_port_taken: Callable[[int | None], None]) -> Callable[[Any, Any], None]:
    """What Daphne does when an endpoint cannot listen. The monitoring port may have been
    bound by another process of the host a moment ago (the check below and the bind are
    not one step): this process serves on without it. The service port: one line, and
    the server stops (exit code 1)."""

    def handle(server: Any, failure: Any) -> None:
        port = getattr(failure.value, "port", None)
        if settings.MONITORING_PORT and port == settings.MONITORING_PORT:
            logger.warning("monitoring port %s is taken; not serving it here", port)
            return
        on_service_port_taken(port)
        server.stop()

    return handle


def exit_process(code: int) -> NoReturn:
    """End the process now that the server has stopped and drained: exit handlers run
    (metrics, engine, history journal), output is flushed, and the interpreter is left
    without finalizing. Finalizing would kill the daemon threads of the model load, the
    inference and the in-process refinement wherever they are, and one inside
    CTranslate2's or onnxruntime's C++ code aborts the whole process ("terminate called
    without an active exception", exit 134) or crashes it."""
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def startup_line(host: str, port: int, allowed_hosts: list[str]) -> str:
    """The first line `serve` prints: where it listens, and the Host names it answers
    for (DJANGO_ALLOWED_HOSTS), loudly when that is any name."""
    if "*" in allowed_hosts:
        names = "any Host name (DJANGO_ALLOWED_HOSTS=*: open to DNS rebinding; list the names in production)"
    else:
        names = f"Host names {', '.join(allowed_hosts)} (others: set DJANGO_ALLOWED_HOSTS)"
    return (f"Fasttalk STT on http://{host}:{port}/  (WebSocket: /ws/transcribe; "
            f"OpenAI realtime: /v1/realtime?intent=transcription); {names}")


def ready_banner(host: str, port: int, auth_required: bool) -> str:
    """What to try once the model is loaded: the demo page and one CLI command."""
    from stt.client.session import DEFAULT_URL

    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    ws_url = f"ws://{shown}:{port}/ws/transcribe"
    url = "" if ws_url == DEFAULT_URL else f" --url {ws_url}"
    key = " --api-key YOUR_KEY" if auth_required else ""
    return (
        "Ready. Try it:\n"
        f"  in a browser:   http://{shown}:{port}/demo/\n"
        f"  from a shell:   .venv/bin/python -m stt.client stream{url}{key} samples/jfk.flac"
    )


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


class Command(BaseCommand):
    help = ("Serve HTTP and the /ws/transcribe and /v1/realtime WebSockets with Daphne "
            "(WEBSOCKET_HOST, WEBSOCKET_PORT).")

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--host", default=None, help="bind address (default: WEBSOCKET_HOST)")
        parser.add_argument("--port", type=int, default=None, help="port (default: WEBSOCKET_PORT)")
        parser.add_argument("--monitoring-port", type=int, default=None,
                            help="/health and /metrics listener (default: MONITORING_PORT; 0: none)")

    def handle(self, *args: Any, **options: Any) -> None:
        host = options["host"] or settings.WEBSOCKET_HOST
        port = options["port"] or settings.WEBSOCKET_PORT
        if not port_is_free(host, port):
            self.stderr.write(port_in_use_line(host, port))
            sys.exit(1)  # nothing started yet: an ordinary exit
        failed: list[int] = []

        def service_port_taken(taken: int | None) -> None:
            failed.append(1)
            self.stderr.write(port_in_use_line(host, taken or port))

        daphne_protocol.install(listen_error_handler(service_port_taken))
        daphne.cli.AccessLogGenerator = AccessLog  # access lines through logging, as JSON
        if options["host"] and settings.ALLOWED_HOSTS_DEFAULTED and options["host"] not in ("", "::"):
            # The default names what this command prints: the address it was told to bind too.
            bound = f"[{host}]" if ":" in host else host
            settings.ALLOWED_HOSTS = list(dict.fromkeys([*settings.ALLOWED_HOSTS, bound]))
        self.stdout.write(startup_line(host, port, settings.ALLOWED_HOSTS))
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

        from stt.liveness import Heartbeat, ProcessIdentity
        from stt.shutdown import install_sigterm_handler

        # This process's row in the history: sessions name it; a clean exit marks it
        # stopped (atexit runs after the drain), a killed process stops refreshing it.
        heartbeat = Heartbeat(ProcessIdentity.of_this_process(port), settings.SERVER_HEARTBEAT_SECONDS,
                              settings.SERVER_LOST_SECONDS)
        heartbeat.start()
        atexit.register(heartbeat.stop)

        # Installed once the reactor runs, over Twisted's own handlers (which stop at once).
        reactor.callWhenRunning(install_sigterm_handler, lambda: reactor.callFromThread(reactor.stop))
        reactor.callWhenRunning(self.announce_when_ready, host, port)
        try:
            CommandLineInterface().run(self.daphne_arguments(host, port, extra_endpoints))
        except Exception:
            logger.exception("the server failed")
            failed.append(1)
        exit_process(1 if failed else 0)

    def announce_when_ready(self, host: str, port: int) -> None:
        """Print the ready banner once the model has loaded (or at once without preload)."""
        banner = ready_banner(host, port, settings.AUTH_REQUIRED)

        def loaded(future: Any) -> None:
            if future.exception() is None:
                self.stdout.write(banner)
                self.stdout.flush()

        if settings.STT_PRELOAD_MODEL:
            from stt.engine import get_engine

            get_engine().start_loading().add_done_callback(loaded)
        else:
            self.stdout.write(banner)

    @staticmethod
    def daphne_arguments(host: str, port: int, extra_endpoints: list[str]) -> list[str]:
        return [
            *extra_endpoints,
            "--bind", host,
            "--port", str(port),
            "--ping-interval", str(settings.WEBSOCKET_PING_INTERVAL),
            "--ping-timeout", str(settings.WEBSOCKET_PING_TIMEOUT),
            "--websocket-max-message-size", str(settings.WEBSOCKET_MAX_MESSAGE_BYTES),
            "--websocket-max-frame-size", str(settings.WEBSOCKET_MAX_MESSAGE_BYTES),
            # Give sessions time to transcribe a departing client's last words.
            "--application-close-timeout", "30",
            *(["--proxy-headers"] if settings.WEBSOCKET_PROXY_HEADERS else []),
            settings.ASGI_APPLICATION.replace(".application", ":application"),
        ]
