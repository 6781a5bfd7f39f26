"""What stt/daphne_protocol.py relies on in Daphne, autobahn and Twisted: each test
fails if an upgrade changes an internal the adaptations read or override, so the close
codes, the inbound backpressure and the outbound cap cannot stop working silently."""

from __future__ import annotations

import inspect
import socket
import struct

import pytest
from autobahn.websocket.protocol import WebSocketProtocol as AutobahnProtocol
from daphne import server as daphne_server
from daphne.http_protocol import WebRequest
from daphne.ws_protocol import WebSocketFactory, WebSocketProtocol
from twisted.internet import tcp
from twisted.internet.protocol import Protocol

from stt.daphne_protocol import (
    CLIENT_GONE, BoundedWebRequest, ClosingWebSocketFactory, ClosingWebSocketProtocol, UnsentBytesUnknown,
    peer_hung_up, unsent_bytes, verify_unsent_bytes_figure, with_client_gone,
)


def parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


class NoReactor:
    """The transport registers with a reactor; none runs here, so what is written stays
    in the transport's buffer, as for a peer that stopped reading."""

    def addReader(self, _): ...
    def removeReader(self, _): ...
    def addWriter(self, _): ...
    def removeWriter(self, _): ...


@pytest.fixture
def server_transport():
    """A real Twisted server-side TCP transport (the kind Daphne's connections have)."""
    ours, theirs = socket.socketpair()
    yield tcp.Server(ours, Protocol(), ("127.0.0.1", 50000), None, 1, NoReactor())
    ours.close()
    theirs.close()


class TestOutboundCapFigure:
    def test_bytes_written_but_not_sent_are_counted_on_a_real_twisted_transport(self, server_transport):
        assert unsent_bytes(server_transport) == 0
        server_transport.write(b"a" * 70000)
        server_transport.writeSequence([b"b" * 100, b"c" * 20])
        assert unsent_bytes(server_transport) == 70120

    def test_bytes_the_socket_took_leave_the_figure(self, server_transport):
        server_transport.write(b"a" * 1000)
        server_transport.doWrite()  # what the reactor does when the socket is writable
        assert unsent_bytes(server_transport) == 0

    def test_a_transport_without_the_fields_is_reported_not_counted_as_nothing(self):
        """Issue 14 #11: a 0 here would switch the outbound cap off without a word."""
        with pytest.raises(UnsentBytesUnknown):
            unsent_bytes(object())

    def test_a_wrapping_transport_is_looked_through(self, server_transport):
        class Wrapper:
            transport = server_transport

        server_transport.write(b"x" * 10)
        assert unsent_bytes(Wrapper()) == 10

    def test_the_start_up_check_passes_on_the_installed_twisted(self):
        verify_unsent_bytes_figure()


class TestDaphneInternals:
    def test_the_server_builds_its_websocket_factory_from_the_module_global_we_replace(self):
        assert "WebSocketFactory(" in inspect.getsource(daphne_server.Server.run)
        assert daphne_server.WebSocketFactory is WebSocketFactory or \
            daphne_server.WebSocketFactory is ClosingWebSocketFactory

    def test_listen_errors_go_through_the_method_we_replace(self):
        assert "self.listen_error" in inspect.getsource(daphne_server.Server.run)
        assert parameters(daphne_server.Server.listen_error) == ["self", "failure"]

    def test_the_overridden_methods_keep_their_signatures(self):
        assert parameters(WebSocketProtocol.serverSend) == ["self", "content", "binary"]
        assert parameters(WebSocketProtocol.serverClose) == ["self", "code"]
        assert parameters(WebSocketProtocol.handle_reply) == ["self", "message"]
        assert parameters(WebSocketProtocol.onMessage) == ["self", "payload", "isBinary"]

    def test_the_http_factory_builds_requests_from_the_module_global_we_replace(self):
        import daphne.http_protocol as http_protocol
        from twisted.web import http

        assert "protocol.requestFactory = WebRequest" in inspect.getsource(http_protocol.HTTPFactory.buildProtocol)
        assert http_protocol.WebRequest in (WebRequest, BoundedWebRequest)
        # Twisted calls these as the request arrives: the length once the headers are
        # in, each piece of body, process() once all of it is in.
        assert parameters(http.Request.gotLength) == ["self", "length"]
        assert parameters(http.Request.handleContentChunk) == ["self", "data"]
        assert "req.gotLength(" in inspect.getsource(http.HTTPChannel.allHeadersReceived)
        assert "self.content = _getContentFile(length)" in inspect.getsource(http.Request.gotLength)
        assert "self.process()" in inspect.getsource(http.Request.requestReceived)
        assert parameters(WebRequest.handle_reply) == ["self", "message"]

    def test_daphne_still_drops_the_close_reason_and_rejects_before_accepting(self):
        """What handle_reply works around: Daphne's close passes the code only."""
        source = inspect.getsource(WebSocketProtocol.handle_reply)
        assert "self.serverReject()" in source and "STATE_CONNECTING" in source
        assert "serverClose(code=" in source

    def test_the_inbound_queue_is_the_application_queue_daphne_fills(self):
        source = inspect.getsource(WebSocketProtocol)
        assert "self.application_queue = application_queue" in source
        assert "self.application_queue.put_nowait(" in inspect.getsource(WebSocketProtocol.onMessage)

    def test_autobahn_offers_what_the_close_and_drop_paths_call(self):
        assert parameters(AutobahnProtocol.sendCloseFrame) == ["self", "code", "reasonUtf8", "isReply"]
        assert parameters(AutobahnProtocol.sendClose) == ["self", "code", "reason"]
        assert parameters(AutobahnProtocol.dropConnection) == ["self", "abort"]
        assert hasattr(AutobahnProtocol, "STATE_CONNECTING")
        assert "failByDrop" in parameters(WebSocketFactory.setProtocolOptions)

    def test_twisted_tcp_transports_pause_and_resume_reading(self, server_transport):
        server_transport.pauseProducing()
        server_transport.resumeProducing()
        assert server_transport.connected

    def test_the_application_is_created_with_the_scope_we_add_to_and_the_loss_reported_to_onclose(self):
        assert parameters(daphne_server.Server.create_application) in (["self", "protocol", "scope"],
                                                                        ["server", "protocol", "scope"])
        assert "self.server.create_application" in inspect.getsource(WebSocketProtocol.onConnect)
        assert parameters(WebSocketProtocol.onConnect) == ["self", "request"]
        assert parameters(WebSocketProtocol.onClose) == ["self", "wasClean", "code", "reason"]
        assert "websocket.disconnect" in inspect.getsource(WebSocketProtocol.onClose)

    def test_channels_consumers_are_called_with_scope_receive_send(self):
        from channels.consumer import AsyncConsumer

        assert parameters(AsyncConsumer.__call__) == ["self", "scope", "receive", "send"]

    def test_our_protocol_is_the_factorys(self):
        assert ClosingWebSocketFactory.protocol is ClosingWebSocketProtocol
        assert issubclass(ClosingWebSocketProtocol, WebSocketProtocol)


