"""The /v1/realtime WebSocket endpoint: thin, as /ws/transcribe's. Text frames go to a
RealtimeSession, which holds the OpenAI protocol; groups, server-side control and the
transport are TranscribeConsumer's."""

from __future__ import annotations

from urllib.parse import parse_qs

from stt.consumers import BROADCAST_GROUP, TranscribeConsumer, session_group
from stt.handshake import client_address
from stt.realtime.session import BETA, GA, RealtimeSession
from stt.realtime.translator import event_id
from stt.services import process_model_catalog, process_session_services

TRANSCRIPTION_INTENT = "transcription"


def dialect_of(scope: dict) -> str:
    """BETA when the client asked for the beta interface (OpenAI-Beta: realtime=v1, or
    the browser's `openai-beta.realtime-v1` subprotocol), else GA."""
    headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope.get("headers", [])}
    if "realtime=v1" in headers.get("openai-beta", "").replace(" ", "").lower():
        return BETA
    return BETA if "openai-beta.realtime-v1" in (scope.get("subprotocols") or ()) else GA


def intent_of(scope: dict) -> str | None:
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("intent")
    return values[0] if values else None


class RealtimeConsumer(TranscribeConsumer):
    realtime: RealtimeSession | None = None

    async def connect(self) -> None:
        self.groups_joined = []
        principal = self.scope.get("principal")  # admitted by stt.handshake.HandshakeMiddleware
        if principal is None:
            await self.close()
            return
        await self.accept(subprotocol=self.scope.get("subprotocol"))
        intent = intent_of(self.scope)
        if intent != TRANSCRIPTION_INTENT:
            await self._send_json({"event_id": event_id(), "type": "error", "error": {
                "type": "invalid_request_error", "code": "invalid_intent", "param": "intent", "event_id": None,
                "message": f"this endpoint holds transcription sessions only: connect with "
                           f"?intent={TRANSCRIPTION_INTENT} (got {intent!r})"}})
            await self.close(code=1008, reason="intent=transcription only")
            return
        self.realtime = RealtimeSession(self._send_json, self._close, process_session_services(),
                                        dialect=dialect_of(self.scope), client=client_address(self.scope),
                                        principal=principal, models=process_model_catalog())
        self.session = self.realtime.session
        if await self.realtime.open():
            await self._join(BROADCAST_GROUP)
            await self._join(session_group(self.session.connection_id))

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.realtime is None:
            return
        if bytes_data is not None:
            await self.realtime.on_binary(bytes_data)
        else:
            await self.realtime.on_text(text_data or "")

    async def disconnect(self, code: int) -> None:
        if self.realtime is not None:
            await self.realtime.on_disconnect()  # first: pending speech must not wait on Redis
        await self._leave_groups()

    def connection_lost(self) -> None:
        if self.realtime is not None:
            self.realtime.client_gone()
        super().connection_lost()
