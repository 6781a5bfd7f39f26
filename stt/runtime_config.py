"""Runtime configuration: the server's settings overlaid by the admin's profiles.

Every new session asks `store.values(profile)` for the tunables it runs with. The
store keeps the profiles in memory and re-reads them from the database when a save in
the admin announces a change over the channel layer (group `stt.config`, which reaches
every server process with the Redis layer), and in any case when its copy is older
than RUNTIME_CONFIG_REFRESH_SECONDS: a change reaches new sessions in every process
within that bound even if the announcement is lost. If the database is unreachable the
last values read stay in force.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from stt.errors import SttError

logger = logging.getLogger(__name__)

CONFIG_GROUP = "stt.config"
CONFIG_CHANGED = "config.changed"
# A session start waits at most this long for a refresh in progress, then uses the
# values it has; a failed refresh is not tried again for a while.
_REFRESH_WAIT = 0.5
_FAILURE_BACKOFF = 5.0
# Channel-layer groups expire (a day by default): the listener re-joins well before.
_REJOIN_SECONDS = 1800


@dataclass(frozen=True)
class RuntimeValues:
    profile: str  # the profile applied, "" for the server settings alone
    vad_threshold: float
    vad_min_speech_ms: int
    vad_speech_pad_ms: int
    min_audio_length: float
    partial_chunk_duration: float
    final_chunk_duration: float
    max_silence_duration: float
    max_utterance_duration: float
    partial_beam_size: int
    final_beam_size: int
    max_connections: int
    transcription_failure_threshold: int
    gpu_failure_threshold: int
    max_session_errors: int
    default_language: str | None
    # Semantic endpointing (ENDPOINTING_EAGERNESS): the default of session_config.endpointing.
    endpointing_eagerness: str
    # Keyterms of the profile (its vocabulary), merged after a session's own keyterms.
    vocabulary: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls) -> "RuntimeValues":
        return cls(
            profile="",
            vad_threshold=settings.VAD_THRESHOLD,
            vad_min_speech_ms=settings.VAD_MIN_SPEECH_MS,
            vad_speech_pad_ms=settings.VAD_SPEECH_PAD_MS,
            min_audio_length=settings.MIN_AUDIO_LENGTH,
            partial_chunk_duration=settings.PARTIAL_CHUNK_DURATION,
            final_chunk_duration=settings.FINAL_CHUNK_DURATION,
            max_silence_duration=settings.MAX_SILENCE_DURATION,
            max_utterance_duration=settings.MAX_UTTERANCE_DURATION,
            partial_beam_size=settings.STT_PARTIAL_BEAM_SIZE,
            final_beam_size=settings.STT_FINAL_BEAM_SIZE,
            max_connections=settings.WEBSOCKET_MAX_CONNECTIONS,
            transcription_failure_threshold=settings.TRANSCRIPTION_FAILURE_THRESHOLD,
            gpu_failure_threshold=settings.GPU_FAILURE_THRESHOLD,
            max_session_errors=settings.MAX_SESSION_ERRORS,
            default_language=None,
            endpointing_eagerness=settings.ENDPOINTING_EAGERNESS,
        )

    def overlaid(self, profile: str, overrides: dict[str, Any]) -> "RuntimeValues":
        return replace(self, profile=profile, **overrides)

    def session_defaults(self) -> dict[str, Any]:
        """Defaults of session_config keys that a profile can change."""
        return {
            "partial_chunk_duration": self.partial_chunk_duration,
            "final_chunk_duration": min(self.final_chunk_duration, self.max_silence_duration),
            "language": self.default_language,
            "endpointing": self.endpointing_eagerness,
        }

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["vocabulary"] = list(self.vocabulary)  # as JSON carries it
        return values


def _load_profiles() -> tuple[dict[str, dict[str, Any]], str | None]:
    from django.db import connection

    from stt.models import RuntimeProfile

    try:
        profiles, default = {}, None
        for profile in RuntimeProfile.objects.all():
            profiles[profile.name] = profile.overrides()
            if profile.is_default:
                default = profile.name
        return profiles, default
    finally:
        # Pool threads come and go: leave no connection behind in this one.
        connection.close()


class RuntimeConfigStore:
    def __init__(self) -> None:
        self._profiles: dict[str, dict[str, Any]] = {}
        self._default: str | None = None
        self._loaded_at = -math.inf
        self._loaded_once = False
        self._epoch = 0  # bumped by each invalidation
        self._retry_after = -math.inf
        self._refresh: asyncio.Task | None = None
        self._listener: asyncio.Task | None = None
        self.reloads = 0

    def invalidate(self) -> None:
        self._loaded_at = -math.inf
        self._retry_after = -math.inf
        self._epoch += 1

    async def values(self, profile: str | None = None) -> RuntimeValues:
        """The tunables for a session naming `profile` (None: the default profile)."""
        self.ensure_listener()
        await self._refresh_if_stale()
        base = RuntimeValues.from_settings()
        if profile is not None:
            if profile not in self._profiles:
                raise SttError("invalid_config", f"no runtime profile named {profile!r}", field="profile")
            return base.overlaid(profile, self._profiles[profile])
        if self._default is not None and self._default in self._profiles:
            return base.overlaid(self._default, self._profiles[self._default])
        return base

    async def _refresh_if_stale(self) -> None:
        now = time.monotonic()
        if now - self._loaded_at < settings.RUNTIME_CONFIG_REFRESH_SECONDS or now < self._retry_after:
            return
        loop = asyncio.get_running_loop()
        if self._refresh is None or self._refresh.done() or self._refresh.get_loop() is not loop:
            self._refresh = loop.create_task(self._reload())  # one at a time
        if not self._loaded_once:
            await asyncio.shield(self._refresh)
            return
        try:  # a slow database must not stall session starts: keep the values we have
            async with asyncio.timeout(_REFRESH_WAIT):
                await asyncio.shield(self._refresh)
        except TimeoutError:
            pass

    async def _reload(self) -> None:
        started, epoch = time.monotonic(), self._epoch
        try:
            self._profiles, self._default = await sync_to_async(_load_profiles, thread_sensitive=False)()
        except Exception as exc:  # the database is down: keep what we had
            logger.warning("runtime profiles could not be read (%s); keeping the last values", exc)
            self._retry_after = time.monotonic() + _FAILURE_BACKOFF
            return
        self.reloads += 1
        self._loaded_once = True
        if self._epoch == epoch:  # an invalidation during the read leaves it stale
            self._loaded_at = started

    async def stop_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None and not listener.done() and listener.get_loop() is asyncio.get_running_loop():
            listener.cancel()
            try:
                await asyncio.wait_for(listener, 10)
            except (asyncio.CancelledError, asyncio.TimeoutError):
                pass

    def ensure_listener(self) -> None:
        """Listen for change announcements in this process's event loop (once)."""
        loop = asyncio.get_running_loop()
        if self._listener is not None and not self._listener.done() and self._listener.get_loop() is loop:
            return
        self._listener = loop.create_task(self._listen())

    async def _listen(self) -> None:
        layer = get_channel_layer()
        if layer is None:
            return
        while True:
            rejoin: asyncio.Task | None = None
            try:
                channel = await layer.new_channel()  # the default prefix: channels-redis multiplexes only those
                await layer.group_add(CONFIG_GROUP, channel)
                rejoin = asyncio.ensure_future(self._stay_in_group(layer, channel))
                while True:
                    message = await layer.receive(channel)
                    if message.get("type") == CONFIG_CHANGED:
                        self.invalidate()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the layer is down: the refresh bound still holds
                logger.warning("runtime config listener: %s; retrying", exc)
                await asyncio.sleep(2.0)
            finally:
                if rejoin is not None:
                    rejoin.cancel()

    @staticmethod
    async def _stay_in_group(layer: Any, channel: str) -> None:
        while True:
            await asyncio.sleep(_REJOIN_SECONDS)
            await layer.group_add(CONFIG_GROUP, channel)


store = RuntimeConfigStore()


async def announce_change() -> None:
    """Tell every server process that profiles changed."""
    store.invalidate()
    layer = get_channel_layer()
    if layer is not None:
        await layer.group_send(CONFIG_GROUP, {"type": CONFIG_CHANGED})
