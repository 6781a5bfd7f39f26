"""Reaching live sessions from the server side through the channel layer.

Works across processes with the Redis layer: an operator tool or another service
can end, flush or interrupt a session by its server id (the connection id /stats lists
it under), wherever it is connected.
"""

from __future__ import annotations

from channels.layers import get_channel_layer

from stt.consumers import BROADCAST_GROUP, session_group

ACTIONS = ("end_session", "flush_buffer", "interrupt")


async def send_control(action: str, connection_id: str | None = None) -> None:
    """Send `action` to one session (by the server's id of its connection), or to every
    session when connection_id is None."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; expected one of {ACTIONS}")
    layer = get_channel_layer()
    group = session_group(connection_id) if connection_id else BROADCAST_GROUP
    await layer.group_send(group, {"type": "stt.control", "action": action})
