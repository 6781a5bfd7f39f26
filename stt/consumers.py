"""The WebSocket endpoint. Thin on purpose: it moves frames between Channels and an
SttSession, which holds all protocol logic."""

from __future__ import annotations

import json
import logging
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer

from stt.daphne_protocol import DispatchWithoutDatabaseCleanup, NoticesLostConnection
from stt.handshake import client_address
from stt.services import process_session_services
from stt.session import SttSession
from stt.session.state import spawn

logger = logging.getLogger(__name__)

# Every consumer joins this group, so the server side can reach all sessions.
BROADCAST_GROUP = "stt.sessions"


def session_group(connection_id: str) -> str:
    """The channel-layer group of one session, by the server's id of its connection (a
    uuid: the client's session_id is only a label, and two clients may pick the same)."""
    return f"stt.session.{connection_id}"


class TranscribeConsumer(NoticesLostConnection, DispatchWithoutDatabaseCleanup, AsyncWebsocketConsumer):
    session: SttSession | None = None
    groups_joined: list[str]

    async def connect(self) -> None:
        self.groups_joined = []
        # Origin and credentials were checked by stt.handshake.HandshakeMiddleware; a
        # scope without its principal never passed it, and is refused (HTTP 403).
        principal = self.scope.get("principal")
        if principal is None:
            await self.close()
            return
        self.session = SttSession(self._send_json, self._close, process_session_services(),
                                  client=client_address(self.scope), principal=principal)
        await self.accept(subprotocol=self.scope.get("subprotocol"))
        if await self.session.open():
            await self._join(BROADCAST_GROUP)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.session is None:
            return  # never admitted
        if bytes_data is not None:
            await self.session.on_audio(bytes_data)
            return
        was_started = self.session.started
        await self.session.on_text(text_data or "")
        if self.session.started and not was_started:
            # Joined once there is a session to control (a Redis round trip the many
            # connections that never start one are spared).
            await self._join(session_group(self.session.connection_id))

    async def disconnect(self, code: int) -> None:
        if self.session is not None:
            await self.session.on_disconnect()  # first: pending speech must not wait on Redis
        await self._leave_groups()

    def connection_lost(self) -> None:
        """The client is gone, maybe before its disconnect message is read, or this
        consumer is being cancelled: its session ends now (stt.daphne_protocol.NoticesLostConnection)."""
        if self.session is not None:
            self.session.client_gone()
        if getattr(self, "groups_joined", None):
            spawn(self._leave_groups())  # Redis: not awaited here

    async def _leave_groups(self) -> None:
        groups, self.groups_joined = self.groups_joined, []  # once, whoever comes first
        for group in groups:
            try:
                await self.channel_layer.group_discard(group, self.channel_name)
            except Exception:
                logger.warning("could not leave group %s", group, exc_info=True)

    async def stt_control(self, event: dict[str, Any]) -> None:
        """Channel-layer message {"type": "stt.control", "action": ...}."""
        assert self.session is not None
        await self.session.on_server_control(str(event.get("action", "")))

    async def _join(self, group: str) -> None:
        if self.channel_layer is None:
            return
        await self.channel_layer.group_add(group, self.channel_name)
        self.groups_joined.append(group)

    async def _send_json(self, message: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(message, separators=(",", ":")))

    async def _close(self, code: int, reason: str) -> None:
        await self.close(code=code, reason=reason)
