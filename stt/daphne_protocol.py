"""Everything the service changes in Daphne (and in Channels' consumer dispatch), in one
place: what it reads of Daphne's, Channels' and Twisted's internals is listed here and checked by tests/stt/test_daphne_protocol.py
(and, for the unsent-byte figure, when the server starts), so an upgrade that changes
them fails a test instead of silently switching a safeguard off. Twisted is pinned in
requirements/base.txt for the same reason.

- Close codes: the application's close code and reason reach the client (Daphne drops
  the reason; autobahn lets applications send only 1000 and 3000-4999).
- Protocol violations (oversized message, invalid UTF-8) are answered with a close frame.
- Inbound backpressure: past WEBSOCKET_MAX_INBOUND_QUEUE waiting messages the socket is
  not read until the session caught up.
- Outbound cap: past WEBSOCKET_MAX_OUTBOUND_BYTES unsent bytes the client is dropped.
- Request bodies: one larger than MAX_UPLOAD_BYTES (declared, or counted as it comes)
  is read and dropped, never stored, and answered 413 in the file API's error shape
  without reaching the application. A chunked one within the limit reaches it with
  the Content-Length it turned out to have (Django reads no body without one).
- Dispatch without the database clean-up: Channels runs close_old_connections() on
  Django's one thread-sensitive thread before every message; every audio frame of every
  stream would queue there behind admin pages and exports.
- A lost connection is noticed at once: Daphne queues websocket.disconnect behind the
  client's other messages (Channels hands a consumer one at a time), and cancels an
  application still running application_close_timeout after its client left, so a
  session waiting on its audio budget never heard of it. The scope carries an event set
  when the connection is lost (CLIENT_GONE), a paused socket is watched for the peer
  hanging up, and a consumer's connection_lost() runs however its application ends.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import select
import socket
import time
from typing import Any, Callable

from channels.consumer import get_handler_name
from daphne.http_protocol import WebRequest
from daphne.ws_protocol import WebSocketFactory, WebSocketProtocol
from django.conf import settings

logger = logging.getLogger(__name__)

# Close codes a server may send (RFC 6455 and IANA): autobahn lets applications send
# only 1000 and 3000-4999, which would turn our 1008/1011/1012/1013 into a dropped
# connection (1006) with no code at all.
SERVER_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})

# The private fields of twisted.internet.abstract.FileDescriptor that hold what a
# transport has not written to its socket yet (Twisted has no public figure for it).
TRANSPORT_BUFFER_FIELDS = ("dataBuffer", "offset", "_tempDataLen")


# The scope key (an ASGI extension) of an asyncio.Event set the moment Daphne loses the
# WebSocket connection, so the application can act while websocket.disconnect still waits
# in its queue.
CLIENT_GONE = "fasttalk.client_gone"

# What poll() reports of a peer that reset the connection or closed its side of it.
HANGUP_EVENTS = select.POLLHUP | select.POLLERR | getattr(select, "POLLRDHUP", 0)


def peer_hung_up(transport: Any) -> bool:
    """Whether the peer of a Twisted TCP transport (looked through a wrapping one) reset
    the connection or closed its side, without reading from it: the bytes it sent before
    stay unread. False when no socket is found."""
    while transport is not None:
        handle = transport.getHandle() if hasattr(transport, "getHandle") else None
        if isinstance(handle, socket.socket):
            if handle.fileno() < 0:
                return True
            poller = select.poll()
            poller.register(handle.fileno(), HANGUP_EVENTS)
            return any(events & HANGUP_EVENTS for _, events in poller.poll(0))
        transport = getattr(transport, "transport", None)
    return False


class UnsentBytesUnknown(RuntimeError):
    """The transport does not expose the fields the outbound cap reads."""


def unsent_bytes(transport: Any) -> int:
    """Bytes written to a Twisted TCP transport that the peer has not taken yet. A
    wrapping transport (TLS) is looked through. Raises UnsentBytesUnknown rather than
    answering 0: a 0 would switch the outbound cap off without a word."""
    while transport is not None:
        if all(hasattr(transport, name) for name in TRANSPORT_BUFFER_FIELDS):
            return len(transport.dataBuffer) - transport.offset + transport._tempDataLen
        transport = getattr(transport, "transport", None)
    raise UnsentBytesUnknown(f"no {'/'.join(TRANSPORT_BUFFER_FIELDS)} on the transport "
                             "(Twisted changed? see requirements/base.txt)")


def verify_unsent_bytes_figure() -> None:
    """At start-up: write to a real Twisted server-side TCP transport (on a socket
    pair, never flushed) and check the figure counts it; raises UnsentBytesUnknown if not."""
    from twisted.internet import tcp
    from twisted.internet.protocol import Protocol

    class HeldWrites:
        """Stands in for the reactor: nothing is read, the writes stay in the buffer."""
        def addReader(self, _: Any) -> None: ...
        def removeReader(self, _: Any) -> None: ...
        def addWriter(self, _: Any) -> None: ...
        def removeWriter(self, _: Any) -> None: ...

    ours, theirs = socket.socketpair()
    try:
        transport = tcp.Server(ours, Protocol(), ("127.0.0.1", 1), None, 0, HeldWrites())
        transport.write(b"x" * 1000)
        transport.writeSequence([b"y" * 500])
        figure = unsent_bytes(transport)
    finally:
        ours.close()
        theirs.close()
    if figure != 1500:
        raise UnsentBytesUnknown(f"a transport holding 1500 unsent bytes reports {figure}")


class ClosingWebSocketProtocol(WebSocketProtocol):
    # How often a paused connection checks whether its session caught up.
    RESUME_CHECK_SECONDS = 0.02
    _reading_paused = False
    _dropped_slow_reader = False
    _figure_missing_logged = False
    client_gone: asyncio.Event | None = None

    def onConnect(self, request: Any) -> Any:
        self.client_gone = asyncio.Event()  # in the scope (CLIENT_GONE), by create_application
        return super().onConnect(request)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        super().onClose(wasClean, code, reason)  # queues websocket.disconnect
        if self.client_gone is not None:
            self.client_gone.set()

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

        if self.transport.connected and peer_hung_up(self.transport):
            # A paused socket is not read, so Twisted would see the client go only once
            # its session had worked through half the queue at its budget's pace.
            logger.info("client %s hung up while its socket was paused", self.client_addr,
                        extra={"event": "paused_client_gone"})
            self._reading_paused = False
            self.transport.abortConnection()  # connectionLost -> onClose, as for any loss
            return
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
        unsent = self._unsent() if limit else 0
        if unsent > limit:
            if not self._dropped_slow_reader:
                self._dropped_slow_reader = True
                logger.warning("dropping a client that stopped reading (%d bytes unsent)", unsent,
                               extra={"event": "slow_reader_dropped", "client": str(self.client_addr)})
                self.dropConnection(abort=True)
            return
        super().serverSend(content, binary)

    def _unsent(self) -> int:
        try:
            return unsent_bytes(self.transport)
        except UnsentBytesUnknown as exc:
            if not self._figure_missing_logged:  # once per connection, loudly
                self._figure_missing_logged = True
                logger.error("outbound cap inactive for this connection: %s", exc,
                             extra={"event": "outbound_cap_inactive"})
            return 0

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


class BoundedWebRequest(WebRequest):
    """Daphne's HTTP request, but a body over MAX_UPLOAD_BYTES is not kept: Twisted would
    store all of it (in memory up to 100 kB, then in a temporary file) before the
    application sees any. Once the declared length or the bytes received pass the limit,
    the rest is read and dropped (so the client gets to read the answer), and the
    request is answered 413 without reaching the application."""

    body_too_large = False

    def gotLength(self, length: int | None) -> None:
        self._body_limit = settings.MAX_UPLOAD_BYTES
        self._body_bytes = 0
        self._body_chunked = length is None  # Twisted's length: None for Transfer-Encoding chunked
        if length is not None and length > self._body_limit:
            self.body_too_large = True
            self.content = io.BytesIO()  # stays empty
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.body_too_large:
            return
        self._body_bytes += len(data)
        if self._body_bytes > self._body_limit:  # a chunked body without a declared length
            self.body_too_large = True
            self.content.close()
            self.content = io.BytesIO()
            return
        super().handleContentChunk(data)

    def process(self) -> Any:
        if not self.body_too_large:
            if getattr(self, "_body_chunked", False):
                # The whole body is here now: say its length, as Django reads no body without one.
                self.requestHeaders.removeHeader(b"transfer-encoding")
                self.requestHeaders.setRawHeaders(b"content-length", [str(self._body_bytes).encode()])
            return super().process()
        from stt.openai_api.errors import too_large

        self.request_start = time.time()  # read when the response is logged
        body = json.dumps(too_large(self._body_limit).body()).encode()
        self.handle_reply({"type": "http.response.start", "status": 413,
                           "headers": [(b"Content-Type", b"application/json"), (b"Connection", b"close")]})
        self.handle_reply({"type": "http.response.body", "body": body})
        return None


def install(listen_error: Callable[[Any, Any], Any]) -> None:
    """Put the adaptations into Daphne's server (before it starts): our factories and
    request class, and `listen_error(server, failure)` as what happens when an endpoint
    cannot listen."""
    import daphne.http_protocol
    import daphne.server

    verify_unsent_bytes_figure()
    daphne.server.WebSocketFactory = ClosingWebSocketFactory
    if not getattr(daphne.server.Server.create_application, "adds_client_gone", False):
        daphne.server.Server.create_application = with_client_gone(daphne.server.Server.create_application)
    daphne.http_protocol.WebRequest = BoundedWebRequest  # HTTPFactory.buildProtocol reads this name
    daphne.server.Server.listen_error = listen_error


def with_client_gone(create_application: Callable[..., Any]) -> Callable[..., Any]:
    """Daphne's Server.create_application(protocol, scope), with the protocol's
    client_gone event put into the scope (CLIENT_GONE) first."""

    def create(server: Any, protocol: Any, scope: dict[str, Any]) -> Any:
        gone = getattr(protocol, "client_gone", None)
        if gone is not None:
            scope[CLIENT_GONE] = gone
        return create_application(server, protocol, scope)

    create.adds_client_gone = True  # type: ignore[attr-defined]
    return create


class NoticesLostConnection:
    """A mixin for an async consumer whose handlers may wait long (a session held by its
    audio budget): `connection_lost()` is called as soon as Daphne loses the connection
    (CLIENT_GONE in the scope), while a handler still waits and websocket.disconnect is
    queued behind the client's other messages, and again when the application ends
    however it ends: done, failed, or cancelled by Daphne (application_close_timeout
    after its client left; then the disconnect handler never runs)."""

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        gone = scope.get(CLIENT_GONE)
        watcher = asyncio.ensure_future(self._when_gone(gone)) if gone is not None else None
        try:
            await super().__call__(scope, receive, send)  # type: ignore[misc]
        finally:
            if watcher is not None:
                watcher.cancel()
            self.connection_lost()

    async def _when_gone(self, gone: asyncio.Event) -> None:
        await gone.wait()
        self.connection_lost()

    def connection_lost(self) -> None:
        """What the connection held is let go. Called more than once, and maybe in a
        cancelled task: it must be idempotent and await nothing."""


class DispatchWithoutDatabaseCleanup:
    """A mixin for an async consumer that uses no database connection of its own (the
    session's writes go through the history writer's thread): its messages go straight
    to their handlers, as Channels' AsyncConsumer.dispatch does minus the clean-up hop."""

    async def dispatch(self, message: dict[str, Any]) -> None:
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)
