"""The Redis channel layer, made to ride out a Redis restart.

channels-redis raises out of `receive` when Redis goes away, which kills the consumer
that is waiting on it (a live transcription session, closed 1011) although a session
needs Redis only for server-side control and announcements. Here `receive` waits and
retries instead, group changes made during an outage are kept and replayed, and a
channel's groups are re-joined once Redis is back (a restarted Redis has forgotten them).
Its connection pool makes callers wait for a free connection: redis-py's default pool
fails at once when its connections are all in use (a burst of connects), which looked
like an outage here and left group changes undone.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any

from channels_redis.core import RedisChannelLayer
from redis.asyncio import BlockingConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger(__name__)

OUTAGE_ERRORS = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)
_RETRY_FIRST, _RETRY_MAX = 0.5, 5.0
# Connections per Redis host and process, and how long a caller waits for a free one.
POOL_MAX_CONNECTIONS, POOL_WAIT_SECONDS = 100, 10.0


class ResilientRedisChannelLayer(RedisChannelLayer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._memberships: dict[str, set[str]] = defaultdict(set)  # channel -> groups

    def create_pool(self, index: int) -> Any:
        host = dict(self.hosts[index])
        if "address" not in host:  # Sentinel and other set-ups: channels-redis's own pool
            return super().create_pool(index)
        address = host.pop("address")
        host.setdefault("max_connections", POOL_MAX_CONNECTIONS)
        host.setdefault("timeout", POOL_WAIT_SECONDS)
        return BlockingConnectionPool.from_url(address, **host)

    async def receive(self, channel: str) -> dict:
        delay = _RETRY_FIRST
        outage = False
        while True:
            try:
                if outage:
                    await self._rejoin(channel)
                message = await super().receive(channel)
            except OUTAGE_ERRORS as exc:
                if not outage:
                    logger.warning("channel layer unreachable (%s); retrying", type(exc).__name__,
                                   extra={"event": "channel_layer_outage"})
                outage = True
                await asyncio.sleep(delay)
                delay = min(_RETRY_MAX, delay * 2)
                continue
            if outage:
                logger.warning("channel layer reachable again", extra={"event": "channel_layer_recovered"})
            return message

    async def group_add(self, group: str, channel: str) -> None:
        self._memberships[channel].add(group)
        try:
            await super().group_add(group, channel)
        except OUTAGE_ERRORS:
            logger.warning("group_add %s deferred: channel layer unreachable", group)

    async def group_discard(self, group: str, channel: str) -> None:
        self._memberships[channel].discard(group)
        if not self._memberships[channel]:
            self._memberships.pop(channel, None)
        try:
            await super().group_discard(group, channel)
        except OUTAGE_ERRORS:
            pass  # its membership expires with the group's TTL

    async def _rejoin(self, channel: str) -> None:
        for group in list(self._memberships.get(channel, ())):
            await super().group_add(group, channel)