class TestDispatch:
    """DispatchWithoutDatabaseCleanup replaces Channels' AsyncConsumer.dispatch, which
    does exactly two things: a connection clean-up hop and the handler call."""

    def test_channels_dispatch_is_still_the_cleanup_hop_and_the_handler_call(self):
        from channels.consumer import AsyncConsumer

        source = inspect.getsource(AsyncConsumer.dispatch)
        assert "aclose_old_connections()" in source and "get_handler_name(message)" in source
        assert parameters(AsyncConsumer.dispatch) == ["self", "message"]

    async def test_a_message_reaches_its_handler_and_an_unknown_one_is_refused(self):
        from channels.generic.websocket import AsyncWebsocketConsumer

        from stt.daphne_protocol import DispatchWithoutDatabaseCleanup

        seen = []

        class Consumer(DispatchWithoutDatabaseCleanup, AsyncWebsocketConsumer):
            async def stt_control(self, event):
                seen.append(event)

        consumer = Consumer()
        await consumer.dispatch({"type": "stt.control", "action": "x"})
        assert seen == [{"type": "stt.control", "action": "x"}]
        with pytest.raises(ValueError):
            await consumer.dispatch({"type": "no.such"})


@pytest.fixture
def tcp_pair():
    """A connected TCP pair on the loopback: (the server's side, the client's side)."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    yield server, client
    server.close()
    client.close()


class TestAClientGoneWhileItsSocketIsPaused:
    """Issue 23 #3: a paused socket is not read, so its client's reset or close went
    unseen until its session had worked through half its queue."""

    def transport(self, sock: socket.socket) -> tcp.Server:
        return tcp.Server(sock, Protocol(), ("127.0.0.1", 50000), None, 1, NoReactor())

    def test_a_live_client_with_unread_frames_has_not_hung_up(self, tcp_pair):
        server, client = tcp_pair
        client.sendall(b"frame" * 1000)
        assert not peer_hung_up(self.transport(server))

    def test_a_client_that_reset_the_connection_has_hung_up(self, tcp_pair):
        server, client = tcp_pair
        client.sendall(b"frame" * 1000)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        assert until(lambda: peer_hung_up(self.transport(server)))

    def test_a_client_that_closed_behind_its_unread_frames_has_hung_up(self, tcp_pair):
        server, client = tcp_pair
        client.sendall(b"frame" * 1000)
        client.shutdown(socket.SHUT_WR)
        assert until(lambda: peer_hung_up(self.transport(server)))
        assert server.recv(5) == b"frame", "nothing was read to find out"

    def test_a_wrapping_transport_is_looked_through(self, tcp_pair):
        server, client = tcp_pair
        client.shutdown(socket.SHUT_WR)

        class Wrapper:  # TLS: its handle is not a socket
            transport = self.transport(server)

            def getHandle(self):
                return object()

        assert until(lambda: peer_hung_up(Wrapper()))
        assert not peer_hung_up(object()), "no socket: nothing known"


class TestTheLossInTheScope:
    def test_the_protocols_event_goes_into_the_scope_of_its_application(self):
        import asyncio

        made = []

        class Protocol_:
            client_gone = asyncio.Event()

        create = with_client_gone(lambda server, protocol, scope: made.append(scope) or "queue")
        assert create(None, Protocol_(), {"type": "websocket"}) == "queue"
        assert made[0][CLIENT_GONE] is Protocol_.client_gone
        create(None, object(), {"type": "http"})
        assert CLIENT_GONE not in made[1], "an HTTP request has none"

    def test_onclose_sets_the_event_after_daphne_queued_the_disconnect(self):
        import asyncio

        class Queue:
            messages: list = []

            def put_nowait(self, message):
                self.messages.append(message)

        protocol = ClosingWebSocketProtocol.__new__(ClosingWebSocketProtocol)
        protocol.server = type("S", (), {"protocol_disconnected": lambda self, p: None,
                                         "log_action": lambda self, *a: None})()
        protocol.request = type("R", (), {"path": "/ws/transcribe"})()
        protocol.client_addr = ["127.0.0.1", 5000]
        protocol.application_queue = Queue()
        protocol.client_gone = asyncio.Event()
        protocol.onClose(False, 1006, "reset")
        assert Queue.messages == [{"type": "websocket.disconnect", "code": 1006}]
        assert protocol.client_gone.is_set()


def until(condition, seconds: float = 2.0) -> bool:
    import time

    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
